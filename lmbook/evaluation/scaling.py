"""Scaling laws (chapter 8): the loss as a function of parameters N and training tokens D, fitted as Hoffmann et
al. (2022) do, and the compute-optimal split of a budget read off the fit.

The law: ``L(N, D) = E + A / N^α + B / D^β``. The fit minimises the Huber loss (δ = 1e-3) between
``log L`` and ``LSE(a - α log N, b - β log D, e)`` (the log of the law, with ``A = e^a``, ``B = e^b``,
``E = e^e``), by L-BFGS from a grid of starting points, keeping the best end point. With training compute
``C ≈ 6 N D``, the law's minimum on the curve of constant C is at
``N* = G (C/6)^(β/(α+β))``, ``D* = (C/6) / N*`` with ``G = (αA / (βB))^(1/(α+β))``.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch

# Hoffmann et al. (2022)'s fitted constants, as secondary sources quote them (Besiroglu et al., 2024)
HOFFMANN = dict(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)


@dataclass(frozen=True)
class ScalingLaw:
    """``L(N, D) = E + A / N^alpha + B / D^beta``; ``objective`` is the fit's summed Huber loss (NaN if not fitted)."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    objective: float = math.nan

    def loss(self, N, D):
        """The law's loss at ``N`` parameters and ``D`` tokens (numbers or tensors)."""
        return self.E + self.A / N**self.alpha + self.B / D**self.beta

    def compute_optimal(self, C: float) -> tuple[float, float]:
        """``(N*, D*)``: the split of ``C`` FLOPs (C = 6 N D) that the law gives the lowest loss."""
        if not C > 0:
            raise ValueError(f"the compute C must be a positive number of FLOPs, not {C!r}.")
        a, b = self.alpha, self.beta
        G = (a * self.A / (b * self.B)) ** (1 / (a + b))
        N = G * (C / 6) ** (b / (a + b))
        return N, (C / 6) / N


def _points(N, D, L) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    N, D, L = (torch.as_tensor(v, dtype=torch.float64).flatten() for v in (N, D, L))
    if not len(N) == len(D) == len(L) or len(N) < 5:
        raise ValueError(f"N, D and L must be as long as each other and hold at least 5 runs (the law has 5 "
                         f"constants), not {len(N)}, {len(D)} and {len(L)}.")
    if not ((N > 0) & (D > 0) & (L > 0)).all() or not torch.isfinite(N * D * L).all():
        raise ValueError("every N, D and L must be a positive finite number (a NaN loss is a failed run: drop it).")
    return N.log(), D.log(), L.log()


def fit_scaling_law(N, D, L, delta: float = 1e-3, starts=None, steps: int = 100) -> ScalingLaw:
    """Fit ``L(N, D)`` to runs of ``N`` parameters trained on ``D`` tokens that reached loss ``L`` (Hoffmann et
    al.'s objective, see the module). ``starts`` is an iterable of ``(a, b, e, alpha, beta)`` starting points
    (by default a small grid); the best end point wins."""
    logN, logD, logL = _points(N, D, L)
    if starts is None:
        starts = itertools.product((0.0, 5.0, 10.0), (0.0, 5.0, 10.0), (-1.0, 0.5), (0.2, 0.5), (0.2, 0.5))
    def huber(theta: torch.Tensor) -> torch.Tensor:
        a, b, e, alpha, beta = theta
        predicted = torch.logsumexp(torch.stack([a - alpha * logN, b - beta * logD, e.expand_as(logN)]), dim=0)
        return torch.nn.functional.huber_loss(predicted, logL, delta=delta, reduction="sum")

    best = None
    for start in starts:
        theta = torch.tensor(start, dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.LBFGS([theta], max_iter=steps, line_search_fn="strong_wolfe")

        def closure():
            optimizer.zero_grad()
            value = huber(theta)
            value.backward()
            return value

        optimizer.step(closure)
        with torch.no_grad():
            value = float(huber(theta))
        if math.isfinite(value) and (best is None or value < best[0]):
            best = value, theta.detach().clone()
    if best is None:
        raise ValueError("no starting point reached a finite fit: check the runs' losses.")
    a, b, e, alpha, beta = best[1].tolist()
    return ScalingLaw(math.exp(e), math.exp(a), math.exp(b), alpha, beta, best[0])


def bootstrap_fits(N, D, L, fit: ScalingLaw, n: int = 200, seed: int = 0, delta: float = 1e-3) -> list[ScalingLaw]:
    """``n`` refits of the law on runs drawn with replacement, each started from ``fit``: the spread of a constant
    over them is its uncertainty (a 90% interval: the 5th and 95th percentiles)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a whole number of refits >= 1, not {n!r}.")
    N, D, L = (torch.as_tensor(v, dtype=torch.float64).flatten() for v in (N, D, L))
    generator = torch.Generator().manual_seed(seed)
    start = (math.log(fit.A), math.log(fit.B), math.log(fit.E), fit.alpha, fit.beta)
    fits = []
    for _ in range(n):
        rows = torch.randint(len(N), (len(N),), generator=generator)
        fits.append(fit_scaling_law(N[rows], D[rows], L[rows], delta=delta, starts=[start]))
    return fits


def interval(values, level: float = 0.9) -> tuple[float, float]:
    """The central ``level`` share of ``values``: (lower, upper) percentiles."""
    values = torch.as_tensor(list(values), dtype=torch.float64)
    tail = (1 - level) / 2
    return float(values.quantile(tail)), float(values.quantile(1 - tail))
