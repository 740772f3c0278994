"""Checkpoints know what they hold, and a training process killed at an arbitrary step resumes exactly."""

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lmbook.training.checkpoint import CheckpointError, load_checkpoint
from lmbook.text.data import RandomBatches
from lmbook.models.gpt import GPT, GPTConfig
from lmbook.text.tokenizers import CharTokenizer
from lmbook.training.train import TrainConfig, train
from lmbook.models.variants import PostLNGPT

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("train_worker.py")
DATA = (torch.arange(3000) * 7) % 65


def worker(*args) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen([sys.executable, str(WORKER), *map(str, args)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def finish(process: subprocess.Popen) -> None:
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err.decode()


def test_a_process_killed_at_an_arbitrary_step_resumes_bit_identical(tmp_path):
    finish(worker("", tmp_path / "whole.pt"))  # the uninterrupted run, without checkpoints
    checkpoint = tmp_path / "ckpt.pt"
    process = worker(checkpoint, tmp_path / "killed.pt")
    while not checkpoint.exists():  # wait for the first checkpoint, then kill at a random moment
        assert process.poll() is None, "the worker ended before writing a checkpoint"
        time.sleep(0.01)
    time.sleep(random.Random().uniform(0.0, 0.3))
    process.send_signal(signal.SIGKILL)
    process.wait()
    step = load_checkpoint(checkpoint)["step"]
    assert process.returncode == -signal.SIGKILL and 0 < step < 150, (process.returncode, step)
    finish(worker(checkpoint, tmp_path / "resumed.pt", "--resume"))
    whole, resumed = torch.load(tmp_path / "whole.pt"), torch.load(tmp_path / "resumed.pt")
    for name, tensor in whole.items():
        assert torch.equal(tensor, resumed[name]), f"{name} differs after resuming from step {step}"


def tiny_run(tmp_path, model, tokenizer=None, resume=False):
    config = TrainConfig(max_steps=2, eval_interval=2, eval_iters=1, progress=False, warmup_steps=0,
                         checkpoint_path=str(tmp_path / "ckpt.pt"))
    return train(model, RandomBatches(DATA, 16, 2, seed=0), config, resume=resume, tokenizer=tokenizer)


def gpt(cls=GPT, **changes):
    torch.manual_seed(0)
    return cls(GPTConfig.preset("tiny", block_size=16, **changes))


@pytest.mark.parametrize("other, field", [
    (lambda: gpt(dropout=0.3), "config.dropout = 0.0 in the file, 0.3 here"),  # the same shapes, another model
    (lambda: gpt(PostLNGPT), "class GPT in the file, PostLNGPT here"),
    (lambda: gpt(n_embd=48), "config.n_embd = 32 in the file, 48 here"),
])
def test_resuming_into_another_model_is_refused_naming_the_file_and_fields(tmp_path, other, field):
    tiny_run(tmp_path, gpt())
    with pytest.raises(CheckpointError, match="ckpt.pt was written for another model") as err:
        tiny_run(tmp_path, other(), resume=True)
    assert field in str(err.value)


def test_resuming_with_another_tokenizer_is_refused(tmp_path):
    tiny_run(tmp_path, gpt(), CharTokenizer.train("abcdefgh"))
    tiny_run(tmp_path, gpt(), CharTokenizer.train("abcdefgh"), resume=True)  # the same one: fine
    with pytest.raises(CheckpointError, match="tokenizer"):
        tiny_run(tmp_path, gpt(), CharTokenizer.train("abcdefgz"), resume=True)


def test_resuming_with_other_trainable_parameters_is_refused(tmp_path):
    tiny_run(tmp_path, gpt())
    frozen = gpt()
    frozen.wte.requires_grad_(False)
    with pytest.raises(CheckpointError, match="trained other parameters"):
        tiny_run(tmp_path, frozen, resume=True)


@pytest.mark.parametrize("field, value", [
    ("lr", -1e-3), ("lr", float("nan")), ("min_lr", -1.0), ("warmup_steps", -1), ("max_steps", 0),
    ("max_steps", 2.5), ("eval_iters", 0), ("weight_decay", -0.1), ("betas", (0.9,)), ("betas", (0.9, 1.0)),
    ("grad_clip", 0.0), ("checkpoint_interval", 0), ("seed", "1"), ("grad_accum", True),
])
def test_every_training_setting_is_checked_where_it_enters(field, value):
    with pytest.raises(ValueError, match=re.escape(f", not {value!r}.")) as err:
        TrainConfig(**{field: value})
    assert str(err.value).startswith(f"TrainConfig.{field} must be ")


def test_a_recurrent_model_resumes_from_the_state_it_carried(tmp_path):
    """An RNN carries its hidden state from batch to batch: a checkpoint keeps it, so a resume continues exactly."""
    from lmbook.text.data import SequentialBatches
    from lmbook.models.rnn import RNNConfig, RNNLM

    def run(steps: int, path=None, resume: bool = False) -> RNNLM:
        torch.manual_seed(0)
        model = RNNLM(RNNConfig.preset("tiny"))
        config = TrainConfig(max_steps=steps, lr=1e-2, schedule="constant", warmup_steps=0, progress=False,
                             checkpoint_path=path and str(path))
        train(model, SequentialBatches(DATA, 8, 2), config, resume=resume)
        return model

    whole = run(4)
    run(2, tmp_path / "rnn.pt")  # stopped after two steps, its checkpoint written
    resumed = run(4, tmp_path / "rnn.pt", resume=True)
    for name, tensor in whole.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), f"{name} differs after the resume"


def test_a_run_that_stopped_early_stays_stopped_when_resumed(tmp_path):
    def run(resume: bool):
        config = TrainConfig(max_steps=8, lr=0.0, min_lr=0.0, warmup_steps=0, eval_interval=2, eval_iters=1,
                             patience=1, progress=False, checkpoint_path=str(tmp_path / "ckpt.pt"))
        val = RandomBatches(DATA, 16, 2, seed=1)
        return train(gpt(), RandomBatches(DATA, 16, 2, seed=0), config, {"val": val}, resume=resume)

    stopped = run(resume=False)  # a learning rate of 0: no evaluation improves on the first
    assert stopped.stopped_early == 2
    resumed = run(resume=True)
    assert resumed.steps == stopped.steps and resumed.stopped_early == 2
