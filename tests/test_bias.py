"""Bias probes: counts on a small hand-made text, Wilson's interval, Zhao et al.'s amplification worked by hand."""

from __future__ import annotations

import math

import pytest

from lmbook.evaluation.bias import (
    PRONOUNS,
    Association,
    amplification,
    bootstrap_amplification,
    bootstrap_log_odds,
    count_association,
    follower_shares,
    log_odds,
    merge,
    split_text,
    wilson_interval,
)
from lmbook.models.embeddings import words

# he: 4 mentions (he, his, He, him); she: 3 (she, her, She). Followers counted by hand below.
TEXT = "He is brave and his sword is sharp. She is fair; her eyes are bright. He was bold, she was kind, and I saw him."


def test_counts_on_a_hand_made_text():
    counted = count_association(words(TEXT))
    assert counted.mentions == {"he": 4, "she": 3}
    assert dict(counted.followers["he"]) == {"is": 1, "sword": 1, "was": 1}  # "him" ends the text
    assert dict(counted.followers["she"]) == {"is": 1, "eyes": 1, "was": 1}
    assert counted.share("he") == pytest.approx(4 / 7)
    assert counted.n_words == len(words(TEXT))


def test_groups_are_case_blind_and_any_groups_can_be_counted():
    titles = {"lord": ("lord", "king"), "lady": ("lady", "queen")}
    counted = count_association(["My", "Lord", "the", "KING", "and", "the", "queen", "wept"], titles)
    assert counted.mentions == {"lord": 2, "lady": 1}
    assert dict(counted.followers["lord"]) == {"the": 1, "and": 1}
    with pytest.raises(KeyError, match="nobody"):
        counted.share("nobody")


def test_bad_groups_and_inputs_are_refused():
    with pytest.raises(ValueError, match="at least two"):
        count_association(["he"], {"he": ("he",)})
    with pytest.raises(ValueError, match="overlap"):
        count_association(["he"], {"a": ("he", "his"), "b": ("his",)})
    with pytest.raises(ValueError, match="non-empty tuple"):
        count_association(["he"], {"a": "he", "b": ("she",)})
    with pytest.raises(TypeError, match="split it first"):
        count_association("he is here")
    with pytest.raises(ValueError, match="undefined"):
        count_association(["nobody", "here"]).share("he")


def test_wilson_interval_against_the_formula_and_its_edges():
    # k = 8 of n = 10 at z = 1.96, worked out: centre 0.7171, half-width 0.2268
    low, high = wilson_interval(8, 10)
    assert (low, high) == (pytest.approx(0.4902, abs=1e-4), pytest.approx(0.9433, abs=1e-4))
    assert wilson_interval(0, 5)[0] == pytest.approx(0.0, abs=1e-12) and wilson_interval(5, 5)[1] == pytest.approx(1.0)
    assert all(0.0 <= b <= 1.0 for k, n in ((0, 60), (60, 60), (0, 1), (1, 1)) for b in wilson_interval(k, n))
    assert wilson_interval(500, 1000)[1] - wilson_interval(500, 1000)[0] < wilson_interval(5, 10)[1] - 0.0
    with pytest.raises(ValueError, match="k <= n"):
        wilson_interval(3, 2)


def test_follower_shares_and_amplification_worked_by_hand():
    def association(he: dict, she: dict) -> Association:
        from collections import Counter

        return Association(PRONOUNS, {"he": sum(he.values()), "she": sum(she.values())},
                           {"he": Counter(he), "she": Counter(she)}, 0)

    corpus = association({"is": 6, "sword": 18, "eyes": 3}, {"is": 4, "sword": 2, "eyes": 12})
    model = association({"is": 7, "sword": 10, "eyes": 1}, {"is": 3, "sword": 0, "eyes": 9})
    shares = follower_shares(corpus, min_count=5)
    assert shares["is"] == {"he": 0.6, "she": 0.4} and shares["eyes"] == {"he": 0.2, "she": 0.8}
    result = amplification(corpus, model, min_count=5)  # pairs: the most frequent corpus words first
    # is: leans he, 0.6 -> 0.7; sword: he, 0.9 -> 1.0; eyes: she, 0.8 -> 0.9: each +0.1
    assert result["n_words"] == 3 and result["amplification"] == pytest.approx(0.1)
    assert [(w, g) for w, g, _, _ in result["pairs"]] == [("sword", "he"), ("eyes", "she"), ("is", "he")]
    same = amplification(corpus, corpus, min_count=5)
    assert same["amplification"] == pytest.approx(0.0)
    # a word under min_count in the model's text is left out; with none left the measure is undefined
    assert math.isnan(amplification(corpus, association({"x": 1}, {"y": 1}), min_count=5)["amplification"])
    with pytest.raises(ValueError, match="different groups"):
        amplification(corpus, count_association(["lord"], {"a": ("lord",), "b": ("lady",)}))


def test_merge_adds_up_countings_of_separate_texts():
    first, second = "he is here and she is there", "his sword and her eyes"
    merged = merge([count_association(words(first)), count_association(words(second))])
    assert merged.mentions == {"he": 2, "she": 2} and merged.n_words == 7 + 5
    assert dict(merged.followers["she"]) == {"is": 1, "eyes": 1}  # no pair across the two texts
    with pytest.raises(ValueError, match="at least one"):
        merge([])
    with pytest.raises(ValueError, match="same groups"):
        merge([merged, count_association(["lord"], {"a": ("lord",), "b": ("lady",)})])


def test_bootstrap_interval_surrounds_the_estimate_and_is_reproducible():
    corpus = count_association(words("he is bold. he is. he was. she was. she is. he was here. she was there. " * 5))
    texts = ["he is bold. he was. she was.", "he is. she is. he was.", "she was. he is. he is.", "he was. she is."]
    parts = [count_association(words(t * 3)) for t in texts]
    point = amplification(corpus, merge(parts), min_count=2)["amplification"]
    low, high = bootstrap_amplification(corpus, parts, min_count=2, samples=300, seed=1)
    assert low <= point <= high and low < high
    assert bootstrap_amplification(corpus, parts, min_count=2, samples=300, seed=1) == (low, high)
    same = bootstrap_amplification(corpus, [parts[0]] * 4, min_count=2, samples=50)  # nothing varies: one value
    assert same[0] == same[1] == pytest.approx(amplification(corpus, parts[0], min_count=2)["amplification"])
    with pytest.raises(ValueError, match="level"):
        bootstrap_amplification(corpus, parts, level=1.5)


# --- the log-odds ratio with an informative Dirichlet prior (Monroe et al. 2008) -----------------------------
def counted_followers(he: dict[str, int], she: dict[str, int]) -> Association:
    from collections import Counter

    return Association(dict(PRONOUNS), {"he": sum(he.values()), "she": sum(she.values())},
                       {"he": Counter(he), "she": Counter(she)}, 0)


def test_log_odds_is_zero_without_association_whatever_the_base_rate():
    # "and" and "the" follow each group in proportion to its followers; the he-group has four times the followers
    he = {"and": 400, "the": 200, "sword": 390, "was": 10}
    she = {"and": 100, "the": 50, "sword": 10, "was": 90}
    association = counted_followers(he, she)
    shares = follower_shares(association, min_count=1)
    assert shares["and"]["he"] == pytest.approx(0.8)  # the raw share leans "he": the base rate
    scores = log_odds(association, min_count=1)
    assert scores["and"].delta == pytest.approx(0.0, abs=1e-12)
    assert scores["the"].delta == pytest.approx(0.0, abs=1e-12)
    assert scores["sword"].delta > 1 and scores["sword"].z > 3
    assert scores["was"].delta < -1 and scores["was"].z < -3
    assert list(scores) == ["and", "sword", "the", "was"]  # the most frequent first, ties by the word


def test_log_odds_matches_the_written_out_formula_and_the_prior_keeps_it_finite():
    he, she = {"x": 7, "y": 30}, {"y": 12}
    alpha0 = 50.0
    scores = log_odds(counted_followers(he, she), min_count=1, alpha0=alpha0)
    n1, n2, y1, y2 = 37, 12, 7, 0
    a = alpha0 * 7 / 49
    delta = math.log((y1 + a) / (n1 + alpha0 - y1 - a)) - math.log((y2 + a) / (n2 + alpha0 - y2 - a))
    assert scores["x"].delta == pytest.approx(delta)  # finite although "x" never follows "she"
    assert scores["x"].variance == pytest.approx(1 / (y1 + a) + 1 / (y2 + a))
    assert scores["x"].counts == (7, 0)
    assert log_odds(counted_followers(he, she), ("she", "he"), min_count=1, alpha0=alpha0)["x"].delta == \
        pytest.approx(-delta)
    assert "x" not in log_odds(counted_followers(he, she), min_count=8)


def test_bootstrap_log_odds_intervals_cover_zero_for_a_word_without_association():
    import random

    rng = random.Random(0)
    parts = []
    for _ in range(40):  # independent texts: "he" four times as often, "and" after both alike
        tokens = []
        for _ in range(200):
            group = "he" if rng.random() < 0.8 else "she"
            own = "sword" if group == "he" else "was"  # each group's own follower, as often after either
            follower = own if rng.random() < 0.3 else rng.choice(["and", "and", "to"])
            tokens += [group, follower]
        parts.append(count_association(tokens))
    intervals = bootstrap_log_odds(parts, ["and", "sword"], samples=200, seed=0)
    low, high = intervals["and"]
    assert low < 0 < high
    assert intervals["sword"][0] > 0
    assert bootstrap_log_odds(parts, ["and"], samples=200, seed=0)["and"] == (low, high)
    assert split_text(list("abcdefg"), 3) == [["a", "b"], ["c", "d", "e"], ["f", "g"]]


def test_log_odds_refuses_bad_input():
    association = counted_followers({"a": 3}, {"a": 1})
    with pytest.raises(KeyError, match="nobody"):
        log_odds(association, ("he", "nobody"))
    with pytest.raises(ValueError, match="alpha0"):
        log_odds(association, alpha0=0)
    with pytest.raises(ValueError, match="followers of both"):
        log_odds(counted_followers({"a": 3}, {}))
    with pytest.raises(ValueError, match="pieces"):
        split_text(["a"], 2)
