"""lmbook.runs.reference and lmbook.runs.recording: typed records read in one place, recipes hashed, recordings that
resume after a kill as if never stopped."""

import fnmatch
import functools
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

from lmbook.runs import reference  # noqa: E402
from lmbook.training.history import History  # noqa: E402
from lmbook.runs.reference import Record, RecordError  # noqa: E402
from lmbook.runs import recording  # noqa: E402
from lmbook.runs.recording import Recording, RecordingError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("record_worker.py")


def history(loss: float = 3.2) -> History:
    return History(steps=[0, 1], train_loss=[4.0, 3.0], lr=[1e-3, 1e-3], eval_steps=[0, 2],
                   eval_loss={"val": [4.1, loss]}, eval_seconds=[0.0, 1.5], tokens_per_step=64, seconds=2.0)


def record(level: str = "cpu", **changes) -> Record:
    environment = {"device": "cpu (2 threads, x86_64)", "threads": 2} if level == "cpu" else {"device": "NVIDIA H100"}
    fields = dict(name="ch03", level=level, recipe={"lr": 0.01}, recipe_hash="0" * 64, histories={"gpt": history()},
                  results={"val": 3.2, "table": [[1, 2.5]]}, samples={"gpt": "ROMEO:"}, environment=environment,
                  commit="abc1234", date="2026-01-01T00:00:00+00:00", minutes=27.2 if level == "cpu" else 9.0)
    return Record(**{**fields, **changes})


def worker_module():
    spec = importlib.util.spec_from_file_location("record_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_record_round_trips_and_describes_itself(tmp_path):
    path = reference.save(record(), tmp_path)
    assert path.name == "ch03-cpu.json" and [p.name for p in tmp_path.iterdir()] == ["ch03-cpu.json"]
    assert json.loads(path.read_text())["format"] == reference.FORMAT
    loaded = reference.load("ch03", level="cpu", directory=tmp_path)
    assert loaded == record() and isinstance(loaded.histories["gpt"], History)
    assert loaded.describe() == "two CPU cores, 27 minutes, commit abc1234"
    assert record("gpu").describe() == "NVIDIA H100, 9 minutes, commit abc1234"
    assert record(minutes=0.4).describe().startswith("two CPU cores, under a minute")


def test_the_gpu_record_is_the_reference_and_both_load(tmp_path):
    reference.save(record("cpu"), tmp_path)
    assert reference.load("ch03", directory=tmp_path).level == "cpu"  # the only one there
    reference.save(record("gpu", minutes=9.0), tmp_path)
    assert reference.load("ch03", directory=tmp_path).level == "gpu"
    assert reference.load("ch03", level="cpu", directory=tmp_path).level == "cpu"
    assert list(reference.load_all("ch03", tmp_path)) == ["gpu", "cpu"]
    with pytest.raises(KeyError, match="no recipe 'gpt'; there are: ch02, ch03, ch04, ch07, ch08, ch08-scaling"):
        reference.chapter_of("gpt")  # records are named by chapter
    assert reference.load("ch02", directory=tmp_path) is None and reference.load_all("ch02", tmp_path) == {}


@pytest.mark.parametrize("text", ["{not json", json.dumps({"name": "ch03"}), json.dumps([1, 2]),
                                  json.dumps({"format": reference.FORMAT, "name": "ch03"})])
def test_a_damaged_or_foreign_file_is_refused_naming_it_and_what_to_do(tmp_path, text):
    (tmp_path / "ch03-cpu.json").write_text(text)
    with pytest.raises(RecordError, match="ch03-cpu.json is not a readable reference record") as err:
        reference.load("ch03", level="cpu", directory=tmp_path)
    assert "record it again" in str(err.value)


def test_a_missing_reference_is_said_not_invented(tmp_path):
    assert reference.load("ch03", directory=tmp_path) is None
    assert "No reference run" in reference.describe(None)
    ax = reference.plot_beside(history(), "ch03", "gpt", directory=tmp_path)
    assert "No reference run" in ax.get_title() and len(ax.lines) == 1  # the reader's curve only


def test_plot_beside_draws_every_level_recorded(tmp_path):
    reference.save(record("cpu"), tmp_path)
    reference.save(record("gpu"), tmp_path)
    ax = reference.plot_beside(history(), "ch03", "gpt", x="seconds", directory=tmp_path)
    assert len(ax.lines) == 3 and "two CPU cores" in ax.get_title() and "NVIDIA H100" in ax.get_title()
    assert list(ax.lines[2].get_xdata()) == [0.0, 1.5]  # against the seconds each evaluation was reached at
    assert "Reference run at the CPU size: two CPU cores" in reference.describe(record())


def test_the_recipe_hash_follows_every_setting_and_the_version():
    from lmbook.runs.ch03_gpt import EQUAL_TIME, RECIPE_VERSION, REFERENCE

    base = reference.recipe_hash(EQUAL_TIME, "1")
    assert base == reference.recipe_hash(reference.settings_dict(EQUAL_TIME), "1") and len(base) == 64
    assert reference.current_recipe("ch03", "cpu") == (reference.settings_dict(REFERENCE["cpu"]),
                                                       reference.recipe_hash(REFERENCE["cpu"], RECIPE_VERSION))
    changed = [EQUAL_TIME.replace(seconds=479.0), EQUAL_TIME.replace(gpt=EQUAL_TIME.gpt.replace(lr=4e-3)),
               EQUAL_TIME.replace(lstm=EQUAL_TIME.lstm.replace(n_hidden=255))]
    hashes = {reference.recipe_hash(s, "1") for s in changed} | {reference.recipe_hash(EQUAL_TIME, "2"), base}
    assert len(hashes) == 5


def test_every_shipped_record_was_made_by_todays_recipe():
    """A changed recipe fails here until it is recorded again (no record yet: nothing to check)."""
    for path in sorted(reference.DIRECTORY.glob("*.json")):
        name, level = path.stem.rsplit("-", 1)
        shipped = reference.read(path)
        assert (shipped.name, shipped.level) == (name, level), path.name
        assert shipped.recipe_hash == reference.current_recipe(name, level)[1], (
            f"{path.name} was recorded with another recipe than the code's today: record it again with "
            f"python -m lmbook.runs.reference record {name} --level {level}, or restore the recipe")


def run_settings(value):
    """Every set of training settings inside a recipe's settings (a dict of them, or settings holding others)."""
    from dataclasses import fields, is_dataclass

    from lmbook.runs.common import RunSettings

    if isinstance(value, RunSettings):
        yield value
    children = value.values() if isinstance(value, dict) else (
        [getattr(value, f.name) for f in fields(value)] if is_dataclass(value) else [])
    for child in children:
        yield from run_settings(child)


def training_steps(settings) -> int:
    """Batches of training a recipe's settings ask for: the sum of ``max_steps * batch_size`` over its runs (a grid's
    own runs where it lists them, as chapter 8's scaling grid does)."""
    listed = settings.runs() if callable(getattr(settings, "runs", None)) else [settings]
    parts = listed.values() if isinstance(listed, dict) else listed
    return sum(run.max_steps * run.batch_size for part in parts for run in run_settings(part))


def test_every_recipe_has_its_function_settings_and_tiny_variant():
    import hashlib
    import inspect

    for name in reference.RECIPES:
        module = reference.recipe_module(name)
        assert isinstance(module.RECIPE_VERSION, str) and reference.levels(name)
        assert set(module.REFERENCE) <= set(reference.LEVELS) and set(module.SMOKE) == set(module.REFERENCE)
        for level in module.REFERENCE:
            assert list(inspect.signature(getattr(module, f"record_{level}")).parameters) == ["rec"], (name, level)
            recipe, digest = reference.current_recipe(name, level)
            canonical = json.dumps({"recipe": recipe, "version": module.RECIPE_VERSION}, sort_keys=True,
                                   separators=(",", ":"))
            assert recipe == reference.settings_dict(module.REFERENCE[level])
            assert digest == hashlib.sha256(canonical.encode()).hexdigest(), (name, level)
            assert digest != reference.current_recipe(name, level, smoke=True)[1]
            runs = list(run_settings(module.REFERENCE[level]))
            assert runs and all(run.train_config().max_steps == run.max_steps for run in runs), (name, level)
            smoke = training_steps(module.SMOKE[level])
            assert 0 < smoke * 100 <= training_steps(module.REFERENCE[level]), (name, level)  # seconds, not minutes


def test_the_records_ship_in_the_wheel():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["lmbook"]
    shipped = reference.path_of("ch03", "cpu").relative_to(ROOT / "lmbook").as_posix()
    assert any(fnmatch.fnmatch(shipped, pattern) for pattern in data), (shipped, data)


def test_the_command_lists_recipes_with_no_records(tmp_path, capsys):
    assert reference.listing(tmp_path) == [f"{name} {level}: not recorded" for name in
                                           ("ch02", "ch03", "ch04", "ch07", "ch08", "ch08-scaling", "ch09")
                                           for level in ("gpu", "cpu")]
    reference.save(record("cpu", recipe_hash=reference.current_recipe("ch03", "cpu")[1]), tmp_path)
    reference.save(record("gpu"), tmp_path)
    lines = reference.listing(tmp_path)
    assert "ch03 cpu: recorded (two CPU cores, 27 minutes, commit abc1234; current)" in lines
    assert any(line.startswith("ch03 gpu: recorded") and "STALE" in line for line in lines)
    reference.main(["list"])
    assert "ch03 cpu:" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        reference.main(["record", "ch05", "--level", "cpu"])
    assert "invalid choice: 'ch05'" in capsys.readouterr().err


def test_steps_within_counts_the_evaluations():
    speed = {"train_step": 0.1, "eval_batch": 0.05}
    assert recording.steps_within(100.0, speed, evaluations=9, eval_iters=4) == 980  # 10 x 4 x 0.05 s = 2 s
    assert recording.steps_within(1.0, speed, evaluations=99, eval_iters=4) == 1


def test_the_time_left_is_estimated_from_the_trainings_finished(tmp_path):
    rec = Recording("demo", "cpu", {}, "v", tmp_path)
    rec.state["done"]["a"] = {"kind": "train", "history": {"seconds": 120.0}}
    rec.plan({"a": 100, "b": 300})  # by steps alone: 300 more steps at 1.2 s
    assert rec.progress().endswith("about 6 min left")
    rec.plan({"a": 100, "b": 300}, {"a": 0.2, "b": 0.1})  # b's steps take half as long as a's
    assert rec.progress().endswith("about 3 min left")


def test_computations_are_kept_and_another_recipe_is_refused(tmp_path):
    with Recording("demo", "cpu", {"a": 1}, "v", tmp_path, threads=1) as rec:
        assert rec.compute("answer", lambda: (1, 2.5)) == [1, 2.5]  # as a resumed recording reads it back
        with pytest.raises(ValueError, match="used twice"):
            rec.compute("answer", lambda: 3)
    again = Recording("demo", "cpu", {"a": 1}, "v", tmp_path, threads=1)
    assert again.compute("answer", lambda: pytest.fail("recomputed")) == [1, 2.5]
    assert len(again.state["sessions"]) == 2
    with pytest.raises(RecordingError, match="another recipe.*Delete the folder"):
        Recording("demo", "cpu", {"a": 2}, "v", tmp_path)
    with pytest.raises(RecordingError, match="another recipe"):
        Recording("demo", "cpu", {"a": 1}, "v2", tmp_path)


def run_worker(work: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen([sys.executable, str(WORKER), str(work), str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def state(work: Path) -> dict:
    try:
        return json.loads((work / "state.json").read_text())
    except (OSError, ValueError):  # not written yet
        return {"done": {}}


def test_a_recording_killed_mid_training_resumes_to_the_same_record(tmp_path, capsys, monkeypatch):
    whole = tmp_path / "whole"
    recording.record("demo", "cpu", directory=whole, work=whole, module=worker_module(), threads=1)
    work, out = tmp_path / "work", tmp_path / "out"
    process = run_worker(work, out)
    while not ("loss first" in state(work)["done"] and (work / "second.pt").exists()):
        assert process.poll() is None, process.communicate()[1].decode()
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)  # the first training finished, the second under way
    process.wait()
    killed = state(work)
    assert "first" in killed["done"] and "second" not in killed["done"]
    assert (work / "first.final.pt").exists() and not (work / "first.pt").exists()
    step = torch.load(work / "second.pt", weights_only=True)["step"]
    assert 0 < step < 60
    from lmbook.training.train import TrainingRun

    steps, one_step = [], TrainingRun.step
    monkeypatch.setattr(TrainingRun, "step", lambda self, lr: steps.append(lr) or one_step(self, lr))
    capsys.readouterr()
    recording.record("demo", "cpu", directory=out, work=work, module=worker_module(), threads=1)  # here, as quicker
    stdout = capsys.readouterr().out
    assert "finished 'second'" in stdout and "finished 'first'" not in stdout
    assert len(steps) == 60 - step  # the first training loaded, the second continued from its checkpoint
    a, b = reference.load("demo", "cpu", whole), reference.load("demo", "cpu", out)
    assert (b.results, b.samples) == (a.results, a.samples)  # the same losses and the same final weights
    for label in ("first", "second"):
        ha, hb = a.histories[label], b.histories[label]
        assert (hb.steps, hb.train_loss, hb.eval_steps, hb.eval_loss) == (ha.steps, ha.train_loss, ha.eval_steps,
                                                                          ha.eval_loss)
        assert hb.eval_seconds == sorted(hb.eval_seconds) and hb.eval_seconds[-1] <= hb.seconds
    assert hb.seconds >= 0.6  # 60 batches, each 10 ms late: the time before the kill counts
    assert b.minutes >= killed["minutes"] > 0 and b.environment["sessions"] == 2
    assert b.recipe_hash == a.recipe_hash == reference.current_recipe("demo", "cpu", module=worker_module())[1]


def test_status_says_what_is_finished_and_under_way(tmp_path, capsys):
    whole = tmp_path / "work"
    recording.record("demo", "cpu", directory=tmp_path, work=whole, module=worker_module(), threads=1)
    lines = recording.status("demo", "cpu", work=whole, module=worker_module())
    assert "6 pieces finished" in lines[0] and any(line.startswith("  finished: second (60 steps") for line in lines)
    assert recording.status("demo", "cpu", work=tmp_path / "none", module=worker_module())[0].startswith(
        "demo cpu: no recording")


def test_chapter_3s_cpu_recipe_runs_end_to_end_at_its_tiny_size(tmp_path, shakespeare):
    path = recording.record("ch03", "cpu", smoke=True, work=tmp_path, threads=1)
    assert path == tmp_path / "ch03-cpu.json"  # a tiny run never lands in lmbook/references
    rec = reference.read(path)
    assert rec.recipe_hash == reference.current_recipe("ch03", "cpu", smoke=True)[1]
    assert set(rec.histories) == set(rec.samples) == {"gpt", "lstm", "gru"}
    for label, run in rec.results["runs"].items():
        history = rec.histories[label]
        assert len(history.eval_seconds) == len(history.eval_steps) >= 2 and history.eval_seconds[0] < 1.0
        assert 3.0 < run["val_loss"] < 4.5 and run["bits_per_char"] == pytest.approx(run["val_loss"] / 0.6931, 1e-3)
        assert run["steps"] == len(history.steps) <= 6 and run["probe"]["train_step"] > 0
    assert "bits_per_char_in_order" in rec.results["runs"]["lstm"]
    assert rec.environment["threads"] == 1 and rec.environment["sessions"] == 1
    # what chapters 3 and 7 quote of it, and the figure
    from lmbook.runs.ch03_gpt import equal_time_facts
    from lmbook.runs.common import plot_equal_time

    facts = equal_time_facts(rec)
    runs = rec.results["runs"]
    assert facts["equal_time_gru_bpc"] == runs["gru"]["bits_per_char"]
    assert facts["equal_time_lstm_chars"] == runs["lstm"]["steps"] * rec.histories["lstm"].tokens_per_step
    best = min(runs, key=lambda label: runs[label]["bits_per_char"])
    assert facts["equal_time_order"].data.startswith({"gpt": "GPT", "lstm": "LSTM", "gru": "GRU"}[best])
    assert facts["equal_time_source"].data == rec.describe()
    assert len(plot_equal_time(rec).get_lines()) == 3
    assert f"lowest first: {facts['equal_time_order'].data}." in facts["equal_time_verdict"].data
    assert "No equal-time run is recorded" in equal_time_facts(None)["equal_time_verdict"].data


@pytest.mark.parametrize("name", ["ch02", "ch03", "ch04", "ch07", "ch08", "ch08-scaling"])
def test_the_full_size_recipes_run_at_their_tiny_size_and_rerun_from_what_they_kept(name, tmp_path, shakespeare,
                                                                                    monkeypatch, one_thread):
    """The GPU recipes end to end at their tiny size (samples and whole-split losses stubbed: they take the time),
    then again from the finished work folder: nothing trains twice and the record is the same."""
    from lmbook.runs import ch02_rnn, ch03_gpt, ch04_finetune
    from lmbook.training.train import TrainingRun

    for module in (ch02_rnn, ch03_gpt, ch04_finetune):
        monkeypatch.setattr(module, "complete", lambda model, tokenizer, prompt, *args, **kwargs: prompt + "...")
    for module in (ch02_rnn, ch03_gpt):
        monkeypatch.setattr(module, "split_loss", lambda *args, **kwargs: 1.5)
    monkeypatch.setattr(ch04_finetune, "prepare", functools.cache(ch04_finetune.prepare))  # the BPE trained once
    first = reference.read(recording.record(name, "gpu", smoke=True, work=tmp_path))
    steps, one_step = [], TrainingRun.step
    monkeypatch.setattr(TrainingRun, "step", lambda self, lr: steps.append(lr) or one_step(self, lr))
    again = reference.read(recording.record(name, "gpu", smoke=True, work=tmp_path))
    assert steps == [] and again.environment["sessions"] == 2
    assert (again.histories, again.results, again.samples) == (first.histories, first.results, first.samples)
    assert first.histories and first.results and first.level == "gpu"
    assert first.samples or name.startswith(("ch07", "ch08"))


def test_every_record_layout_reads_as_the_same_typed_figures():
    from lmbook.runs.reference import Record, RunFigures

    two = Record("ch02", "cpu", {}, "h", results={"runs": {
        "gru": {"params": 5, "val_loss": 1.5, "tokens_per_second": 9.0, "val_loss_split": 1.4,
                "val_loss_in_order": 1.3},
        "gpt": {"params": 7, "val_loss": 1.6, "tokens_per_second": 8.0}}})
    assert two.runs() == {"gru": RunFigures(5, 1.5, 9.0, 1.4, 1.3), "gpt": RunFigures(7, 1.6, 8.0)}
    assert two.runs()["gru"].held_out_loss == 1.4 and two.runs()["gpt"].held_out_loss == 1.6
    one = Record("ch03", "gpu", {}, "h", results={"params": 3, "tokens_per_second": 2.0, "val_loss_whole_split": 1.2})
    assert one.runs() == {"gpt": RunFigures(3, None, 2.0, 1.2)}
    assert one.runs()["gpt"].held_out_loss == 1.2
    for name, record in reference.load_all("ch03").items():  # the shipped records read the same way
        assert all(r.params > 0 and r.held_out_loss > 0 for r in record.runs().values()), name
