"""A Llama-style decoder (chapter 8): the GPT of chapter 3 with today's open models' choices, each switchable.

- **RoPE** (Su et al., 2021): no position table; queries and keys are rotated by an angle proportional to their
  position, so a query-key score depends on the positions' difference only. Dimension ``i`` of the first half of
  a head is paired with dimension ``i`` of the second half (``transformers``' ``rotate_half``), rotating by
  ``p · θ^(-2i/d)``; :func:`apply_rope` writes it out, :func:`rope_as_complex` computes the same as a
  multiplication by ``e^{i p ω}``.
- **RMSNorm** (Zhang and Sennrich, 2019): ``x / sqrt(mean(x²) + eps) · g``, no mean subtracted, no bias.
- **SwiGLU** (Shazeer, 2020): ``down(silu(gate(x)) · up(x))`` instead of ``proj(gelu(fc(x)))``.
- **Grouped-query attention** (Ainslie et al., 2023): ``n_kv_head`` key/value heads shared by groups of query
  heads (1: multi-query; ``n_head``: multi-head); the cache stores ``n_kv_head`` heads.
- No biases, and input and output embeddings tied or not.

``position``, ``norm``, ``mlp`` and ``bias`` switch each choice back to GPT-2's (learned positions, LayerNorm,
GELU, biases), so that chapter 8 can add them one at a time. The layer names are ``transformers``'
``LlamaForCausalLM``'s (``embed_tokens``, ``layers.i.self_attn.q_proj``, ...): :mod:`lmbook.models.hf`
converts the default model both ways. The model meets :class:`lmbook.interface.LanguageModel`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import Presets
from ..interface import check_targets, check_token_ids, next_token_loss, num_params
from .gpt import KVCache, check_fits, init_gpt2, padded_positions_and_mask

POSITIONS, NORMS, MLPS = ("rope", "learned"), ("rms", "layer"), ("swiglu", "gelu")


@dataclass
class LlamaConfig(Presets):
    """Shape and choices of a :class:`Llama`. ``head_dim`` defaults to ``n_embd // n_head``, ``n_kv_head`` to
    ``n_head`` (multi-head attention) and ``intermediate_size`` to about ``8/3 · n_embd`` (a multiple of 8), the
    width at which SwiGLU's three matrices hold as many weights as GPT-2's two of ``4 · n_embd``."""

    vocab_size: int = 65
    block_size: int = 256  # the context length
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int | None = None
    n_embd: int = 128
    head_dim: int | None = None
    intermediate_size: int | None = None
    rope_theta: float = 10000.0
    rope_scale: float = 1.0  # positions divided by it before rotating (position interpolation, Chen et al., 2023)
    rms_norm_eps: float = 1e-6
    tie_embeddings: bool = True
    dropout: float = 0.0
    position: str = "rope"  # or "learned": GPT-2's table
    norm: str = "rms"  # or "layer": LayerNorm
    mlp: str = "swiglu"  # or "gelu": GPT-2's MLP of 4 · n_embd
    bias: bool = False  # biases in every linear layer (and LayerNorm), as GPT-2 has them

    def __post_init__(self) -> None:
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.head_dim is None and isinstance(self.n_head, int) and self.n_head > 0:
            self.head_dim = self.n_embd // self.n_head
        if self.intermediate_size is None and isinstance(self.n_embd, int):
            self.intermediate_size = 8 * math.ceil(8 * self.n_embd / 3 / 8)
        self.check_positive("vocab_size", "block_size", "n_layer", "n_head", "n_kv_head", "n_embd", "head_dim",
                            "intermediate_size")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"n_kv_head={self.n_kv_head} must divide n_head={self.n_head}: each key/value head "
                             "serves a whole group of query heads.")
        if self.position == "rope" and self.head_dim % 2:
            raise ValueError(f"RoPE rotates pairs of dimensions: head_dim={self.head_dim} must be even.")
        for name, allowed in (("position", POSITIONS), ("norm", NORMS), ("mlp", MLPS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, not {getattr(self, name)!r}.")
        for name in ("tie_embeddings", "bias"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"LlamaConfig.{name} must be True or False, not {getattr(self, name)!r}.")
        for name in ("rope_theta", "rope_scale", "rms_norm_eps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ValueError(f"LlamaConfig.{name} must be a positive number, not {value!r}.")
        self.check_rate("dropout")

    def kv_bytes_per_token(self, bytes_per_value: int = 4) -> int:
        """Bytes the key/value cache holds for each token: keys and values of ``n_kv_head`` heads in every layer.
        Multi-query attention (one kv head) keeps ``n_head`` times less than multi-head attention."""
        return 2 * self.n_layer * self.n_kv_head * self.head_dim * bytes_per_value


LlamaConfig.PRESETS = {
    "tiny": dict(vocab_size=65, block_size=32, n_layer=2, n_head=4, n_kv_head=2, n_embd=32),
}


# --- RoPE ------------------------------------------------------------------------------
def rope_frequencies(head_dim: int, theta: float = 10000.0) -> torch.Tensor:
    """ω_i = θ^(-2i/d) for i = 0 .. d/2 - 1: the angle per position of each pair of dimensions (d/2,)."""
    return 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of every position's angles, each (..., d): the d/2 angles twice, for the two halves."""
    angles = positions.float()[..., None] * rope_frequencies(head_dim, theta).to(positions.device)  # (..., d/2)
    angles = torch.cat([angles, angles], dim=-1)  # (..., d)
    return angles.cos(), angles.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) over the two halves of the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each pair (x_i, x_{i+d/2}) of ``x`` (..., T, d) by its angle: x·cos + rotate_half(x)·sin."""
    return x * cos + rotate_half(x) * sin


def rope_as_complex(x: torch.Tensor, positions: torch.Tensor, theta: float = 10000.0) -> torch.Tensor:
    """The same rotation as :func:`apply_rope`, written as complex multiplication: the pair (x_i, x_{i+d/2}) is the
    number x_i + i·x_{i+d/2}, multiplied by e^{i·p·ω_i}. ``x`` (..., T, d), ``positions`` (T,)."""
    d = x.size(-1)
    z = torch.complex(x[..., : d // 2].float(), x[..., d // 2 :].float())  # (..., T, d/2)
    turn = torch.polar(torch.ones(()), positions.float()[:, None] * rope_frequencies(d, theta))  # (T, d/2)
    z = z * turn
    return torch.cat([z.real, z.imag], dim=-1).to(x.dtype)


# --- The block -------------------------------------------------------------------------
class RMSNorm(nn.Module):
    """x / sqrt(mean(x²) + eps) · g, computed in float32 and cast back before the gain (as ``transformers``)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def make_norm(config: LlamaConfig) -> nn.Module:
    if config.norm == "rms":
        return RMSNorm(config.n_embd, config.rms_norm_eps)
    return nn.LayerNorm(config.n_embd, eps=1e-5, bias=config.bias)


def grouped_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
                      causal: bool = False, dropout: float = 0.0) -> torch.Tensor:
    """Attention of ``q`` (B, nh, T, hd) over ``k``, ``v`` (B, nkv, S, hd), query head j reading key/value head
    j // (nh / nkv), without copying the keys and values once per query head: one query a head (a decoding step)
    stacks a group's queries as rows against its one key/value head, so a step reads nkv heads of the cache,
    not nh; longer queries use ``scaled_dot_product_attention``'s ``enable_gqa``. ``mask`` (B, 1, T, S)."""
    B, nh, T, hd = q.shape
    nkv = k.size(1)
    if T == 1 and not causal:
        y = F.scaled_dot_product_attention(q.view(B, nkv, nh // nkv, hd), k, v, attn_mask=mask, dropout_p=dropout)
        return y.view(B, nh, 1, hd)  # (B, nkv, group, hd): the group's queries side by side
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, dropout_p=dropout,
                                          enable_gqa=nkv != nh)


class Attention(nn.Module):
    """Causal self-attention with ``n_kv_head`` key/value heads (grouped-query) and RoPE on queries and keys."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        c = config
        self.n_head, self.n_kv_head, self.head_dim, self.rope = c.n_head, c.n_kv_head, c.head_dim, c.position == "rope"
        self.theta, self.scale, self.dropout = c.rope_theta, c.rope_scale, c.dropout
        self.q_proj = nn.Linear(c.n_embd, c.n_head * c.head_dim, bias=c.bias)
        self.k_proj = nn.Linear(c.n_embd, c.n_kv_head * c.head_dim, bias=c.bias)
        self.v_proj = nn.Linear(c.n_embd, c.n_kv_head * c.head_dim, bias=c.bias)
        self.o_proj = nn.Linear(c.n_head * c.head_dim, c.n_embd, bias=c.bias)
        self.o_proj.is_residual_projection = True

    def forward(self, x: torch.Tensor, positions: torch.Tensor, cache: KVCache | None = None, layer: int = 0,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """``positions`` (T,) or (B, T); ``mask`` (B, 1, T, S) True where a query may see a key, else causal."""
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        k = self.k_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, nkv, T, hd)
        v = self.v_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, nkv, T, hd)
        if self.rope:
            angles_at = positions if self.scale == 1.0 else positions / self.scale  # interpolated positions
            cos, sin = rope_cos_sin(angles_at, self.head_dim, self.theta)  # (T, hd) or (B, T, hd)
            if cos.dim() == 3:
                cos, sin = cos[:, None], sin[:, None]  # (B, 1, T, hd): one row of positions per sequence
            q, k = apply_rope(q, cos, sin).to(q.dtype), apply_rope(k, cos, sin).to(k.dtype)
        causal = mask is None
        if cache is not None:
            start = cache.pos
            k, v = cache.update(layer, k, v)  # (B, nkv, start+T, hd): the cache keeps n_kv_head heads
            if mask is None and T == 1:
                causal = False
            elif mask is None and start > 0:
                mask = torch.ones(T, start + T, dtype=torch.bool, device=x.device).tril(diagonal=start)
                causal = False
        y = grouped_attention(q, k, v, mask, causal, self.dropout if self.training else 0.0)  # (B, nh, T, hd)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))


class MLP(nn.Module):
    """SwiGLU, down(silu(gate(x)) · up(x)); or GPT-2's proj(gelu(fc(x))) of width 4 · n_embd."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        c, self.swiglu = config, config.mlp == "swiglu"
        width = c.intermediate_size if self.swiglu else 4 * c.n_embd
        if self.swiglu:
            self.gate_proj = nn.Linear(c.n_embd, width, bias=c.bias)
        self.up_proj = nn.Linear(c.n_embd, width, bias=c.bias)
        self.down_proj = nn.Linear(width, c.n_embd, bias=c.bias)
        self.down_proj.is_residual_projection = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.swiglu:
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        return self.down_proj(F.gelu(self.up_proj(x), approximate="tanh"))


class Block(nn.Module):
    """x + attn(norm(x)), then x + mlp(norm(x)): pre-norm, as GPT-2 and Llama both do it."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.input_layernorm = make_norm(config)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = make_norm(config)
        self.mlp = MLP(config)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x, positions, cache=None, layer: int = 0, mask=None) -> torch.Tensor:
        x = x + self.drop(self.self_attn(self.input_layernorm(x), positions, cache, layer, mask))
        return x + self.drop(self.mlp(self.post_attention_layernorm(x)))


class Llama(nn.Module):
    """A Llama-style language model: token ids (B, T) -> next-token logits (B, T, vocab), called as the GPT is
    (targets, ``cache=model.make_cache()``, a left-padded ``attention_mask`` (B, S))."""

    reads_padding = True

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.n_embd)
        self.embed_positions = nn.Embedding(config.block_size, config.n_embd) if config.position == "learned" else None
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm = make_norm(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        init_gpt2(module, self.config.n_layer)  # as the book's GPT

    @property
    def context_length(self) -> int:
        return self.config.block_size

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    def make_cache(self, batch_size: int | None = None) -> KVCache:
        """An empty key/value cache; it stores ``n_kv_head`` heads a layer (the saving of grouped-query attention)."""
        return KVCache(self.config.n_layer, self.config.block_size)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: KVCache | None = None,
                attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        check_targets(targets, idx, self.config.vocab_size)
        check_token_ids(idx, self.config.vocab_size)
        start = cache.pos if cache is not None else 0
        check_fits(idx, start, self.config.block_size, cache is not None)
        T = idx.size(1)
        mask = None
        if attention_mask is None:
            positions = torch.arange(start, start + T, device=idx.device)  # (T,)
        else:
            positions, mask = padded_positions_and_mask(attention_mask, start, T)  # (B, T), (B, 1, T, S)
        x = self.embed_tokens(idx)  # (B, T, C)
        if self.embed_positions is not None:
            x = x + self.embed_positions(positions)
        for layer, block in enumerate(self.layers):
            x = block(x, positions, cache, layer, mask)  # (B, T, C)
        if cache is not None:
            cache.advance(T)
        logits = self.lm_head(self.norm(x))  # (B, T, vocab)
        loss = next_token_loss(logits, targets)
        return logits, loss

    def num_params(self) -> int:
        """Parameters by the book's one convention (:func:`lmbook.interface.num_params`)."""
        return num_params(self)
