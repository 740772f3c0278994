"""A small sequence-to-sequence task made from the corpus: a line of the plays from its words sorted (chapter 3b).

A line is cut into words and punctuation marks (:func:`lmbook.text.words.split_words`), its tokens written one
space apart: ``"Farewell , my lord ."``. The source is the same tokens in alphabetical order, case ignored
(``", . Farewell lord my"``); the target is the line. The source holds every token of the target, so a model has
to learn two things: copy tokens from the source (what cross-attention does) and put them in an order that reads
like the plays (what a language model does).

:func:`reorder_task` picks the short lines made of the corpus's most frequent tokens and splits them,
deterministically from a seed, into training and held-out lines that share no line; :class:`ReorderTask`
encodes them as word ids after four special tokens, and :class:`PairBatches` draws seeded batches in either of
two forms: the encoder–decoder's (source, decoder input, shifted target) or a decoder-only model's one sequence
``source SEP target END`` with the loss on the target part only.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

import torch

from ..interface import check_int, check_number
from .data import SeededBatches, check_sizes, load_shakespeare, to_device
from .words import split_words

PAD, BOS, EOS, SEP = 0, 1, 2, 3  # padding, start of the target, end of the target, end of the source
SPECIALS = ("<pad>", "<s>", "</s>", "<sep>")
MODES = ("seq2seq", "joint")


def sort_words(line: str) -> str:
    """The tokens of ``line`` (separated by white space) in alphabetical order, case ignored, one space apart."""
    if not isinstance(line, str):
        raise TypeError(f"line must be a string, not {type(line).__name__}.")
    return " ".join(sorted(line.split(), key=lambda w: (w.lower(), w)))


def task_lines(text: str, min_words: int = 3, max_words: int = 8, vocab_words: int = 1000) -> list[str]:
    """The distinct lines of ``text`` of ``min_words`` to ``max_words`` tokens (words and punctuation marks), all
    among the ``vocab_words`` most frequent tokens of ``text``, as tokens one space apart, in order of first
    appearance; the speakers' names (lines ending in ":") are left out."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a string, not {type(text).__name__}.")
    check_int("min_words", min_words, 1)
    check_int("max_words", max_words, min_words)
    check_int("vocab_words", vocab_words, 1)
    counts = Counter(w for w in split_words(text) if w != "\n")
    common = {w for w, _ in counts.most_common(vocab_words)}
    seen, lines = set(), []
    for raw in text.splitlines():
        words = split_words(raw)
        line = " ".join(words)
        if (words and not raw.rstrip().endswith(":") and min_words <= len(words) <= max_words
                and all(w in common for w in words) and line not in seen):
            seen.add(line)
            lines.append(line)
    return lines


@dataclass(frozen=True)
class ReorderTask:
    """The task's lines (tokens one space apart), split, and its vocabulary: ids 0 to 3 are ``SPECIALS``, then
    ``words``."""

    train: tuple[str, ...]
    val: tuple[str, ...]
    words: tuple[str, ...]

    @property
    def vocab_size(self) -> int:
        return len(SPECIALS) + len(self.words)

    @property
    def max_len(self) -> int:
        """The most tokens in a line of either split (a source is as long as its line)."""
        return max(len(line.split()) for line in self.train + self.val)

    def encode(self, text: str) -> list[int]:
        """The ids of the tokens of ``text`` (separated by white space; no special token)."""
        table = {w: i + len(SPECIALS) for i, w in enumerate(self.words)}
        missing = sorted(set(text.split()) - set(table))
        if missing:
            raise ValueError(f"tokens {missing[:5]!r} are not in the task's vocabulary of {len(self.words)} words.")
        return [table[w] for w in text.split()]

    def decode(self, ids) -> str:
        """The text of ``ids`` up to the first end token, special tokens left out, tokens one space apart."""
        out = []
        for i in (ids.tolist() if isinstance(ids, torch.Tensor) else ids):
            if i == EOS:
                break
            if i >= len(SPECIALS):
                out.append(self.words[i - len(SPECIALS)])
        return " ".join(out)

    def pairs(self, split: str) -> list[tuple[str, str]]:
        """``(source, target)`` for each line of ``split`` ("train" or "val")."""
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', not {split!r}.")
        return [(sort_words(line), line) for line in getattr(self, split)]


def reorder_task(text: str | None = None, seed: int = 0, val_fraction: float = 0.1, min_words: int = 3,
                 max_words: int = 8, vocab_words: int = 1000) -> ReorderTask:
    """The task from ``text`` (Tiny Shakespeare by default): :func:`task_lines` shuffled by ``seed`` and split,
    ``val_fraction`` of them held out."""
    check_number("val_fraction", val_fraction, "a number strictly between 0 and 1", lambda f: 0.0 < f < 1.0)
    text = load_shakespeare() if text is None else text
    lines = task_lines(text, min_words, max_words, vocab_words)
    random.Random(seed).shuffle(lines)
    n_val = max(1, round(len(lines) * val_fraction))
    if len(lines) - n_val < 1:
        raise ValueError(f"only {len(lines)} lines fit (min_words={min_words}, max_words={max_words}, "
                         f"vocab_words={vocab_words}): too few to hold some out; loosen the limits or give more text.")
    words = tuple(sorted({w for line in lines for w in line.split()}))
    return ReorderTask(tuple(lines[n_val:]), tuple(lines[:n_val]), words)


def encode_pairs(task: ReorderTask, pairs: list[tuple[str, str]], mode: str = "seq2seq"
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """``pairs`` as one batch ``(x, y)``, padded with ``PAD`` (inputs) and -1 (targets: no loss there).

    - ``"seq2seq"``: ``x`` (B, S + T) is the source padded to S = ``task.max_len`` followed by the decoder's
      input ``BOS target`` padded to T = S + 1; ``y`` (B, T) is ``target EOS``, the decoder's input shifted by one
      (teacher forcing);
    - ``"joint"``: one sequence ``source SEP target EOS`` for a decoder-only model, ``x`` all but its last
      token and ``y`` all but its first, with -1 on the source, so that the loss counts the target only.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}.")
    if not pairs:
        raise ValueError("pairs is empty: a batch needs at least one (source, target) pair.")
    S = task.max_len
    T = S + 1
    xs, ys = [], []
    for source, target in pairs:
        src, tgt = task.encode(source), task.encode(target)
        if len(src) > S or len(tgt) > S:
            raise ValueError(f"a pair longer than the task's longest line ({S} tokens): {target!r}.")
        if mode == "seq2seq":
            xs.append(src + [PAD] * (S - len(src)) + [BOS] + tgt + [PAD] * (T - 1 - len(tgt)))
            ys.append(tgt + [EOS] + [-1] * (T - 1 - len(tgt)))
        else:
            seq = src + [SEP] + tgt + [EOS]
            fill = S + T + 1 - len(seq)  # every row as long as the longest possible one
            xs.append(seq[:-1] + [PAD] * fill)
            ys.append([-1] * len(src) + tgt + [EOS] + [-1] * fill)
    return torch.tensor(xs), torch.tensor(ys)


class PairBatches(SeededBatches):
    """Random batches of ``batch_size`` pairs of ``split``, encoded by :func:`encode_pairs` in ``mode``, seeded."""

    def __init__(self, task: ReorderTask, split: str, batch_size: int, mode: str = "seq2seq", device="cpu",
                 seed: int = 0):
        check_sizes(batch_size=batch_size)
        super().__init__(device, seed)
        self.x, self.y = encode_pairs(task, task.pairs(split), mode)  # every pair, encoded once
        self.batch_size = batch_size

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.randint(len(self.x), (self.batch_size,), generator=self.generator)
        return to_device(self.x[rows], self.device), to_device(self.y[rows], self.device)
