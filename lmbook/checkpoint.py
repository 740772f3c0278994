"""Checkpoints: written atomically, read with a clear error, random generators saved and restored.

:func:`lmbook.train.train` writes one at every evaluation (or as often as asked) and resumes from it
exactly: the model, the optimizer, the step, the history and every random generator come back.
"""

from __future__ import annotations

import os
from dataclasses import asdict, is_dataclass
from pathlib import Path

import torch
import torch.nn as nn


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read, or holds another model than the one it is loaded into."""


def model_identity(model: nn.Module, tokenizer=None) -> dict:
    """What a checkpoint records of its model: the class, the configuration, every tensor's shape and,
    when the run has one, the tokenizer's fingerprint.

    Two models with the same tensor shapes can still differ (a post-LN GPT and a pre-LN one, another
    dropout): the class and the configuration tell them apart.
    """
    config = getattr(model, "config", None)
    return {
        "class": type(model).__name__,
        "config": asdict(config) if is_dataclass(config) else None,
        "shapes": {k: list(v.shape) for k, v in model.state_dict().items()},
        "tokenizer": tokenizer.fingerprint() if tokenizer is not None else None,
    }


def check_identity(path: str | os.PathLike, recorded: dict | None, model: nn.Module, tokenizer=None) -> None:
    """Raise :class:`CheckpointError` naming the file and every field in which ``model`` (and ``tokenizer``)
    differ from what the checkpoint at ``path`` was written for."""
    if recorded is None:
        raise CheckpointError(f"{path} records no model identity (it was written by an older lmbook): "
                              "train from the start, or point checkpoint_path elsewhere.")
    here = model_identity(model, tokenizer)
    differences = []
    if recorded.get("tokenizer") and here["tokenizer"] and recorded["tokenizer"] != here["tokenizer"]:
        differences.append(f"tokenizer {recorded['tokenizer']} in the file, {here['tokenizer']} here")
    if recorded["class"] != here["class"]:
        differences.append(f"class {recorded['class']} in the file, {here['class']} here")
    old, new = recorded.get("config") or {}, here["config"] or {}
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            differences.append(f"config.{key} = {old.get(key)!r} in the file, {new.get(key)!r} here")
    shapes_old, shapes_new = recorded["shapes"], here["shapes"]
    for key in sorted(set(shapes_old) | set(shapes_new)):
        if shapes_old.get(key) != shapes_new.get(key):
            differences.append(f"tensor {key}: {shapes_old.get(key)} in the file, {shapes_new.get(key)} here")
    if differences:
        shown = "; ".join(differences[:8]) + (f"; and {len(differences) - 8} more" if len(differences) > 8 else "")
        raise CheckpointError(
            f"{path} was written for another model than the one given: {shown}. Build the model the "
            "checkpoint was written for, or point checkpoint_path elsewhere to train this one from the start."
        )


def atomic_save(obj, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file, flushed to disk, then renamed over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # the old checkpoint stays whole until this instant
    finally:
        if tmp.exists():
            tmp.unlink()


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Read a checkpoint written by :func:`lmbook.train.train`, with a clear error if it is damaged."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise CheckpointError(
            f"{path} is not a readable checkpoint ({type(err).__name__}: {err}). It may be truncated or "
            "from another program: delete it to train from the start, or point checkpoint_path elsewhere."
        ) from err


def rng_state() -> dict:
    """The state of torch's global generators (the CPU's and every GPU's): dropout masks come from them."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Put back what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def process_state(train_batches, model: nn.Module | None = None) -> dict:
    """What differs between processes and must come back on resume: random generators, batches and, for a
    model that carries a state from one training call to the next (a recurrent one), that state."""
    batches = train_batches.state_dict() if hasattr(train_batches, "state_dict") else None
    carried = model.training_state() if hasattr(model, "training_state") else None
    return {"rng": rng_state(), "batches": batches, "carried": carried}
