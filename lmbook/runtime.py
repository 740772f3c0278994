"""Where the code runs and how big it runs: device, size, seeds, versions, precision, processes.

Every chapter starts here. The environment is read in this module and nowhere else:

- ``LMBOOK_SIZE``: ``full`` gives the real results (meant for a GPU, minutes), ``fast`` the small runs
  that CI executes on two CPU cores (seconds); without it the size follows the hardware (``full`` when
  CUDA is available, otherwise ``fast``);
- ``LMBOOK_DEVICE``: the device for whole notebooks (:func:`get_device`);
- ``LMBOOK_DATA``: the folder of data files (:func:`data_dir`), ``LMBOOK_CACHE`` that of trained models
  and recordings (:func:`cache_dir`);
- ``LMBOOK_COMMIT``: the commit measured, for a copy without ``.git`` (:func:`commit`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import random
import re
import subprocess
import sys
from pathlib import Path
from typing import TypeVar

import torch
import torch.distributed as dist

from .interface import check_seed

SIZE_VARIABLE = "LMBOOK_SIZE"
DEVICE_VARIABLE = "LMBOOK_DEVICE"
DATA_VARIABLE = "LMBOOK_DATA"
CACHE_VARIABLE = "LMBOOK_CACHE"
COMMIT_VARIABLE = "LMBOOK_COMMIT"
SIZES = ("full", "fast")
PRECISIONS = ("auto", "bf16", "fp32")
T = TypeVar("T")


def data_dir() -> Path:
    """Where data files live: ``$LMBOOK_DATA`` if set, else ``~/.cache/lmbook``."""
    return Path(os.environ.get(DATA_VARIABLE) or Path.home() / ".cache" / "lmbook").expanduser()


def cache_dir() -> Path:
    """Where trained models and recordings are kept: ``$LMBOOK_CACHE`` if set, else ``~/.cache/lmbook/models``."""
    return Path(os.environ.get(CACHE_VARIABLE) or Path.home() / ".cache" / "lmbook" / "models").expanduser()


def commit() -> str:
    """The commit being measured: ``LMBOOK_COMMIT`` if set (a copy without .git), else git's answer."""
    if os.environ.get(COMMIT_VARIABLE):
        return os.environ[COMMIT_VARIABLE]
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def size() -> str:
    """The size every notebook runs at: ``"full"`` or ``"fast"``."""
    value = os.environ.get(SIZE_VARIABLE, "").strip().lower()
    if not value:
        return "full" if torch.cuda.is_available() else "fast"
    if value not in SIZES:
        raise ValueError(
            f"{SIZE_VARIABLE}={value!r} is not a size; set it to 'full' (real results, "
            "meant for a GPU) or 'fast' (small runs that finish in seconds on a CPU)."
        )
    return value


def pick(*, full: T, fast: T) -> T:
    """Return ``full`` or ``fast`` according to :func:`size` (used by every chapter)."""
    return full if size() == "full" else fast


def get_device(prefer: str | None = None) -> torch.device:
    """The device to compute on: CUDA when present, else the CPU.

    Apple's ``mps`` is used only when asked for (``prefer="mps"``): it has given
    silently wrong training results in comparable code, so it is opt-in.
    ``prefer`` may also be ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` to force a choice (anything else is refused); the
    ``LMBOOK_DEVICE`` environment variable does the same for whole notebooks.
    """
    prefer = prefer or os.environ.get(DEVICE_VARIABLE) or None
    if prefer is not None:
        prefer = str(prefer) if isinstance(prefer, torch.device) else prefer
        if not isinstance(prefer, str) or not re.fullmatch(r"cpu|mps|cuda(:\d+)?", prefer):
            raise ValueError(f"device {prefer!r} is not a choice of the book; choose one of 'cpu', 'cuda' (or "
                             "'cuda:N', the N-th GPU) and 'mps', in prefer= or in LMBOOK_DEVICE.")
        if prefer.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError("CUDA was asked for but torch sees no CUDA device.")
        if prefer == "mps" and not torch.backends.mps.is_available():
            raise RuntimeError("MPS was asked for but this torch build or machine has no MPS.")
        return torch.device(prefer)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 on CUDA devices that support it, else ``None`` (plain float32)."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's (if installed) and torch's generators with the integer ``seed``."""
    check_seed(seed)  # before any generator is seeded
    seed = int(seed)
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # pragma: no cover - numpy comes with the book's requirements
        pass


def device_name(device: torch.device | None = None) -> str:
    """A readable name of ``device``, e.g. ``'NVIDIA H100 80GB HBM3'`` or ``'cpu (2 threads)'``."""
    device = device or get_device()
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads, {platform.processor() or platform.machine()})"
    return device.type


def environment() -> dict[str, str]:
    """Versions (the book's package first), device and size, as printed by each chapter's first cell and stored
    in results."""
    import importlib.metadata as md

    from . import __version__

    info = {
        "lmbook": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "device": device_name(),
        "size": size(),
    }
    for package in ("transformers", "tokenizers", "numpy"):
        try:
            info[package] = md.version(package)
        except md.PackageNotFoundError:
            info[package] = "not installed"
    if torch.cuda.is_available():
        info["cuda"] = torch.version.cuda or "unknown"
    return info


QUIET_LOGGERS = ("torchao", "torch.utils._pytree")  # import-time notes: kernels for other GPUs, deprecations


def show_environment() -> None:
    """Print :func:`environment` one item a line (the first cell of every chapter), and keep the import-time
    notes of ``QUIET_LOGGERS`` off the page (torchao, which ``transformers`` imports when it is installed, lists
    the GPU kernels it cannot load on this machine); their errors still show."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    for key, value in environment().items():
        print(f"{key:>12}: {value}")


def autocast(device: torch.device, precision: str = "auto", cache: bool = True):
    """The autocast context for ``precision`` on ``device`` (a no-op for float32).

    ``cache=False`` recasts the weights at every use instead of keeping the casts, as a
    CUDA graph's recording needs.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(map(repr, PRECISIONS))}, not {precision!r}.")
    dtype = autocast_dtype(device) if precision == "auto" else torch.bfloat16 if precision == "bf16" else None
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype, cache_enabled=cache)


def world() -> tuple[int, int]:
    """This process's rank and the number of processes (``(0, 1)`` outside ``torchrun``)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def mean_over_processes(values: torch.Tensor) -> torch.Tensor:
    """``values`` averaged over the processes of ``torchrun`` (in place; unchanged in one process)."""
    if world()[1] > 1:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        values /= world()[1]
    return values
