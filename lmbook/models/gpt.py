"""The decoder-only Transformer (GPT) that chapters 3 to 7 train, fine-tune and decode.

GPT-2's architecture: learned positions, pre-LayerNorm blocks, input and output embeddings tied,
GELU, GPT-2's initialisation, and attention through the fused ``scaled_dot_product_attention`` with
the causal mask; a key/value cache makes decoding read one new token a step. The layer names are
GPT-2's, so :mod:`lmbook.models.hf` maps them one to one. Chapter 3's deliberate variants (other position
tables, post-LN blocks) are in :mod:`lmbook.models.variants`, chapter 4's bidirectional encoder in
:mod:`lmbook.models.mlm`; they swap parts of this model rather than add branches to it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import Presets
from ..interface import check_bool, check_number, check_targets, check_token_ids, next_token_loss, num_params

PRESETS: dict[str, dict] = {
    # For unit tests and quick experiments: runs in milliseconds on a CPU.
    "tiny": dict(vocab_size=65, block_size=32, n_layer=2, n_head=2, n_embd=32, dropout=0.0),
    # The shape of GPT-2 small (124M parameters).
    "gpt2": dict(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768, dropout=0.0),
}


@dataclass
class GPTConfig(Presets):
    """Shape of a GPT. ``GPTConfig.preset(name, **overrides)`` gives the named ones; a chapter's model
    shapes live with its runs (:mod:`lmbook.runs`)."""

    vocab_size: int = 65
    block_size: int = 256  # the context length: the most positions the model can see
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 384
    dropout: float = 0.0
    bias: bool = True  # biases in Linear and LayerNorm, as GPT-2 has them
    layer_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        self.check_positive("vocab_size", "block_size", "n_layer", "n_head", "n_embd")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}.")
        self.check_rate("dropout")
        check_number("GPTConfig.layer_norm_eps", self.layer_norm_eps, "a finite number > 0", lambda e: 0 < e < math.inf)
        check_bool("GPTConfig.bias", self.bias)


GPTConfig.PRESETS = PRESETS


class KVCache:
    """Keys and values of all layers, so each decoding step processes only the new tokens.

    Allocated on first use with the shape, dtype and device of the first keys it
    sees; ``pos`` counts the positions already stored (chapter 5 measures the saving). It meets
    :class:`lmbook.interface.Cache`: beam search reorders its rows, speculative decoding rolls it back.
    """

    can_rollback = True

    def __init__(self, n_layer: int, max_len: int):
        self.n_layer, self.max_len = n_layer, max_len
        self.k: torch.Tensor | None = None  # (L, B, nh, max_len, hs)
        self.v: torch.Tensor | None = None
        self.pos = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this step's ``k, v`` (B, nh, T, hs) for ``layer``; return all keys and values so far."""
        B, nh, T, hs = k.shape
        if self.k is None:
            self.k = k.new_zeros(self.n_layer, B, nh, self.max_len, hs)
            self.v = v.new_zeros(self.n_layer, B, nh, self.max_len, hs)
        end = self.pos + T
        self.k[layer, :, :, self.pos : end] = k
        self.v[layer, :, :, self.pos : end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]  # (B, nh, pos+T, hs)

    def advance(self, n: int) -> None:
        self.pos += n

    def reset(self) -> None:
        self.pos = 0

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep the rows ``rows`` (N,) of every layer's keys and values, in that order."""
        if self.k is not None:
            self.k, self.v = self.k[:, rows], self.v[:, rows]  # (L, N, nh, max_len, hs)

    def rollback(self, n: int) -> None:
        """Forget the last ``n`` positions: the next call writes over them."""
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= self.pos:
            raise ValueError(f"can roll back 0 to {self.pos} positions (those stored), not {n!r}.")
        self.pos -= n


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention with the causal mask (chapter 3 writes it out step by step)."""

    is_causal = True  # chapter 4's encoder turns it off: every token then sees both sides

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.c_proj.is_residual_projection = True
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """``mask`` (B, 1, T, S), True where a query may see a key, replaces the causal mask (left-padded batches)."""
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)  # each (B, T, C)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        causal = self.is_causal and mask is None
        if cache is not None:
            start = cache.pos
            k, v = cache.update(layer, k, v)  # (B, nh, start+T, hs)
            if mask is None and T == 1:
                causal = False  # one new query may look at every stored key
            elif mask is None and start > 0:
                # query i sits at position start+i and may see keys 0..start+i
                mask = torch.ones(T, start + T, dtype=torch.bool, device=x.device).tril(diagonal=start)
                causal = False
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal, dropout_p=self.dropout if self.training else 0.0
        )  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # merge the heads: (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """The position-wise feed-forward block: C -> 4C -> GELU -> C."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2's GELU
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.c_proj.is_residual_projection = True
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """One decoder block, pre-LN as in GPT-2: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, layer, mask)  # the residual stream itself is never normalised
        return x + self.mlp(self.ln_2(x))


class PositionTable(nn.Embedding):
    """GPT-2's learned position table: row ``p`` is added to whichever token stands at position ``p``."""

    def __init__(self, config: GPTConfig):
        super().__init__(config.block_size, config.n_embd)

    def forward(self, idx: torch.Tensor, start: int = 0, positions: torch.Tensor | None = None) -> torch.Tensor:
        """The rows for the positions ``start .. start+T-1`` of ``idx`` (B, T): (T, C); or for ``positions`` (B, T)."""
        if positions is not None:
            return super().forward(positions)  # (B, T, C)
        return super().forward(torch.arange(start, start + idx.size(1), device=idx.device))


class GPT(nn.Module):
    """A GPT language model: token ids (B, T) -> next-token logits (B, T, vocab).

    ``model(idx)`` returns ``(logits, None)``; ``model(idx, targets)`` returns
    ``(logits, loss)`` with the mean cross-entropy over targets that are not -1.
    With ``cache=model.make_cache()`` each call processes only new tokens. A batch of prompts of
    different lengths is left-padded, with ``attention_mask`` (B, S) 0 on the padding and 1 elsewhere,
    covering the cached positions and the new ones (S = cached + T), as ``transformers`` takes it.
    """

    block_class: type[nn.Module] = Block  # the parts chapter 3's variants swap (lmbook.models.variants)
    position_class: type[nn.Module] = PositionTable
    reads_padding = True  # forward takes an attention_mask: left-padded prompts decode as one batch

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)  # token embeddings
        self.wpe = self.position_class(config)  # position embeddings
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList(self.block_class(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        init_gpt2(module, self.config.n_layer)

    @property
    def context_length(self) -> int:
        return self.config.block_size

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    def make_cache(self, batch_size: int | None = None) -> KVCache:
        """An empty key/value cache for decoding (the batch size is taken from the first call)."""
        return KVCache(self.config.n_layer, self.config.block_size)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: KVCache | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        check_targets(targets, idx, self.config.vocab_size)  # before the cache moves
        logits = self.lm_head(self.features(idx, cache, attention_mask))  # (B, T, vocab)
        loss = next_token_loss(logits, targets)
        return logits, loss

    def features(self, idx: torch.Tensor, cache: KVCache | None = None,
                 attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The final hidden states (B, T, C), after the last LayerNorm: what the LM head (or a task head) reads."""
        start = cache.pos if cache is not None else 0
        check_token_ids(idx, self.config.vocab_size)
        check_fits(idx, start, self.config.block_size, cache is not None)
        if attention_mask is None:
            x = self.drop(self.wte(idx) + self.wpe(idx, start))  # (B, T, C)
        else:
            positions, mask = padded_positions_and_mask(attention_mask, start, idx.size(1))
            x = self.drop(self.wte(idx) + self.wpe(idx, start, positions))  # (B, T, C)
        for layer, block in enumerate(self.h):
            if attention_mask is None:  # (B, T, C); identical calls compile once
                x = block(x) if cache is None else block(x, cache, layer)
            else:
                x = block(x, cache, layer, mask)
        if cache is not None:
            cache.advance(idx.size(1))
        return self.ln_f(x)  # (B, T, C)

    def num_params(self) -> int:
        """Parameters by the book's one convention (:func:`lmbook.interface.num_params`)."""
        return num_params(self)


def init_gpt2(module: nn.Module, n_layer: int) -> None:
    """GPT-2's initialisation of one module: N(0, 0.02), residual projections scaled by 1/sqrt(2 * n_layer)
    (chapter 3's GPT and chapter 8's Llama, through ``model.apply``)."""
    if isinstance(module, nn.Linear):
        std = 0.02
        if getattr(module, "is_residual_projection", False):
            std /= math.sqrt(2 * n_layer)
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)


def padded_positions_and_mask(attention_mask: torch.Tensor, start: int, T: int
                              ) -> tuple[torch.Tensor, torch.Tensor]:
    """For left-padded rows: each token's position among its row's real tokens (B, T), counted from the first
    real token as ``transformers`` counts them, and which keys each query may see (B, 1, T, S).

    A query sees the real keys up to itself, and always itself, so that no row is all masked (no NaN on padding).
    """
    S = attention_mask.size(1)
    if attention_mask.dim() != 2 or S != start + T:
        raise ValueError(f"attention_mask covers {S} positions, but the cache holds {start} and idx brings {T}.")
    real = attention_mask.bool()  # (B, S)
    positions = (real.long().cumsum(dim=1) - 1).clamp(min=0)[:, start:]  # (B, T)
    keys = torch.arange(S, device=real.device)  # (S,)
    queries = torch.arange(start, S, device=real.device)[:, None]  # (T, 1)
    mask = (keys <= queries) & real[:, None, None, :] | (keys == queries)  # (B, 1, T, S)
    return positions, mask


def check_fits(idx: torch.Tensor, start: int, context: int, cached: bool) -> None:
    """Raise a clear error unless ``idx`` (B, T) fits after ``start`` positions in the ``context``."""
    if start + idx.size(1) > context:
        raise ValueError(
            f"{start + idx.size(1)} positions do not fit in this model's context of {context}: "
            f"keep the last {context - start} tokens (idx[:, -{context - start}:])"
            + (" or start a new cache." if cached else ".")
        )
