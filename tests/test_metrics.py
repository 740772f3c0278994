"""Tests for lmbook.metrics: perplexity and bits per character against their formulas."""

from __future__ import annotations

import math

import pytest
import torch

from lmbook.gpt import GPT, GPTConfig
from lmbook.metrics import LN2, bits_per_char, nats_to_bits, perplexity, split_loss


def test_uniform_guessing_has_the_vocabulary_size_as_perplexity() -> None:
    for vocab_size in (2, 65, 50257):
        assert perplexity(math.log(vocab_size)) == pytest.approx(vocab_size)
    assert perplexity(0.0) == 1.0  # always certain and always right


def test_perplexity_is_the_inverse_geometric_mean_probability() -> None:
    probs = [0.5, 0.25, 0.125, 0.9]
    mean_nll = -sum(math.log(p) for p in probs) / len(probs)
    assert perplexity(mean_nll) == pytest.approx(math.prod(probs) ** (-1 / len(probs)))
    assert perplexity(mean_nll) == pytest.approx((1 / (0.5 * 0.25 * 0.125 * 0.9)) ** 0.25)


def test_a_zero_probability_makes_perplexity_infinite() -> None:
    assert perplexity(math.inf) == math.inf
    assert perplexity(1e6) == math.inf  # exp overflows a float: reported as infinite, not an error


def test_bits_per_char_is_total_nats_over_characters_and_ln2() -> None:
    assert bits_per_char(100 * LN2, 100) == pytest.approx(1.0)
    # 40 tokens of a 200-character text, each given probability 1/8 (3 bits): 120 bits / 200 characters
    assert bits_per_char(40 * math.log(8), 200) == pytest.approx(0.6)
    assert nats_to_bits(math.log(8)) == pytest.approx(3.0)
    assert bits_per_char(math.inf, 10) == math.inf


def test_tensors_and_numpy_numbers_are_accepted() -> None:
    assert perplexity(torch.tensor(math.log(4.0))) == pytest.approx(4.0)
    assert bits_per_char(torch.tensor(2 * LN2, dtype=torch.float64), 2) == pytest.approx(1.0)


@pytest.mark.parametrize("bad", [-0.1, math.nan])
def test_impossible_nll_is_refused(bad: float) -> None:
    with pytest.raises(ValueError):
        perplexity(bad)
    with pytest.raises(ValueError):
        bits_per_char(bad, 10)


def test_bits_per_char_needs_characters() -> None:
    with pytest.raises(ValueError, match="n_chars"):
        bits_per_char(1.0, 0)


def test_split_loss_reads_every_token_once():
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny"))
    data = torch.randint(0, 65, (32 * 5 + 1,))
    x, y = data[:-1].view(5, 32), data[1:].view(5, 32)
    assert split_loss(model, data, 32, batch_size=2) == pytest.approx(model.eval()(x, y)[1].item(), rel=1e-5)
