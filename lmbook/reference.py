"""Reference runs: full-size results recorded on a GPU and shipped with the package.

CI builds the book in the fast size, so each chapter plots the reader's own run
beside a reference run made at the full size. A chapter's experiment is the
``reference_run`` function of its runs module (:mod:`lmbook.runs`), its *recipe*;
this module runs a recipe at the full size and writes what it returns, with the
device, versions, date and commit, to ``lmbook/references/<name>.json``. Nothing
in those files is typed by hand.

    python -m lmbook.reference rnn           # run the recipe "rnn" and record it
    python -m lmbook.reference --list        # the recipes there are
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import subprocess
from pathlib import Path

from .runtime import environment
from .history import History

DIRECTORY = Path(__file__).with_name("references")

# name -> "module:function"; the function takes no arguments, runs at the full size and
# returns a dict with any of: "histories" ({label: History}), "results" (numbers, tables),
# "samples" ({label: text}), "sizes" (the settings that matter).
RECIPES: dict[str, str] = {
    "rnn": "lmbook.runs.ch02_rnn:reference_run",  # chapter 2: RNN, LSTM and GRU on characters
    "gpt": "lmbook.runs.ch03_gpt:reference_run",  # chapter 3: the character-level GPT
    "finetune": "lmbook.runs.ch04_finetune:reference_run",  # chapter 4: pretraining, adaptation, a labelled task
}


def commit() -> str:
    """The commit being measured: ``LMBOOK_COMMIT`` if set (a copy without .git), else git's answer."""
    if os.environ.get("LMBOOK_COMMIT"):
        return os.environ["LMBOOK_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=DIRECTORY.parent)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def save(name: str, outcome: dict, directory: Path = DIRECTORY) -> Path:
    """Write a recipe's ``outcome`` with the conditions it ran under; returns the file's path."""
    histories = {k: (h.to_dict() if isinstance(h, History) else h) for k, h in outcome.get("histories", {}).items()}
    record = {
        "name": name,
        "environment": environment(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": commit(),
        "sizes": outcome.get("sizes", {}),
        "results": outcome.get("results", {}),
        "samples": outcome.get("samples", {}),
        "histories": histories,
    }
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.json"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def load(name: str, directory: Path = DIRECTORY) -> dict | None:
    """The recorded reference ``name``, or ``None`` when none has been recorded yet."""
    path = directory / f"{name}.json"
    if not path.exists():
        return None
    record = json.loads(path.read_text(encoding="utf-8"))
    record["histories"] = {k: History.from_dict(h) for k, h in record["histories"].items()}
    return record


def describe(record: dict | None) -> str:
    """One sentence on where a reference comes from (or that it is missing), for the chapters to print."""
    if record is None:
        return "No full-size reference run has been recorded for this chapter yet."
    env = record["environment"]
    return (
        f"Reference run recorded on {env['device']} with torch {env['torch']} "
        f"on {record['date'][:10]} at commit {record['commit']}."
    )


def plot_beside(history: History, name: str, label: str, split: str = "val", ax=None, x: str = "step"):
    """The reader's evaluation curve next to the reference's curve ``label`` of recording ``name``."""
    from .viz import plot_history

    ax = plot_history(history, ax=ax, label="your run", splits=(split,), x=x, train=False)
    record = load(name)
    if record is None or label not in record["histories"]:
        ax.set_title(describe(None), fontsize=9)
    else:
        plot_history(record["histories"][label], ax=ax, label="reference", splits=(split,), x=x, train=False, ls="--")
        ax.set_title(describe(record), fontsize=9)
    return ax


def run(name: str, directory: Path = DIRECTORY) -> Path:
    """Run recipe ``name`` (at the full size) and save what it returns."""
    if name not in RECIPES:
        raise KeyError(f"no recipe {name!r}; there are: {', '.join(sorted(RECIPES)) or 'none yet'}")
    os.environ["LMBOOK_SIZE"] = "full"
    module, function = RECIPES[name].split(":")
    outcome = getattr(importlib.import_module(module), function)()
    return save(name, outcome, directory)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Record a chapter's full-size reference run.")
    parser.add_argument("names", nargs="*")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--directory", type=Path, default=DIRECTORY)
    args = parser.parse_args(argv)
    if args.list or not args.names:
        print("\n".join(f"{k}: {v}" for k, v in sorted(RECIPES.items())) or "no recipes yet")
        return
    for name in args.names:
        print(f"recorded {run(name, args.directory)}")


if __name__ == "__main__":
    main()
