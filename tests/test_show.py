"""lmbook.display.show: the package's source as a cell output; results kept by report and quoted by prose."""

import inspect
import textwrap

import pytest
import torch
from IPython.display import Markdown

from lmbook.display import show
from lmbook.training.optim import lr_at
from lmbook.display.show import (and_list, fill, ordering, prose, report, show_source, source_markdown, source_of, than,
                                 trend)
from lmbook.training.train import TrainingRun


def test_the_source_is_the_installed_packages_own():
    where, code = source_of(TrainingRun.eager_step)
    assert where == "lmbook/training/train.py: TrainingRun.eager_step"
    assert code.startswith("def eager_step(")
    assert code == textwrap.dedent(inspect.getsource(TrainingRun.eager_step)).rstrip()
    markdown = source_markdown(lr_at)
    assert markdown.startswith("`lr_at` in `lmbook/training/optim.py`:\n\n```python\ndef lr_at(")
    assert markdown.rstrip().endswith("```") and inspect.getsource(lr_at).strip() in markdown


def test_show_source_renders_markdown_and_plain_text():
    shown = show_source(lr_at, TrainingRun.eager_step)
    markdown = shown._repr_markdown_()
    assert markdown.count("```python") == 2 and "lmbook/training/train.py" in markdown
    assert repr(shown).startswith("# lmbook/training/optim.py: lr_at\ndef lr_at(")


def test_a_fence_longer_than_any_backticks_inside():
    assert show._markdown("lmbook/x.py: f", "s = '```'\n").count("````python") == 1


def test_show_source_refuses_what_is_not_the_packages_code():
    with pytest.raises(ValueError, match="not from the lmbook package"):
        show_source(inspect.getsource)
    with pytest.raises(TypeError, match="function, method, class"):
        show_source(3)
    with pytest.raises(ValueError, match="at least one"):
        show_source()


@pytest.fixture
def results(monkeypatch):
    """An empty set of kept results for one test (the chapters' kernel keeps one for the whole chapter)."""
    kept = {}
    monkeypatch.setattr(show, "RESULTS", kept)
    return kept


def test_report_keeps_every_value_and_prints_nothing(results, capsys):
    verdict = Markdown("lower")
    report({"val_loss": 1.87345, "n_params": 1234567, "verdict": verdict, "ratio": torch.tensor(2.5e-7)})
    assert results["val_loss"] == 1.87345 and results["verdict"] is verdict and results["n_params"] == 1234567
    assert type(results["ratio"]) is float  # a 0-d tensor kept as the number it holds
    assert capsys.readouterr().out == ""


def test_report_checks_every_value_before_keeping_any(results):
    with pytest.raises(TypeError, match="numbers, strings and Markdown"):
        report({"good": 1.0, "bad": [1, 2]})
    with pytest.raises(TypeError, match="mapping"):
        report([("a", 1)])
    with pytest.raises(ValueError, match="identifiers"):
        report({"val loss": 1.0})
    with pytest.raises(ValueError, match="empty"):
        report({})
    assert results == {}


def test_prose_fills_results_with_their_format(results):
    report({"val_loss": 1.87345, "n_params": 1234567, "verdict": Markdown("lower"), "ratio": torch.tensor(0.25)})
    shown = prose("""
        The loss is {val_loss:.2f} with {n_params:,d} parameters, {verdict} than before; {ratio:.0%} of it.
    """)
    assert shown._repr_markdown_() == "The loss is 1.87 with 1,234,567 parameters, lower than before; 25% of it.\n"
    assert repr(shown) == shown.data


def test_prose_leaves_math_code_and_other_braces_alone():
    values = {"n": 3, "a": 1}
    template = ("$x_{a}$ and $$\\frac{a}{n}$$, `{n}` and\n```python\nf'{a}'\n```\n"
                "\\begin{aligned} y_{n} \\end{aligned} {not a name} {n}")
    assert fill(template, values) == template[:-3] + "3"


def test_prose_names_what_is_missing_and_what_is_close(results):
    report({"val_loss": 1.5})
    with pytest.raises(KeyError, match=r"\{val_los\}.*did you mean val_loss.*report"):
        prose("{val_los:.2f}")
    with pytest.raises(ValueError, match="takes no format spec"):
        fill("{v:.2f}", {"v": Markdown("lower")})
    with pytest.raises(ValueError, match="cannot format"):
        fill("{v:d}", {"v": 1.5})
    with pytest.raises(ValueError, match="passage"):
        prose("  ")


def test_than_names_the_direction_of_a_comparison():
    assert [than(1.0, 2.0).data, than(2.0, 1.0).data, than(1.0, 1.0).data] == ["lower", "higher", "about the same"]
    assert than(1.0, 1.05, "fewer", "more", tolerance=0.1).data == "about the same"
    assert than(3, 2, "fewer", "more").data == "more"
    with pytest.raises(TypeError, match="value"):
        than(float("nan"), 1.0)
    with pytest.raises(ValueError, match="tolerance"):
        than(1.0, 2.0, tolerance=-1)


def test_and_list_joins_words_as_a_sentence_does():
    assert [and_list(x) for x in (["a"], ["a", "b"], ["a", "b", "c"], (n for n in (1, 2)))] == [
        "a", "a and b", "a, b and c", "1 and 2"]
    with pytest.raises(ValueError, match="at least one"):
        and_list([])


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


def test_html_table_escapes_its_cells_and_md_is_markdown():
    from lmbook.display.show import html_table, md

    table = html_table(["model", "bits"], [["<GPT>", 1.5], ["a & b", 2]])
    assert table.data == ("<table><thead><tr><th>model</th><th>bits</th></tr></thead><tbody>"
                          "<tr><td>&lt;GPT&gt;</td><td>1.5</td></tr>"
                          "<tr><td>a &amp; b</td><td>2</td></tr></tbody></table>")
    assert md("**x**")._repr_markdown_() == "**x**"
