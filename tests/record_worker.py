"""A tiny reference recipe for tests/test_reference.py: two trainings of a tiny GPT through a Recording, each
followed by computations. Run as ``python tests/record_worker.py WORK OUT`` (records into the folder OUT,
resuming what WORK holds); imported, it is a recipe module like ``lmbook.runs.ch03_gpt``."""

import sys
import time

import torch

from lmbook.text.data import RandomBatches
from lmbook.models.gpt import GPT, GPTConfig
from lmbook.training.train import TrainConfig, estimate_loss

RECIPE_VERSION = "test 1"
REFERENCE = {"cpu": {"steps": 60, "delay": 0.01}}  # each batch waits `delay` seconds: a kill lands mid-training
SMOKE = REFERENCE
DATA = (torch.arange(5000) * 7 + torch.arange(5000) // 97) % 65
LABELS = ("first", "second")


class SlowBatches(RandomBatches):
    """Random windows, each batch late by ``delay`` seconds (a sleep: no computation, the same batches)."""

    def __init__(self, delay: float, **kwargs):
        super().__init__(DATA, 16, 4, **kwargs)
        self.delay = delay

    def __call__(self):
        time.sleep(self.delay)
        return super().__call__()


def checksum(model: torch.nn.Module) -> str:
    return f"{sum(p.double().sum().item() for p in model.parameters()):.15e}"


def record_cpu(rec) -> None:
    s = rec.settings
    rec.plan({label: s["steps"] for label in LABELS})
    for i, label in enumerate(LABELS):
        torch.manual_seed(i)
        model = GPT(GPTConfig.preset("tiny", block_size=16, dropout=0.1))
        config = TrainConfig(max_steps=s["steps"], lr=1e-2, warmup_steps=5, eval_interval=10, eval_iters=1,
                             checkpoint_interval=3, progress=False, seed=i)
        rec.train(label, model, SlowBatches(s["delay"], seed=i), config, {"val": RandomBatches(DATA, 16, 4, seed=9)})
        rec.result(label, rec.compute(f"loss {label}", lambda: estimate_loss(model, RandomBatches(DATA, 16, 4), 2)))
        rec.sample(label, rec.compute(f"weights {label}", lambda: checksum(model)))


if __name__ == "__main__":
    from lmbook.runs.recording import record

    record("demo", "cpu", directory=sys.argv[2], work=sys.argv[1], module=sys.modules[__name__], threads=1)
