"""Words, the tokens of chapter 1's word-level n-grams and chapter 7's word embeddings."""

from __future__ import annotations

import re

# Words: letters with inner apostrophes (o'er, 'tis is two tokens), numbers, one
# punctuation mark, or a newline. Other white space only separates tokens.
WORD_PATTERN = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)*|[0-9]+|\n|[^\sA-Za-z0-9]")


def split_words(text: str) -> list[str]:
    """The word-level tokens of ``text`` (see ``WORD_PATTERN``), case kept."""
    return WORD_PATTERN.findall(text)
