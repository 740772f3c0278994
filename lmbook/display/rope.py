"""Chapter 8's figures of rotary positions: one pair of a query's dimensions turned by its position, and the
scores of a rotated query and key, which depend on the positions' difference only.

The rotation is the package's own (:func:`lmbook.models.llama.apply_rope`), so the figures show what the
model computes.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch

from ..models.llama import apply_rope, rope_cos_sin, rope_frequencies


def rotated(x: torch.Tensor, positions: torch.Tensor, theta: float = 10000.0) -> torch.Tensor:
    """``x`` (d,) placed at each of ``positions`` (P,) and rotated as RoPE rotates it: (P, d)."""
    cos, sin = rope_cos_sin(positions, x.numel(), theta)  # (P, d)
    return apply_rope(x.expand(len(positions), -1), cos, sin)


def rope_scores(q: torch.Tensor, k: torch.Tensor, positions: int, theta: float = 10000.0) -> torch.Tensor:
    """The score of ``q`` (d,) at position m against ``k`` (d,) at position n, for m, n < ``positions``:
    (positions, positions). Every diagonal m - n = constant holds one value."""
    p = torch.arange(positions)
    return rotated(q, p, theta) @ rotated(k, p, theta).T  # (P, P)


def diagonal_spread(scores: torch.Tensor) -> float:
    """The largest difference between two scores on the same diagonal (same m - n): zero up to rounding."""
    P = scores.size(0)
    return max(float(scores.diagonal(offset).max() - scores.diagonal(offset).min()) for offset in range(-P + 1, P))


def draw_rotation(head_dim: int = 8, positions: int = 6, theta: float = 10000.0, seed: int = 0, axes=None):
    """A query and a key of ``head_dim`` dimensions at positions 0 to ``positions`` - 1, drawn in the plane of
    their first pair of dimensions (the fastest turning, ω_0 = 1 radian a position) and their last pair (the
    slowest). Each pair keeps its length: only the angle carries the position."""
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(10, 4.6))
    generator = torch.Generator().manual_seed(seed)
    q, k = torch.randn(head_dim, generator=generator), torch.randn(head_dim, generator=generator)
    omega = rope_frequencies(head_dim, theta)
    half = head_dim // 2
    p = torch.arange(positions)
    rq, rk = rotated(q, p, theta), rotated(k, p, theta)
    for ax, i in zip(axes, (0, half - 1)):
        for name, vectors, colour in (("query", rq, "C0"), ("key", rk, "C1")):
            for m in range(positions):
                x, y = float(vectors[m, i]), float(vectors[m, i + half])
                ax.annotate("", (x, y), (0, 0), arrowprops=dict(arrowstyle="->", color=colour,
                                                               alpha=0.25 + 0.75 * (m + 1) / positions))
                ax.text(x * 1.08, y * 1.08, f"{name[0]}{m}", color=colour, fontsize=7, ha="center", va="center")
        radius = 1.25 * float(max(rq[:, [i, i + half]].norm(dim=1).max(), rk[:, [i, i + half]].norm(dim=1).max()))
        ax.set(xlim=(-radius, radius), ylim=(-radius, radius), aspect="equal",
               title=f"dimensions {i} and {i + half}: {float(omega[i]):.3g} radian a position")
        ax.axhline(0, color="0.8", lw=0.5)
        ax.axvline(0, color="0.8", lw=0.5)
    axes[0].figure.suptitle("a query (q) and a key (k) at positions 0 to {}: the same vectors, turned".format(
        positions - 1), fontsize=10)
    return axes
