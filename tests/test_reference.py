"""lmbook.reference: recording and reading full-size reference runs."""

import json

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402

from lmbook import reference  # noqa: E402
from lmbook.history import History  # noqa: E402


def history() -> History:
    return History(steps=[0, 1], train_loss=[4.0, 3.0], lr=[1e-3, 1e-3], eval_steps=[0, 2],
                   eval_loss={"val": [4.1, 3.2]}, eval_seconds=[0.0, 1.0], tokens_per_step=64)


def test_save_and_load_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("LMBOOK_COMMIT", "abc1234")
    path = reference.save("demo", {"histories": {"gpt": history()}, "results": {"val": 3.2},
                                   "samples": {"gpt": "ROMEO:"}, "sizes": {"steps": 2}}, tmp_path)
    raw = json.loads(path.read_text())
    assert raw["commit"] == "abc1234" and raw["environment"]["torch"] and raw["date"]
    record = reference.load("demo", tmp_path)
    assert record["histories"]["gpt"] == history()
    assert record["results"] == {"val": 3.2} and record["samples"] == {"gpt": "ROMEO:"}
    assert "abc1234" in reference.describe(record)
    assert [p.name for p in tmp_path.iterdir()] == ["demo.json"]


def test_missing_reference_is_said_not_invented(tmp_path):
    assert reference.load("nothing", tmp_path) is None
    assert "No full-size reference" in reference.describe(None)
    ax = reference.plot_beside(history(), "nothing-recorded", "gpt")
    assert "No full-size reference" in ax.get_title()
    assert len(ax.lines) == 1  # the reader's curve only


def test_unknown_recipe_lists_the_known_ones():
    with pytest.raises(KeyError, match="no recipe"):
        reference.run("no-such-recipe")


def test_every_recipe_names_a_function_that_exists():
    import importlib

    assert reference.RECIPES, "no recipes registered"
    for name, target in reference.RECIPES.items():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function)), name
