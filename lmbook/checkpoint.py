"""Checkpoints: written atomically, read with a clear error, random generators saved and restored.

:func:`lmbook.train.train` writes one at every evaluation (or as often as asked) and resumes from it
exactly: the model, the optimizer, the step, the history and every random generator come back.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read."""


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


def process_state(train_batches) -> dict:
    """What differs between processes and must come back on resume: random generators and batches."""
    batches = train_batches.state_dict() if hasattr(train_batches, "state_dict") else None
    return {"rng": rng_state(), "batches": batches}
