"""The encoder–decoder Transformer (chapter 3b): cross-attention written out, and ``torch.nn.Transformer`` used right.

Vaswani et al. (2017)'s Transformer has two stacks. The *encoder* reads the whole source at once, every position
seeing every other; the *decoder* writes the target one token at a time, with a causal mask on its own tokens and,
in each layer, *cross-attention*: queries from the decoder, keys and values from the encoder's output (the
*memory*). :func:`attend` writes a multi-head attention out from the weights of an ``nn.MultiheadAttention``, so
that :func:`cross_attention` and :func:`decoder_layer` can be checked against PyTorch on the same weights.

:class:`Seq2Seq` wraps ``nn.Transformer`` with what it leaves to its user: ``batch_first=True``, embeddings and
learned positions, padding masks for source and target, the causal mask on the target, the loss on the shifted
target (teacher forcing). :class:`Packed` is the view the book's one training loop trains (one input tensor);
:func:`greedy_decode` and :func:`beam_decode` write the target token by token from the source.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import Presets
from ..interface import check_int, check_number, check_token_ids, next_token_loss, num_params

NEG = -1.0e9  # the score of a beam that does not exist yet


# --- cross-attention written out ------------------------------------------------------------
def attend(query: torch.Tensor, source: torch.Tensor, mha: nn.MultiheadAttention,
           key_padding_mask: torch.Tensor | None = None, causal: bool = False
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """What ``mha`` (``batch_first=True``) computes for queries from ``query`` (B, T, C) and keys and values from
    ``source`` (B, S, C), written out: returns the output (B, T, C) and the weights (B, nh, T, S).

    ``key_padding_mask`` (B, S) is True on the source's padding, which gets no weight; ``causal`` lets query i
    see keys 0..i only (self-attention, ``source`` is ``query``)."""
    if query.dim() != 3 or source.dim() != 3 or query.size(0) != source.size(0) or query.size(2) != source.size(2):
        raise ValueError(f"query (B, T, C) and source (B, S, C) must share B and C, not {tuple(query.shape)} and "
                         f"{tuple(source.shape)}.")
    B, T, C = query.shape
    S, nh = source.size(1), mha.num_heads
    w_q, w_k, w_v = mha.in_proj_weight.chunk(3)  # each (C, C): one projection for queries, keys, values
    b_q, b_k, b_v = mha.in_proj_bias.chunk(3) if mha.in_proj_bias is not None else (None, None, None)
    q = F.linear(query, w_q, b_q).view(B, T, nh, C // nh).transpose(1, 2)  # (B, nh, T, hs): from the decoder
    k = F.linear(source, w_k, b_k).view(B, S, nh, C // nh).transpose(1, 2)  # (B, nh, S, hs): from the encoder
    v = F.linear(source, w_v, b_v).view(B, S, nh, C // nh).transpose(1, 2)  # (B, nh, S, hs)
    scores = q @ k.transpose(-2, -1) / math.sqrt(C // nh)  # (B, nh, T, S)
    if key_padding_mask is not None:
        scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
    if causal:
        scores = scores.masked_fill(torch.ones(T, S, dtype=torch.bool, device=scores.device).triu(1), float("-inf"))
    weights = torch.softmax(scores, dim=-1)  # (B, nh, T, S): each row sums to 1 over the source
    y = (weights @ v).transpose(1, 2).reshape(B, T, C)  # the heads side by side: (B, T, C)
    return mha.out_proj(y), weights


def cross_attention(x: torch.Tensor, memory: torch.Tensor, mha: nn.MultiheadAttention,
                    memory_padding_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-attention: the decoder's positions ``x`` (B, T, C) read the encoder's output ``memory`` (B, S, C)."""
    return attend(x, memory, mha, memory_padding_mask)


def decoder_layer(layer: nn.TransformerDecoderLayer, x: torch.Tensor, memory: torch.Tensor,
                  memory_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
    """What ``layer`` (``batch_first=True``, in eval mode) computes with the causal mask on ``x`` (B, T, C), written
    out: causal self-attention, cross-attention to ``memory``, feed-forward, each with its residual and LayerNorm
    (before the block with ``norm_first``, after it otherwise)."""
    def self_block(h):
        return attend(h, h, layer.self_attn, causal=True)[0]

    def cross_block(h):
        return cross_attention(h, memory, layer.multihead_attn, memory_padding_mask)[0]

    def feed_forward(h):
        return layer.linear2(layer.activation(layer.linear1(h)))

    blocks = [(layer.norm1, self_block), (layer.norm2, cross_block), (layer.norm3, feed_forward)]
    for norm, block in blocks:
        x = x + block(norm(x)) if layer.norm_first else norm(x + block(x))
    return x


# --- nn.Transformer used right ----------------------------------------------------------------
@dataclass
class Seq2SeqConfig(Presets):
    """Shape of a :class:`Seq2Seq`; ids 0, 1, 2 are padding, start and end (:mod:`lmbook.text.reorder`)."""

    vocab_size: int = 66
    max_source: int = 40  # the longest source, in tokens
    max_target: int = 41  # the longest decoder input: the start token and the target
    d_model: int = 64
    n_head: int = 4
    n_encoder_layers: int = 2
    n_decoder_layers: int = 2
    d_ff: int = 256
    dropout: float = 0.0
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2

    def __post_init__(self) -> None:
        self.check_positive("vocab_size", "max_source", "max_target", "d_model", "n_head", "n_encoder_layers",
                            "n_decoder_layers", "d_ff")
        if self.d_model % self.n_head:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_head={self.n_head}.")
        self.check_rate("dropout")
        for name in ("pad_id", "bos_id", "eos_id"):
            check_int(f"Seq2SeqConfig.{name}", getattr(self, name), 0)
            if getattr(self, name) >= self.vocab_size:
                raise ValueError(f"Seq2SeqConfig.{name} must be below vocab_size={self.vocab_size}.")


Seq2SeqConfig.PRESETS = {"tiny": dict(vocab_size=20, max_source=8, max_target=9, d_model=16, n_head=2,
                                      n_encoder_layers=1, n_decoder_layers=1, d_ff=32)}


def causal_tgt_mask(T: int, device=None) -> torch.Tensor:
    """(T, T) booleans, True where a target position may *not* look (the keys after it): ``nn.Transformer``'s
    convention, the opposite of :func:`lmbook.models.attention.causal_mask`."""
    return torch.ones(T, T, dtype=torch.bool, device=device).triu(1)


class Seq2Seq(nn.Module):
    """An encoder–decoder Transformer around ``nn.Transformer``: ``model(src, tgt, targets)`` -> ``(logits, loss)``.

    ``src`` (B, S) and ``tgt`` (B, T) are right-padded with ``pad_id``; ``tgt`` starts with ``bos_id`` and
    ``targets`` (B, T) is the target shifted by one, -1 where no loss counts. Embeddings (shared by source, target
    and output layer) plus learned positions feed pre-LN stacks (``norm_first``, as the book's GPT).
    """

    def __init__(self, config: Seq2SeqConfig):
        super().__init__()
        self.config = c = config
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        self.src_pos = nn.Embedding(c.max_source, c.d_model)
        self.tgt_pos = nn.Embedding(c.max_target, c.d_model)
        with warnings.catch_warnings():  # pre-LN layers cannot use the nested-tensor fast path; PyTorch says so
            warnings.filterwarnings("ignore", message="enable_nested_tensor is True")
            self.transformer = nn.Transformer(
                d_model=c.d_model, nhead=c.n_head, num_encoder_layers=c.n_encoder_layers,
                num_decoder_layers=c.n_decoder_layers, dim_feedforward=c.d_ff, dropout=c.dropout,
                batch_first=True, norm_first=True)  # every argument by name: the positional order is a trap
        self.head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        self.head.weight = self.embed.weight  # tied, as in the GPT
        nn.init.normal_(self.embed.weight, std=0.02)
        for table in (self.src_pos, self.tgt_pos):
            nn.init.normal_(table.weight, std=0.02)

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    def _check(self, ids: torch.Tensor, longest: int, what: str) -> None:
        check_token_ids(ids, self.config.vocab_size)
        if ids.size(1) > longest:
            raise ValueError(f"{what} of {ids.size(1)} tokens is longer than the model's {longest} positions "
                             f"(Seq2SeqConfig.max_{'source' if what == 'a source' else 'target'}).")

    def embed_source(self, src: torch.Tensor) -> torch.Tensor:
        self._check(src, self.config.max_source, "a source")
        return self.embed(src) + self.src_pos(torch.arange(src.size(1), device=src.device))  # (B, S, C)

    def embed_target(self, tgt: torch.Tensor) -> torch.Tensor:
        self._check(tgt, self.config.max_target, "a target")
        return self.embed(tgt) + self.tgt_pos(torch.arange(tgt.size(1), device=tgt.device))  # (B, T, C)

    def forward(self, src: torch.Tensor, tgt: torch.Tensor, targets: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Teacher forcing: the decoder reads the true target ``tgt`` (B, T) and predicts it shifted by one."""
        pad = self.config.pad_id
        if targets is not None and (not isinstance(targets, torch.Tensor) or targets.shape != tgt.shape):
            raise ValueError(f"targets must be a tensor of tgt's shape {tuple(tgt.shape)} (tgt shifted by one).")
        h = self.transformer(
            src=self.embed_source(src), tgt=self.embed_target(tgt),
            tgt_mask=causal_tgt_mask(tgt.size(1), tgt.device), tgt_is_causal=True,  # no peeking at later targets
            src_key_padding_mask=src == pad, tgt_key_padding_mask=tgt == pad,
            memory_key_padding_mask=src == pad)  # (B, T, C): every tensor batch first, every mask by name
        logits = self.head(h)  # (B, T, vocab)
        return logits, next_token_loss(logits, targets)

    def encode(self, src: torch.Tensor) -> torch.Tensor:
        """The encoder's output, the memory every decoding step reads: (B, S, C)."""
        return self.transformer.encoder(self.embed_source(src), src_key_padding_mask=src == self.config.pad_id)

    def decode(self, tgt: torch.Tensor, memory: torch.Tensor, src_padding: torch.Tensor) -> torch.Tensor:
        """Next-token logits (B, T, vocab) for the target so far ``tgt`` (B, T), reading ``memory`` (B, S, C)."""
        h = self.transformer.decoder(self.embed_target(tgt), memory,
                                     tgt_mask=causal_tgt_mask(tgt.size(1), tgt.device), tgt_is_causal=True,
                                     memory_key_padding_mask=src_padding)
        return self.head(h)

    def num_params(self) -> int:
        return num_params(self)


class Packed(nn.Module):
    """``model`` as the book's training loop calls a model, ``packed(x, y) -> (logits, loss)``: ``x`` (B, S + T) is the
    source padded to S = ``max_source`` followed by the decoder's input (:func:`lmbook.text.reorder.encode_pairs`)."""

    def __init__(self, model: Seq2Seq):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None):
        S = self.model.config.max_source
        if x.dim() != 2 or x.size(1) <= S:
            raise ValueError(f"x must be (B, S + T) with the source in its first S = {S} columns, not "
                             f"{tuple(x.shape)}.")
        return self.model(x[:, :S], x[:, S:], y)


# --- decoding ----------------------------------------------------------------------------------
def _start(model: Seq2Seq, src: torch.Tensor, max_len: int | None) -> tuple[torch.Tensor, torch.Tensor, int]:
    if not isinstance(model, Seq2Seq):
        raise TypeError(f"model must be a Seq2Seq, not {type(model).__name__}.")
    limit = model.config.max_target
    check_int("max_len", max_len, 1, allow_none=True)
    if max_len is not None and max_len > limit:
        raise ValueError(f"max_len={max_len} is longer than the model's {limit} target positions.")
    src_padding = src == model.config.pad_id
    return model.encode(src), src_padding, max_len or limit


def _trim(row: list[int], eos: int) -> list[int]:
    return row[: row.index(eos)] if eos in row else row


@torch.no_grad()
def greedy_decode(model: Seq2Seq, src: torch.Tensor, max_len: int | None = None) -> list[list[int]]:
    """The most likely token at every step, for each source of ``src`` (B, S): the target ids, without the start
    and end tokens. Stops at the end token or after ``max_len`` tokens (the model's longest target by default)."""
    was_training = model.training
    model.eval()
    memory, src_padding, max_len = _start(model, src, max_len)
    c = model.config
    out = torch.full((src.size(0), 1), c.bos_id, dtype=torch.long, device=src.device)  # (B, 1)
    done = torch.zeros(src.size(0), dtype=torch.bool, device=src.device)
    while out.size(1) < max_len + 1 and not done.all():
        nxt = model.decode(out, memory, src_padding)[:, -1].argmax(-1)  # (B,)
        nxt = nxt.masked_fill(done, c.pad_id)
        out = torch.cat([out, nxt[:, None]], dim=1)  # the decoder reads its own choice at the next step
        done |= nxt == c.eos_id
    model.train(was_training)
    return [_trim(row[1:], c.eos_id) for row in out.tolist()]


@torch.no_grad()
def beam_decode(model: Seq2Seq, src: torch.Tensor, num_beams: int = 4, max_len: int | None = None,
                length_penalty: float = 1.0) -> list[list[int]]:
    """Beam search for each source of ``src`` (B, S): the ``num_beams`` most likely partial targets are kept at every
    step; a beam that has ended goes on with padding at no cost. The best by ``sum log p / length **
    length_penalty`` is returned, as in :func:`greedy_decode`; ``num_beams=1`` is greedy decoding."""
    check_int("num_beams", num_beams, 1)
    check_number("length_penalty", length_penalty, "a finite number", math.isfinite)
    was_training = model.training
    model.eval()
    memory, src_padding, max_len = _start(model, src, max_len)
    c, N, nb = model.config, src.size(0), num_beams
    memory, src_padding = memory.repeat_interleave(nb, 0), src_padding.repeat_interleave(nb, 0)  # (N * nb, S, ...)
    seqs = torch.full((N * nb, 1), c.bos_id, dtype=torch.long, device=src.device)  # (N * nb, t)
    scores = torch.zeros(N, nb, device=src.device)
    scores[:, 1:] = NEG  # the first step expands beam 0 only
    finished = torch.zeros(N, nb, dtype=torch.bool, device=src.device)
    lengths = torch.zeros(N, nb, device=src.device)
    rows = torch.arange(N, device=src.device)[:, None] * nb  # (N, 1): each source's first row
    while seqs.size(1) < max_len + 1 and not finished.all():
        logp = F.log_softmax(model.decode(seqs, memory, src_padding)[:, -1].float(), dim=-1)  # (N * nb, V)
        V = logp.size(-1)
        logp = logp.view(N, nb, V)
        ended = torch.full_like(logp, float("-inf"))
        ended[..., c.pad_id] = 0.0  # an ended beam has one continuation, padding, which costs nothing
        logp = torch.where(finished[..., None], ended, logp)
        top, index = (scores[..., None] + logp).view(N, nb * V).topk(nb, dim=-1)  # (N, nb) best first
        origin, token = index // V, index % V  # the beam each survivor extends, with which token
        seqs = torch.cat([seqs[(rows + origin).view(-1)], token.view(-1, 1)], dim=1)
        was_finished = finished.gather(1, origin)
        lengths = lengths.gather(1, origin) + (~was_finished).float()
        finished, scores = was_finished | (token == c.eos_id), top
    best = (scores / lengths.clamp(min=1) ** length_penalty).argmax(dim=1)  # (N,)
    chosen = seqs.view(N, nb, -1)[torch.arange(N, device=src.device), best]  # (N, t)
    model.train(was_training)
    return [_trim(row[1:], c.eos_id) for row in chosen.tolist()]
