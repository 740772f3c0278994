"""Chapter 1's settings: which n-gram models it fits and which tokenizers it trains, at each size."""

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
