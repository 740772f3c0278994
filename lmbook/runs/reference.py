"""Reference runs: results recorded by the package's own command and shipped with it (chapters 2 to 7).

CI builds the book in the fast size, so each chapter plots the reader's own run beside recorded ones.
A chapter's experiment is a *recipe*: a function ``record_<level>(rec)`` of its runs module
(:mod:`lmbook.runs`), which trains and computes through a :class:`~lmbook.runs.recording.Recording`,
so that a recording killed at any moment resumes from its last checkpoint. A recipe has a *level*:

- ``"cpu"``: sized for two CPU cores, at most half an hour;
- ``"gpu"``: the full size, recorded when a GPU is lent. Where both exist, the GPU record is "the
  reference" (:func:`load` without a level), and both stay loadable (:func:`load_all`).

Each runs module declares its recipes' settings per level (``REFERENCE = {"cpu": ..., "gpu": ...}``)
and a ``RECIPE_VERSION``; the record keeps those settings and a hash of both (:func:`recipe_hash`), so a
test fails when a recipe changes until it is recorded again. A :class:`Record` holds the histories,
results and samples, the device, threads, load, versions, date, commit and minutes, and is saved as
``lmbook/references/<chapter>-<level>.json``, written by the recorder only. This module is the one place
that reads and writes those files.

    python -m lmbook.runs.reference record ch03 --level cpu   # record a recipe, or resume its recording
    python -m lmbook.runs.reference list                      # the recipes, their levels, what is recorded
    python -m lmbook.runs.reference status ch03 --level cpu   # the pieces a recording has finished
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from ..training.history import History

DIRECTORY = Path(__file__).parent.parent / "references"  # lmbook/references, shipped in the wheel
LEVELS = ("gpu", "cpu")  # in order of precedence: a GPU record is the reference where there is one
FORMAT = "lmbook reference record, version 1"  # the mark of a record file
RECIPES: dict[str, str] = {  # chapter -> the runs module holding its REFERENCE, RECIPE_VERSION and record_<level>
    "ch02": "lmbook.runs.ch02_rnn",  # RNN, LSTM and GRU on characters
    "ch03": "lmbook.runs.ch03_gpt",  # the character-level GPT; on a CPU, against the LSTM and GRU at equal time
    "ch04": "lmbook.runs.ch04_finetune",  # pretraining, adaptation, a labelled task
    "ch07": "lmbook.runs.ch07_sweep",  # the size sweep
    "ch08": "lmbook.runs.ch08_architecture",  # GPT-2's block to Llama's, a change at a time; context length
    "ch08-scaling": "lmbook.runs.ch08_scaling",  # model sizes times token budgets, for the scaling law
    "ch09": "lmbook.runs.ch09_assistant",  # a pretrained Llama tuned to follow instructions, preferences, refusals
}
_WORDS = dict(enumerate(("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")))


class RecordError(ValueError):
    """A reference file that cannot be read as a record: damaged, or written by something else."""


@dataclass(frozen=True)
class RunFigures:
    """One trained run's figures in a record, under the same names whatever chapter recorded it (losses in
    nats per token on the validation split)."""

    params: int
    val_loss: float | None  # what the run's own evaluation reported at its end
    tokens_per_second: float
    whole_split_loss: float | None = None  # the whole split in windows side by side, where recorded
    in_order_loss: float | None = None  # a recurrent model: the whole split in order, the state carried

    @property
    def held_out_loss(self) -> float:
        """The whole split's loss where the record has it, else the run's own evaluation."""
        return self.val_loss if self.whole_split_loss is None else self.whole_split_loss

    @classmethod
    def read(cls, results: dict) -> "RunFigures":
        whole = results.get("val_loss_whole_split", results.get("val_loss_split"))  # chapter 3's name, chapter 2's
        return cls(results["params"], results.get("val_loss"), results["tokens_per_second"], whole,
                   results.get("val_loss_in_order"))


@dataclass
class Record:
    """One recording of a chapter's recipe at one level, as stored in ``lmbook/references/<name>-<level>.json``."""

    name: str  # the chapter: "ch03"
    level: str  # "cpu" or "gpu"
    recipe: dict  # the settings the recipe ran with
    recipe_hash: str  # of the settings and the recipe's version (recipe_hash)
    histories: dict[str, History] = field(default_factory=dict)
    results: dict = field(default_factory=dict)  # JSON numbers and tables
    samples: dict[str, str] = field(default_factory=dict)
    environment: dict = field(default_factory=dict)  # device, threads, load, versions
    commit: str = "unknown"
    date: str = ""  # when the recording finished, UTC
    minutes: float = 0.0  # wall time of the whole recording, summed over resumed pieces

    def describe(self) -> str:
        """Where and how long, in a few words: ``"two CPU cores, 27 minutes, commit abc1234"``."""
        env = self.environment
        device = str(env.get("device", "an unknown device"))
        if device.startswith("cpu"):
            threads = env.get("threads")
            device = f"{_WORDS.get(threads, threads)} CPU core{'s' * (threads != 1)}" if threads else "a CPU"
        minutes = round(self.minutes)
        took = "under a minute" if minutes < 1 else f"{minutes} minute{'s' * (minutes != 1)}"
        return f"{device}, {took}, commit {self.commit}"

    def runs(self) -> dict[str, RunFigures]:
        """The trained runs the record holds, by name: ``results["runs"]``, or the whole results for a
        record of one run (chapter 3's full-size record). The one place the results' layout is read."""
        if "runs" in self.results:
            return {name: RunFigures.read(r) for name, r in self.results["runs"].items()}
        return {"gpt": RunFigures.read(self.results)}

    def to_dict(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["histories"] = {k: h.to_dict() for k, h in self.histories.items()}
        return {"format": FORMAT, **data}

    @classmethod
    def from_dict(cls, data: dict) -> "Record":
        """The record ``data`` holds; ``KeyError``, ``TypeError`` or ``ValueError`` for anything else."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"it is not marked as a record ({FORMAT!r})")
        known = {f.name for f in fields(cls)}
        record = cls(**{k: v for k, v in data.items() if k in known})
        record.histories = {k: History.from_dict(h) for k, h in record.histories.items()}
        if record.level not in LEVELS:
            raise ValueError(f"level {record.level!r} is none of {LEVELS}")
        return record


def chapter_of(name: str) -> str:
    """The chapter a recipe name means (``"ch03"``), checked."""
    if name not in RECIPES:
        raise KeyError(f"no recipe {name!r}; there are: {', '.join(sorted(RECIPES))}")
    return name


def recipe_module(name: str, module=None):
    """The runs module of chapter ``name`` (``module``, when given, stands in for it: a test's own recipe)."""
    return module if module is not None else importlib.import_module(RECIPES[chapter_of(name)])


def levels(name: str, module=None) -> tuple[str, ...]:
    """The levels chapter ``name`` has a recipe for, in order of precedence."""
    table = recipe_module(name, module).REFERENCE
    return tuple(level for level in LEVELS if level in table)


def settings_dict(settings) -> dict:
    """A recipe's settings as plain JSON values: a settings dataclass (``to_dict``), or a dict of them."""
    def plain(value):
        if hasattr(value, "to_dict"):
            return plain(value.to_dict())
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        return list(map(plain, value)) if isinstance(value, (list, tuple)) else value

    return json.loads(json.dumps(plain(settings), default=str))


def recipe_hash(recipe: dict, version: str) -> str:
    """sha256 of the canonical JSON of a recipe's settings and its version: any change changes it."""
    canonical = json.dumps({"recipe": settings_dict(recipe), "version": version}, sort_keys=True,
                           separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def current_recipe(name: str, level: str, smoke: bool = False, module=None) -> tuple[dict, str]:
    """The settings of chapter ``name``'s recipe at ``level`` as the code defines them today, and their hash."""
    module = recipe_module(name, module)
    table = module.SMOKE if smoke else module.REFERENCE
    if level not in table:
        raise KeyError(f"{name} has no {'smoke ' * smoke}recipe at level {level!r}; its levels: "
                       f"{', '.join(table) or 'none'}")
    recipe = settings_dict(table[level])
    return recipe, recipe_hash(recipe, module.RECIPE_VERSION)


def path_of(name: str, level: str, directory: Path = DIRECTORY) -> Path:
    return Path(directory) / f"{name}-{level}.json"


def save(record: Record, directory: Path = DIRECTORY) -> Path:
    """Write ``record`` to ``<directory>/<name>-<level>.json`` atomically (a reader never sees half a file)."""
    path = path_of(record.name, record.level, directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(record.to_dict(), indent=1) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def read(path: Path) -> Record:
    """The record in the file ``path``, or :class:`RecordError` saying which file and what to do."""
    try:
        return Record.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
        raise RecordError(f"{path} is not a readable reference record ({type(err).__name__}: {err}). It may be "
                          "damaged or written by something else: restore it from git (git checkout -- "
                          f"{Path(path).name}) or record it again with python -m lmbook.runs.reference record."
                          ) from err


def load(name: str, level: str | None = None, directory: Path = DIRECTORY) -> Record | None:
    """The record of chapter ``name`` at ``level`` (without one: the GPU record, else the CPU one), or ``None``."""
    for each in (level,) if level else LEVELS:
        if path_of(name, each, directory).exists():
            return read(path_of(name, each, directory))
    return None


def load_all(name: str, directory: Path = DIRECTORY) -> dict[str, Record]:
    """Every record of chapter ``name``: ``{level: Record}``, GPU first."""
    return {level: read(path_of(name, level, directory)) for level in LEVELS
            if path_of(name, level, directory).exists()}


def describe(record: Record | None) -> str:
    """One sentence on where a reference comes from, or that none is recorded, for the chapters to print."""
    if record is None:
        return "No reference run has been recorded for this chapter yet."
    size = "the full size" if record.level == "gpu" else "the CPU size"
    return f"Reference run at {size}: {record.describe()}."


def plot_beside(history: History, name: str, label: str, split: str = "val", ax=None, x: str = "step",
                levels: tuple[str, ...] = LEVELS, directory: Path = DIRECTORY):
    """The reader's evaluation curve next to curve ``label`` of each record of chapter ``name`` (every level)."""
    from ..display.viz import plot_history

    ax = plot_history(history, ax=ax, label="your run", splits=(split,), x=x, train=False)
    records = {k: r for k, r in load_all(name, directory).items() if k in levels and label in r.histories}
    for level, record in records.items():
        plot_history(record.histories[label], ax=ax, label=f"{level} reference", splits=(split,), x=x, train=False,
                     ls="--" if level == "gpu" else ":")
    titles = [f"{level}: {r.describe()}" for level, r in records.items()] or [describe(None)]
    ax.set_title("\n".join(titles), fontsize=9)
    return ax


def listing(directory: Path = DIRECTORY) -> list[str]:
    """One line per recipe and level: recorded or not, and whether the record's hash is the code's today."""
    lines = []
    for name in sorted(RECIPES):
        for level in levels(name):
            path = path_of(name, level, directory)
            if not path.exists():
                state = "not recorded"
            else:
                record, (_, today) = read(path), current_recipe(name, level)
                current = "current" if record.recipe_hash == today else "STALE: the recipe changed, record it again"
                state = f"recorded ({record.describe()}; {current})"
            lines.append(f"{name} {level}: {state}")
    return lines


def default_level() -> str:
    """``"gpu"`` when CUDA is available, else ``"cpu"``."""
    import torch

    return "gpu" if torch.cuda.is_available() else "cpu"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lmbook.runs.reference", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    record_parser = commands.add_parser("record", help="record a chapter's recipe, resuming an unfinished recording")
    status_parser = commands.add_parser("status", help="the pieces a recording has finished")
    for sub in (record_parser, status_parser):
        sub.add_argument("chapter", choices=sorted(RECIPES))
        sub.add_argument("--level", choices=LEVELS, default=None, help="default: gpu with CUDA, else cpu")
        sub.add_argument("--smoke", action="store_true", help="the recipe's tiny test variant (seconds)")
    record_parser.add_argument("--directory", type=Path, default=None,
                               help=f"where the record goes (default {DIRECTORY}; with --smoke, the work folder)")
    commands.add_parser("list", help="the recipes, their levels, which are recorded and whether each is current")
    args = parser.parse_args(argv)
    if args.command == "list":
        print("\n".join(listing()))
        return
    from . import recording

    level = args.level or default_level()
    try:
        if args.command == "status":
            print("\n".join(recording.status(args.chapter, level, smoke=args.smoke)))
        else:
            recording.record(args.chapter, level, directory=args.directory, smoke=args.smoke)
    except (KeyError, recording.RecordingError) as err:
        parser.error(str(err).strip("'\""))


if __name__ == "__main__":
    main()
