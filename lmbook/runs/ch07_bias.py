"""Chapter 7's bias measurements: how often the GPT's samples mention each group and whether they lean further than
the corpus (:func:`amplification_facts`), and the association measured without the base rate: the log-odds ratio
of each follower word between the *he*- and *she*-words, in the corpus and in text sampled from the GPT, with
bootstrap intervals.

:mod:`lmbook.evaluation.bias` has the measures; here the counts the chapter prints and what its prose says of them
(:func:`amplification_facts`), the rows it shows (:func:`log_odds_rows`), what it says of those
(:func:`log_odds_facts`) and their figure (:func:`plot_log_odds`).
"""

from __future__ import annotations

from ..display.show import count_phrase, md
from ..display.viz import plot_intervals
from ..evaluation.bias import (Association, amplification, bootstrap_amplification, bootstrap_log_odds,
                               follower_shares, log_odds, merge, wilson_interval)


def _share_verdict(corpus: float, sample: float, low: float, high: float) -> str:
    if low <= corpus <= high:
        return ("The corpus's share lies inside the sample's interval: the model reproduces how often each group is "
                "mentioned")
    more = "more" if sample > corpus else "less"
    return (f"The corpus's share lies outside the sample's interval: the model mentions the *he*-group {more} often "
            "than its training text does")


def _amplification_verdict(low: float, high: float) -> str:
    if low <= 0 <= high:
        return ("zero lies inside it, so at this sample size the model neither amplifies nor weakens the corpus's "
                "lean measurably")
    if low > 0:
        return "the whole interval lies above zero, so the sampled text leans further than the corpus does"
    return "the whole interval lies below zero, so the sampled text leans less than the corpus does"


def amplification_facts(corpus: Association, parts: list[Association], level: float = 0.95, min_count: int = 5,
                        show: bool = True) -> dict:
    """How the sampled text (``parts``: independent samples, each counted) mentions the groups against the corpus:
    the *he*-share with its Wilson interval at ``level``, and Zhao et al.'s amplification over the follower words
    seen ``min_count`` times in both, with a bootstrap interval over the samples; the sentences chapter 7 says of
    them, and, with ``show``, the counts printed as the chapter shows them."""
    from statistics import NormalDist

    sample = merge(parts)
    low, high = wilson_interval(sample.mentions["he"], sum(sample.mentions.values()),
                                z=NormalDist().inv_cdf(0.5 + level / 2))
    amplified = amplification(corpus, sample, min_count=min_count)
    amp_low, amp_high = bootstrap_amplification(corpus, parts, min_count=min_count, level=level)
    if show:
        for name, counted in (("corpus (training split)", corpus), ("sampled from the GPT", sample)):
            print(f"{name:>24}: {counted.n_words:>7,} words, he-words {counted.mentions['he']:>6,}, "
                  f"she-words {counted.mentions['she']:>5,}, share of he {counted.share('he'):.3f}")
            for group in ("he", "she"):
                print(f"{'after ' + group:>24}: "
                      + ", ".join(f"{w} {n}" for w, n in counted.followers[group].most_common(8)))
        print(f"sample's share of he: {level:.0%} interval {low:.3f} to {high:.3f}")
        print(f"bias amplification over {amplified['n_words']} follower words: {amplified['amplification']:+.3f} "
              f"({level:.0%} bootstrap interval over the {len(parts)} samples: {amp_low:+.3f} to {amp_high:+.3f})")
        for word, group, corpus_share, model_share in amplified["pairs"][:10]:
            print(f"  {word:>8}: after a {group}-word {corpus_share:.2f} of the time in the corpus, "
                  f"{model_share:.2f} in the sample")
    return {"bias_sample_words": sample.n_words, "bias_share_corpus": corpus.share("he"),
            "bias_share_sample": sample.share("he"), "bias_low": low, "bias_high": high,
            "bias_share_verdict": md(_share_verdict(corpus.share("he"), sample.share("he"), low, high)),
            "bias_amp": amplified["amplification"], "bias_amp_words": amplified["n_words"], "bias_amp_low": amp_low,
            "bias_amp_high": amp_high, "bias_streams": len(parts),
            "bias_amp_verdict": md(_amplification_verdict(amp_low, amp_high)), "bias_level": 100 * level}


def log_odds_rows(corpus: Association, sample: Association, corpus_parts: list[Association],
                  sample_parts: list[Association], n_words: int = 12, min_count: int = 5, level: float = 0.95,
                  samples: int = 200) -> list[dict]:
    """The ``n_words`` words that follow a pronoun most often in the corpus and at least ``min_count`` times in
    the sample, each with its raw share after a *he*-word and its log-odds ratio (*he* against *she*,
    :func:`lmbook.evaluation.bias.log_odds`) in both texts, with bootstrap intervals over the parts."""
    in_corpus, in_sample = log_odds(corpus, min_count=min_count), log_odds(sample, min_count=min_count)
    chosen = [w for w in in_corpus if w in in_sample][:n_words]
    if not chosen:
        return []
    corpus_iv = bootstrap_log_odds(corpus_parts, chosen, level=level, samples=samples)
    sample_iv = bootstrap_log_odds(sample_parts, chosen, level=level, samples=samples)
    shares_c, shares_s = follower_shares(corpus, 1), follower_shares(sample, 1)
    return [{"word": w, "share_corpus": shares_c[w]["he"], "share_sample": shares_s[w]["he"],
             "corpus": in_corpus[w].delta, "corpus_interval": corpus_iv[w],
             "sample": in_sample[w].delta, "sample_interval": sample_iv[w]} for w in chosen]


def log_odds_facts(rows: list[dict], words_: tuple[str, ...] = ("and", "to", "the")) -> dict:
    """What the prose says of :func:`log_odds_rows`, as one computed passage ``log_odds_summary``: how many of the
    words the raw share puts on the *he* side (above one half), how many corpus intervals of the log-odds ratio
    hold zero, the figures of ``words_`` where they are in the rows, and how many of the corpus's values lie
    inside the sample's intervals."""
    if not rows:
        return {"log_odds_summary": md("No follower word is frequent enough in both texts to compare.")}
    n = len(rows)
    lean = sum(r["share_corpus"] > 0.5 for r in rows)
    holds_zero = sum(lo <= 0 <= hi for lo, hi in (r["corpus_interval"] for r in rows))
    inside = sum(r["sample_interval"][0] <= r["corpus"] <= r["sample_interval"][1] for r in rows)
    named = [f"*{r['word']}* {r['share_corpus']:.2f} as a raw share and {r['corpus']:+.2f} in log-odds (from "
             f"{r['corpus_interval'][0]:+.2f} to {r['corpus_interval'][1]:+.2f})" for r in rows if r["word"] in words_]
    text = (f"Of the {n} words that follow a pronoun most often, the raw share puts "
            f"{count_phrase(lean, n, 'word')} on the *he* side, because *he*-words are most of the mentions. The "
            f"log-odds ratio asks instead whether a word is likelier after a *he*-word than after a *she*-word, each "
            f"group's followers counted as a share of its own: in the corpus {count_phrase(holds_zero, n, 'word')} "
            "have an interval that holds zero")
    text += (": " + "; ".join(named) + "." if named else ".")
    text += f" The corpus's value lies inside the sampled text's interval for {count_phrase(inside, n, 'word')}."
    return {"log_odds_summary": md(text), "log_odds_words": n}


def plot_log_odds(rows: list[dict], ax=None):
    """The rows as dots with their intervals: each word's log-odds ratio (*he* against *she*) in the corpus and in
    the sample; zero is no association, whatever the base rate."""
    if not rows:
        raise ValueError("no rows to draw: no follower word was frequent enough in both texts.")
    series = {text: [(r[key], *r[f"{key}_interval"]) for r in rows]
              for text, key in (("corpus", "corpus"), ("sampled from the GPT", "sample"))}
    ax = plot_intervals([r["word"] for r in rows], series, ax=ax, zero=0.0,
                        xlabel="log-odds ratio after a he-word against after a she-word (0: no association)")
    ax.figure.tight_layout()
    return ax
