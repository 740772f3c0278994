"""Recurrent language models, the subject of chapter 2: a plain RNN written out, LSTM and GRU.

A recurrent network reads one token at a time and keeps what it has read in a hidden
state: ``h_t = f(W_hh h_{t-1} + W_xh x_t + b_h)``, and predicts the next token from it,
``y_t = softmax(W_yh h_t + b_y)``. :class:`RNNCell` is that equation with its own
parameters (checked against ``torch.nn.RNN``); :class:`RNNLM` puts an embedding before
and a linear layer after a stack of such cells, or of ``torch.nn``'s LSTM or GRU, and is
called like the GPT: ``model(idx, targets=None, cache=None) -> (logits, loss)``.

In training mode the model carries its final hidden state, detached, into the next call
(truncated backpropagation through time, with :class:`lmbook.data.SequentialBatches`);
:func:`train_char_model` trains one on Tiny Shakespeare with :func:`lmbook.train.train`,
and :func:`reference_run` is the chapter's full-size experiment.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import Presets
from .data import RandomBatches, SequentialBatches, shakespeare_chars
from .generate import complete
from .runtime import get_device
from .train import History, TrainConfig, train

CELLS = ("rnn", "lstm", "gru")
NAMES = {"rnn": "RNN (tanh)", "lstm": "LSTM", "gru": "GRU"}  # how the chapter labels them

PRESETS: dict[str, dict] = {
    # For unit tests: runs in milliseconds on a CPU.
    "tiny": dict(vocab_size=65, cell="lstm", n_layer=2, n_embd=16, n_hidden=32, dropout=0.0),
    # The character-level Shakespeare model of chapter 2 (about 3.3M parameters as an LSTM).
    "shakespeare-char": dict(vocab_size=65, cell="lstm", n_layer=2, n_embd=128, n_hidden=512, dropout=0.2),
}


@dataclass
class RNNConfig(Presets):
    """Shape of a recurrent language model. ``RNNConfig.preset(name, **overrides)`` gives the named ones."""

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

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: str = "tanh", dropout: float = 0.0):
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
    final state there; ``pos`` counts the tokens read. ``reset()`` forgets everything.
    """

    def __init__(self) -> None:
        self.h: State | None = None
        self.pos = 0

    def update(self, h: State, n: int) -> None:
        self.h, self.pos = h, self.pos + n

    def reset(self) -> None:
        self.h, self.pos = None, 0


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

    @property
    def context_length(self) -> None:
        """No limit: the state summarises everything read so far."""
        return None

    def make_cache(self, batch_size: int | None = None) -> RNNState:
        """An empty state for decoding (zeros on the first call)."""
        return RNNState()

    def reset_state(self) -> None:
        """Forget the carried training state: the next training call starts from zeros."""
        self._carried = None

    def run(self, emb: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """Logits (B, T, vocab) and the final state, from the embedded tokens ``emb`` (B, T, C)."""
        out, state = self.rnn(self.drop(emb), state)  # (B, T, H)
        return self.lm_head(self.drop(out)), state

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: RNNState | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
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
            self._carried = _detach(state, self.wte.weight.dtype)  # truncation: no gradient flows into the previous call
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def input_gradient_norms(model: RNNLM, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """How much the loss at the last step depends on each earlier input: the vanishing-gradient picture.

    For each sequence of ``x`` (B, T), the gradient of the cross-entropy at the last position
    (target ``y[:, -1]``) with respect to the embedding read ``d`` steps earlier; returns the
    norm of that gradient averaged over the batch, indexed by the distance ``d`` = 0 .. T-1 (T,).
    Runs from a zero state with dropout off.
    """
    was_training = model.training
    model.eval()
    try:
        emb = model.wte(x).detach().requires_grad_(True)  # (B, T, C)
        with torch.backends.cudnn.flags(enabled=False):  # cuDNN's RNN backward refuses eval mode
            logits, _ = model.run(emb)
        loss = F.cross_entropy(logits[:, -1].float(), y[:, -1], reduction="sum")  # each sequence its own loss
        (grad,) = torch.autograd.grad(loss, emb)  # (B, T, C)
    finally:
        model.train(was_training)
    return grad.norm(dim=-1).mean(dim=0).flip(0)  # (T,) position T-1-d at index d


@torch.no_grad()
def sequential_loss(model: RNNLM, data: torch.Tensor, block_size: int = 250, batch_size: int = 16) -> float:
    """Mean loss over ``data`` read in order, carrying the state from block to block (in eval mode).

    ``data`` is cut into ``batch_size`` streams as by :class:`~lmbook.data.SequentialBatches` and
    each block of each stream is read once, so every character but the first few of a stream
    is predicted from everything before it in its stream, not from a window.
    """
    was_training = model.training
    model.eval()
    batches = SequentialBatches(data, block_size, batch_size, next(model.parameters()).device)
    state, total = model.make_cache(batch_size), 0.0
    for _ in range(batches.blocks):
        x, y = batches()
        total += model(x, y, cache=state)[1].item()
    model.train(was_training)
    return total / batches.blocks


# --- The chapter's experiment: char-level models on Tiny Shakespeare ---------------
@dataclass(frozen=True)
class CharRun(Presets):
    """The sizes of the chapter's character-level runs: model shape, batches, training."""

    n_layer: int
    n_embd: int
    n_hidden: int
    dropout: float
    block_size: int  # truncation length of backpropagation through time
    batch_size: int  # parallel streams
    max_steps: int
    lr: float
    min_lr: float
    warmup_steps: int
    eval_interval: int
    eval_iters: int
    grad_clip: float | None = 1.0

    def model_config(self, cell: str, vocab_size: int) -> RNNConfig:
        return RNNConfig(vocab_size, cell, self.n_layer, self.n_embd, self.n_hidden, self.dropout)

    def train_config(self, **changes) -> TrainConfig:
        settings = dict(
            max_steps=self.max_steps, lr=self.lr, min_lr=self.min_lr, warmup_steps=self.warmup_steps,
            eval_interval=self.eval_interval, eval_iters=self.eval_iters, grad_clip=self.grad_clip,
        )
        return TrainConfig(**{**settings, **changes})


RUNS = {
    # a GPU, minutes for the three cells together
    "full": CharRun(n_layer=2, n_embd=128, n_hidden=512, dropout=0.2, block_size=64, batch_size=128,
                    max_steps=3000, lr=3e-3, min_lr=3e-4, warmup_steps=100, eval_interval=250, eval_iters=40),
    # two CPU cores, under half a minute a cell
    "fast": CharRun(n_layer=1, n_embd=48, n_hidden=128, dropout=0.0, block_size=64, batch_size=32,
                    max_steps=500, lr=1e-2, min_lr=1e-3, warmup_steps=20, eval_interval=100, eval_iters=10),
}


def make_char_model(cell: str, run: CharRun, vocab_size: int, device=None, seed: int = 0) -> RNNLM:
    """A fresh :class:`RNNLM` with ``cell`` at the sizes of ``run``, initialised from ``seed``."""
    torch.manual_seed(seed)
    return RNNLM(run.model_config(cell, vocab_size)).to(device or get_device())


def train_char_model(model: RNNLM, run: CharRun, train_data: torch.Tensor, val_data: torch.Tensor,
                     seed: int = 0, **changes) -> History:
    """Train ``model`` in place at the sizes of ``run`` with :func:`lmbook.train.train`; returns its history.

    Training reads :class:`~lmbook.data.SequentialBatches` and the model carries its state
    from batch to batch; evaluation reads random windows from a zero state, as for the GPT.
    ``changes`` override fields of the :class:`~lmbook.train.TrainConfig` (``grad_clip=None``, say).
    """
    device = next(model.parameters()).device
    batches = SequentialBatches(train_data, run.block_size, run.batch_size, device)
    eval_batches = {
        "train": RandomBatches(train_data, run.block_size, run.batch_size, device, seed=seed + 1),
        "val": RandomBatches(val_data, run.block_size, run.batch_size, device, seed=seed + 2),
    }
    model.reset_state()
    config = run.train_config(**{"desc": NAMES[model.config.cell], "seed": seed, **changes})
    return train(model, batches, config, eval_batches)


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


def summarize(model: RNNLM, history: History, val_data: torch.Tensor | None = None) -> dict:
    """The numbers the chapter's table shows for one run (with ``val_data``: the loss read in order too)."""
    summary = {
        "params": model.num_params(),
        "val_loss": history.eval_loss["val"][-1],
        "best_val_loss": history.best("val")[1],
        "tokens_per_second": history.tokens_per_second,
        "seconds": history.seconds,
    }
    if val_data is not None:
        summary["val_loss_in_order"] = sequential_loss(model, val_data)
    return summary


def results_table(results: dict[str, dict]) -> str:
    """A Markdown table of :func:`summarize`'s numbers, one row a run."""
    in_order = all("val_loss_in_order" in r for r in results.values())
    lines = ["| model | parameters | val loss (windows) | best | val loss (in order) | tokens/s | seconds |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for cell, r in results.items():
        read = f"{r['val_loss_in_order']:.3f}" if in_order else "-"
        lines.append(f"| {NAMES.get(cell, cell)} | {r['params']:,} | {r['val_loss']:.3f} | {r['best_val_loss']:.3f} "
                     f"| {read} | {r['tokens_per_second']:,.0f} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def train_cells(run: CharRun, train_data: torch.Tensor, val_data: torch.Tensor, vocab_size: int,
                device=None, cells: tuple[str, ...] = CELLS) -> dict[str, tuple[RNNLM, History]]:
    """One model of each cell, built from the same seed and trained the same way: ``{cell: (model, history)}``."""
    trained = {}
    for cell in cells:
        model = make_char_model(cell, run, vocab_size, device)
        trained[cell] = model, train_char_model(model, run, train_data, val_data)
    return trained


TEMPERATURES = (0.5, 0.8, 1.0)
PROBE = dict(block_size=100, batch_size=64, seed=0)  # the validation windows the gradient picture reads


def reference_run() -> dict:
    """Chapter 2's full-size experiment: the three cells trained on Tiny Shakespeare, sampled and probed.

    Recorded by ``python -m lmbook.reference rnn`` into ``lmbook/references/rnn.json``.
    """
    run, device = RUNS["full"], get_device()
    tokenizer, train_data, val_data = shakespeare_chars()
    x, y = RandomBatches(val_data, device=device, **PROBE)()
    at_init = {cell: make_char_model(cell, run, tokenizer.vocab_size, device) for cell in CELLS}
    at_init["rnn x5"] = scale_recurrent_weights(make_char_model("rnn", run, tokenizer.vocab_size, device), 5.0)
    trained = train_cells(run, train_data, val_data, tokenizer.vocab_size, device)
    samples = {
        f"{cell} {t}": complete(model, tokenizer, "ROMEO:", max_new_tokens=400, temperature=t, seed=0)
        for cell, (model, _) in trained.items()
        for t in TEMPERATURES
    }
    results = {
        "runs": {cell: summarize(model, history, val_data) for cell, (model, history) in trained.items()},
        "gradient_norms": {
            "init": {name: input_gradient_norms(m, x, y).tolist() for name, m in at_init.items()},
            "trained": {cell: input_gradient_norms(m, x, y).tolist() for cell, (m, _) in trained.items()},
        },
    }
    histories = {cell: history for cell, (_, history) in trained.items()}
    return {"histories": histories, "results": results, "samples": samples, "sizes": run.to_dict()}
