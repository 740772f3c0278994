"""Chapter 8's scaling-law fit: it recovers the constants of runs made from a known law, and the compute-optimal
split is the minimum of the law along a curve of equal compute."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from lmbook.evaluation.scaling import HOFFMANN, ScalingLaw, fit_scaling_law

LAW = ScalingLaw(**HOFFMANN)


def runs(noise=0.0):
    grid = list(itertools.product([1e6, 4e6, 1.6e7, 6.4e7, 2.56e8], [2e7, 1e8, 5e8, 2.5e9, 1.25e10]))
    N = torch.tensor([n for n, _ in grid], dtype=torch.float64)
    D = torch.tensor([d for _, d in grid], dtype=torch.float64)
    L = LAW.loss(N, D) * torch.exp(noise * torch.randn(len(grid), generator=torch.Generator().manual_seed(0),
                                                       dtype=torch.float64))
    return N, D, L


def test_the_fit_recovers_the_exponents_of_runs_made_from_a_known_law():
    fit = fit_scaling_law(*runs(noise=0.002))
    assert fit.alpha == pytest.approx(LAW.alpha, abs=0.03) and fit.beta == pytest.approx(LAW.beta, abs=0.03)
    assert fit.E == pytest.approx(LAW.E, rel=0.05)
    N, D, L = runs()
    assert (fit.loss(N, D) / L - 1).abs().max() < 0.01


def test_the_compute_optimal_split_is_the_minimum_along_equal_compute():
    C = 1e18
    N_opt, D_opt = LAW.compute_optimal(C)
    assert 6 * N_opt * D_opt == pytest.approx(C)
    assert D_opt / N_opt == pytest.approx(25.7, abs=0.1)  # the rounded constants' ratio at 1e18 FLOPs
    for factor in (0.5, 0.9, 1.1, 2.0):  # any other split of the same compute does worse
        N = N_opt * factor
        assert LAW.loss(N, C / 6 / N) > LAW.loss(N_opt, D_opt)


def test_bad_runs_are_refused_with_what_to_do():
    N, D, L = runs()
    with pytest.raises(ValueError, match="at least 5 runs"):
        fit_scaling_law(N[:4], D[:4], L[:4])
    L[3] = math.nan
    with pytest.raises(ValueError, match="a NaN loss is a failed run"):
        fit_scaling_law(N, D, L)
    with pytest.raises(ValueError, match="positive number of FLOPs"):
        LAW.compute_optimal(0)


def test_bootstrap_intervals_hold_the_true_exponents_and_widen_with_noise():
    from lmbook.evaluation.scaling import bootstrap_fits, interval

    widths = []
    for noise in (0.002, 0.02):
        N, D, L = runs(noise)
        fit = fit_scaling_law(N, D, L)
        fits = bootstrap_fits(N, D, L, fit, n=30)
        low, high = interval(f.alpha for f in fits)
        assert low <= fit.alpha <= high  # the refits scatter around the fit
        widths.append(high - low)
    assert widths[0] < 0.01  # nearly noiseless runs pin the exponent down
    assert widths[1] > widths[0]
    with pytest.raises(ValueError, match="n must be a whole number"):
        bootstrap_fits(N, D, L, fit, n=2.5)
