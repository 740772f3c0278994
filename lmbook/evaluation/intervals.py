"""Intervals for a mean over a few runs (chapter 8's seeds): Student's t, written out; and the percentile
bootstrap (chapters 6 and 7), for any statistic of independent pieces (lines, documents, samples).

A comparison of models trained with three seeds has three numbers per model; the normal approximation would
make their interval too narrow. :func:`mean_interval` uses Student's t with n - 1 degrees of freedom, its
quantile found by bisection on the distribution function (:func:`t_cdf`, Simpson's rule on the density), so
the package needs no statistics library.
"""

from __future__ import annotations

import math
import random
from typing import Callable, Sequence


def t_cdf(x: float, df: int) -> float:
    """P(T <= x) for Student's t with ``df`` degrees of freedom (Simpson's rule on the density, 2,000 panels)."""
    if isinstance(df, bool) or not isinstance(df, int) or df < 1:
        raise ValueError(f"df must be a whole number >= 1, not {df!r}.")
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def density(t: float) -> float:
        return math.exp(log_norm - (df + 1) / 2 * math.log1p(t * t / df))

    a = abs(x)
    if a == 0:
        return 0.5
    n = 2000  # panels of [0, |x|]
    h = a / n
    area = density(0) + density(a) + sum((4 if i % 2 else 2) * density(i * h) for i in range(1, n))
    half = min(0.5, area * h / 3)
    return 0.5 + half if x > 0 else 0.5 - half


def t_quantile(p: float, df: int) -> float:
    """The x with P(T <= x) = p, for 0.5 <= p < 1 (the upper quantiles an interval needs)."""
    if not 0.5 <= p < 1:
        raise ValueError(f"p must be in [0.5, 1), not {p!r}.")
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        high *= 2
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if t_cdf(mid, df) < p else (low, mid)
    return (low + high) / 2


def mean_interval(values, level: float = 0.9) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean of ``values`` and its ``level`` interval by Student's t (n - 1 degrees of
    freedom). One value has no spread to measure: its interval is (nan, nan)."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("mean_interval needs at least one value.")
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1, not {level!r}.")
    n = len(values)
    mean = sum(values) / n
    if n == 1:
        return mean, math.nan, math.nan
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def bootstrap_draws(items: Sequence, statistic: Callable[[list], object], samples: int = 200,
                    seed: int = 0) -> list:
    """``statistic`` of ``samples`` draws of ``items`` with replacement (each draw as many items as there are),
    in order: the bootstrap distribution. ``statistic`` may return a number, or a dict of numbers to get several
    intervals from the same draws (:func:`percentile_interval` of each)."""
    items = list(items)
    if not items:
        raise ValueError("the bootstrap needs at least one item to resample.")
    if not callable(statistic):
        raise TypeError(f"statistic must be a function of a list of items, not {type(statistic).__name__}.")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 2:
        raise ValueError(f"samples must be a whole number >= 2, not {samples!r}.")
    rng = random.Random(seed)
    return [statistic(rng.choices(items, k=len(items))) for _ in range(samples)]


def percentile_interval(values, level: float = 0.95) -> tuple[float, float]:
    """The ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of ``values`` (NaNs left out; ``(nan, nan)`` if
    nothing is left)."""
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1, not {level!r}.")
    values = sorted(v for v in map(float, values) if not math.isnan(v))
    if not values:
        return math.nan, math.nan
    tail = (1 - level) / 2
    return values[int(tail * (len(values) - 1))], values[round((1 - tail) * (len(values) - 1))]


def bootstrap_interval(items: Sequence, statistic: Callable[[list], float], samples: int = 200, level: float = 0.95,
                       seed: int = 0) -> tuple[float, float]:
    """A percentile-bootstrap ``level`` interval ``(low, high)`` for ``statistic(items)``.

    ``items`` (the independent pieces the statistic is computed from: lines of a text, documents, sampled texts)
    are drawn with replacement ``samples`` times (:func:`bootstrap_draws`); the ``(1 - level) / 2`` and
    ``(1 + level) / 2`` quantiles of the statistic over the draws are the interval. Draws whose statistic is NaN
    (undefined on that draw) are left out; if all are, the interval is ``(nan, nan)``. Seeded: the same call
    gives the same interval.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1, not {level!r}.")
    return percentile_interval(bootstrap_draws(items, statistic, samples, seed), level)


def ratio_of_sums(pairs: list[tuple[float, float]]) -> float:
    """``sum(a) / sum(b)`` over ``(a, b)`` pairs: a per-unit figure (nats per character, say) of the pieces
    drawn, for :func:`bootstrap_interval`. NaN when the units add up to zero."""
    total = math.fsum(b for _, b in pairs)
    return math.fsum(a for a, _ in pairs) / total if total else math.nan
