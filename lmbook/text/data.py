"""The corpus and the batches every chapter trains on.

Tiny Shakespeare is looked up in a cache folder (``LMBOOK_DATA`` overrides it),
downloaded from its canonical address when it is missing, checked against its
SHA-256 and written atomically, so that a broken download never leaves a half
file behind. :class:`RandomBatches` draws random windows from a token tensor
with its own generator, whose state goes into checkpoints (exact resume).
"""

from __future__ import annotations

import array
import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from ..interface import check_number, check_seed
from ..runtime import DATA_VARIABLE, data_dir, pick
from .tokenizers import CharTokenizer



@dataclass(frozen=True)
class RemoteFile:
    """A file the book needs: its name in the cache, where it is published, its checksum."""

    filename: str
    url: str
    sha256: str
    size: int | None = None


TINY_SHAKESPEARE = RemoteFile(
    filename="tinyshakespeare.txt",
    url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
    sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
    size=1_115_394,
)


class DataUnavailableError(FileNotFoundError):
    """The file is neither in the cache nor downloadable."""


class ChecksumError(ValueError):
    """A file's SHA-256 is not the published one."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(remote: RemoteFile, folder: Path | None = None, timeout: float = 30.0) -> Path:
    """Return the path of ``remote`` in ``folder`` (default :func:`lmbook.runtime.data_dir`), downloading it if absent.

    The download goes to a temporary file in the same folder, is checked, and only
    then renamed into place; on any failure the temporary file is removed. A cached
    copy whose checksum is wrong is moved aside (kept, for a look, not deleted) and
    fetched again; offline, the error says where the bad copy went.
    """
    folder = Path(folder) if folder is not None else data_dir()
    path = folder / remote.filename
    if not path.exists():
        return _download(remote, path, timeout)
    found = sha256_of(path)
    if found == remote.sha256:
        return path
    aside = path.with_name(f"{path.name}.bad-{found[:12]}")
    try:
        os.replace(path, aside)
    except OSError as err:
        raise ChecksumError(
            f"{path} has SHA-256 {found}, not the published {remote.sha256}, and cannot be moved aside ({err}). "
            f"Replace it with a good copy from {remote.url}, or point {DATA_VARIABLE} at a folder that holds one."
        ) from err
    try:
        return _download(remote, path, timeout)
    except DataUnavailableError as err:
        raise DataUnavailableError(
            f"{path} had SHA-256 {found}, not the published {remote.sha256}: it was damaged or another file. It "
            f"was moved to {aside}, and a fresh copy could not be downloaded.\n{err}"
        ) from None  # the message says it all: no second traceback


def _download(remote: RemoteFile, path: Path, timeout: float) -> Path:
    """Download ``remote`` to ``path`` through a checked temporary file in the same folder."""
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{remote.filename}.", suffix=".part")
    except OSError as err:
        raise DataUnavailableError(_missing_message(remote, path, f"cannot write to {folder}: {err}")) from None
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(remote.url, timeout=timeout) as response:
            while block := response.read(1 << 20):
                out.write(block)
        found = sha256_of(Path(tmp))
        if found != remote.sha256:
            raise ChecksumError(
                f"the file downloaded from {remote.url} has SHA-256 {found}, not the published "
                f"{remote.sha256}; it was not kept. Try again later, or place a good copy at {path}."
            )
        os.replace(tmp, path)  # atomic: the file appears whole or not at all
    except (urllib.error.URLError, OSError) as err:
        # One actionable message, without the socket's traceback: the reason is quoted in it.
        raise DataUnavailableError(_missing_message(remote, path, str(err))) from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _missing_message(remote: RemoteFile, path: Path, reason: str) -> str:
    return (
        f"{remote.filename} is not in {path.parent} and could not be downloaded from {remote.url} ({reason}).\n"
        f"Either download it yourself to {path}, for example\n"
        f"    curl -L -o {path} {remote.url}\n"
        f"or set the environment variable {DATA_VARIABLE} to a folder that already holds {remote.filename}."
    )


def load_text(remote: RemoteFile = TINY_SHAKESPEARE, folder: Path | None = None) -> str:
    """The verified text of ``remote`` (Tiny Shakespeare by default)."""
    return fetch(remote, folder).read_text(encoding="utf-8")


def load_shakespeare(folder: Path | None = None) -> str:
    """Tiny Shakespeare: 1,115,394 characters of plays, the corpus of every chapter."""
    return load_text(TINY_SHAKESPEARE, folder)


def train_val_split(data: Sequence, val_fraction: float = 0.1) -> tuple[Sequence, Sequence]:
    """The first ``1 - val_fraction`` of ``data`` (a tensor of ids or a string) for training, the rest for
    validation."""
    check_number("val_fraction", val_fraction, "a number strictly between 0 and 1", lambda f: 0.0 < f < 1.0)
    n = int(len(data) * (1 - val_fraction))
    return data[:n], data[n:]


def as_ids(ids: Sequence[int]) -> torch.Tensor:
    """A list of token ids as a 1-D int64 tensor (through a typed array: ``torch.tensor`` on a
    Python list of a million ints takes a third of a second, this a twentieth)."""
    return torch.frombuffer(array.array("q", ids), dtype=torch.int64) if len(ids) else torch.zeros(0, dtype=torch.int64)


HELD_OUT_CHARS = {"full": 0, "fast": 20_000}  # of the held-out split, what chapters 6 and 7 score models on (0: all)


def held_out_text(chars: int | None = None) -> str:
    """The text the book scores every model on (chapters 6 and 7, :func:`lmbook.evaluation.metrics.held_out_score`): the
    first ``chars`` characters of Tiny Shakespeare's held-out tenth, which no model trains on (``0``: all of it;
    ``None``: as many as the size says, ``HELD_OUT_CHARS``)."""
    if chars is None:
        chars = pick(**HELD_OUT_CHARS)
    return train_val_split(load_shakespeare())[1][: chars or None]


def shakespeare_chars(val_fraction: float = 0.1):
    """Tiny Shakespeare as character ids: ``(tokenizer, train_data, val_data)`` (chapters 2 and 3)."""

    text = load_shakespeare()
    tokenizer = CharTokenizer.train(text)
    train_data, val_data = train_val_split(as_ids(tokenizer.encode(text)), val_fraction)
    return tokenizer, train_data, val_data


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device``, from the CPU to a GPU without waiting for the GPU.

    An ordinary copy from the CPU to a GPU waits until the GPU has finished all the work
    queued before it. Through pinned memory, with ``non_blocking=True``, it does not: Python
    goes on launching the next training step while the GPU computes this one. The batch
    sources of every chapter use it.
    """
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def check_sizes(**sizes) -> None:
    """Raise ``ValueError`` naming the first of ``sizes`` (``block_size=64``, ...) that is not an integer >= 1."""
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, not {value!r}.")


class SeededBatches:
    """What every random batch source of the book shares: a device and its own seeded generator.

    The generator lives on the CPU, so the same seed draws the same batches on every device, and its
    state goes into checkpoints: ``state_dict()``/``load_state_dict()`` let a resumed run draw the
    batches an uninterrupted run would have drawn. Subclasses define ``__call__() -> (x, y)``.
    """

    def __init__(self, device="cpu", seed: int = 0):
        check_seed(seed)
        self.device = torch.device(device)
        self.generator = torch.Generator().manual_seed(seed)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


class RandomBatches(SeededBatches):
    """Random windows of ``block_size + 1`` tokens: inputs ``x`` (B, T) and targets ``y = x`` shifted by one.

    Calling the object returns the next ``(x, y)`` on ``device``. Under ``torchrun`` the seed
    is offset by the process's rank, so processes train on different windows.
    """

    def __init__(self, data: torch.Tensor, block_size: int, batch_size: int, device="cpu", seed: int = 0):
        check_sizes(block_size=block_size, batch_size=batch_size)
        check_seed(seed)
        data = torch.as_tensor(data, dtype=torch.long)
        if data.dim() != 1:
            raise ValueError(f"expected a 1-D tensor of token ids, got shape {tuple(data.shape)}.")
        if len(data) < block_size + 1:
            raise ValueError(
                f"{len(data)} tokens are too few for windows of {block_size} + 1 tokens: "
                "use more data or a smaller block_size."
            )
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            seed += 1_000_003 * torch.distributed.get_rank()  # under torchrun each process draws its own windows
        super().__init__(device, seed)
        self.data = data.to(self.device)  # a corpus of this book's size fits on any GPU
        self.block_size, self.batch_size = block_size, batch_size
        self._offsets = torch.arange(block_size + 1, device=self.device)  # (T+1,)

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor]:
        starts = torch.randint(len(self.data) - self.block_size, (self.batch_size,), generator=self.generator)
        windows = self.data[to_device(starts, self.device)[:, None] + self._offsets]  # (B, T+1)
        return windows[:, :-1], windows[:, 1:]  # (B, T), (B, T)


class SequentialBatches:
    """Consecutive blocks of ``batch_size`` parallel streams, for models that carry a state (chapter 2).

    The data is cut into ``batch_size`` equal streams, side by side; call ``i`` returns
    block ``i`` of every stream: ``x[b]`` is tokens ``i*T .. i*T+T-1`` of stream ``b`` and
    ``y[b]`` the same shifted by one. Row ``b`` of a batch thus continues row ``b`` of the
    batch before, so a recurrent model may start each batch from the state the previous
    one ended in (truncated backpropagation through time). After the last whole block
    the streams start again from their beginning. ``state_dict()`` holds the block to come.
    Under ``torchrun`` the data is cut into ``batch_size`` streams per process, each
    process reading its own.
    """

    def __init__(self, data: torch.Tensor, block_size: int, batch_size: int, device="cpu"):
        check_sizes(block_size=block_size, batch_size=batch_size)
        data = torch.as_tensor(data, dtype=torch.long)
        if data.dim() != 1:
            raise ValueError(f"expected a 1-D tensor of token ids, got shape {tuple(data.shape)}.")
        rank, processes = 0, 1
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, processes = torch.distributed.get_rank(), torch.distributed.get_world_size()
        streams = batch_size * processes
        length = (len(data) - 1) // streams  # tokens of input per stream (one more for the last target)
        if length < block_size:
            raise ValueError(
                f"{len(data)} tokens cut into {streams} streams leave {length} per stream, fewer than "
                f"block_size={block_size}: use more data, fewer streams or a smaller block_size."
            )
        self.device = torch.device(device)
        rows = slice(rank * batch_size, (rank + 1) * batch_size)
        self.x = data[: streams * length].view(streams, length)[rows].to(self.device)  # (B, L)
        self.y = data[1 : streams * length + 1].view(streams, length)[rows].to(self.device)  # (B, L)
        self.block_size, self.batch_size = block_size, batch_size
        self.blocks = length // block_size  # blocks per pass over the data
        self.block = 0  # the block the next call returns

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor]:
        span = slice(self.block * self.block_size, (self.block + 1) * self.block_size)
        self.block = (self.block + 1) % self.blocks
        return self.x[:, span].clone(), self.y[:, span].clone()  # (B, T), (B, T)

    def state_dict(self) -> dict:
        return {"block": self.block}

    def load_state_dict(self, state: dict) -> None:
        self.block = int(state["block"])
