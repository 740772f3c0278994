"""tests/lanes.py: which pages read the model zoo, the order pages start in, and lanes that keep that order."""

import asyncio
from pathlib import Path

import nbformat
import pytest
import test_book
from lanes import imported_modules, plan, reads_zoo, run_lanes
from lmbook.runs.zoo import TRAINING_ANEW


def test_imported_modules_finds_modules_not_names():
    code = ("from lmbook.runs import ch06_evaluation as ch06\nfrom lmbook.display.show import prose, report\n"
            "from lmbook.runs.ch09_assistant import (RUNS,\n    answer)\nimport lmbook.runtime\nimport numpy as np\n")
    assert imported_modules(code) == {"lmbook.runs", "lmbook.runs.ch06_evaluation", "lmbook.display.show",
                                      "lmbook.runs.ch09_assistant", "lmbook.runtime"}


@pytest.mark.parametrize("code, reads", [
    ("from lmbook.runs.zoo import trained", True),
    ("import lmbook.runs.zoo", True),
    ("from lmbook.runs import zoo", True),
    ("from lmbook.runs import ch06_evaluation as ch06", True),  # that module imports the zoo
    ("from lmbook.runs.ch03_gpt import RUNS", False),
    ("from lmbook.models.gpt import GPT\nprint('the zoo')", False),  # the word alone is no import
])
def test_reads_zoo(code, reads):
    assert reads_zoo(code) is reads


def test_plan_starts_owners_then_later_pages_and_readers_last():
    pages = {Path(f"book/{name}.ipynb"): code for name, code in [
        ("quickstart", ""), ("ch02", ""), ("ch03", "from lmbook.runs.zoo import remember"),
        ("ch05", "from lmbook.runs.zoo import trained"), ("ch08", ""), ("ch09", "from lmbook.runs import zoo")]}
    owners = {Path("book/ch02.ipynb"), Path("book/ch03.ipynb")}
    order, needs = plan(pages, owners)
    assert [p.stem for p in order] == ["ch02", "ch03", "ch08", "quickstart", "ch09", "ch05"]
    assert needs[Path("book/ch05.ipynb")] == owners and needs[Path("book/ch03.ipynb")] == set()
    assert needs[Path("book/ch08.ipynb")] == set()


def run(order, needs, lanes, seconds):
    """Run fake pages that sleep; return (results, the largest number running at once, start and end order)."""
    state = {"now": 0, "most": 0, "events": []}

    async def execute(page, lane):
        state["now"] += 1
        state["most"] = max(state["most"], state["now"])
        state["events"].append(("start", page))
        await asyncio.sleep(seconds[page])
        state["events"].append(("end", page))
        state["now"] -= 1
        return f"{page} in lane {lane}"

    results = asyncio.run(run_lanes(order, needs, lanes, execute))
    return results, state["most"], state["events"]


def test_lanes_run_at_most_so_many_pages_at_once_and_each_after_its_needs():
    order = ["a", "b", "c", "d", "e"]
    needs = {"d": {"a", "b"}, "e": {"a"}}
    seconds = {"a": 0.05, "b": 0.02, "c": 0.01, "d": 0.01, "e": 0.01}
    results, most, events = run(order, needs, 2, seconds)
    assert set(results) == set(order) and most == 2
    for page, before in needs.items():
        for need in before:
            assert events.index(("end", need)) < events.index(("start", page))
    # c starts before d and e though later in the order: they wait for a, c does not
    assert events.index(("start", "c")) < events.index(("start", "e"))


def test_one_lane_runs_pages_in_order_one_at_a_time():
    order = ["a", "b", "c"]
    results, most, events = run(order, {}, 1, dict.fromkeys(order, 0.0))
    assert most == 1 and [page for kind, page in events if kind == "start"] == order
    assert all(result.endswith("lane 1") for result in results.values())


def test_a_failing_page_ends_the_run_with_its_error():
    async def execute(page, lane):
        if page == "b":
            raise RuntimeError("b broke")
        return page

    with pytest.raises(RuntimeError, match="b broke"):
        asyncio.run(run_lanes(["a", "b", "c"], {}, 2, execute))


@pytest.mark.parametrize("lanes, needs, message", [
    (0, {}, "at least 1"),
    (2, {"a": {"z"}}, "not run"),
    (2, {"a": {"b"}, "b": {"a"}}, "wait for each other"),
])
def test_bad_plans_are_refused(lanes, needs, message):
    async def execute(page, lane):
        return page

    with pytest.raises(ValueError, match=message):
        asyncio.run(run_lanes(["a", "b"], needs, lanes, execute))


@pytest.mark.parametrize("value, lanes", [(None, 1), ("", 1), ("1", 1), ("2", 2)])
def test_lanes_come_from_the_variable(monkeypatch, value, lanes):
    if value is None:
        monkeypatch.delenv(test_book.LANES_VARIABLE, raising=False)
    else:
        monkeypatch.setenv(test_book.LANES_VARIABLE, value)
    assert test_book.lanes() == lanes


@pytest.mark.parametrize("value", ["0", "two", "-1", "1.5"])
def test_bad_lanes_are_refused_with_what_to_give(monkeypatch, value):
    monkeypatch.setenv(test_book.LANES_VARIABLE, value)
    with pytest.raises(pytest.UsageError, match="LMBOOK_LANES=.*1 or more"):
        test_book.lanes()


def test_the_lines_a_page_printed_show_a_model_trained_again():
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell(f"gpt-char {TRAINING_ANEW}, in prose"),  # not printed: not looked at
        nbformat.v4.new_code_cell("x", outputs=[
            nbformat.v4.new_output("stream", name="stdout", text="one\ntwo\n"),
            nbformat.v4.new_output("execute_result", data={"text/plain": "three"}),
            nbformat.v4.new_output("stream", name="stderr", text=f"gpt-char {TRAINING_ANEW} at the size 'fast'\n")])])
    lines = test_book.stream_lines(nb)
    assert lines == ["one", "two", f"gpt-char {TRAINING_ANEW} at the size 'fast'"]
    assert [line for line in lines if TRAINING_ANEW in line] == lines[-1:]
