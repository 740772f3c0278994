"""Checkpoints: written atomically, checked for damage when read, random generators saved and restored.

:func:`lmbook.training.train.train` writes one at every evaluation (or as often as asked) and resumes from it
exactly: the model, the optimizer, the step, the history and every random generator come back.
A checkpoint is ``torch.save``'s zip archive, which stores a CRC-32 checksum of every record in it;
``torch.load`` does not check them, :func:`load_checkpoint` does, so a flipped byte is refused, not resumed from.
"""

from __future__ import annotations

import os
import zipfile
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


def checkpoint_file(path) -> Path | None:
    """``TrainConfig.checkpoint_path`` as a ``Path`` (``None``: no checkpoints), refused before any training step
    if a checkpoint could not be written there: a directory, under a file, or in a directory closed to writing.

    Missing directories are made at the first save.
    """
    if path is None:
        return None
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"checkpoint_path must be a path (str or os.PathLike) or None, not {path!r}.")
    if str(path) == "":
        raise ValueError("checkpoint_path is empty: name a file, or pass None to write no checkpoint.")
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"checkpoint_path {path} is a directory: name a file in it, such as {path / 'ckpt.pt'}.")
    existing = next(p for p in path.absolute().parents if p.exists())  # the nearest directory there is already
    if not existing.is_dir():
        raise ValueError(f"checkpoint_path {path} cannot be written: {existing} is not a directory.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"checkpoint_path {path}: cannot write in {existing}. Choose a directory you may write to.")
    return path


def atomic_save(obj, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file beside ``path``, flushed to disk, then renamed over ``path``: a reader
    finds the old checkpoint or the new one, whole, never a mixture."""
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
    if hasattr(os, "O_DIRECTORY"):  # the rename itself reaches the disk (POSIX)
        directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def _refuse(path: Path, what: str, err: Exception | None = None) -> CheckpointError:
    cause = f" ({type(err).__name__}: {err})" if err is not None else ""
    return CheckpointError(
        f"{path} is damaged or truncated, or not a checkpoint: {what}{cause}. Do not resume from it: delete it "
        "to train from the start, or restore a copy of it (or point checkpoint_path elsewhere)."
    )


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Read a checkpoint written by :func:`atomic_save` (:func:`lmbook.training.train.train` writes them), after
    checking the checksum of every record in it; a damaged, truncated or foreign file raises
    :class:`CheckpointError`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:  # torch.save's format since torch 1.6; an older file, without checksums, is refused here too
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()  # reads every record and compares it with its CRC-32
    except Exception as err:  # zipfile raises several types for a truncated or foreign file
        raise _refuse(path, "it is not a whole zip archive with checksums", err) from err
    if bad is not None:
        raise _refuse(path, f"its record {bad} does not match the checksum written with it")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for files it cannot read
        raise _refuse(path, "torch cannot read it", err) from err


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
