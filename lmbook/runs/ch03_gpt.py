"""Chapter 3's runs: a character-level GPT on Tiny Shakespeare, its position tables and its LayerNorms.

``RUNS`` is the chapter's GPT (its full size is the recipe of the best speed run in
``benchmarks/NOTES.md``); ``POSITION_RUNS`` compare position tables and ``NORM_RUNS`` pre- against
post-LN, each at both sizes. :func:`reference_run` is the chapter's full-size experiment.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..attention import attention_cost
from ..data import RandomBatches, shakespeare_chars
from ..generate import complete
from ..gpt import GPT, GPTConfig
from ..history import History
from ..metrics import split_loss
from ..runtime import get_device
from ..train import train
from ..variants import gpt_class
from . import RunSettings


@dataclass(frozen=True)
class GPTRun(RunSettings):
    """The sizes of a character-level GPT run: model shape, batches, training."""

    n_layer: int
    n_head: int
    n_embd: int
    block_size: int
    dropout: float
    min_lr: float
    schedule: str
    weight_decay: float
    beta2: float

    def model_config(self, vocab_size: int) -> GPTConfig:
        return GPTConfig(vocab_size=vocab_size, block_size=self.block_size, n_layer=self.n_layer, n_head=self.n_head,
                         n_embd=self.n_embd, dropout=self.dropout)

    def train_settings(self) -> dict:
        return {**super().train_settings(), "min_lr": self.min_lr, "schedule": self.schedule,
                "weight_decay": self.weight_decay, "betas": (0.9, self.beta2)}


RUNS = {
    # on a GPU, under a minute on an H100: the schedule of the best speed runs (benchmarks/NOTES.md, run p),
    # decaying to zero where longer runs start to overfit
    "full": GPTRun(n_layer=6, n_head=6, n_embd=384, block_size=256, dropout=0.2, batch_size=128, max_steps=1100,
                   lr=2e-3, min_lr=0.0, warmup_steps=50, schedule="linear", weight_decay=0.3, beta2=0.99,
                   eval_interval=100, eval_iters=20),
    # two CPU cores, under a minute (benchmarks/speedrun_char_cpu.py times it and benchmarks/NOTES.md says why)
    "fast": GPTRun(n_layer=2, n_head=4, n_embd=96, block_size=32, dropout=0.0, batch_size=32, max_steps=1000,
                   lr=1e-2, min_lr=0.0, warmup_steps=30, schedule="linear", weight_decay=0.1, beta2=0.99,
                   eval_interval=100, eval_iters=4),
}
# small runs that compare position tables: seconds each on a CPU (one layer at the fast size,
# where a model without position information is exactly blind to the order of its context)
POSITION_RUNS = {
    "full": RUNS["full"].replace(n_layer=4, n_head=4, n_embd=256, block_size=128, dropout=0.0, batch_size=64,
                                 max_steps=1000, lr=1e-3, min_lr=1e-4, warmup_steps=100, schedule="cosine",
                                 weight_decay=0.1, eval_interval=100, eval_iters=20),
    "fast": RUNS["fast"].replace(n_layer=1, n_embd=64, block_size=64, batch_size=32, max_steps=300, lr=5e-3,
                                 warmup_steps=20, eval_interval=50, eval_iters=5),
}
# deeper, narrow stacks at a high learning rate, to compare pre-LN with post-LN
NORM_RUNS = {
    "full": RUNS["full"].replace(n_layer=12, n_head=4, n_embd=128, block_size=128, dropout=0.0, batch_size=64,
                                 weight_decay=0.1, max_steps=600, lr=1e-2, min_lr=0.0, schedule="linear",
                                 warmup_steps=100, eval_interval=50, eval_iters=20),
    "fast": RUNS["fast"].replace(n_layer=6, n_embd=64, block_size=64, batch_size=16, max_steps=300, lr=1e-2,
                                 warmup_steps=30, eval_interval=25, eval_iters=2),
}
VARIANTS = {  # the model choices the chapter compares, each against the default (lmbook.variants.gpt_class)
    "positions": {"learned": {}, "sinusoidal": {"position": "sinusoidal"},
                  "indexed by token id (mistake)": {"position": "token-id"}},
    "norm": {"pre-LN": {}, "post-LN": {"norm": "post"}},
}


def named_config(name: str, **overrides) -> GPTConfig:
    """A GPT shape by name, for the benchmarks: ``"shakespeare-char"`` is this chapter's full GPT (vocabulary 65),
    any other name a :class:`~lmbook.gpt.GPTConfig` preset."""
    if name == "shakespeare-char":
        return RUNS["full"].model_config(65).replace(**overrides)
    return GPTConfig.preset(name, **overrides)


def make_char_gpt(run: GPTRun, vocab_size: int, device=None, seed: int = 0, **variant) -> GPT:
    """A fresh GPT at the sizes of ``run``, initialised from ``seed``; ``variant`` goes to :func:`gpt_class`."""
    torch.manual_seed(seed)
    return gpt_class(**variant)(run.model_config(vocab_size)).to(device or get_device())


def train_char_gpt(model: GPT, run: GPTRun, train_data: torch.Tensor, val_data: torch.Tensor, seed: int = 0,
                   **changes) -> History:
    """Train ``model`` in place at the sizes of ``run`` on random windows; ``changes`` go to the training config."""
    device = next(model.parameters()).device
    batches = RandomBatches(train_data, run.block_size, run.batch_size, device, seed=seed)
    eval_batches = {"val": RandomBatches(val_data, run.block_size, 64, device, seed=seed + 1)}
    return train(model, batches, run.train_config(**{"seed": seed, **changes}), eval_batches)


def reference_run() -> dict:
    """Chapter 3's full-size experiment: the character-level GPT trained, sampled and measured.

    Recorded by ``python -m lmbook.reference gpt`` into ``lmbook/references/gpt.json``.
    """
    run, device = RUNS["full"], get_device()
    tokenizer, train_data, val_data = shakespeare_chars()
    model = make_char_gpt(run, tokenizer.vocab_size, device)
    history = train_char_gpt(model, run, train_data, val_data)
    samples = {f"gpt {t}": complete(model, tokenizer, "ROMEO:", max_new_tokens=400, temperature=t, seed=0)
               for t in (0.5, 0.8, 1.0)}
    results = {"val_loss_whole_split": split_loss(model, val_data, run.block_size), "params": model.num_params(),
               "tokens_per_second": history.tokens_per_second, "seconds": history.seconds,
               "cost": attention_cost(lengths=(256, 512, 1024, 2048, 4096), batch=8, n_head=6, head_size=64)}
    return {"histories": {"gpt": history}, "results": results, "samples": samples, "sizes": run.to_dict()}
