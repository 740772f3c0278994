"""lmbook.text.instructions: chapter 9's graded instructions, checked against the corpus itself: the same seed gives
the same set, no held-out line or phrasing reaches training, the answers equal written-out references, and every
grader on hand-made cases."""

from __future__ import annotations

import re

import pytest

from lmbook.text.data import train_val_split
from lmbook.text.instructions import (NUMBER_WORDS, SPLITS, TASKS, Example, Line, accuracy, build_instructions, grade,
                                      words)

SMALL = dict(train_per_task=120, held_out_per_task=30)


@pytest.fixture(scope="module")
def made(shakespeare):
    return build_instructions(shakespeare, seed=0, **SMALL)


def corpus_line(text: str, offset: int) -> str:
    """The line of the corpus that starts at ``offset``, read straight from the text."""
    assert offset == 0 or text[offset - 1] == "\n"
    return text[offset: text.index("\n", offset)]


def phrasing_pattern(phrasing: str) -> re.Pattern:
    return re.compile(re.escape(phrasing).replace(r"\{line\}", "(.+)").replace(r"\{speaker\}", "(.+)"))


def test_same_seed_same_set_another_seed_another(shakespeare, made):
    again = build_instructions(shakespeare, seed=0, **SMALL)
    assert again == made
    other = build_instructions(shakespeare, seed=1, **SMALL)
    assert other.train != made.train and other.held_out_lines != made.held_out_lines
    assert {e.line_id for e in other.held_out_lines} != {e.line_id for e in made.held_out_lines}


def test_splits_hold_what_they_promise(made):
    kept = made.task_kept_out
    assert kept == "last_word"
    assert {e.task for e in made.train} == set(TASKS) - {kept}
    assert all(sum(e.task == t for e in made.train) == SMALL["train_per_task"] for t in set(TASKS) - {kept})
    assert {e.task for e in made.held_out_task} == {kept} and len(made.held_out_task) == SMALL["held_out_per_task"]
    for name in ("train", "held_out_lines", "held_out_phrasings"):
        assert all(e.task != kept for e in getattr(made, name)), name
    for name, examples in made.splits.items():
        assert all(e.split == name for e in examples) and name in SPLITS
    # held_out_lines and held_out_phrasings ask the same things of the same lines, in different phrasings
    pairs = list(zip(made.held_out_lines, made.held_out_phrasings, strict=True))
    assert all((a.task, a.line_id, a.answer) == (b.task, b.line_id, b.answer) for a, b in pairs)
    assert all(b.phrasing_id == made.phrasing_kept_out[b.task] != a.phrasing_id for a, b in pairs)
    assert len({a.line_id for a, _ in pairs}) > len(pairs) // 4  # many lines, not one line asked many times


def test_no_held_out_line_reaches_training(shakespeare, made):
    seen = {line for e in made.train for line in (e.instruction + "\n" + e.answer).split("\n")}
    boundary = len(train_val_split(shakespeare)[0])
    held = [e for name in SPLITS[1:] for e in getattr(made, name)]
    for e in held + made.train:
        line = corpus_line(shakespeare, e.line_id)
        assert e.instruction.endswith("\n" + line) and e.line_id + len(line) < boundary  # pretraining text only
        assert shakespeare.count("\n" + line + "\n") == 1  # a line of its own once in the corpus
    for e in held:
        for line in [corpus_line(shakespeare, e.line_id)] + (e.answer.split("\n") if e.task in ("next_line", "voice")
                                                            else []):
            assert line not in seen, (e, line)


def test_no_held_out_phrasing_reaches_training(made):
    patterns = {(t, p): phrasing_pattern(text) for t, task in TASKS.items() for p, text in enumerate(task.phrasings)}
    for e in made.train + made.held_out_lines + made.held_out_phrasings + made.held_out_task:
        matches = [key for key, pattern in patterns.items() if pattern.fullmatch(e.instruction)]
        assert matches == [(e.task, e.phrasing_id)], e  # each instruction reads as its own phrasing, and no other
    kept = {(t, p) for t, p in made.phrasing_kept_out.items()}
    assert not kept & {(e.task, e.phrasing_id) for e in made.train + made.held_out_lines}
    assert {(e.task, e.phrasing_id) for e in made.held_out_phrasings} == kept - {(made.task_kept_out,
                                                                                 made.phrasing_kept_out["last_word"])}


WRITTEN_OUT = {  # corpus lines, and their answers worked out by hand
    "Before we proceed any further, hear me speak.": dict(
        capitals="BEFORE WE PROCEED ANY FURTHER, HEAR ME SPEAK.", reverse="speak me hear further any proceed we Before",
        count="eight", first_word="Before", last_word="speak"),
    "'Tis south the city mills--bring me word thither": dict(
        capitals="'TIS SOUTH THE CITY MILLS--BRING ME WORD THITHER",
        reverse="thither word me bring mills city the south Tis", count="nine", first_word="Tis", last_word="thither"),
    "'Tis very late, she'll not come down to-night:": dict(
        capitals="'TIS VERY LATE, SHE'LL NOT COME DOWN TO-NIGHT:",
        reverse="to-night down come not she'll late very Tis", count="eight", first_word="Tis", last_word="to-night"),
}


@pytest.mark.parametrize("text", WRITTEN_OUT)
def test_answers_equal_written_out_references(shakespeare, text):
    assert "\n" + text + "\n" in shakespeare
    line = Line(text, 0, "NOBODY", tuple(words(text)), None, None)
    assert {task: TASKS[task].answer(line) for task in WRITTEN_OUT[text]} == WRITTEN_OUT[text]
    assert words("a self-same o'er-wrought thing--well, sir! 3") == ["a", "self-same", "o'er-wrought", "thing",
                                                                      "well", "sir"]


def test_answers_equal_what_the_corpus_says(shakespeare, made):
    for e in made.train + made.held_out_lines + made.held_out_task:
        line = corpus_line(shakespeare, e.line_id)
        after = shakespeare[e.line_id + len(line) + 1:]
        speech = shakespeare[: e.line_id].rsplit("\n\n", 1)[-1]  # this speech up to the line: "NAME:\n..."
        expected = {"capitals": line.upper(), "first_word": words(line)[0], "last_word": words(line)[-1],
                    "count": NUMBER_WORDS[len(words(line))],
                    "reverse": " ".join(reversed(words(line))), "speaker": speech.split(":\n", 1)[0],
                    "next_line": after.split("\n", 1)[0]}.get(e.task)
        if e.task == "voice":  # the speech's own next lines, from its first line on
            assert after.startswith(e.answer + "\n") and speech.endswith(":\n") and e.answer
            assert speech[:-2] in e.instruction
        else:
            assert e.answer == expected, e


def test_graders_on_hand_made_cases():
    def example(task, answer):
        return Example(task, "?", answer, 0, 0, "train")

    speaker, first, capitals = example("speaker", "KING RICHARD III"), example("first_word", "Tis"), example(
        "capitals", "HALED OUT: TO MURDER")
    assert grade(speaker, "king richard  III.") and grade(speaker, " KING RICHARD III\n")
    assert not grade(speaker, "KING RICHARD II") and not grade(speaker, "") and not grade(speaker, "RICHARD")
    assert grade(first, "'Tis") and grade(first, "tis.") and not grade(first, "Tis but")
    assert grade(capitals, "HALED OUT:  TO MURDER ") and not grade(capitals, "Haled out: to murder")
    assert not grade(capitals, "HALED OUT TO MURDER")  # the colon is part of the answer
    reverse = example("reverse", "speak me hear")
    assert grade(reverse, "speak  me hear ") and not grade(reverse, "hear me speak")
    assert not grade(reverse, "Speak me hear")  # case counts
    count = example("count", "seven")
    assert grade(count, "Seven.") and grade(count, "7") and not grade(count, "six") and not grade(count, "77")
    assert grade(example("count", "three"), "3")
    nxt = example("next_line", "And given me justice, justice!")
    assert grade(nxt, "and given me justice, justice") and not grade(nxt, "And given me justice")
    with pytest.raises(ValueError, match="loss"):
        grade(example("voice", "Go on."), "Go on.")
    with pytest.raises(TypeError, match="decode"):
        grade(speaker, [1, 2])
    with pytest.raises(TypeError, match="Example"):
        grade("ROMEO", "ROMEO")
    assert accuracy([speaker, count, example("voice", "x")], ["KING RICHARD III", "six", "x"]) == {
        "speaker": 1.0, "count": 0.0}
    with pytest.raises(ValueError, match="one output for each"):
        accuracy([speaker], [])


def test_phrasings_and_examples_use_only_the_corpus_characters(shakespeare, made):
    alphabet = set(shakespeare)
    assert len(alphabet) == 65
    for task in TASKS.values():
        assert len(set(task.phrasings)) == len(task.phrasings) >= 3
        assert all(set(p.replace("{line}", "").replace("{speaker}", "")) <= alphabet for p in task.phrasings)
        assert all(p.endswith("\n{line}") for p in task.phrasings)
    for e in made.train + made.held_out_phrasings:
        assert set(e.instruction + e.answer) <= alphabet
        assert len(e) == len(e.instruction) + len(e.answer) <= made.max_chars
    assert made.train[0].messages() == [{"role": "user", "content": made.train[0].instruction},
                                        {"role": "assistant", "content": made.train[0].answer}]


def test_max_chars_drops_long_examples_and_refuses_a_bound_that_leaves_none(shakespeare):
    short = build_instructions(shakespeare, train_per_task=60, held_out_per_task=10, max_chars=90)
    assert short.dropped and sum(short.dropped.values()) > 10
    assert max(len(e) for name in SPLITS for e in getattr(short, name)) <= 90
    assert len([e for e in short.train if e.task == "capitals"]) == 60  # drawn on until the task is full
    with pytest.raises(ValueError, match="max_chars=30 leaves no example of the speaker task"):
        build_instructions(shakespeare, train_per_task=5, held_out_per_task=5, max_chars=30)


def test_held_out_task_can_be_chosen_or_none(shakespeare):
    none = build_instructions(shakespeare, train_per_task=10, held_out_per_task=5, held_out_task=None)
    assert none.held_out_task == [] and {e.task for e in none.train} == set(TASKS)
    counted = build_instructions(shakespeare, train_per_task=10, held_out_per_task=5, held_out_task="count")
    assert {e.task for e in counted.held_out_task} == {"count"} and "count" not in {e.task for e in counted.train}


def test_arguments_are_checked(shakespeare):
    with pytest.raises(ValueError, match="non-empty str"):
        build_instructions("")
    with pytest.raises(ValueError, match="held_out_task must be one of"):
        build_instructions(shakespeare, held_out_task="rhyme")
    with pytest.raises(ValueError, match="held_out_fraction"):
        build_instructions(shakespeare, held_out_fraction=1.0)
    with pytest.raises(ValueError, match="train_per_task must be >= 1"):
        build_instructions(shakespeare, train_per_task=0)
    with pytest.raises(TypeError, match="seed"):
        build_instructions(shakespeare, seed="0")
    with pytest.raises(ValueError, match="give more"):
        build_instructions(shakespeare[:20_000].replace(":\n", " \n"))  # no speech left
    with pytest.raises(ValueError, match="characters that the text lacks"):
        build_instructions("ROMEO:\nno question marks here\n\n" * 3)
