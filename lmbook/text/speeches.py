"""Tiny Shakespeare cut into speeches, and the labelled tasks made from them (chapter 4).

A speech is a speaker's name on a line of its own, then the words, up to a blank line.
:func:`split_corpus` holds out some speeches of the most frequent speakers from
everything, so that pretraining never reads them: they are the test set of the labelled
tasks (is this speech in Shakespeare's word order? who says it?) and the held-out text of
a speaker for domain adaptation. :mod:`lmbook.training.finetune` trains on them.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from .data import train_val_split

SPEECH = re.compile(r"(?:[^\n]+\n?)+")  # a run of non-empty lines: one speech


@dataclass(frozen=True)
class Speech:
    """One speech of the corpus: who speaks, the words, and where it starts in the text."""

    speaker: str
    words: str
    start: int

    @property
    def block(self) -> str:
        """The speech as the corpus writes it: the name line, then the words."""
        return f"{self.speaker}:\n{self.words}"


def speeches(text: str) -> list[Speech]:
    """Every speech of ``text``: blocks between blank lines whose first line is a name and a colon."""
    found = []
    for match in SPEECH.finditer(text):
        head, _, words = match.group().rstrip("\n").partition("\n")
        if head.endswith(":") and words:
            found.append(Speech(head[:-1], words, match.start()))
    return found


@dataclass
class Corpus:
    """Tiny Shakespeare cut for chapter 4 (see :func:`split_corpus`)."""

    pretrain: str  # the text pretraining reads: the first part, less the held-out speeches
    val: str  # the last part of the corpus, as every chapter holds it out
    speakers: list[str]  # the classes of the labelled task, most speeches first
    task_train: list[Speech]  # their speeches that pretraining reads too
    task_test: list[Speech]  # their speeches held out of everything

    def speaker_text(self, speaker: str) -> tuple[str, str]:
        """``(train, held_out)`` text of one speaker's speeches (domain adaptation's sub-corpus)."""
        if speaker not in self.speakers:
            raise ValueError(f"{speaker!r} has no held-out speeches; choose one of {self.speakers}.")
        pick = lambda items: "\n\n".join(s.block for s in items if s.speaker == speaker) + "\n\n"  # noqa: E731
        return pick(self.task_train), pick(self.task_test)


def split_corpus(text: str, n_speakers: int = 4, test_fraction: float = 0.25, val_fraction: float = 0.1,
                 seed: int = 0) -> Corpus:
    """Cut ``text`` into pretraining text, held-out text and the speeches of the ``n_speakers`` commonest speakers.

    A random ``test_fraction`` of each of those speakers' speeches (in the first part of the
    text) is held out of the pretraining text: the test set of the labelled task.
    """
    boundary = len(train_val_split(text, val_fraction)[0])
    first = [s for s in speeches(text) if s.start < boundary]
    counts: dict[str, int] = {}
    for s in first:
        counts[s.speaker] = counts.get(s.speaker, 0) + 1
    if n_speakers < 2 or n_speakers > len(counts):
        raise ValueError(f"n_speakers must lie between 2 and {len(counts)} (the speakers there are), not {n_speakers}.")
    classes = sorted(counts, key=lambda name: (-counts[name], name))[:n_speakers]
    rng = random.Random(seed)
    held_out: set[int] = set()
    for name in classes:
        theirs = [s.start for s in first if s.speaker == name]
        held_out.update(rng.sample(theirs, max(1, round(test_fraction * len(theirs)))))
    task = [s for s in first if s.speaker in classes]
    return Corpus(
        pretrain="\n\n".join(s.block for s in first if s.start not in held_out) + "\n\n",
        val=text[boundary:],
        speakers=classes,
        task_train=[s for s in task if s.start not in held_out],
        task_test=[s for s in task if s.start in held_out],
    )


# --- Labelled tasks built from the corpus ----------------------------------------------
def shuffle_words(text: str, rng: random.Random) -> str:
    """``text`` with the words of each line in a new order (the lines, and the words, stay).

    A line of two or more different words always comes out changed.
    """
    lines = []
    for line in text.split("\n"):
        words = line.split(" ")
        shuffled = list(words)
        if len(set(words)) > 1:
            while shuffled == words:
                rng.shuffle(shuffled)
        lines.append(" ".join(shuffled))
    return "\n".join(lines)


ORDER_CLASSES = ["shuffled", "in order"]


def order_examples(items: list[Speech], seed: int = 0) -> tuple[list[str], list[int]]:
    """The word-order task: each speech as written (label 1) or its words shuffled line by line (label 0).

    Telling them apart needs what a language model learns from raw text, which words may
    follow which: an acceptability judgement, like the CoLA task of the GLUE benchmark.
    """
    rng = random.Random(seed)
    texts, labels = [], []
    for s in items:
        keep = rng.random() < 0.5
        text = s.words if keep else shuffle_words(s.words, rng)
        if keep or text != s.words:  # a speech of one-word lines cannot be shuffled: left out
            texts.append(text)
            labels.append(int(keep))
    return texts, labels


def speaker_examples(items: list[Speech], speakers: list[str]) -> tuple[list[str], list[int]]:
    """The speaker task: each speech's words, labelled with the index of its speaker in ``speakers``."""
    chosen = [s for s in items if s.speaker in speakers]
    return [s.words for s in chosen], [speakers.index(s.speaker) for s in chosen]


def speaker_share(text: str, speaker: str) -> float:
    """The share of the speeches in ``text`` (generated, say) that ``speaker`` speaks; 0 if there are none."""
    heads = [s.speaker for s in speeches(text)]
    return sum(h == speaker for h in heads) / len(heads) if heads else 0.0
