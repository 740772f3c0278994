"""Calibration (chapter 6) and the percentile bootstrap (chapters 6 and 7): written-out formulas, synthetic data
whose calibration is known, and a tiny GPT read window by window."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lmbook.evaluation.calibration import (by_temperature, entropy_and_nll, expected_calibration_error,
                                           next_token_logits, reliability, top_predictions)
from lmbook.evaluation.intervals import bootstrap_interval, ratio_of_sums
from lmbook.evaluation.metrics import token_nlls
from lmbook.models.gpt import GPT, GPTConfig


def ece_by_hand(confidence: list[float], correct: list[int], n_bins: int) -> float:
    """ECE written out: a loop over bins of equal width, the last one closed at 1."""
    total = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        inside = [i for i, c in enumerate(confidence) if lo <= c < hi or (b == n_bins - 1 and c == 1.0)]
        if inside:
            acc = sum(correct[i] for i in inside) / len(inside)
            conf = sum(confidence[i] for i in inside) / len(inside)
            total += len(inside) / len(confidence) * abs(acc - conf)
    return total


def test_ece_matches_the_written_out_formula():
    g = torch.Generator().manual_seed(0)
    confidence = torch.rand(500, generator=g)
    confidence[:3] = torch.tensor([0.0, 1.0, 0.5])
    correct = (torch.rand(500, generator=g) < 0.6).double()
    for n_bins in (1, 5, 10, 15):
        assert expected_calibration_error(confidence, correct, n_bins) == pytest.approx(
            ece_by_hand(confidence.tolist(), correct.tolist(), n_bins), abs=1e-12)
    r = reliability(confidence, correct, 10)
    assert r.n == 500 and len(r.edges) == 11 and len(r.counts) == 10
    assert r.accuracy_overall == pytest.approx(float(correct.mean()))
    # one bin: ECE is |accuracy - mean confidence|
    assert expected_calibration_error(confidence, correct, 1) == pytest.approx(
        abs(float(correct.mean()) - float(confidence.mean())))


def test_perfectly_calibrated_data_has_ece_near_zero_and_overconfident_data_does_not():
    g = torch.Generator().manual_seed(1)
    confidence = torch.rand(200_000, generator=g)
    correct = (torch.rand(200_000, generator=g) < confidence).double()  # right with exactly the stated chance
    assert expected_calibration_error(confidence, correct, 10) < 0.01
    overconfident = torch.sqrt(confidence)  # states more than it knows: sqrt(p) > p
    r = reliability(overconfident, correct, 10)
    assert r.ece > 0.1
    filled = [i for i, n in enumerate(r.counts) if n]
    assert all(r.confidence[i] > r.accuracy[i] for i in filled)


def test_temperature_moves_confidence_not_rightness():
    g = torch.Generator().manual_seed(2)
    logits, targets = torch.randn(300, 7, generator=g) * 3, torch.randint(0, 7, (300,), generator=g)
    conf_cold, right_cold = top_predictions(logits, targets, 0.5)
    conf_one, right_one = top_predictions(logits, targets, 1.0)
    conf_hot, right_hot = top_predictions(logits, targets, 2.0)
    assert torch.equal(right_cold, right_one) and torch.equal(right_one, right_hot)
    assert (conf_cold >= conf_one - 1e-12).all() and (conf_one >= conf_hot - 1e-12).all()
    assert torch.allclose(conf_one, F.softmax(logits.double(), -1).max(-1).values)
    results = by_temperature(logits, targets, (0.5, 1.0, 2.0))
    assert list(results) == [0.5, 1.0, 2.0]
    assert results[0.5]["reliability"].mean_confidence > results[2.0]["reliability"].mean_confidence


def test_entropy_and_nll_by_hand_and_equal_when_the_targets_are_drawn_from_the_model():
    logits, targets = torch.tensor([[0.0, math.log(3.0)]]), torch.tensor([1])
    entropy, nll = entropy_and_nll(logits, targets)
    assert nll == pytest.approx(-math.log(0.75))
    assert entropy == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)))
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(100_000, 5, generator=g)
    drawn = torch.multinomial(F.softmax(logits, -1), 1, generator=g).squeeze(1)  # a calibrated model's world
    entropy, nll = entropy_and_nll(logits, drawn)
    assert abs(entropy - nll) < 0.01
    entropy_hot, nll_hot = entropy_and_nll(logits, drawn, 3.0)
    assert entropy_hot > entropy and nll_hot > nll  # flattened: expects more surprise than it meets, and pays


def test_next_token_logits_give_token_nlls_back():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=16, dropout=0.0))
    ids = torch.randint(0, 11, (37,))
    for stride in (None, 2, 8):
        logits, targets = next_token_logits(model, ids, stride=stride, batch_size=3)
        assert logits.shape == (36, 11) and torch.equal(targets, ids[1:])
        nll = F.cross_entropy(logits, targets, reduction="none")
        assert torch.allclose(nll, token_nlls(model, ids, stride=stride), atol=1e-5)


def test_calibration_refuses_bad_input():
    with pytest.raises(ValueError, match="empty"):
        reliability(torch.tensor([]), torch.tensor([]))
    with pytest.raises(ValueError, match="between 0 and 1"):
        reliability(torch.tensor([1.5]), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="one length"):
        reliability(torch.tensor([0.5, 0.2]), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="temperature"):
        top_predictions(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), 0.0)
    with pytest.raises(ValueError, match="at least 2"):
        next_token_logits(GPT(GPTConfig(vocab_size=5, block_size=4, n_layer=1, n_head=1, n_embd=8)), [1])


def test_bootstrap_interval_covers_the_statistic_and_is_reproducible():
    g = torch.Generator().manual_seed(4)
    values = (torch.randn(400, generator=g) + 2.0).tolist()
    mean = sum(values) / len(values)
    low, high = bootstrap_interval(values, lambda xs: sum(xs) / len(xs), samples=500, level=0.95, seed=0)
    assert low < mean < high
    sd = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    assert (high - low) == pytest.approx(2 * 1.96 * sd / len(values) ** 0.5, rel=0.2)  # the normal theory's width
    assert bootstrap_interval(values, lambda xs: sum(xs) / len(xs), samples=500, seed=0) == (low, high)
    assert bootstrap_interval([1.0, 1.0, 1.0], lambda xs: sum(xs)) == (3.0, 3.0)
    assert all(math.isnan(v) for v in bootstrap_interval([1.0], lambda xs: math.nan))
    assert ratio_of_sums([(2.0, 1.0), (4.0, 3.0)]) == 1.5 and math.isnan(ratio_of_sums([(1.0, 0.0)]))
    with pytest.raises(ValueError, match="at least one item"):
        bootstrap_interval([], sum)
    with pytest.raises(ValueError, match="level"):
        bootstrap_interval([1.0], sum, level=1.0)


def test_the_plots_of_intervals_and_reliability():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lmbook.display.viz import plot_intervals, plot_reliability

    ax = plot_intervals(["a", "b"], {"x": [(1.0, 0.5, 1.5), (2.0, math.nan, math.nan)], "y": [(1.2, 1.0, 1.4)] * 2},
                        zero=0.0, xlabel="bits")
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b"] and ax.get_xlabel() == "bits"
    assert ax.get_legend() is not None
    with pytest.raises(ValueError, match="one per label"):
        plot_intervals(["a", "b"], {"x": [(1.0, 0.5, 1.5)]})
    g = torch.Generator().manual_seed(5)
    logits, targets = torch.randn(200, 5, generator=g), torch.randint(0, 5, (200,), generator=g)
    results = by_temperature(logits, targets, (0.5, 1.0))
    ax = plot_reliability(results)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[0] == "calibrated" and labels[1] == f"T = 0.5, ECE {results[0.5]['reliability'].ece:.3f}"
    with pytest.raises(ValueError, match="empty"):
        plot_reliability({})
    plt.close("all")
