"""The decoder-only Transformer (GPT) that chapters 3 to 6 train, fine-tune and decode.

Pre-LayerNorm blocks, learned positions, input and output embeddings tied, fused
attention through ``scaled_dot_product_attention`` with the causal mask, GPT-2's
initialisation and GELU, and a key/value cache for incremental decoding. The
layer names follow GPT-2 closely enough that :mod:`lmbook.hf` maps them one to one.

Chapter 3 varies two choices through :class:`GPTConfig`: ``position`` (a learned
table, the fixed sinusoidal one, or the deliberate mistake of indexing the table by
token id) and ``norm`` (LayerNorm before each sublayer, or after the residual sum).
The defaults are GPT-2's; :mod:`lmbook.attention` writes the attention out step by step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import Presets

PRESETS: dict[str, dict] = {
    # For unit tests and quick experiments: runs in milliseconds on a CPU.
    "tiny": dict(vocab_size=65, block_size=32, n_layer=2, n_head=2, n_embd=32, dropout=0.0),
    # The character-level Shakespeare model of chapter 3.
    "shakespeare-char": dict(vocab_size=65, block_size=256, n_layer=6, n_head=6, n_embd=384, dropout=0.2),
    # The shape of GPT-2 small (124M parameters).
    "gpt2": dict(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768, dropout=0.0),
}


@dataclass
class GPTConfig(Presets):
    """Shape of a GPT. ``GPTConfig.preset(name, **overrides)`` gives the named ones."""

    vocab_size: int = 65
    block_size: int = 256  # the context length: the most positions the model can see
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 384
    dropout: float = 0.0
    bias: bool = True  # biases in Linear and LayerNorm, as GPT-2 has them
    layer_norm_eps: float = 1e-5
    causal: bool = True  # False gives a bidirectional encoder (chapter 4's masked language model)
    position: str = "learned"  # "learned", "sinusoidal" (fixed), or "token-id": chapter 3's deliberate MISTAKE
    norm: str = "pre"  # LayerNorm before each sublayer ("pre", GPT-2) or after the residual sum ("post", 2017)

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}.")
        if self.position not in POSITIONS:
            raise ValueError(f"position must be one of {POSITIONS}, not {self.position!r}.")
        if self.norm not in ("pre", "post"):
            raise ValueError(f"norm must be 'pre' or 'post', not {self.norm!r}.")

    def check_gpt2(self) -> None:
        """Raise unless this is GPT-2's architecture (causal, learned positions, pre-LN), which ``lmbook.hf`` converts."""
        changed = [f"{k}={getattr(self, k)!r}" for k, v in GPT2_ARCHITECTURE.items() if getattr(self, k) != v]
        if changed:
            raise ValueError(
                f"GPT-2 has no twin for a GPT with {', '.join(changed)}: only the defaults "
                f"({', '.join(f'{k}={v!r}' for k, v in GPT2_ARCHITECTURE.items())}) convert to GPT2LMHeadModel."
            )


POSITIONS = ("learned", "sinusoidal", "token-id")
GPT2_ARCHITECTURE = dict(causal=True, position="learned", norm="pre")


GPTConfig.PRESETS = PRESETS


def sinusoidal_table(n_positions: int, dim: int) -> torch.Tensor:
    """Vaswani et al. (2017): PE[p, 2i] = sin(p / 10000^(2i/dim)), PE[p, 2i+1] = cos(the same). (n_positions, dim)"""
    position = torch.arange(n_positions, dtype=torch.float32)[:, None]  # (P, 1)
    frequency = torch.pow(10000.0, -torch.arange(0, dim, 2, dtype=torch.float32) / dim)  # (dim/2,)
    table = torch.zeros(n_positions, dim)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency[: dim // 2])
    return table


class KVCache:
    """Keys and values of all layers, so each decoding step processes only the new tokens.

    Allocated on first use with the shape, dtype and device of the first keys it
    sees; ``pos`` counts the positions already stored (chapter 5 measures the saving).
    """

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


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention with the causal mask (chapter 3 writes it out step by step)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.dropout = config.dropout
        self.causal = config.causal
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.c_proj.is_residual_projection = True
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)  # each (B, T, C)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        mask, causal = None, self.causal
        if cache is not None:
            if not self.causal:
                raise ValueError("A key/value cache only makes sense for a causal model (GPTConfig(causal=True)).")
            start = cache.pos
            k, v = cache.update(layer, k, v)  # (B, nh, start+T, hs)
            if T == 1:
                causal = False  # one new query may look at every stored key
            elif start > 0:
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
    """One decoder block. Pre-LN: x + attn(ln(x)), then x + mlp(ln(x)); post-LN: ln(x + attn(x)), then ln(x + mlp(x))."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.post_norm = config.norm == "post"
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        if self.post_norm:  # the 2017 Transformer: the residual stream itself is normalised
            x = self.ln_1(x + self.attn(x, cache, layer))
            return self.ln_2(x + self.mlp(x))
        x = x + self.attn(self.ln_1(x), cache, layer)  # pre-LN: the residual stream is left alone
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """A GPT language model: token ids (B, T) -> next-token logits (B, T, vocab).

    ``model(idx)`` returns ``(logits, None)``; ``model(idx, targets)`` returns
    ``(logits, loss)`` with the mean cross-entropy over targets that are not -1.
    With ``cache=model.make_cache(B)`` each call processes only new tokens.
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)  # token embeddings
        # one vector per position; the "token-id" mistake needs a row for every token id instead
        rows = max(config.block_size, config.vocab_size) if config.position == "token-id" else config.block_size
        self.wpe = nn.Embedding(rows, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        # post-LN blocks end with a LayerNorm already
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias) if config.norm == "pre" else nn.Identity()
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying
        self.apply(self._init_weights)
        if config.position == "sinusoidal":  # fixed, not learned; scaled to the spread of the token embeddings
            table = sinusoidal_table(config.block_size, config.n_embd)
            self.wpe.weight.data.copy_(table * 0.02 / table.std())
            self.wpe.weight.requires_grad_(False)

    def _init_weights(self, module: nn.Module) -> None:
        """GPT-2's initialisation: N(0, 0.02), residual projections scaled by 1/sqrt(2 * n_layer)."""
        if isinstance(module, nn.Linear):
            std = 0.02
            if getattr(module, "is_residual_projection", False):
                std /= math.sqrt(2 * self.config.n_layer)
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    @property
    def context_length(self) -> int:
        return self.config.block_size

    def make_cache(self, batch_size: int | None = None) -> KVCache:
        """An empty key/value cache for decoding (the batch size is taken from the first call)."""
        return KVCache(self.config.n_layer, self.config.block_size)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: KVCache | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        logits = self.lm_head(self.features(idx, cache))  # (B, T, vocab)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def features(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """The final hidden states (B, T, C), after the last LayerNorm: what the LM head (or a task head) reads."""
        B, T = idx.shape
        start = cache.pos if cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(
                f"{start + T} positions do not fit in this model's context of {self.config.block_size}: "
                f"keep the last {self.config.block_size - start} tokens (idx[:, -{self.config.block_size - start}:])"
                + (" or start a new cache." if cache is not None else ".")
            )
        pos = torch.arange(start, start + T, device=idx.device)  # (T,) positions, never token ids...
        if self.config.position == "token-id":
            pos = idx  # ...except in chapter 3's deliberate mistake: (B, T) token ids index the position table
        x = self.drop(self.wte(idx) + self.wpe(pos))  # (B, T, C)
        for layer, block in enumerate(self.h):
            x = block(x) if cache is None else block(x, cache, layer)  # (B, T, C); identical calls compile once
        if cache is not None:
            cache.advance(T)
        return self.ln_f(x)  # (B, T, C)

    def num_params(self, exclude_positions: bool = True) -> int:
        """Parameters, counting the tied embedding once and (by default) leaving out the position table."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.wpe.weight.numel() if exclude_positions else n

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs per token: 6·N for the weights plus 12·L·T·C for attention scores and mixing."""
        T = seq_len or self.config.block_size
        c = self.config
        return 6 * self.num_params() + 12 * c.n_layer * T * c.n_embd
