"""Recording a chapter's reference run so that it survives being killed (used by :mod:`lmbook.runs.reference`).

A recipe (``record_cpu(rec)`` or ``record_gpu(rec)`` in a chapter's runs module) does its work through
a :class:`Recording`: ``rec.train(label, ...)`` for every training and ``rec.compute(label, fn)`` for
every other costly step (samples, evaluations); it hands what the record keeps to ``rec.result`` and
``rec.sample``. Each finished piece is kept in the recording's work folder,
``$LMBOOK_CACHE/records/<chapter>-<level>/`` (under :func:`lmbook.runtime.cache_dir`):

- ``state.json``: the recipe's hash, the finished pieces (each training's history, each computation's
  value), the minutes spent, and each session's date, commit and load average;
- ``<label>.pt``: the checkpoint of the training under way (the training loop's own, exact on resume);
- ``<label>.final.pt``: a finished training's final weights.

Killed at any moment and started again, the recipe runs from its top: finished trainings load their
weights instead of training, finished computations return their kept values, and the training that was
under way continues from its last checkpoint, bit for bit as if it had not stopped. A folder made by
another recipe is refused. The minutes add up over sessions; work lost after a last checkpoint is not
counted.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import json
import os
import platform
import re
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from ..training.checkpoint import atomic_save, load_checkpoint
from ..training.history import History
from .reference import (DIRECTORY, Record, current_recipe, default_level, recipe_hash, recipe_module, save,
                         settings_dict)
from ..runtime import cache_dir, commit, device_name, environment, get_device
from ..training.train import Batches, TrainConfig, TrainingRun, estimate_loss, train

CPU_THREADS = 2  # the CPU level's recipes are sized for two cores, and run on two threads


class RecordingError(RuntimeError):
    """A work folder that cannot be resumed: unreadable, or made by another recipe."""


def work_dir(name: str, level: str, smoke: bool = False) -> Path:
    """Where the recording of chapter ``name`` at ``level`` keeps its pieces (under the zoo's cache folder)."""
    return cache_dir() / "records" / f"{name}-{level}{'-smoke' * smoke}"


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_") or "piece"


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def load_average() -> list[float] | None:
    """The 1-, 5- and 15-minute load averages (``None`` where the system does not say)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def cpu_model() -> str:
    """The processor's name as the system gives it (``/proc/cpuinfo`` on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class Recording:
    """What a recipe trains and computes through, kept piece by piece in ``work`` (see the module's docstring).

    ``settings`` are the recipe's settings at ``level`` (``rec.settings`` in the recipe); ``version`` is the
    runs module's ``RECIPE_VERSION``. Use it as a context manager: at the CPU level it trains on
    ``threads`` threads (:data:`CPU_THREADS`; the tests use one) and puts the thread count back afterwards.
    """

    def __init__(self, name: str, level: str, settings, version: str, work: Path, threads: int = CPU_THREADS):
        self.name, self.level, self.settings = name, level, settings
        self.recipe = settings_dict(settings)
        self.recipe_hash = recipe_hash(self.recipe, version)
        self.device = torch.device("cpu") if level == "cpu" else get_device()
        self.work = Path(work)
        self.histories: dict[str, History] = {}
        self.results: dict[str, Any] = {}
        self.samples: dict[str, str] = {}
        self.planned: dict[str, int] = {}  # label -> steps of the trainings to come (plan)
        self.expected: dict[str, float] = {}  # label -> seconds a step is expected to take (plan)
        self._labels: set[str] = set()
        self.threads, self._threads = threads, torch.get_num_threads()
        self.state = self._open()
        self._last = time.perf_counter()  # the end of the time already counted in state["minutes"]

    @property
    def tag(self) -> str:
        return f"{self.name}-{self.level}"

    def _open(self) -> dict:
        path = self.work / "state.json"
        if path.exists():
            try:
                state = json.loads(path.read_text(encoding="utf-8"))
            except ValueError as err:
                raise RecordingError(f"{path} cannot be read ({err}): delete {self.work} to record anew.") from err
            if state.get("recipe_hash") != self.recipe_hash:
                raise RecordingError(
                    f"{self.work} holds a recording of another recipe (hash {str(state.get('recipe_hash'))[:12]}; "
                    f"the code's today: {self.recipe_hash[:12]}). Delete the folder to record anew, or restore "
                    "the recipe it was made with to finish it.")
        else:
            state = {"name": self.name, "level": self.level, "recipe_hash": self.recipe_hash, "recipe": self.recipe,
                     "minutes": 0.0, "done": {}, "sessions": []}
        state["sessions"].append({"date": _now(), "commit": commit(), "load_average": load_average()})
        self._write(state)
        return state

    def _write(self, state: dict) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        path, tmp = self.work / "state.json", self.work / ".state.json.tmp"
        tmp.write_text(json.dumps(state, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, path)

    def __enter__(self) -> "Recording":
        self._threads = torch.get_num_threads()
        if self.level == "cpu":
            torch.set_num_threads(self.threads)
        return self

    def __exit__(self, *exc) -> None:
        torch.set_num_threads(self._threads)

    def _claim(self, label: str) -> None:
        if label in self._labels:
            raise ValueError(f"the label {label!r} is used twice in the recipe {self.tag}: each piece needs its own.")
        self._labels.add(label)

    def plan(self, steps: dict[str, int], seconds_per_step: dict[str, float] | None = None) -> None:
        """Declare the trainings to come, ``{label: steps}``, for the estimates of the time left; with
        ``seconds_per_step`` for every label (a probe's), the estimate weighs each training by it."""
        self.planned, self.expected = dict(steps), dict(seconds_per_step or {})
        done = sum(label in self.state["done"] for label in self.planned)
        print(f"[{self.tag}] plan: {len(self.planned)} trainings, {sum(self.planned.values()):,} steps "
              f"({done} finished before)", flush=True)

    def train(self, label: str, model: nn.Module, train_batches: Batches, config: TrainConfig,
              eval_batches: dict[str, Batches] | None = None, tokenizer=None, keep: bool = True) -> History:
        """:func:`lmbook.training.train.train` made resumable: a finished ``label`` loads its final weights into
        ``model`` and returns its history; otherwise it trains (from its checkpoint, if one is there). With ``keep`` the
        history goes into the record."""
        self._claim(label)
        final = self.work / f"{_slug(label)}.final.pt"
        done = self.state["done"].get(label)
        if done is not None:
            device = next(model.parameters()).device
            model.load_state_dict(load_checkpoint(final, map_location=device)["model"])
            history = History.from_dict(done["history"])
        else:
            checkpoint = self.work / f"{_slug(label)}.pt"
            # the training time the checkpoint holds was spent in earlier sessions: it counts in the minutes
            earlier = History.from_dict(load_checkpoint(checkpoint)["history"]).seconds if checkpoint.exists() else 0.0
            config = dataclasses.replace(config, checkpoint_path=str(checkpoint))
            history = train(model, train_batches, config, eval_batches, resume=True, tokenizer=tokenizer)
            atomic_save({"model": {k: v.detach().cpu() for k, v in model.state_dict().items()}}, final)
            self._finish(label, {"kind": "train", "history": history.to_dict()}, earlier)
            checkpoint.unlink(missing_ok=True)
        if keep:
            self.histories[label] = history
        return history

    def compute(self, label: str, fn: Callable[[], Any]) -> Any:
        """``fn()``, a JSON value (numbers, text, lists, dicts), kept so that a resumed recording does not redo it."""
        self._claim(label)
        done = self.state["done"].get(label)
        if done is not None:
            return done["value"]
        value = fn()
        try:
            value = json.loads(json.dumps(value))  # as a resumed recording will read it back
        except TypeError as err:
            raise TypeError(f"rec.compute({label!r}, ...) must return JSON values: {err}") from err
        self._finish(label, {"kind": "compute", "value": value})
        return value

    def result(self, key: str, value: Any) -> None:
        """Put ``value`` (JSON numbers and tables) into the record's results under ``key``."""
        self.results[key] = json.loads(json.dumps(value))

    def sample(self, label: str, text: str) -> None:
        """Put a generated text into the record's samples."""
        self.samples[label] = str(text)

    def _finish(self, label: str, piece: dict, earlier_seconds: float = 0.0) -> None:
        now = time.perf_counter()
        self.state["minutes"] += (now - self._last + earlier_seconds) / 60
        self._last = now
        self.state["done"][label] = piece
        self._write(self.state)
        print(f"[{self.tag}] finished {label!r} ({describe_piece(piece)}); {self.progress()}", flush=True)

    def progress(self) -> str:
        """Pieces done, minutes so far, and the minutes left at the speed measured so far (from the plan)."""
        done = self.state["done"]
        finished = [label for label in self.planned if label in done]
        line = f"{len(done)} pieces done, elapsed {self.state['minutes']:.1f} min"
        left = [label for label in self.planned if label not in done]
        if finished and left:
            seconds = sum(done[label]["history"]["seconds"] for label in finished)
            # each training's expected time (steps alone without a probe), scaled by how the finished ones compared
            per_step = self.expected if set(self.expected) >= set(self.planned) else dict.fromkeys(self.planned, 1.0)
            ahead, behind = (sum(self.planned[k] * per_step[k] for k in labels) for labels in (left, finished))
            line += f", about {ahead * seconds / behind / 60:.0f} min left"
        return line

    def finish(self) -> Record:
        """The record of everything the recipe handed over, with the conditions it ran under."""
        now = time.perf_counter()
        self.state["minutes"] += (now - self._last) / 60
        self._last = now
        self.state["finished"] = _now()
        self._write(self.state)
        sessions = self.state["sessions"]
        env = {k: v for k, v in environment().items() if k != "size"}
        env.update(device=device_name(self.device), threads=torch.get_num_threads(), cpu=cpu_model(),
                   load_average_start=sessions[0]["load_average"], load_average_end=load_average(),
                   sessions=len(sessions))
        commits = list(dict.fromkeys(s["commit"] for s in sessions))
        made_at = commits[0] + (f" (resumed at {', '.join(commits[1:])})" if len(commits) > 1 else "")
        return Record(self.name, self.level, self.recipe, self.recipe_hash, dict(self.histories),
                      dict(self.results), dict(self.samples), env, made_at, self.state["finished"],
                      round(self.state["minutes"], 3))


def describe_piece(piece: dict) -> str:
    if piece["kind"] == "train":
        history = piece["history"]
        losses = ", ".join(f"{k} {v[-1]:.4f}" for k, v in history["eval_loss"].items() if v)
        return f"{len(history['steps']):,} steps in {history['seconds'] / 60:.1f} min" + (f", {losses}" * bool(losses))
    return "computed"


def record(name: str, level: str | None = None, directory: Path | None = None, smoke: bool = False,
           work: Path | None = None, module=None, threads: int = CPU_THREADS) -> Path:
    """Run (or resume) chapter ``name``'s recipe at ``level`` and save its record; returns the file's path.

    ``smoke`` runs the recipe's tiny variant (``SMOKE`` in the runs module) in its own work folder and, unless
    ``directory`` says otherwise, leaves the record there rather than in ``lmbook/references``.
    ``module`` stands in for the chapter's runs module (a test's own recipe); ``threads``: the CPU level's.
    """
    level = level or default_level()
    module = recipe_module(name, module)
    current_recipe(name, level, smoke, module)  # a clear error for a level without a recipe
    if level == "gpu" and not smoke and not torch.cuda.is_available():
        raise RecordingError(f"the gpu level of {name} is the full size, hours on a CPU: record it where CUDA is "
                             "available, or record a cpu level (python -m lmbook.runs.reference list shows them)")
    work = Path(work) if work else work_dir(name, level, smoke)
    settings = (module.SMOKE if smoke else module.REFERENCE)[level]
    rec = Recording(name, level, settings, module.RECIPE_VERSION, work, threads)
    print(f"[{rec.tag}] recording in {work} ({len(rec.state['done'])} pieces finished before)", flush=True)
    with rec:
        getattr(module, f"record_{level}")(rec)
        result = rec.finish()
    path = save(result, directory or (work if smoke else DIRECTORY))
    print(f"[{rec.tag}] recorded {path}: {result.describe()}", flush=True)
    return path


def status(name: str, level: str, smoke: bool = False, work: Path | None = None, module=None) -> list[str]:
    """Lines on the recording of ``name`` at ``level`` in its work folder: finished pieces, training under way."""
    work = Path(work) if work else work_dir(name, level, smoke)
    path = work / "state.json"
    if not path.exists():
        return [f"{name} {level}: no recording in {work}"]
    state = json.loads(path.read_text(encoding="utf-8"))
    same = state.get("recipe_hash") == current_recipe(name, level, smoke, module)[1]
    lines = [f"{name} {level}: {work}; {len(state['done'])} pieces finished, {state['minutes']:.1f} min over "
             f"{len(state['sessions'])} session(s)" + ("" if same else "; made by another recipe than today's "
                                                       "(delete the folder to record anew)")]
    lines += [f"  finished: {label} ({describe_piece(piece)})" for label, piece in state["done"].items()]
    for checkpoint in sorted(work.glob("*.pt")):
        if not checkpoint.name.endswith(".final.pt"):
            lines.append(f"  under way: {checkpoint.stem}, checkpoint at step {load_checkpoint(checkpoint)['step']:,}")
    return lines


def measure_speed(model: nn.Module, train_batches: Batches, config: TrainConfig,
                  eval_batches: Batches | None = None, steps: int = 10, warmup: int = 3) -> dict[str, float]:
    """Seconds per training step and per evaluation batch, timed on copies of ``model`` and its batch sources
    (which are left as they were): the speed probe of chapter 3's equal-time recipe."""
    model, batches = copy.deepcopy(model), copy.deepcopy(train_batches)
    run = TrainingRun(model, batches, dataclasses.replace(config, checkpoint_path=None, progress=False))
    run.prepare()
    for _ in range(warmup):
        run.step(config.lr)
    start = time.perf_counter()
    for _ in range(steps):
        loss, _ = run.step(config.lr)
    loss.item()  # waits for the device
    speed = {"train_step": (time.perf_counter() - start) / steps, "eval_batch": 0.0}
    if eval_batches is not None:
        start = time.perf_counter()
        estimate_loss(model, copy.deepcopy(eval_batches), steps, config.precision)
        speed["eval_batch"] = (time.perf_counter() - start) / steps
    return speed


def steps_within(seconds: float, speed: dict[str, float], evaluations: int, eval_iters: int) -> int:
    """The most training steps that fit in ``seconds`` of training at ``speed`` (:func:`measure_speed`), with
    ``evaluations`` evaluations of ``eval_iters`` batches on the way and one at the start (they count too)."""
    evaluating = (evaluations + 1) * eval_iters * speed["eval_batch"]
    return max(1, int((seconds - evaluating) / speed["train_step"]))
