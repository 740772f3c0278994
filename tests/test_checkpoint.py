"""Checkpoints: a damaged checkpoint is refused, never resumed from, and a bad path is refused before step 0."""

import io
import os
from pathlib import Path

import pytest
import torch

from lmbook.training.checkpoint import CheckpointError, atomic_save, load_checkpoint
from lmbook.text.data import RandomBatches
from lmbook.models.gpt import GPT, GPTConfig
from lmbook.training.train import TrainConfig, train

DATA = (torch.arange(3000) * 7) % 65


def gpt() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig.preset("tiny", block_size=16))


def run(path, model=None, resume=False, batches=None):
    config = TrainConfig(max_steps=2, eval_interval=2, eval_iters=1, progress=False, warmup_steps=0,
                         checkpoint_path=path if isinstance(path, (str, int)) else str(path))
    return train(model or gpt(), batches or RandomBatches(DATA, 16, 2, seed=0), config, resume=resume)


def flipped(data: bytes, where: int) -> bytes:
    return data[:where] + bytes([data[where] ^ 0xFF]) + data[where + 1:]


def test_one_flipped_byte_in_the_weights_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "ckpt.pt"
    run(path)
    damaged = flipped(path.read_bytes(), len(path.read_bytes()) // 2)  # the middle: inside a weight matrix
    path.write_bytes(damaged)
    torch.load(io.BytesIO(damaged), weights_only=True)  # torch itself reads the damaged weights without a word
    with pytest.raises(CheckpointError, match="ckpt.pt is damaged") as err:
        load_checkpoint(path)
    assert "delete it" in str(err.value) and "copy" in str(err.value)


def test_every_flipped_byte_is_refused_or_harmless(tmp_path):
    torch.manual_seed(0)
    state = {"w": torch.randn(100), "step": 3, "history": {"loss": [1.0, 2.0]}}
    path = tmp_path / "ckpt.pt"
    atomic_save(state, path)
    data = path.read_bytes()
    for where in range(0, len(data), 3):
        path.write_bytes(flipped(data, where))
        try:
            loaded = load_checkpoint(path)
        except CheckpointError:
            continue
        assert torch.equal(loaded["w"], state["w"]) and loaded["step"] == 3 and loaded["history"] == state["history"], (
            f"byte {where} of {len(data)} flipped: read without an error, and the contents changed")


def test_a_truncated_checkpoint_is_refused(tmp_path):
    path = tmp_path / "ckpt.pt"
    atomic_save({"step": 1, "w": torch.ones(1000)}, path)
    for size in (10, 500, len(path.read_bytes()) - 30):
        path.write_bytes(path.read_bytes()[:size])
        with pytest.raises(CheckpointError, match="ckpt.pt is damaged or truncated"):
            load_checkpoint(path)


def test_a_resume_from_a_damaged_checkpoint_raises_and_leaves_the_file_alone(tmp_path):
    path = tmp_path / "ckpt.pt"
    run(path)
    damaged = flipped(path.read_bytes(), len(path.read_bytes()) // 2)
    path.write_bytes(damaged)
    drawn = []
    source = RandomBatches(DATA, 16, 2, seed=0)
    with pytest.raises(CheckpointError, match="damaged"):
        run(path, resume=True, batches=lambda: drawn.append(1) or source())
    assert not drawn and path.read_bytes() == damaged  # no step trained, nothing written over the evidence


def test_a_file_without_checksums_is_refused(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"step": 1}, path, _use_new_zipfile_serialization=False)  # torch's format before 1.6: no checksum
    with pytest.raises(CheckpointError, match="old.pt is damaged or truncated, or not a checkpoint"):
        load_checkpoint(path)


def test_a_checkpoint_is_written_whole_or_not_at_all(tmp_path):
    path = tmp_path / "deep" / "er" / "ckpt.pt"  # missing directories are made, as before
    atomic_save({"step": 1}, path)
    atomic_save({"step": 2}, path)
    assert load_checkpoint(path)["step"] == 2 and [p.name for p in path.parent.iterdir()] == ["ckpt.pt"]


@pytest.mark.parametrize("where, error, message", [
    (lambda tmp: tmp, ValueError, "is a directory"),
    (lambda tmp: tmp / "file.txt" / "ckpt.pt", ValueError, "file.txt is not a directory"),
    (lambda tmp: 3, TypeError, r"must be a path \(str or os.PathLike\) or None, not 3"),
    (lambda tmp: "", ValueError, "empty"),
])
def test_a_bad_checkpoint_path_is_refused_before_any_step(tmp_path, where, error, message):
    (tmp_path / "file.txt").write_text("a file")
    drawn, model = [], gpt()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    source = RandomBatches(DATA, 16, 2, seed=0)
    with pytest.raises(error, match=message):
        run(where(tmp_path), model, batches=lambda: drawn.append(1) or source())
    assert not drawn and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_a_checkpoint_path_given_as_a_path_object_resumes(tmp_path):
    config = TrainConfig(max_steps=2, eval_interval=2, eval_iters=1, progress=False, warmup_steps=0,
                         checkpoint_path=tmp_path / "ckpt.pt")  # a pathlib.Path, not a str
    train(gpt(), RandomBatches(DATA, 16, 2, seed=0), config)
    assert load_checkpoint(tmp_path / "ckpt.pt")["config"]["checkpoint_path"] == str(tmp_path / "ckpt.pt")
    train(gpt(), RandomBatches(DATA, 16, 2, seed=0), config, resume=True)


def test_a_checkpoint_in_a_directory_that_cannot_be_written_is_refused_before_any_step(tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # root may write anywhere: the directory is closed to others
        access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: access(p, mode) and Path(p) != locked)
    try:
        with pytest.raises(ValueError, match="cannot write in .*locked"):
            run(locked / "ckpt.pt")
    finally:
        locked.chmod(0o700)
