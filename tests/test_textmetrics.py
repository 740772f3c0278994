"""Tests for lmbook.evaluation.textmetrics: BLEU and ROUGE written out, checked piece by piece against sacrebleu and
rouge_score on the same inputs; distinct-n, self-BLEU and repetition against counts done by hand."""

from __future__ import annotations

import math

import pytest
import sacrebleu
from hypothesis import given, settings
from hypothesis import strategies as st
from rouge_score import rouge_scorer
from sacrebleu.metrics.bleu import BLEU

from lmbook.evaluation.textmetrics import (
    EVALUATE_BLEU,
    brevity_penalty,
    clipped_matches,
    compared_length,
    corpus_bleu,
    distinct_n,
    lcs_length,
    ngrams,
    repeated_ending,
    repetition_rate,
    rouge_l,
    rouge_n,
    rouge_words,
    self_bleu,
    sentence_bleu,
    words,
)

PREDICTIONS = [
    "The cat sat on the mat by the door.",
    "It was the best of times, it was the worst.",
    "Now is the winter of our discontent",
]
REFERENCES = [
    ["The cat was sitting on the mat near the door.", "A cat sat on the mat."],
    ["It was the best of times, it was the worst of times, it was the age of wisdom.", "It was the best of times."],
    ["Now is the winter of our discontent made glorious summer by this sun of York.", "Now is the winter."],
]


def sacre(predictions, references, **options):
    """sacrebleu's corpus BLEU for references given per prediction (sacrebleu wants them per reference set)."""
    return BLEU(**options).corpus_score(predictions, [list(s) for s in zip(*references)])


# --- The pieces -------------------------------------------------------------------
def test_tokenizers_are_the_libraries_own():
    text = "Hello, world! It's 3.5 o'clock -- isn't it?"
    assert words(text) == sacrebleu.tokenizers.tokenizer_13a.Tokenizer13a()(text).split()
    assert words(text)[:4] == ["Hello", ",", "world", "!"]
    assert rouge_words(text) == ["hello", "world", "it", "s", "3", "5", "o", "clock", "isn", "t", "it"]


def test_clipping_gives_no_credit_beyond_a_references_count():
    """Papineni et al. (2002): "the the the the the the the" has modified unigram precision 2/7."""
    candidate = ["the", "the", "the", "the", "the", "the", "the"]
    references = [["the", "cat", "is", "on", "the", "mat"], ["there", "is", "a", "cat", "on", "the", "mat"]]
    assert clipped_matches(candidate, references, 1) == (2, 7)
    assert clipped_matches(candidate, references, 2) == (0, 6)
    assert ngrams(["a", "b", "a", "b"], 2) == {("a", "b"): 2, ("b", "a"): 1}


def test_brevity_penalty_and_reference_length():
    assert brevity_penalty(10, 10) == 1.0 and brevity_penalty(12, 10) == 1.0
    assert brevity_penalty(5, 10) == pytest.approx(math.exp(1 - 10 / 5))
    assert brevity_penalty(0, 3) == 0.0
    assert compared_length(5, [9, 4, 6]) == 4  # 4 and 6 are equally close: the shorter
    assert compared_length(5, [9, 7, 6]) == 6
    assert compared_length(5, [9, 7, 6], "shortest") == 6
    assert compared_length(8, [9, 7, 3], "shortest") == 3


# --- BLEU against sacrebleu and evaluate's canonical bleu -------------------------------
@pytest.mark.parametrize("smoothing", ["none", "exp", "floor", "add-k"])
@pytest.mark.parametrize("effective_order", [False, True])
def test_corpus_bleu_is_sacrebleus(smoothing, effective_order):
    ours = corpus_bleu(PREDICTIONS, REFERENCES, smoothing=smoothing, effective_order=effective_order)
    theirs = sacre(PREDICTIONS, REFERENCES, smooth_method=smoothing, effective_order=effective_order)
    assert ours.score * 100 == pytest.approx(theirs.score, rel=1e-12)
    assert [p * 100 for p in ours.precisions] == pytest.approx(theirs.precisions, rel=1e-12)
    assert ours.brevity_penalty == pytest.approx(theirs.bp)
    assert (ours.candidate_length, ours.reference_length) == (theirs.sys_len, theirs.ref_len)
    if smoothing != "add-k":  # sacrebleu adds k to its counts in place
        assert (list(ours.matches), list(ours.totals)) == (theirs.counts, theirs.totals)


VOCAB = st.sampled_from(["a", "b", "c", "d", "the", "cat", "sat", ",", "."])
SENTENCE = st.lists(VOCAB, min_size=0, max_size=9).map(" ".join)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), n=st.integers(1, 4), refs=st.integers(1, 3),
       smoothing=st.sampled_from(["none", "exp", "floor", "add-k"]))
def test_corpus_bleu_is_sacrebleus_on_any_corpus(data, n, refs, smoothing):
    predictions = data.draw(st.lists(SENTENCE, min_size=n, max_size=n))
    references = [data.draw(st.lists(SENTENCE, min_size=refs, max_size=refs)) for _ in range(n)]
    ours = corpus_bleu(predictions, references, smoothing=smoothing)
    theirs = sacre(predictions, references, smooth_method=smoothing)
    assert ours.score * 100 == pytest.approx(theirs.score, rel=1e-9, abs=1e-9)


@settings(max_examples=40, deadline=None)
@given(prediction=SENTENCE, references=st.lists(SENTENCE, min_size=1, max_size=3))
def test_sentence_bleu_is_sacrebleus(prediction, references):
    ours = sentence_bleu(prediction, references)
    assert ours.score * 100 == pytest.approx(sacrebleu.sentence_bleu(prediction, references).score, rel=1e-9, abs=1e-9)


def test_evaluate_bleu_settings_give_the_canonical_bleu():
    """evaluate.load("bleu") cannot run offline (it downloads its code). Its numbers on these inputs, from
    tensorflow/nmt's compute_bleu (the code it runs) on 13a tokens: BLEU, precisions, brevity penalty, lengths."""
    predictions, references = PREDICTIONS[:2], REFERENCES[:2]
    ours = corpus_bleu(predictions, references, **EVALUATE_BLEU)
    assert ours.score == pytest.approx(0.7779319366136181, rel=1e-12)
    assert ours.precisions == pytest.approx([0.9545454545454546, 0.85, 0.7222222222222222, 0.625])
    assert (ours.brevity_penalty, ours.candidate_length, ours.reference_length) == (1.0, 22, 14)
    # no 4-gram in common: no smoothing makes it 0, where sacrebleu's smoothing does not
    no_4gram = corpus_bleu(["the quick brown fox jumped"], [["the quick brown dog jumped over it"]], **EVALUATE_BLEU)
    assert no_4gram.score == 0.0
    assert no_4gram.precisions == pytest.approx([0.8, 0.5, 1 / 3, 0.0])
    assert no_4gram.brevity_penalty == pytest.approx(0.6703200460356393)
    assert corpus_bleu(["the quick brown fox jumped"], [["the quick brown dog jumped over it"]]).score > 0


def test_the_two_bleus_differ_on_the_reference_length():
    prediction = ["the cat sat on the mat by the old door"]  # 10 tokens
    references = [["the cat was sitting on the mat by the old door .", "a cat sat ."]]  # 12 and 4 tokens
    ours = corpus_bleu(prediction, references)  # the closest reference: 12 tokens, longer than the prediction
    canonical = corpus_bleu(prediction, references, **EVALUATE_BLEU)  # the shortest: 4 tokens
    assert (ours.reference_length, canonical.reference_length) == (12, 4)
    assert canonical.precisions == ours.precisions  # every order has a match here: the same precisions
    assert (canonical.brevity_penalty, ours.brevity_penalty) == (1.0, pytest.approx(math.exp(1 - 12 / 10)))
    assert canonical.score > ours.score


def test_token_lists_are_scored_as_given():
    assert corpus_bleu([["a", "b", "c", "d"]], [[["a", "b", "c", "d"]]]).score == pytest.approx(1.0)
    assert corpus_bleu(["a b c d"], ["a b c d"]).score == pytest.approx(1.0)  # one reference as a text


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: corpus_bleu([], []), ValueError, "empty"),
        (lambda: corpus_bleu(["a b"], ["a b", "c d"]), ValueError, "1 predictions but 2 references"),
        (lambda: corpus_bleu(["a b"], [[]]), ValueError, "non-empty"),
        (lambda: corpus_bleu(["a b"], ["a b"], smoothing="add-one"), ValueError, "smoothing"),
        (lambda: corpus_bleu(["a b"], ["a b"], max_order=0), ValueError, "max_order"),
        (lambda: corpus_bleu(["a b"], ["a b"], reference_length="longest"), ValueError, "reference_length"),
        (lambda: corpus_bleu("a b", ["a b"]), TypeError, "list of texts"),
        (lambda: corpus_bleu([3], ["a b"]), TypeError, "str or a list of tokens"),
        (lambda: ngrams(["a"], 0), ValueError, "n must"),
    ],
)
def test_bleu_refuses_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


# --- ROUGE against rouge_score -------------------------------------------------------
PAIRS = [
    ("The cat sat on the mat.", "The cat was sitting on the mat."),
    ("police killed the gunman", "the gunman killed police"),
    ("a b c d e", "x y z"),
    ("", "the reference"),
    ("It is the east, and Juliet is the sun.", "But soft, what light through yonder window breaks? It is the east."),
]


@pytest.mark.parametrize("prediction, reference", PAIRS)
def test_rouge_is_rouge_scores(prediction, reference):
    theirs = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"]).score(reference, prediction)
    for key, ours in (("rouge1", rouge_n(prediction, reference, 1)), ("rouge2", rouge_n(prediction, reference, 2)),
                      ("rougeL", rouge_l(prediction, reference))):
        assert (ours.precision, ours.recall, ours.fmeasure) == pytest.approx(tuple(theirs[key]))


@settings(max_examples=60, deadline=None)
@given(a=st.lists(st.sampled_from("abcd"), max_size=10), b=st.lists(st.sampled_from("abcd"), max_size=10))
def test_lcs_is_rouge_scores(a, b):
    assert lcs_length(a, b) == rouge_scorer._lcs_table(a, b)[-1][-1]
    assert lcs_length(a, b) == lcs_length(b, a) <= min(len(a), len(b))


def test_lcs_allows_gaps_but_keeps_order():
    assert lcs_length(["police", "killed", "the", "gunman"], ["the", "gunman", "killed", "police"]) == 2
    assert lcs_length(list("ABCBDAB"), list("BDCABA")) == 4  # the textbook example (Cormen et al.)


# --- Diversity and repetition -------------------------------------------------------------
def test_distinct_n_divides_by_tokens_or_ngrams():
    texts = ["a b a b", "a b c"]  # 7 tokens; bigrams ab ba ab | ab bc: 5 in all, 3 distinct
    assert distinct_n(texts, 1) == pytest.approx(3 / 7)
    assert distinct_n(texts, 2) == pytest.approx(3 / 7)
    assert distinct_n(texts, 2, per="ngrams") == pytest.approx(3 / 5)
    assert distinct_n(["one two three"], 1) == 1.0
    with pytest.raises(ValueError, match="per"):
        distinct_n(texts, 2, per="words")
    with pytest.raises(ValueError, match="no 3-grams"):
        distinct_n(["a b"], 3, per="ngrams")
    with pytest.raises(ValueError, match="empty"):
        distinct_n([], 1)


def test_self_bleu_is_the_mean_bleu_against_the_others():
    texts = ["the cat sat on the mat", "the cat sat on a mat", "a dog barked at the moon", "the cat sat on the mat"]
    expected = [sacrebleu.sentence_bleu(t, texts[:i] + texts[i + 1 :]).score / 100 for i, t in enumerate(texts)]
    assert self_bleu(texts) == pytest.approx(sum(expected) / len(expected), rel=1e-12)
    assert self_bleu(["to be or not to be"] * 3) == pytest.approx(1.0)
    assert self_bleu(["to be or not to be", "all the world's a stage"]) < 0.1
    with pytest.raises(ValueError, match="at least 2"):
        self_bleu(["alone"])


def test_repeated_endings():
    assert repeated_ending(["I", "am", "I", "am", "I", "am"]) == 2
    # the loop "a b c" cut off mid-phrase: the text ends in "c a b" three times
    assert repeated_ending(["x", "c", "a", "b", "c", "a", "b", "c", "a", "b"]) == 3
    assert repeated_ending(["no", "no", "no"]) == 1
    assert repeated_ending(["no", "no"]) == 0
    assert repeated_ending(["I", "am", "I", "am"], min_repeats=2) == 2
    assert repeated_ending(["a", "b", "c", "a", "b", "c", "a", "b", "c"], max_phrase=2) == 0
    assert repeated_ending([]) == 0
    assert repetition_rate(["I am I am I am.", "I am I am I am", "fresh words"]) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="min_repeats"):
        repeated_ending(["a"], min_repeats=1)


# --- Every argument checks its type ------------------------------------------------------
TEXTS = ["a b a b", "a b c"]


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: distinct_n(TEXTS, n=True), TypeError, "n must be an integer"),  # was distinct-1
        (lambda: distinct_n(TEXTS, n=2.0), TypeError, "n must be an integer"),
        (lambda: distinct_n(TEXTS, n=None), TypeError, "n must be an integer"),
        (lambda: distinct_n(TEXTS, n=0), ValueError, "n must be >= 1"),
        (lambda: distinct_n(TEXTS, per=None), ValueError, "per"),
        (lambda: distinct_n(TEXTS, tokenize="13a"), TypeError, "tokenize must be a function"),
        (lambda: distinct_n("a b a b", 1), TypeError, "list of texts"),
        (lambda: ngrams(["a", "b"], True), TypeError, "n must be an integer"),
        (lambda: ngrams("a b", 1), TypeError, "tokens must be a list of tokens, not a str"),
        (lambda: clipped_matches(["a"], [["a"]], 1.0), TypeError, "n must be an integer"),
        (lambda: clipped_matches("a b", [["a"]], 1), TypeError, "not a str"),
        (lambda: clipped_matches(["a"], ["a b"], 1), TypeError, "not a str"),
        (lambda: brevity_penalty(True, 3), TypeError, "candidate_length must be an integer"),
        (lambda: brevity_penalty(2.5, 3), TypeError, "candidate_length must be an integer"),
        (lambda: brevity_penalty(2, None), TypeError, "reference_length must be an integer"),
        (lambda: brevity_penalty(-1, 3), ValueError, "candidate_length must be >= 0"),
        (lambda: compared_length(5.0, [4, 6]), TypeError, "candidate_length must be an integer"),
        (lambda: compared_length(5, [4, 6.0]), TypeError, "reference length must be an integer"),
        (lambda: compared_length(5, 4), TypeError, "reference_lengths must be a list"),
        (lambda: corpus_bleu(["a b"], ["a b"], max_order=True), TypeError, "max_order must be an integer"),
        (lambda: corpus_bleu(["a b"], ["a b"], max_order=4.0), TypeError, "max_order must be an integer"),
        (lambda: corpus_bleu(["a b"], ["a b"], smooth_value="0.1", smoothing="floor"), TypeError, "smooth_value"),
        (lambda: corpus_bleu(["a b"], ["a b"], smooth_value=True, smoothing="floor"), TypeError, "smooth_value"),
        (lambda: corpus_bleu(["a b"], ["a b"], smooth_value=-1.0, smoothing="floor"), ValueError, "smooth_value"),
        (lambda: corpus_bleu(["a b"], ["a b"], smooth_value=math.nan, smoothing="floor"), ValueError, "smooth_value"),
        (lambda: corpus_bleu(["a b"], ["a b"], effective_order="yes"), TypeError, "effective_order must be"),
        (lambda: corpus_bleu(["a b"], ["a b"], tokenize=None), TypeError, "tokenize must be a function"),
        (lambda: corpus_bleu(["a b"], "a b"), TypeError, "list of texts"),
        (lambda: corpus_bleu(["a b"], None), TypeError, "list of texts"),
        (lambda: sentence_bleu(3, ["a b"]), TypeError, "str or a list of tokens"),
        (lambda: sentence_bleu("a b", ["a b"], max_order=1.5), TypeError, "max_order"),
        (lambda: rouge_n("a b", "a b", n=True), TypeError, "n must be an integer"),
        (lambda: rouge_n("a b", "a b", tokenize=3), TypeError, "tokenize must be a function"),
        (lambda: rouge_n(None, "a b"), TypeError, "candidate must be a str"),
        (lambda: rouge_l("a b", 3), TypeError, "reference must be a str"),
        (lambda: rouge_l("a b", "a b", tokenize="x"), TypeError, "tokenize must be a function"),
        (lambda: lcs_length("abc", ["a"]), TypeError, "not a str"),
        (lambda: lcs_length(["a"], None), TypeError, "list of tokens"),
        (lambda: self_bleu(TEXTS, max_order=True), TypeError, "max_order must be an integer"),
        (lambda: self_bleu(TEXTS, max_order=0), ValueError, "max_order"),
        (lambda: repeated_ending(["a"] * 6, min_repeats=True), TypeError, "min_repeats must be an integer"),
        (lambda: repeated_ending(["a"] * 6, min_repeats=3.0), TypeError, "min_repeats must be an integer"),
        (lambda: repeated_ending(["a"] * 6, max_phrase=True), TypeError, "max_phrase must be an integer or None"),
        (lambda: repeated_ending(["a"] * 6, max_phrase=2.0), TypeError, "max_phrase must be an integer or None"),
        (lambda: repeated_ending(["a"] * 6, max_phrase=0), ValueError, "max_phrase must be >= 1"),
        (lambda: repeated_ending("a a a", 3), TypeError, "not a str"),
        (lambda: repetition_rate(TEXTS, min_repeats=None), TypeError, "min_repeats must be an integer"),
        (lambda: repetition_rate(TEXTS, tokenize=None), TypeError, "tokenize must be a function"),
        (lambda: words(None), TypeError, "text must be a str"),
        (lambda: words(["a", "b"]), TypeError, "text must be a str"),
        (lambda: rouge_words(3), TypeError, "text must be a str"),
    ],
)
def test_every_argument_checks_its_type(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_numpy_integers_are_integers():
    import numpy as np

    assert distinct_n(TEXTS, np.int64(2)) == distinct_n(TEXTS, 2)
    assert brevity_penalty(np.int32(5), 10) == brevity_penalty(5, 10)
    assert repeated_ending(["a", "b"] * 3, np.int64(3), np.int64(2)) == 2
