"""Chapter 3's deliberate variants of the GPT, each made by swapping one part of :class:`lmbook.models.gpt.GPT`.

- :class:`SinusoidalGPT`: the fixed sinusoidal position table of Vaswani et al. (2017) instead of a learned one;
- :class:`TokenIdPositionGPT`: the position table indexed by token id instead of by position, a MISTAKE
  that leaves the model without any idea of order;
- :class:`PostLNGPT`: LayerNorm after the residual sum (the 2017 Transformer) instead of before each sublayer.

:func:`gpt_class` combines them (and chapter 4's bidirectional :class:`lmbook.models.mlm.Encoder`) by name.
Only the plain GPT converts to ``transformers``' GPT-2.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .gpt import GPT, Block, GPTConfig, PositionTable
from .mlm import Encoder

POSITIONS = ("learned", "sinusoidal", "token-id")
NORMS = ("pre", "post")


def sinusoidal_table(n_positions: int, dim: int) -> torch.Tensor:
    """Vaswani et al. (2017): PE[p, 2i] = sin(p / 10000^(2i/dim)), PE[p, 2i+1] = cos(the same). (n_positions, dim)"""
    position = torch.arange(n_positions, dtype=torch.float32)[:, None]  # (P, 1)
    frequency = torch.pow(10000.0, -torch.arange(0, dim, 2, dtype=torch.float32) / dim)  # (dim/2,)
    table = torch.zeros(n_positions, dim)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency[: dim // 2])
    return table


class SinusoidalGPT(GPT):
    """The GPT with a fixed sinusoidal position table, scaled to the spread of the token embeddings."""

    def __init__(self, config: GPTConfig):
        super().__init__(config)
        table = sinusoidal_table(config.block_size, config.n_embd)
        with torch.no_grad():
            self.wpe.weight.copy_(table * 0.02 / table.std())
        self.wpe.weight.requires_grad_(False)  # fixed, not learned


class TokenIdTable(PositionTable):
    """A position table looked up by token id: the same row for a token wherever it stands (the MISTAKE)."""

    def __init__(self, config: GPTConfig):
        nn.Embedding.__init__(self, max(config.block_size, config.vocab_size), config.n_embd)

    def forward(self, idx: torch.Tensor, start: int = 0, positions: torch.Tensor | None = None) -> torch.Tensor:
        return nn.Embedding.forward(self, idx)  # (B, T, C): indexed by token ids, never by positions


class TokenIdPositionGPT(GPT):
    """The GPT whose position table is indexed by token id: it cannot tell one order of its context from another."""

    position_class = TokenIdTable


class PostLNBlock(Block):
    """The 2017 Transformer's block: ln_1(x + attn(x)), then ln_2(x + mlp(x)); the residual stream is normalised."""

    def forward(self, x: torch.Tensor, cache=None, layer: int = 0, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.ln_1(x + self.attn(x, cache, layer, mask))
        return self.ln_2(x + self.mlp(x))


class PostLNGPT(GPT):
    """The GPT with post-LN blocks; they end with a LayerNorm already, so there is no final one."""

    block_class = PostLNBlock

    def __init__(self, config: GPTConfig):
        super().__init__(config)
        self.ln_f = nn.Identity()


def gpt_class(position: str = "learned", norm: str = "pre", causal: bool = True) -> type[GPT]:
    """The model class with the chosen position table, block and attention (the defaults give :class:`GPT`)."""
    if position not in POSITIONS:
        raise ValueError(f"position must be one of {POSITIONS}, not {position!r}.")
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, not {norm!r}.")
    parts = [{"sinusoidal": SinusoidalGPT, "token-id": TokenIdPositionGPT}.get(position)]
    parts += [PostLNGPT if norm == "post" else None, None if causal else Encoder]
    parts = [p for p in parts if p is not None]
    if not parts:
        return GPT
    if len(parts) == 1:
        return parts[0]
    return type("".join(p.__name__.removesuffix("GPT") for p in parts) + "GPT", tuple(parts), {})
