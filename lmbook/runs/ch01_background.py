"""Chapter 1's settings (which n-gram models it fits and which tokenizers it trains, at each size), and its
comparison of the written-out BPE with the `tokenizers` library's (:func:`compare_merges`)."""

from __future__ import annotations

from dataclasses import dataclass

from .common import Settings


@dataclass(frozen=True)
class BackgroundRun(Settings):
    """The n-gram orders and vocabulary sizes chapter 1 compares."""

    char_orders: int  # character n-grams of order 1 .. char_orders
    word_orders: int  # word n-grams of order 1 .. word_orders
    min_counts: tuple[int, ...]  # word vocabularies: words seen at least this often
    bpe_sizes: tuple[int, ...]  # BPE vocabularies trained on the corpus


RUNS = {
    "full": BackgroundRun(char_orders=8, word_orders=5, min_counts=(1, 2, 3, 5, 10),
                          bpe_sizes=(256, 512, 1024, 2048, 4096, 8192)),
    "fast": BackgroundRun(char_orders=5, word_orders=4, min_counts=(1, 2, 5), bpe_sizes=(256, 512, 1024, 2048, 4096)),
}


def compare_merges(ours, theirs, train_text: str, val_text: str) -> dict:
    """Chapter 1's written-out BPE (``ours``) against the ``tokenizers`` library's (``theirs``), both trained on
    ``train_text``: print where their merges differ and, at the first rank where they part, how often each
    candidate pair occurs in the text encoded with the merges made before (the same in both); then how many tokens
    each cuts ``val_text`` into. Returns the sentences the chapter says of it (``bpe_agreement``,
    ``bpe_tie_result``, ``bpe_count_verdict``) and the token counts."""
    import collections

    import regex

    from ..display.show import md, than
    from ..text.tokenizers import GPT2_PATTERN, BPETokenizer

    ours_merges = [(ours.token_bytes(a).decode(), ours.token_bytes(b).decode()) for a, b in ours.merges]
    theirs_merges = [(theirs.token_bytes(a).decode(), theirs.token_bytes(b).decode()) for a, b in theirs.merges]
    same_set, n = set(ours_merges) == set(theirs_merges), len(ours_merges)
    differ = [r for r in range(n) if ours_merges[r] != theirs_merges[r]]
    print(f"same set of {n} merges: {same_set}")
    print(f"same merge at the same rank: {n - len(differ)} of {n}; ranks that differ: {[r + 1 for r in differ]}")
    for r in differ:
        print(f"  rank {r + 1}: written out {ours_merges[r]}, tokenizers {theirs_merges[r]}")
    agreement, tie_result = f"The two learn the same {n} merges, in the same order.", "No tie set them apart here."
    if differ:
        first = differ[0]
        before = BPETokenizer(ours.merges[:first])
        pairs = collections.Counter()
        for chunk, times in collections.Counter(regex.findall(GPT2_PATTERN, train_text)).items():
            ids = before.encode(chunk)
            for a, b in zip(ids, ids[1:]):
                pairs[before.token_bytes(a).decode(), before.token_bytes(b).decode()] += times
        a, b = pairs[ours_merges[first]], pairs[theirs_merges[first]]
        print(f"\nbefore rank {first + 1}: {ours_merges[first]} occurs {a} times, {theirs_merges[first]} {b} times; "
              f"the most frequent pair occurs {max(pairs.values())} times")
        swapped = (first + 1 < n and ours_merges[first] == theirs_merges[first + 1]
                   and theirs_merges[first] == ours_merges[first + 1])  # each takes the other's choice a step later
        agreement = (f"The two learn {'the same set' if same_set else 'different sets'} of merges, {n - len(differ)} "
                     f"of them at the same rank. They first part at rank {first + 1}, where "
                     + (f"two pairs are tied, each occurring {a} times." if a == b else
                        f"the pairs occur {a} and {b} times, not tied."))
        cause = "the tie" if a == b else "the difference"
        tie_result = (("Here each takes the other's choice one step later, and " if swapped else "Here ")
                      + (f"{cause} changes the order of the merges, not the set." if same_set else
                         f"{cause} changes the set of merges too, not only their order."))
    ours_count, theirs_count = len(ours.encode(val_text)), len(theirs.encode(val_text))
    print(f"held-out text: {ours_count:,} tokens written out, {theirs_count:,} with tokenizers")
    gap = abs(ours_count - theirs_count)
    return {"bpe_agreement": md(agreement), "bpe_tie_result": md(tie_result), "bpe_val_tokens": ours_count,
            "bpe_val_tokens_fast": theirs_count, "bpe_count_verdict": md(
                "exactly as many" if gap == 0 else f"{gap:,} {than(ours_count, theirs_count, 'fewer', 'more').data} "
                f"for the written-out BPE, {100 * gap / theirs_count:.2f}% of the library's count")}
