"""Recurrent language models, the subject of chapter 2: a plain RNN written out, LSTM and GRU.

A recurrent network reads one token at a time and keeps what it has read in a hidden
state: ``h_t = f(W_hh h_{t-1} + W_xh x_t + b_h)``, and predicts the next token from it,
``y_t = softmax(W_yh h_t + b_y)``. :class:`RNNCell` is that equation with its own
parameters (checked against ``torch.nn.RNN``); :class:`RNNLM` puts an embedding before
and a linear layer after a stack of such cells, or of ``torch.nn``'s LSTM or GRU, and is
called like the GPT: ``model(idx, targets=None, cache=None) -> (logits, loss)``.

In training mode the model carries its final hidden state, detached, into the next call
(truncated backpropagation through time, with :class:`lmbook.text.data.SequentialBatches`).
:mod:`lmbook.runs.ch02_rnn` trains them on Tiny Shakespeare.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import Presets
from ..interface import (check_bool, check_number, check_targets, check_token_ids, evaluating, next_token_loss,
                         num_params)

CELLS = ("rnn", "lstm", "gru")
NAMES = {"rnn": "RNN (tanh)", "lstm": "LSTM", "gru": "GRU"}  # how the chapter labels them

PRESETS: dict[str, dict] = {
    # For unit tests: runs in milliseconds on a CPU.
    "tiny": dict(vocab_size=65, cell="lstm", n_layer=2, n_embd=16, n_hidden=32, dropout=0.0),
}


@dataclass
class RNNConfig(Presets):
    """Shape of a recurrent language model. ``RNNConfig.preset("tiny")`` is for tests; chapter 2's shapes live
    with its runs (:mod:`lmbook.runs.ch02_rnn`)."""

    vocab_size: int = 65
    cell: str = "lstm"  # "rnn" (the written-out tanh cell), "lstm" or "gru" (torch.nn)
    n_layer: int = 2
    n_embd: int = 128  # size of the token embeddings, the x_t the first layer reads
    n_hidden: int = 512  # size of the hidden state h_t of each layer
    dropout: float = 0.0  # on embeddings, between layers and before the output layer
    forget_bias: float = 1.0  # LSTM only: the forget gates start open, sigmoid(1) = 0.73
    carry_state: bool = True  # in training mode, start each call from the last call's final state

    def __post_init__(self) -> None:
        if self.cell not in CELLS:
            raise ValueError(f"cell must be one of {CELLS}, not {self.cell!r}.")
        self.check_positive("vocab_size", "n_layer", "n_embd", "n_hidden")
        self.check_rate("dropout")
        check_number("RNNConfig.forget_bias", self.forget_bias, "a finite number", math.isfinite)
        check_bool("RNNConfig.carry_state", self.carry_state)


RNNConfig.PRESETS = PRESETS


class RNNCell(nn.Module):
    """One step of a plain RNN: ``h_t = f(W_hh h_{t-1} + W_xh x_t + b_h)``, f = tanh (or ReLU)."""

    def __init__(self, input_size: int, hidden_size: int, nonlinearity: str = "tanh"):
        super().__init__()
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu', not {nonlinearity!r}.")
        self.f = torch.tanh if nonlinearity == "tanh" else torch.relu
        self.W_xh = nn.Parameter(torch.empty(hidden_size, input_size))
        self.W_hh = nn.Parameter(torch.empty(hidden_size, hidden_size))
        self.b_h = nn.Parameter(torch.empty(hidden_size))
        bound = 1 / math.sqrt(hidden_size)  # torch.nn.RNN's initialisation
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """The next hidden state (B, H) from the input ``x`` (B, C) and the hidden state ``h`` (B, H)."""
        return self.f(h @ self.W_hh.T + x @ self.W_xh.T + self.b_h)


class SimpleRNN(nn.Module):
    """A stack of :class:`RNNCell` run over a sequence: ``torch.nn.RNN(batch_first=True)`` written out.

    ``forward(x, h0)`` takes ``x`` (B, T, C) and the initial states ``h0`` (L, B, H) or
    ``None`` (zeros) and returns every top-layer state (B, T, H) and the final states (L, B, H).
    It computes each cell's equation, with the input term of all steps in one product.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: str = "tanh",
                 dropout: float = 0.0):
        super().__init__()
        sizes = [input_size] + [hidden_size] * (num_layers - 1)
        self.cells = nn.ModuleList(RNNCell(n, hidden_size, nonlinearity) for n in sizes)
        self.hidden_size = hidden_size
        self.drop = nn.Dropout(dropout)  # between layers, as torch.nn.RNN applies it

    def forward(self, x: torch.Tensor, h0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        B, T, _ = x.shape
        finals = []
        for layer, cell in enumerate(self.cells):
            h = x.new_zeros(B, self.hidden_size) if h0 is None else h0[layer]  # (B, H)
            inputs = x @ cell.W_xh.T + cell.b_h  # (B, T, H): W_xh x_t + b_h needs no h, so all t at once
            states = []
            for u in inputs.unbind(dim=1):  # one step at a time: step t needs the state of step t-1
                h = cell.f(h @ cell.W_hh.T + u)  # h_t = f(W_hh h_{t-1} + W_xh x_t + b_h), (B, H)
                states.append(h)
            x = torch.stack(states, dim=1)  # (B, T, H): the next layer's input sequence
            finals.append(h)
            if layer < len(self.cells) - 1:
                x = self.drop(x)
        return x, torch.stack(finals)  # (B, T, H), (L, B, H)

    @torch.no_grad()
    def load_from_torch(self, rnn: nn.RNN) -> "SimpleRNN":
        """Copy the weights of a ``torch.nn.RNN`` of the same shape (its two biases add up to b_h)."""
        if rnn.num_layers != len(self.cells) or rnn.hidden_size != self.hidden_size or rnn.bidirectional:
            raise ValueError("the torch.nn.RNN must have the same number of layers and hidden size, one direction.")
        if (rnn.nonlinearity == "tanh") != (self.cells[0].f is torch.tanh):
            raise ValueError(f"the torch.nn.RNN uses {rnn.nonlinearity}, this one does not.")
        for layer, cell in enumerate(self.cells):
            cell.W_xh.copy_(getattr(rnn, f"weight_ih_l{layer}"))
            cell.W_hh.copy_(getattr(rnn, f"weight_hh_l{layer}"))
            bias = [getattr(rnn, f"bias_{k}_l{layer}", None) for k in ("ih", "hh")]
            cell.b_h.copy_(sum(b for b in bias if b is not None) if rnn.bias else torch.zeros_like(cell.b_h))
        return self


State = torch.Tensor | tuple[torch.Tensor, torch.Tensor]  # (L, B, H); the LSTM's is (h, c)


def _detach(state: State, dtype: torch.dtype) -> State:
    """``state`` cut from its graph, in ``dtype`` (under autocast an LSTM returns bf16 states)."""
    if isinstance(state, torch.Tensor):
        return state.detach().to(dtype)
    return tuple(s.detach().to(dtype) for s in state)


def _batch_size(state: State) -> int:
    return (state if isinstance(state, torch.Tensor) else state[0]).size(1)


class RNNState:
    """The hidden state between calls, what the GPT's key/value cache is to the GPT.

    ``model(idx, cache=state)`` starts from ``state.h`` (``None``: zeros) and leaves the
    final state there; ``pos`` counts the tokens read. ``reset()`` forgets everything. It meets
    :class:`lmbook.interface.Cache`, except that a state cannot forget what it has read: no rollback.
    """

    can_rollback = False

    def __init__(self) -> None:
        self.h: State | None = None
        self.pos = 0

    def update(self, h: State, n: int) -> None:
        self.h, self.pos = h, self.pos + n

    def reset(self) -> None:
        self.h, self.pos = None, 0

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep the rows ``rows`` (N,) of the state (layers, B, H), or of an LSTM's pair of them."""
        if self.h is not None:
            self.h = tuple(x[:, rows] for x in self.h) if isinstance(self.h, tuple) else self.h[:, rows]

    def rollback(self, n: int) -> None:
        raise TypeError("a recurrent state cannot forget the tokens it has read (it keeps no positions): "
                        "read the text again from a fresh make_cache(), or decode with a GPT.")


class RNNLM(nn.Module):
    """A recurrent language model: token ids (B, T) -> next-token logits (B, T, vocab).

    Embedding, then ``config.n_layer`` recurrent layers (:class:`SimpleRNN`, ``nn.LSTM`` or
    ``nn.GRU``), then ``y_t = W_yh h_t + b_y`` (``lm_head``). Called like the GPT;
    ``model(idx, targets)`` returns the mean cross-entropy over targets that are not -1.
    With ``config.carry_state`` and in training mode, each call without a cache starts
    from the previous call's final state, detached, when the batch size is the same.
    """

    def __init__(self, config: RNNConfig):
        super().__init__()
        self.config = config
        self.carry_state = config.carry_state
        c = config
        self.wte = nn.Embedding(c.vocab_size, c.n_embd)  # x_t: one vector per token
        between = c.dropout if c.n_layer > 1 else 0.0
        if c.cell == "rnn":
            self.rnn = SimpleRNN(c.n_embd, c.n_hidden, c.n_layer, "tanh", between)
        else:
            kind = nn.LSTM if c.cell == "lstm" else nn.GRU
            self.rnn = kind(c.n_embd, c.n_hidden, c.n_layer, batch_first=True, dropout=between)
        if c.cell == "lstm":
            with torch.no_grad():  # biases are (4H,): gates i, f, g, o; the two biases add up
                for layer in range(c.n_layer):
                    getattr(self.rnn, f"bias_ih_l{layer}")[c.n_hidden : 2 * c.n_hidden] = c.forget_bias
                    getattr(self.rnn, f"bias_hh_l{layer}")[c.n_hidden : 2 * c.n_hidden] = 0.0
        self.drop = nn.Dropout(c.dropout)
        self.lm_head = nn.Linear(c.n_hidden, c.vocab_size)  # W_yh and b_y
        self._carried: State | None = None  # the training state handed from one call to the next

    reads_padding = False  # prompts of different lengths are decoded one after the other

    @property
    def context_length(self) -> None:
        """No limit: the state summarises everything read so far."""
        return None

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    def make_cache(self, batch_size: int | None = None) -> RNNState:
        """An empty state for decoding (zeros on the first call)."""
        return RNNState()

    def reset_state(self) -> None:
        """Forget the carried training state: the next training call starts from zeros."""
        self._carried = None

    def training_state(self) -> State | None:
        """The state carried from one training call to the next (a checkpoint keeps it for an exact resume)."""
        return self._carried

    def load_training_state(self, state: State | None) -> None:
        """Carry ``state`` into the next training call, as :meth:`training_state` returned it."""
        self._carried = state

    def run(self, emb: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """Logits (B, T, vocab) and the final state, from the embedded tokens ``emb`` (B, T, C)."""
        out, state = self.rnn(self.drop(emb), state)  # (B, T, H)
        return self.lm_head(self.drop(out)), state

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: RNNState | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        check_token_ids(idx, self.config.vocab_size)
        check_targets(targets, idx, self.config.vocab_size)
        B, T = idx.shape
        carry = cache is None and self.training and self.carry_state
        if cache is not None:
            state = cache.h
        elif carry and self._carried is not None and _batch_size(self._carried) == B:
            state = self._carried
        else:
            state = None
        logits, state = self.run(self.wte(idx), state)  # (B, T, vocab)
        if cache is not None:
            cache.update(state, T)
        elif carry:
            # truncation: no gradient flows into the previous call
            self._carried = _detach(state, self.wte.weight.dtype)
        loss = next_token_loss(logits, targets)
        return logits, loss

    def num_params(self) -> int:
        """Parameters by the book's one convention (:func:`lmbook.interface.num_params`)."""
        return num_params(self)


def input_gradient_norms(model: RNNLM, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """How much the loss at the last step depends on each earlier input: the vanishing-gradient picture.

    For each sequence of ``x`` (B, T), the gradient of the cross-entropy at the last position
    (target ``y[:, -1]``) with respect to the embedding read ``d`` steps earlier; returns the
    norm of that gradient averaged over the batch, indexed by the distance ``d`` = 0 .. T-1 (T,).
    Runs from a zero state with dropout off.
    """
    with evaluating(model):
        emb = model.wte(x).detach().requires_grad_(True)  # (B, T, C)
        with torch.backends.cudnn.flags(enabled=False):  # cuDNN's RNN backward refuses eval mode
            logits, _ = model.run(emb)
        loss = F.cross_entropy(logits[:, -1].float(), y[:, -1], reduction="sum")  # each sequence its own loss
        (grad,) = torch.autograd.grad(loss, emb)  # (B, T, C)
    return grad.norm(dim=-1).mean(dim=0).flip(0)  # (T,) position T-1-d at index d


@torch.no_grad()
def scale_recurrent_weights(model: RNNLM, gain: float) -> RNNLM:
    """Multiply every ``W_hh`` of the written-out RNN by ``gain``, in place (chapter 2's exploding gradients).

    At initialisation the largest eigenvalue of ``W_hh`` has a modulus near 0.6, so gradients
    through time shrink; a gain of 5 takes it near 3, and they grow instead.
    """
    if model.config.cell != "rnn":
        raise ValueError(f"only the written-out RNN has W_hh matrices; this model's cell is {model.config.cell!r}.")
    for cell in model.rnn.cells:
        cell.W_hh.mul_(gain)
    return model
