"""lmbook.show: the package's source as a cell output, and results glued and printed in one call."""

import inspect
import textwrap

import pytest
import torch
from IPython.display import Markdown

from lmbook import show
from lmbook.optim import lr_at
from lmbook.show import ordering, plain, report, show_source, source_markdown, source_of, than, trend
from lmbook.train import TrainingRun


def test_the_source_is_the_installed_packages_own():
    where, code = source_of(TrainingRun.eager_step)
    assert where == "lmbook/train.py: TrainingRun.eager_step"
    assert code.startswith("def eager_step(")
    assert code == textwrap.dedent(inspect.getsource(TrainingRun.eager_step)).rstrip()
    markdown = source_markdown(lr_at)
    assert markdown.startswith("`lr_at` in `lmbook/optim.py`:\n\n```python\ndef lr_at(")
    assert markdown.rstrip().endswith("```") and inspect.getsource(lr_at).strip() in markdown


def test_show_source_renders_markdown_and_plain_text():
    shown = show_source(lr_at, TrainingRun.eager_step)
    markdown = shown._repr_markdown_()
    assert markdown.count("```python") == 2 and "lmbook/train.py" in markdown
    assert repr(shown).startswith("# lmbook/optim.py: lr_at\ndef lr_at(")


def test_a_fence_longer_than_any_backticks_inside():
    assert show._markdown("lmbook/x.py: f", "s = '```'\n").count("````python") == 1


def test_show_source_refuses_what_is_not_the_packages_code():
    with pytest.raises(ValueError, match="not from the lmbook package"):
        show_source(inspect.getsource)
    with pytest.raises(TypeError, match="function, method, class"):
        show_source(3)
    with pytest.raises(ValueError, match="at least one"):
        show_source()


def test_report_glues_and_prints_every_value(monkeypatch, capsys):
    glued = {}
    monkeypatch.setattr(show, "glue", lambda name, value: glued.setdefault(name, value))
    verdict = Markdown("lower")
    report({"val_loss": 1.87345, "n_params": 1234567, "verdict": verdict, "ratio": torch.tensor(2.5e-7)})
    assert glued["val_loss"] == 1.87345 and glued["verdict"] is verdict and glued["n_params"] == 1234567
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["val_loss  1.873", "n_params  1,234,567", "verdict   lower", "ratio     2.500e-07"]


def test_plain_formats_numbers_as_a_reader_reads_them():
    assert [plain(v) for v in (0.0, 12.5, 65432.1, 1e7, float("inf"), True, "x")] == [
        "0", "12.5", "65,432.1", "1.000e+07", "inf", "True", "x"]


def test_report_refuses_bad_input_before_gluing_anything(monkeypatch):
    glued = []
    monkeypatch.setattr(show, "glue", lambda name, value: glued.append(name))
    with pytest.raises(ValueError, match="identifiers"):
        report({"val loss": 1.0})
    with pytest.raises(TypeError, match="numbers, strings and Markdown"):
        report({"fine": 1.0, "bad": [1, 2]})
    with pytest.raises(TypeError, match="mapping"):
        report([("a", 1)])
    with pytest.raises(ValueError, match="empty"):
        report({})
    assert glued == []


def test_than_names_the_direction_of_a_comparison():
    assert [than(1.0, 2.0).data, than(2.0, 1.0).data, than(1.0, 1.0).data] == ["lower", "higher", "about the same"]
    assert than(1.0, 1.05, "fewer", "more", tolerance=0.1).data == "about the same"
    assert than(3, 2, "fewer", "more").data == "more"
    with pytest.raises(TypeError, match="value"):
        than(float("nan"), 1.0)
    with pytest.raises(ValueError, match="tolerance"):
        than(1.0, 2.0, tolerance=-1)


def test_ordering_ranks_whatever_the_run_gave():
    assert ordering({"b": 2.0, "a": 1.0, "c": 3.0}).data == "a (1.000) < b (2.000) < c (3.000)"
    assert ordering({"b": 2.0, "a": 1.0}, fmt=".1f", highest_first=True).data == "b (2.0) > a (1.0)"
    assert ordering({"x": 1.0001, "y": 1.0002}).data == "x (1.000) = y (1.000)"
    with pytest.raises(ValueError, match="at least two"):
        ordering({"a": 1.0})


@pytest.mark.parametrize("values, words", [
    ({1: 3.0, 2: 2.0, 3: 1.0}, "falls at every step"),
    ({1: 1.0, 2: 2.0, 3: 3.0}, "rises at every step"),
    ({1: 3.0, 2: 1.0, 3: 2.0, 4: 4.0}, "falls until n = 2, then rises"),
    ({1: 1.0, 2: 3.0, 3: 2.0}, "rises until n = 2, then falls"),
    ({1: 1.0, 2: 3.0, 3: 2.0, 4: 5.0}, "goes up and down"),
    ({1: 2.0, 2: 2.0}, "stays the same"),
])
def test_trend_describes_the_shape_of_a_series(values, words):
    assert trend(values, "n = ").data == words
