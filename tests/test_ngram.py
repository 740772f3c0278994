"""Tests for lmbook.models.ngram: proper distributions, hand-computed probabilities, perplexity, sampling, errors."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from lmbook.evaluation.metrics import bits_per_char, perplexity
from lmbook.models.ngram import BOS, EOS, UNK, NGramConfig, NGramLM, count_ngrams, join_words
from lmbook.text.words import split_words

# a b a c a b, padded for a bigram model: <s> a b a c a b </s>
TINY = list("abacab")

VERSE = """\
Shall I compare thee to a summer's day?
Thou art more lovely and more temperate:
Rough winds do shake the darling buds of May,
And summer's lease hath all too short a date:
Sometime too hot the eye of heaven shines,
And often is his gold complexion dimm'd;
And every fair from fair sometime declines,
By chance or nature's changing course untrimm'd;
But thy eternal summer shall not fade,
Nor lose possession of that fair thou ow'st;
Nor shall Death brag thou wander'st in his shade,
When in eternal lines to time thou grow'st:
So long as men can breathe or eyes can see,
So long lives this, and this gives life to thee.
"""
WORDS = split_words(VERSE)


def random_contexts(model: NGramLM, rng: random.Random, count: int = 8) -> list[list]:
    """Contexts of every length up to n - 1, from the vocabulary, with unseen ones among them."""
    tokens = [t for t in model.vocab if t != EOS]
    return [[rng.choice(tokens) for _ in range(rng.randrange(model.n))] for _ in range(count)]


# --- Proper distributions -----------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 4])
@pytest.mark.parametrize("smoothing", ["add-k", "interpolation"])
@pytest.mark.parametrize("level", ["chars", "words"])
def test_probabilities_sum_to_one_over_the_vocabulary(n: int, smoothing: str, level: str) -> None:
    tokens = list(VERSE) if level == "chars" else WORDS
    # the vocabulary holds a token never seen in training, so contexts ending in it are unseen
    vocab = sorted(set(tokens) if level == "chars" else {w for w in WORDS if WORDS.count(w) > 1}) + ["Z"]
    model = NGramLM.fit(tokens, n=n, smoothing=smoothing, k=0.1, unk=level == "words", vocab=vocab)
    rng = random.Random(n)
    contexts = random_contexts(model, rng) + [["Z"], ["Z", "Z", "Z"][: n - 1]]
    unseen = 0
    for context in contexts:
        probs = [model.prob(w, context) for w in model.vocab]
        assert math.fsum(probs) == pytest.approx(1.0, abs=1e-9), context
        assert min(probs) > 0
        np.testing.assert_allclose(model.distribution(context), probs, rtol=1e-9, atol=1e-15)
        unseen += n > 1 and model.count(model._context(context)) == 0
    assert n == 1 or unseen >= 2, "some contexts should be unseen in training"


def test_interpolation_weights_sum_to_one() -> None:
    model = NGramLM.fit(WORDS, n=4, unk=True, min_count=2)
    assert len(model.weights) == 4 and all(0 < w < 1 for w in model.weights)
    rng = random.Random(0)
    seen = model.known(WORDS[10:13])  # three words of the training text
    for context in random_contexts(model, rng, 20) + [["summer's"], seen]:
        mix = model.mixture(context)
        assert len(mix) == model.n + 1 and math.fsum(mix) == pytest.approx(1.0)
        assert all(m >= 0 for m in mix)
    # an unseen three-word context gives its order no weight; a seen one does
    assert model.mixture(["thou", "thou", "thou"])[-1] == 0.0
    assert model.mixture(seen)[-1] == pytest.approx(model.weights[-1])


# --- Hand-computed probabilities ----------------------------------------------------------


def test_add_k_matches_hand_counts() -> None:
    # Vocabulary a, b, c, </s>: V = 4. Bigrams: <s>a ab ba ac ca ab b</s>.
    # After a (3 times): b twice, c once. After b (twice): a once, </s> once.
    model = NGramLM.fit(TINY, n=2, smoothing="add-k", k=1)
    assert sorted(model.vocab) == sorted(["a", "b", "c", EOS])
    assert model.prob("b", ["a"]) == pytest.approx((2 + 1) / (3 + 4))
    assert model.prob("c", ["a"]) == pytest.approx((1 + 1) / (3 + 4))
    assert model.prob("a", ["a"]) == pytest.approx((0 + 1) / (3 + 4))
    assert model.prob(EOS, ["b"]) == pytest.approx((1 + 1) / (2 + 4))
    assert model.prob("a", []) == pytest.approx((1 + 1) / (1 + 4))  # after <s>
    assert model.prob("a", [BOS]) == model.prob("a", [])
    half = NGramLM.fit(TINY, n=2, smoothing="add-k", k=0.5)
    assert half.prob("b", ["a"]) == pytest.approx((2 + 0.5) / (3 + 0.5 * 4))
    unigram = NGramLM.fit(TINY, n=1, smoothing="add-k", k=1)  # counts a 3, b 2, c 1, </s> 1
    assert unigram.prob("a") == pytest.approx((3 + 1) / (7 + 4))
    assert unigram.prob(EOS, ["b", "c"]) == pytest.approx((1 + 1) / (7 + 4))  # context ignored


def test_unsmoothed_model_is_relative_frequency() -> None:
    model = NGramLM.fit(TINY, n=2, smoothing="add-k", k=0)
    assert model.prob("b", ["a"]) == pytest.approx(2 / 3)
    assert model.prob("a", ["a"]) == 0.0
    assert model.count(["a"], "b") == 2 and model.count(["a"]) == 3


def test_interpolation_matches_hand_formula() -> None:
    lam0, lam1 = 0.7, 0.6
    model = NGramLM.fit(TINY, n=2, weights=(lam0, lam1))
    unigram_b = lam0 * 2 / 7 + (1 - lam0) / 4  # b: 2 of the 7 predicted tokens; V = 4
    assert model.prob("b", ["a"]) == pytest.approx(lam1 * 2 / 3 + (1 - lam1) * unigram_b)
    unigram_a = lam0 * 3 / 7 + (1 - lam0) / 4
    assert model.prob("a", ["a"]) == pytest.approx((1 - lam1) * unigram_a)  # a never followed a
    assert model.mixture(["a"]) == pytest.approx([(1 - lam0) * (1 - lam1), lam0 * (1 - lam1), lam1])


def test_tuned_weights_maximise_held_out_likelihood() -> None:
    cut = round(len(WORDS) * 0.7)
    train, dev = WORDS[:cut], WORDS[cut:]
    tuned = NGramLM.fit(train, n=3, unk=True, weights=(0.5, 0.5, 0.5))
    weights = tuned.tune_weights(dev, tol=1e-9, steps=2000)
    best = NGramLM.fit(train, n=3, unk=True, weights=tuple(weights)).nll(dev)
    rng = random.Random(0)
    for _ in range(30):
        other = tuple(min(max(w + rng.uniform(-0.2, 0.2), 0.01), 0.99) for w in weights)
        assert NGramLM.fit(train, n=3, unk=True, weights=other).nll(dev) >= best - 1e-6


def test_lower_orders_do_not_depend_on_the_padding_of_higher_ones() -> None:
    tokens = list(VERSE[:300])
    five = count_ngrams(tokens, 5)
    for j in range(5):
        assert five[j] == count_ngrams(tokens, j + 1)[j]


# --- Perplexity ---------------------------------------------------------------------------


def test_unigram_perplexity_by_hand() -> None:
    model = NGramLM.fit(TINY, n=1, smoothing="add-k", k=0)  # P(a)=3/7, P(b)=2/7, P(c)=1/7, P(</s>)=1/7
    # "a b c" is scored as a, b, c and then </s>: N = 4 predictions
    expected = math.exp(-(math.log(3 / 7) + math.log(2 / 7) + math.log(1 / 7) + math.log(1 / 7)) / 4)
    assert model.perplexity(list("abc")) == pytest.approx(expected)
    assert expected == pytest.approx((7**4 / (3 * 2 * 1 * 1)) ** 0.25)


def test_perplexity_and_bits_per_char_by_hand_for_a_trigram_model() -> None:
    model = NGramLM.fit(list(VERSE), n=3, smoothing="interpolation")
    held_out = "And summer's lease is short."
    padded = [BOS, BOS] + list(held_out) + [EOS]
    nll = -sum(math.log(model.prob(padded[i], padded[i - 2 : i])) for i in range(2, len(padded)))
    assert model.nll(held_out) == pytest.approx(nll)
    assert model.perplexity(held_out) == pytest.approx(math.exp(nll / (len(held_out) + 1)))
    assert model.perplexity(held_out) == pytest.approx(perplexity(model.nll(held_out) / (len(held_out) + 1)))
    assert bits_per_char(model.nll(held_out), len(held_out)) == pytest.approx(nll / len(held_out) / math.log(2))


def test_higher_order_lowers_training_perplexity() -> None:
    for smoothing, k in [("add-k", 0.0), ("add-k", 0.01), ("interpolation", 1.0)]:
        ppl = [NGramLM.fit(WORDS, n=n, smoothing=smoothing, k=k).perplexity(WORDS) for n in (1, 2, 3, 4)]
        assert all(a > b for a, b in zip(ppl, ppl[1:])), (smoothing, ppl)


def test_held_out_perplexity_is_finite_only_with_smoothing() -> None:
    lines = VERSE.splitlines(keepends=True)
    train, held_out = "".join(lines[:10]), "".join(lines[10:])
    vocab = sorted(set(VERSE))  # every character of the verse, so no character is unknown
    assert NGramLM.fit(train, n=3, smoothing="add-k", k=0, vocab=vocab).perplexity(held_out) == math.inf
    for smoothing in ("add-k", "interpolation"):
        ppl = NGramLM.fit(train, n=3, smoothing=smoothing, k=0.1, vocab=vocab).perplexity(held_out)
        assert math.isfinite(ppl) and 1 < ppl < len(vocab) + 1


def test_unseen_fraction_by_hand() -> None:
    model = NGramLM.fit(TINY, n=2)
    # "a a" is scored as a|<s>, a|a, </s>|a: unigrams all seen; bigrams <s>a seen, aa and a</s> not
    assert model.unseen_fraction(list("aa")) == pytest.approx([0.0, 2 / 3])


# --- Unknown tokens -----------------------------------------------------------------------


def test_rare_and_unseen_tokens_become_unk() -> None:
    model = NGramLM.fit(WORDS, n=2, unk=True, min_count=2)
    assert UNK in model.vocab and "Rough" not in model.vocab  # seen once
    assert "thou" in model.vocab and "summer's" in model.vocab
    assert model.prob("Rough", ["And"]) == model.prob(UNK, ["And"]) == model.prob("Xanadu", ["And"])
    assert model.known(["thou", "Xanadu"]) == ["thou", UNK]


def test_unseen_token_without_unk_is_an_error() -> None:
    model = NGramLM.fit(TINY, n=2)
    with pytest.raises(ValueError, match="never seen.*unk=True"):
        model.prob("z", ["a"])
    with pytest.raises(ValueError, match="never seen"):
        model.perplexity(list("abz"))


# --- Sampling -----------------------------------------------------------------------------


def test_sampling_is_reproducible_with_a_seed() -> None:
    model = NGramLM.fit(list(VERSE), n=3)
    first = model.sample(200, seed=7)
    assert first == model.sample(200, seed=7)
    assert first != model.sample(200, seed=8)
    assert set(first) <= set(model.vocab) - {EOS}


def test_unsmoothed_model_of_one_sequence_samples_it_back() -> None:
    model = NGramLM.fit(list("the dog"), n=2, smoothing="add-k", k=0)  # each character has one follower
    assert "".join(model.sample(100, seed=0)) == "the dog"  # and it stops at </s>
    assert model.sample(3, seed=0, prompt=list("the")) == list(" do")


def test_sampling_from_an_unseen_context_without_smoothing_is_an_error() -> None:
    model = NGramLM.fit(TINY, n=3, smoothing="add-k", k=0)
    with pytest.raises(ValueError, match="never seen"):
        model.sample(5, prompt=["c", "c"])


def test_with_smoothing_shares_counts() -> None:
    model = NGramLM.fit(WORDS, n=3, unk=True)
    add = model.with_smoothing("add-k", k=0.5)
    assert add.counts is model.counts
    assert add.prob("thou", ["in", "his"]) == pytest.approx(
        (model.count(["in", "his"], "thou") + 0.5) / (model.count(["in", "his"]) + 0.5 * len(model.vocab))
    )
    with pytest.raises(ValueError, match="tuned weights"):
        NGramLM.fit(TINY, n=2, smoothing="add-k").with_smoothing("interpolation")


# --- Words --------------------------------------------------------------------------------


def test_word_tokens() -> None:
    assert split_words("O Romeo, Romeo!\nwherefore art thou   Romeo? 'Tis o'er 1592.") == [
        "O", "Romeo", ",", "Romeo", "!", "\n", "wherefore", "art", "thou", "Romeo", "?",
        "'", "Tis", "o'er", "1592", ".",
    ]  # fmt: skip
    words = ["O", "Romeo", ",", "Romeo", "!", "\n", "wherefore", "art", UNK, "?"]
    assert join_words(words) == "O Romeo, Romeo!\nwherefore art <unk>?"


# --- Errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(n=0), "n must"),
        (dict(n=2.5), "n must"),
        (dict(k=-1), "k must"),
        (dict(smoothing="backoff"), "smoothing"),
        (dict(min_count=3), "min_count"),
        (dict(dev_fraction=1.0), "dev_fraction"),
        (dict(n=3, weights=(0.5, 0.5)), "weights"),
    ],
)
def test_bad_configurations_are_refused(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        NGramConfig(**changes)


def test_bad_training_data_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        NGramLM.fit([])
    with pytest.raises(ValueError, match="reserved"):
        NGramLM.fit(["a", EOS, "b"])
    with pytest.raises(ValueError, match="too few"):
        NGramLM.fit(["a"], smoothing="interpolation")
