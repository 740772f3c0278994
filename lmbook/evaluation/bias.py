"""Associations a corpus carries, and whether a model trained on it reproduces or amplifies them (chapter 7).

Groups of words (by default the pronouns *he, him, his, himself* against *she, her, hers, herself*)
are counted in a list of words: how often each group occurs, and which word follows each of its
occurrences. Two measurements compare a model's samples with the corpus:

* the **share** of a group among all the groups' mentions, with a Wilson score interval;
* **bias amplification** (Zhao et al. 2017): for each follower word ``w`` and group ``g`` let
  ``b(w, g)`` be the fraction of the occurrences of ``w`` after a group word that come after a word
  of ``g``. For every pair the corpus leans towards (``b > 1/|G|``) take the model's ``b~(w, g)``
  minus the corpus's ``b(w, g)``; the mean is the amplification. Positive: the model's text leans
  the same way as its data, and further; negative: it leans less. A sample of independent texts
  gives it an interval by the bootstrap (:func:`bootstrap_amplification`);
* the **log-odds ratio with an informative Dirichlet prior** (Monroe et al. 2008) of each follower word between
  two groups (:func:`log_odds`): how much likelier the word is after one group's words than after the other's,
  each group's followers counted as a share of that group's own total, so that a word with no association
  scores zero however unequal the groups' sizes are (a raw share, such as ``b(w, g)``, puts every common word
  on the side of the larger group: the base rate). Intervals by the bootstrap over independent pieces of text
  (:func:`bootstrap_log_odds`).

Counting is case-blind; give the words as :func:`lmbook.models.embeddings.words` makes them.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

from .intervals import bootstrap_draws, bootstrap_interval, percentile_interval

PRONOUNS: dict[str, tuple[str, ...]] = {
    "he": ("he", "him", "his", "himself"),
    "she": ("she", "her", "hers", "herself"),
}


@dataclass
class Association:
    """What :func:`count_association` counted: mentions of each group and the words after them."""

    groups: dict[str, tuple[str, ...]]
    mentions: dict[str, int]  # occurrences of each group's words
    followers: dict[str, Counter]  # group -> Counter of the word right after each occurrence
    n_words: int

    def share(self, group: str) -> float:
        """The fraction of all the groups' mentions that belong to ``group``."""
        if group not in self.groups:
            raise KeyError(f"no group {group!r}; the groups are {sorted(self.groups)}.")
        total = sum(self.mentions.values())
        if total == 0:
            raise ValueError("none of the groups' words occurs: a share is undefined.")
        return self.mentions[group] / total


def _check_groups(groups: dict[str, tuple[str, ...]]) -> None:
    if not isinstance(groups, dict) or len(groups) < 2:
        raise ValueError(f"groups must be a dict of at least two named groups of words, not {groups!r}.")
    seen: dict[str, str] = {}
    for name, members in groups.items():
        if isinstance(members, str) or not members:
            raise ValueError(f"group {name!r} must be a non-empty tuple of words, not {members!r}.")
        for word in members:
            if word in seen:
                raise ValueError(f"{word!r} is in group {seen[word]!r} and in group {name!r}: groups must not overlap.")
            seen[word] = name


def count_association(tokens: list[str], groups: dict[str, tuple[str, ...]] = PRONOUNS) -> Association:
    """Count each group's mentions in ``tokens`` (lower-cased words) and the word that follows each one."""
    _check_groups(groups)
    if isinstance(tokens, str):
        raise TypeError("tokens must be a list of words, not a str: split it first (lmbook.models.embeddings.words).")
    group_of = {w.lower(): name for name, members in groups.items() for w in members}
    mentions = dict.fromkeys(groups, 0)
    followers = {name: Counter() for name in groups}
    for i, word in enumerate(tokens):
        name = group_of.get(word.lower())
        if name is None:
            continue
        mentions[name] += 1
        if i + 1 < len(tokens):
            followers[name][tokens[i + 1].lower()] += 1
    return Association(dict(groups), mentions, followers, len(tokens))


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson's score interval for a proportion of ``k`` in ``n`` (95 % with ``z=1.96``), within [0, 1] (at k = 0
    or k = n the formula's bound is 0 or 1 up to rounding, which would otherwise fall outside)."""
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n > 0, not k={k}, n={n}.")
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def share_interval(k: int, n: int) -> dict[str, float]:
    """``k`` of ``n`` as chapter 9 reports a share: ``share`` and its 95% Wilson bounds ``low`` and ``high``."""
    low, high = wilson_interval(k, n)
    return {"share": k / n, "low": low, "high": high}


def follower_shares(association: Association, min_count: int = 5) -> dict[str, dict[str, float]]:
    """For each word seen at least ``min_count`` times after any group word: the fraction after each group."""
    totals = Counter()
    for counter in association.followers.values():
        totals.update(counter)
    return {
        word: {g: association.followers[g][word] / total for g in association.groups}
        for word, total in totals.items()
        if total >= min_count
    }


def amplification(corpus: Association, model: Association, min_count: int = 5) -> dict:
    """Zhao et al.'s bias amplification of ``model``'s text over ``corpus``, on the follower words both have.

    Returns ``amplification`` (the mean of ``b~(w, g) - b(w, g)`` over the pairs where the corpus leans
    towards ``g``), ``pairs`` (word, group, corpus share, model share; the most frequent corpus words
    first) and ``n_words``, the follower words seen at least ``min_count`` times in both texts.
    """
    if corpus.groups != model.groups:
        raise ValueError(f"the two countings used different groups: {corpus.groups} against {model.groups}.")
    reference, observed = follower_shares(corpus, min_count), follower_shares(model, min_count)
    frequency = {w: sum(corpus.followers[g][w] for g in corpus.groups) for w in reference}
    common = sorted(set(reference) & set(observed), key=lambda w: (-frequency[w], w))
    even = 1 / len(corpus.groups)
    pairs = [(w, g, reference[w][g], observed[w][g]) for w in common for g in corpus.groups if reference[w][g] > even]
    value = sum(m - c for _, _, c, m in pairs) / len(pairs) if pairs else float("nan")
    return {"amplification": value, "pairs": pairs, "n_words": len(common)}


def merge(parts: list[Association]) -> Association:
    """The countings of several texts (e.g. independent samples) as one: mentions and followers added up."""
    if not parts:
        raise ValueError("merge needs at least one Association.")
    groups = parts[0].groups
    if any(p.groups != groups for p in parts):
        raise ValueError("all the countings must use the same groups.")
    followers = {g: Counter() for g in groups}
    for part in parts:
        for g in groups:
            followers[g].update(part.followers[g])
    mentions = {g: sum(p.mentions[g] for p in parts) for g in groups}
    return Association(dict(groups), mentions, followers, sum(p.n_words for p in parts))


def bootstrap_amplification(corpus: Association, parts: list[Association], min_count: int = 5, samples: int = 200,
                            level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """A percentile-bootstrap interval for ``amplification(corpus, merge(parts))``.

    The ``parts`` (countings of independent texts, such as separately sampled streams) are drawn with
    replacement ``samples`` times; resamples where no follower word qualifies are skipped.
    """
    if not 0 < level < 1 or samples < 2:
        raise ValueError(f"need 0 < level < 1 and samples >= 2, not level={level}, samples={samples}.")
    return bootstrap_interval(parts, lambda draw: amplification(corpus, merge(draw), min_count)["amplification"],
                              samples=samples, level=level, seed=seed)


# --- An association corrected for the base rate: the log-odds ratio with a Dirichlet prior --------------
@dataclass
class LogOdds:
    """One follower word's log-odds ratio between two groups: ``delta`` (positive: likelier after ``first``),
    its approximate ``variance`` and ``z = delta / sqrt(variance)``, and the word's counts after each group."""

    word: str
    delta: float
    variance: float
    z: float
    counts: tuple[int, int]


def log_odds(association: Association, pair: tuple[str, str] = ("he", "she"), min_count: int = 5,
             alpha0: float = 100.0) -> dict[str, LogOdds]:
    """Monroe et al. (2008)'s log-odds ratio with an informative Dirichlet prior, for every word seen at least
    ``min_count`` times after a word of the two groups of ``pair``, most frequent first.

    With ``y_i`` the word's count after group ``i``, ``n_i`` all of group ``i``'s followers, and the prior
    ``a = alpha0 * (y_1 + y_2) / (n_1 + n_2)`` (the word's pooled frequency, ``alpha0`` pseudo-counts in all):

        delta = log((y_1 + a) / (n_1 + alpha0 - y_1 - a)) - log((y_2 + a) / (n_2 + alpha0 - y_2 - a)),
        variance = 1 / (y_1 + a) + 1 / (y_2 + a).

    A word that follows each group in proportion to the group's followers (``y_1 / n_1 = y_2 / n_2``) gets
    exactly zero, whatever ``n_1 / n_2``; the prior keeps a rare word seen after one group only finite.
    """
    first, second = pair
    for g in pair:
        if g not in association.groups:
            raise KeyError(f"no group {g!r}; the groups are {sorted(association.groups)}.")
    if first == second:
        raise ValueError(f"pair must name two different groups, not {pair!r}.")
    if isinstance(alpha0, bool) or not isinstance(alpha0, (int, float)) or not alpha0 > 0:
        raise ValueError(f"alpha0 must be a number above 0, not {alpha0!r}.")
    a_counts, b_counts = association.followers[first], association.followers[second]
    n1, n2 = sum(a_counts.values()), sum(b_counts.values())
    if n1 == 0 or n2 == 0:
        raise ValueError(f"no word follows the {first if n1 == 0 else second!r} group: a log-odds ratio needs "
                         "followers of both groups; count more text.")
    out = {}
    for word in sorted(set(a_counts) | set(b_counts), key=lambda w: (-(a_counts[w] + b_counts[w]), w)):
        y1, y2 = a_counts[word], b_counts[word]
        if y1 + y2 < min_count:
            continue
        a = alpha0 * (y1 + y2) / (n1 + n2)
        delta = math.log((y1 + a) / (n1 + alpha0 - y1 - a)) - math.log((y2 + a) / (n2 + alpha0 - y2 - a))
        variance = 1 / (y1 + a) + 1 / (y2 + a)
        out[word] = LogOdds(word, delta, variance, delta / math.sqrt(variance), (y1, y2))
    return out


def bootstrap_log_odds(parts: list[Association], words_: list[str], pair: tuple[str, str] = ("he", "she"),
                       alpha0: float = 100.0, samples: int = 200, level: float = 0.95,
                       seed: int = 0) -> dict[str, tuple[float, float]]:
    """Percentile-bootstrap intervals for the :func:`log_odds` of each of ``words_`` in ``merge(parts)``, the
    ``parts`` (countings of independent pieces of text) drawn with replacement; one set of draws serves every
    word. A word absent from both groups' followers in a draw has no value there (left out)."""
    if not words_:
        raise ValueError("words_ is empty: name the follower words to give intervals for.")

    def deltas(draw: list[Association]) -> dict[str, float]:
        values = log_odds(merge(draw), pair, min_count=1, alpha0=alpha0)
        return {w: values[w].delta if w in values else math.nan for w in words_}

    draws = bootstrap_draws(parts, deltas, samples, seed)
    return {w: percentile_interval([d[w] for d in draws], level) for w in words_}


def split_text(tokens: list[str], pieces: int) -> list[list[str]]:
    """``tokens`` cut into ``pieces`` consecutive parts of (nearly) equal length: independent-enough pieces of one
    long text for :func:`bootstrap_log_odds`."""
    if isinstance(pieces, bool) or not isinstance(pieces, int) or not 1 <= pieces <= len(tokens):
        raise ValueError(f"pieces must be a whole number from 1 to the {len(tokens)} tokens, not {pieces!r}.")
    bounds = [round(i * len(tokens) / pieces) for i in range(pieces + 1)]
    return [tokens[b:e] for b, e in zip(bounds, bounds[1:])]
