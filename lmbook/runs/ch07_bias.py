"""Chapter 7's association measured without the base rate: the log-odds ratio of each follower word between the
*he*- and *she*-words, in the corpus and in text sampled from the GPT, with bootstrap intervals.

:mod:`lmbook.evaluation.bias` has the measures; here the rows the chapter shows (:func:`log_odds_rows`), what its
prose says of them (:func:`log_odds_facts`) and their figure (:func:`plot_log_odds`).
"""

from __future__ import annotations

from ..display.show import count_phrase, md
from ..display.viz import plot_intervals
from ..evaluation.bias import Association, bootstrap_log_odds, follower_shares, log_odds


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
