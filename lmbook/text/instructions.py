"""Instructions a program can grade, built by code from Tiny Shakespeare (chapter 9).

Each example is one request and its one right answer about a line of the plays: who speaks it, its first or last
word, the line in capitals, its words reversed, how many words it has, the line that follows it, or a speech
continued in its speaker's voice. :data:`TASKS` holds each task's phrasings (four ways of asking) and its grader:
exact match after a stated normalisation, or, for the voice task, none (the chapter scores it by the model's loss
on the corpus's own continuation). :func:`build_instructions` cuts the corpus's speeches into training speeches and
held-out speeches, holds one phrasing of every task and one whole task out of training, and returns four splits:
``train``; ``held_out_lines`` (unseen lines, familiar phrasings); ``held_out_phrasings`` (the same unseen lines and
tasks, each asked in its task's held-out phrasing, so the two splits differ in the phrasing alone); and
``held_out_task`` (a task never trained on). Every line comes from the part of the corpus the book's models
pretrain on (:func:`lmbook.text.data.train_val_split`), so "the next line" asks for text the model has read, and
only from lines that occur once in the corpus, so that no held-out line is also a training line. The same seed
gives the same set. Everything is written in the corpus's own 65 characters, which hold no digit but 3: counts
are answered in words ("seven").

What such tasks can show, and what they cannot. Because every answer is checked by a program, the chapter can
measure what instruction tuning changes, without a judge: whether the model follows the format (answers and
stops), whether it has learned the task rather than memorised lines (held-out lines), whether it reads the
request rather than recognising a template (held-out phrasings), and whether anything carries over to a request it
never saw (the held-out task). The tasks are narrow, though: a few string transformations and recalls whose
answers a short program computes, asked in four phrasings each, where real instruction data spans open-ended
requests written by people, with many acceptable answers, judged by people or by other models. A model of the
book's size that does well here has learned these eight tasks and how a turn ends; it says little about
helpfulness, truthfulness or open-ended instruction following, and a task that fails may fail because a
character-level model of a few million parameters cannot do it (counting, reversing), not because the tuning did
not teach it. The synthetic set isolates the mechanics of instruction tuning; it does not measure its breadth.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from ..interface import check_int, check_number, check_seed
from .data import train_val_split
from .speeches import speeches

WORD = re.compile(r"[A-Za-z]+(?:['-][A-Za-z]+)*")  # a word: letters, with inner apostrophes or hyphens (o'er)
NUMBER_WORDS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
                "sixteen seventeen eighteen nineteen twenty").split()
END_PUNCTUATION = ".,;:!?'-"  # ignored at either end of an answer (see normalise)


def words(line: str) -> list[str]:
    """The words of ``line``: runs of letters, with inner apostrophes or hyphens; punctuation is no part of a word
    ("'Tis" gives "Tis", "well--" gives "well")."""
    return WORD.findall(line)


# --- Graders -------------------------------------------------------------------------------------------------
def exact(output: str, answer: str) -> bool:
    """Equal once runs of whitespace are one space and the ends are stripped; case and punctuation count."""
    return " ".join(output.split()) == " ".join(answer.split())


def loose(output: str, answer: str) -> bool:
    """Equal after :func:`normalise` (whitespace, case, punctuation at either end ignored)."""
    return normalise(output) == normalise(answer)


def number(output: str, answer: str) -> bool:
    """As :func:`loose`, and a number written in digits counts as its word ("7" for "seven")."""
    said = normalise(output)
    if said.isdigit() and int(said) < len(NUMBER_WORDS):
        said = NUMBER_WORDS[int(said)]
    return said == normalise(answer)


def normalise(text: str) -> str:
    """``text`` lowercased, its runs of whitespace one space, and punctuation (``.,;:!?'-``) stripped at both ends
    ("'Tis." reads as "tis", as words() reads "'Tis")."""
    return " ".join(text.split()).strip(END_PUNCTUATION + " ").lower()


# --- The tasks -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Line:
    """A line of a speech and what the tasks need of it; ``offset`` is where it starts in the corpus."""

    text: str
    offset: int
    speaker: str
    words: tuple[str, ...]  # words(text)
    next: str | None  # the following line of the same speech, when it is usable
    continuation: str | None  # for a speech's first line: the lines after it, up to ``voice_chars``


def _count(line: Line) -> str | None:
    n = len(line.words)
    return NUMBER_WORDS[n] if n < len(NUMBER_WORDS) else None


@dataclass(frozen=True)
class Task:
    """One task: its phrasings (``{line}`` and ``{speaker}`` are filled in), the answer it asks of a line (``None``:
    the line does not suit it), its grader (``None``: scored by the model's loss) and the rule in words."""

    name: str
    phrasings: tuple[str, ...]
    answer: Callable[[Line], str | None]
    grader: Callable[[str, str], bool] | None
    rule: str


TASKS: dict[str, Task] = {task.name: task for task in [
    Task("speaker", ("Who speaks this line?\n{line}", "Name the speaker of this line.\n{line}",
                     "Which character says the following?\n{line}", "Tell me who says this:\n{line}"),
         lambda line: line.speaker, loose, "the speaker's name as the corpus writes it; case is ignored"),
    Task("first_word", ("What is the first word of this line?\n{line}",
                        "Give the first word of the line below.\n{line}", "Which word opens this line?\n{line}",
                        "Say only the first word:\n{line}"),
         lambda line: line.words[0], loose, "the first word (see words()); case is ignored"),
    Task("last_word", ("What is the last word of this line?\n{line}", "Give the last word of the line below.\n{line}",
                       "Which word ends this line?\n{line}", "Say only the final word:\n{line}"),
         lambda line: line.words[-1], loose, "the last word (see words()); case is ignored"),
    Task("capitals", ("Write this line in capitals.\n{line}", "Rewrite the line below in upper case.\n{line}",
                      "Shout this line, every letter a capital:\n{line}", "Put this line in capital letters:\n{line}"),
         lambda line: line.text.upper(), exact, "the line with every letter upper case, punctuation kept; exact"),
    Task("reverse", ("Write the words of this line in reverse order.\n{line}",
                     "Reverse the order of the words below.\n{line}", "Say this line backwards, word by word:\n{line}",
                     "List the words of this line from last to first.\n{line}"),
         lambda line: " ".join(line.words[::-1]), exact,
         "the words (see words()) from last to first, one space apart, without punctuation; exact"),
    Task("count", ("How many words are in this line?\n{line}", "Count the words of the line below.\n{line}",
                   "Tell me the number of words here:\n{line}", "How many words does this line have?\n{line}"),
         _count, number, "the number of words (see words()) as an English word; digits are accepted"),
    Task("next_line", ("What line comes next?\n{line}", "Give the line that follows this one in the play.\n{line}",
                       "Continue with the next line:\n{line}", "Which line follows?\n{line}"),
         lambda line: line.next, loose, "the next line of the speech; case and end punctuation are ignored"),
    Task("voice", ("Go on with this speech of {speaker}:\n{line}", "Continue in the voice of {speaker}.\n{line}",
                   "Speak on as {speaker} would:\n{line}", "{speaker} began so. Go on:\n{line}"),
         lambda line: line.continuation, None, "no match: scored by the model's loss on the corpus's continuation"),
]}


@dataclass(frozen=True)
class Example:
    """One instruction and its answer; ``line_id`` is the corpus offset of the line it is about, ``phrasing_id`` the
    index of its phrasing in ``TASKS[task].phrasings``, ``split`` the split it belongs to."""

    task: str
    instruction: str
    answer: str
    line_id: int
    phrasing_id: int
    split: str

    def messages(self) -> list[dict[str, str]]:
        """The example as a conversation for a chat template: the user's request and the assistant's answer."""
        return [{"role": "user", "content": self.instruction}, {"role": "assistant", "content": self.answer}]

    def __len__(self) -> int:
        """Characters of the instruction and the answer together (what ``max_chars`` bounds)."""
        return len(self.instruction) + len(self.answer)


def grade(example: Example, output: str) -> bool:
    """Whether ``output`` (the model's answer, without the end-of-turn token) is right for ``example``, by its task's
    grader. The voice task has none: it raises, since the chapter scores it by the model's loss."""
    if not isinstance(example, Example):
        raise TypeError(f"example must be an Example, not {type(example).__name__}.")
    if not isinstance(output, str):
        raise TypeError(f"output must be the model's answer as a str, not {type(output).__name__}: decode the ids.")
    grader = TASKS[example.task].grader
    if grader is None:
        raise ValueError(f"the {example.task} task has no grader ({TASKS[example.task].rule}): score it by the "
                         "model's loss on the answer, not by matching.")
    return grader(output, example.answer)


def accuracy(examples: list[Example], outputs: list[str]) -> dict[str, float]:
    """The share of right answers per task, over the graded tasks among ``examples`` (``outputs[i]`` answers
    ``examples[i]``)."""
    if not isinstance(examples, (list, tuple)) or not isinstance(outputs, (list, tuple)):
        raise TypeError("examples and outputs must be lists, one output for each example.")
    if len(examples) != len(outputs):
        raise ValueError(f"{len(examples)} examples but {len(outputs)} outputs: give one output for each example.")
    right: dict[str, list[bool]] = {}
    for example, output in zip(examples, outputs):
        if TASKS[example.task].grader is not None:
            right.setdefault(example.task, []).append(grade(example, output))
    return {task: sum(marks) / len(marks) for task, marks in right.items()}


# --- Building the set ----------------------------------------------------------------------------------------
MIN_LINE_CHARS = 12  # shorter lines ("My lord.") recur too often to say which speech they come from
SPLITS = ("train", "held_out_lines", "held_out_phrasings", "held_out_task")


@dataclass
class InstructionSet:
    """What :func:`build_instructions` returns: the four splits and how they were cut."""

    train: list[Example]
    held_out_lines: list[Example]  # held-out speeches' lines, training phrasings
    held_out_phrasings: list[Example]  # the same lines and tasks, each in its task's held-out phrasing
    held_out_task: list[Example]  # held-out speeches' lines, the task kept out of training
    task_kept_out: str | None
    phrasing_kept_out: dict[str, int]  # task -> the index of its phrasing that training never uses
    speakers: list[str]  # the speakers the speaker task asks about, most speeches first
    max_chars: int
    dropped: dict[str, int] = field(default_factory=dict)  # task -> lines left out for exceeding max_chars

    @property
    def splits(self) -> dict[str, list[Example]]:
        """The four splits by name, in the order of ``SPLITS``."""
        return {name: getattr(self, name) for name in SPLITS}


def speech_lines(text: str, boundary: int, voice_chars: int) -> list[list[Line]]:
    """The usable lines of every speech that ends before ``boundary``, one list a speech: lines that occur once in
    ``text``, of at least ``MIN_LINE_CHARS`` characters and two words."""
    counts = Counter(text.split("\n"))
    usable = lambda line: counts[line] == 1 and len(line) >= MIN_LINE_CHARS and len(words(line)) >= 2  # noqa: E731
    found = []
    for speech in speeches(text):
        if speech.start + len(speech.block) > boundary:
            continue
        raw, lines = speech.words.split("\n"), []
        offset = speech.start + len(speech.speaker) + 2  # past "NAME:\n"
        for i, line in enumerate(raw):
            if usable(line):
                following = raw[i + 1] if i + 1 < len(raw) and usable(raw[i + 1]) else None
                lines.append(Line(line, offset, speech.speaker, tuple(words(line)), following,
                                  _continuation(raw[1:], usable, voice_chars) if i == 0 else None))
            offset += len(line) + 1
        found.append(lines)
    return found


def _continuation(rest: list[str], usable: Callable[[str], bool], voice_chars: int) -> str | None:
    """The lines of ``rest`` from the first, while they are usable and fit in ``voice_chars``; ``None`` if none."""
    kept: list[str] = []
    for line in rest:
        if not usable(line) or len("\n".join(kept + [line])) > voice_chars:
            break
        kept.append(line)
    return "\n".join(kept) or None


def _fill(phrasing: str, line: Line) -> str:
    return phrasing.replace("{speaker}", line.speaker).replace("{line}", line.text)


def _examples(rng: random.Random, task: Task, lines: list[Line], n: int, asks: list[tuple[str, list[int]]],
              speakers: list[str], max_chars: int, dropped: dict[str, int]) -> dict[str, list[Example]]:
    """Up to ``n`` lines drawn from ``lines``, each asked once for every ``(split, phrasing ids)`` in ``asks`` with a
    phrasing drawn from those ids; a line is left out (and counted in ``dropped``) unless every example fits."""
    pool = [line for line in lines if task.name != "speaker" or line.speaker in speakers]  # the commonest only
    rng.shuffle(pool)
    out: dict[str, list[Example]] = {split: [] for split, _ in asks}
    taken, shortest = 0, None
    for line in pool:
        if taken == n:
            break
        answer = task.answer(line)
        if answer is None:
            continue
        made = [Example(task.name, _fill(task.phrasings[p], line), answer, line.offset, p, split)
                for split, ids in asks for p in [rng.choice(ids)]]
        longest = max(map(len, made))
        if longest > max_chars:
            dropped[task.name] = dropped.get(task.name, 0) + 1
            shortest = longest if shortest is None else min(shortest, longest)
            continue
        for example in made:
            out[example.split].append(example)
        taken += 1
    if taken == 0 and shortest is None:
        raise ValueError(f"the text has no line that suits the {task.name} task: give more of the corpus.")
    if taken == 0:
        raise ValueError(f"max_chars={max_chars} leaves no example of the {task.name} task (the shortest needs "
                         f"{shortest} characters): raise max_chars.")
    return out


def build_instructions(text: str, seed: int = 0, train_per_task: int = 400, held_out_per_task: int = 50,
                       held_out_fraction: float = 0.1, held_out_task: str | None = "last_word", n_speakers: int = 8,
                       max_chars: int = 200, voice_chars: int = 120, val_fraction: float = 0.1) -> InstructionSet:
    """The instruction set of chapter 9 from ``text`` (Tiny Shakespeare), the same for the same ``seed``.

    Speeches of the first ``1 - val_fraction`` of ``text`` are cut at random into training speeches and a
    ``held_out_fraction`` of held-out ones. Every task but ``held_out_task`` gets ``train_per_task`` training
    examples, each in one of its training phrasings, and ``held_out_per_task`` held-out lines, each asked twice:
    in a training phrasing (``held_out_lines``) and in the task's held-out phrasing (``held_out_phrasings``). The
    task kept out gets ``held_out_per_task`` examples of held-out lines (``held_out_task``). The speaker task asks
    about the ``n_speakers`` commonest speakers; the voice task continues a speech with up to ``voice_chars``
    characters of it. A line whose instruction and answer together exceed ``max_chars`` characters is left out
    and counted in ``dropped``; the chat template adds a few tokens (the role and end-of-turn tokens) to that.
    """
    if not isinstance(text, str) or not text:
        raise ValueError("text must be the corpus as a non-empty str (lmbook.text.data.load_shakespeare()).")
    check_seed(seed)
    for name, value in (("train_per_task", train_per_task), ("held_out_per_task", held_out_per_task),
                        ("n_speakers", n_speakers), ("max_chars", max_chars), ("voice_chars", voice_chars)):
        check_int(name, value, 1)
    check_number("held_out_fraction", held_out_fraction, "strictly between 0 and 1", lambda f: 0 < f < 1)
    if held_out_task is not None and held_out_task not in TASKS:
        raise ValueError(f"held_out_task must be one of {list(TASKS)} or None, not {held_out_task!r}.")
    missing = sorted({c for task in TASKS.values() for p in task.phrasings for c in p} - set(text) - {"{", "}"})
    if missing:
        raise ValueError(f"the phrasings use characters that the text lacks ({''.join(missing)!r}): a character "
                         "tokenizer trained on it could not encode them. Build the set from Tiny Shakespeare.")
    boundary = len(train_val_split(text, val_fraction)[0])
    by_speech = speech_lines(text, boundary, voice_chars)
    if len(by_speech) < 2:
        raise ValueError(f"the text holds {len(by_speech)} speech(es) before its held-out part: give more of it.")
    counts = Counter(line.speaker for lines in by_speech for line in lines[:1])
    speakers = sorted(counts, key=lambda name: (-counts[name], name))[:n_speakers]
    rng = random.Random(seed)
    kept_out = {name: rng.randrange(len(task.phrasings)) for name, task in TASKS.items()}
    order = list(range(len(by_speech)))
    rng.shuffle(order)
    held = set(order[: max(1, round(held_out_fraction * len(order)))])
    train_lines = [line for i, lines in enumerate(by_speech) if i not in held for line in lines]
    held_lines = [line for i, lines in enumerate(by_speech) if i in held for line in lines]
    made = InstructionSet([], [], [], [], held_out_task, kept_out, speakers, max_chars)
    for name, task in TASKS.items():
        every = list(range(len(task.phrasings)))
        if name == held_out_task:
            parts = [_examples(rng, task, held_lines, held_out_per_task, [("held_out_task", every)], speakers,
                               max_chars, made.dropped)]
        else:
            seen = [p for p in every if p != kept_out[name]]
            parts = [_examples(rng, task, train_lines, train_per_task, [("train", seen)], speakers, max_chars,
                               made.dropped),
                     _examples(rng, task, held_lines, held_out_per_task,
                               [("held_out_lines", seen), ("held_out_phrasings", [kept_out[name]])], speakers,
                               max_chars, made.dropped)]
        for part in parts:
            for split, examples in part.items():
                getattr(made, split).extend(examples)
    return made
