"""Chapter 2's runs: RNN, LSTM and GRU language models on the characters of Tiny Shakespeare.

Training reads the corpus in order (:class:`~lmbook.data.SequentialBatches`) and each model carries its
state from batch to batch: truncated backpropagation through time, ``bptt`` characters at a time.
:func:`record_gpu` is the chapter's full-size reference recipe (``python -m lmbook.reference record ch02``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data import RandomBatches, SequentialBatches, shakespeare_chars
from ..generate import complete
from ..history import History
from ..metrics import split_loss
from ..rnn import CELLS, NAMES, RNNLM, RNNConfig, input_gradient_norms, scale_recurrent_weights
from ..runtime import get_device
from . import RunSettings, trainer


@dataclass(frozen=True)
class CharRun(RunSettings):
    """The sizes of the chapter's character-level runs: model shape, batches, training."""

    n_layer: int
    n_embd: int
    n_hidden: int
    dropout: float
    bptt: int  # truncation length of backpropagation through time: the characters of one batch row
    min_lr: float
    grad_clip: float | None = 1.0

    def model_config(self, cell: str, vocab_size: int) -> RNNConfig:
        return RNNConfig(vocab_size, cell, self.n_layer, self.n_embd, self.n_hidden, self.dropout)

    def train_settings(self) -> dict:
        return {**super().train_settings(), "min_lr": self.min_lr, "grad_clip": self.grad_clip}


RUNS = {
    # a GPU, minutes for the three cells together
    "full": CharRun(n_layer=2, n_embd=128, n_hidden=512, dropout=0.2, bptt=64, batch_size=128,
                    max_steps=3000, lr=3e-3, min_lr=3e-4, warmup_steps=100, eval_interval=250, eval_iters=40),
    # two CPU cores, under half a minute a cell
    "fast": CharRun(n_layer=1, n_embd=48, n_hidden=128, dropout=0.0, bptt=64, batch_size=32,
                    max_steps=500, lr=1e-2, min_lr=1e-3, warmup_steps=20, eval_interval=100, eval_iters=10),
}
TEMPERATURES = (0.5, 0.8, 1.0)
PROBE = dict(block_size=100, batch_size=64, seed=0)  # the validation windows the gradient picture reads
IN_ORDER = dict(block_size=250, batch_size=16, carry_state=True)  # how the table reads the split in order


def make_char_model(cell: str, run: CharRun, vocab_size: int, device=None, seed: int = 0) -> RNNLM:
    """A fresh :class:`~lmbook.rnn.RNNLM` with ``cell`` at the sizes of ``run``, initialised from ``seed``."""
    torch.manual_seed(seed)
    return RNNLM(run.model_config(cell, vocab_size)).to(device or get_device())


def train_char_model(model: RNNLM, run: CharRun, train_data: torch.Tensor, val_data: torch.Tensor,
                     seed: int = 0, eval_batches: dict | None = None, rec=None, **changes) -> History:
    """Train ``model`` in place at the sizes of ``run`` with :func:`lmbook.train.train`; returns its history.

    Training reads :class:`~lmbook.data.SequentialBatches` and the model carries its state
    from batch to batch; evaluation reads random windows from a zero state, as for the GPT
    (``eval_batches`` replaces them). ``changes`` override fields of the :class:`~lmbook.train.TrainConfig`
    (``grad_clip=None``, say). In a reference recipe, ``rec`` (a :class:`~lmbook.runs.recording.Recording`)
    trains it under the cell's name, resumably.
    """
    device = next(model.parameters()).device
    batches = SequentialBatches(train_data, run.bptt, run.batch_size, device)
    eval_batches = eval_batches or {
        "train": RandomBatches(train_data, run.bptt, run.batch_size, device, seed=seed + 1),
        "val": RandomBatches(val_data, run.bptt, run.batch_size, device, seed=seed + 2),
    }
    model.reset_state()
    config = run.train_config(**{"desc": NAMES[model.config.cell], "seed": seed, **changes})
    return trainer(rec, model.config.cell)(model, batches, config, eval_batches)


def train_cells(run: CharRun, train_data: torch.Tensor, val_data: torch.Tensor, vocab_size: int,
                device=None, cells: tuple[str, ...] = CELLS, rec=None) -> dict[str, tuple[RNNLM, History]]:
    """One model of each cell, built from the same seed and trained the same way: ``{cell: (model, history)}``."""
    trained = {}
    for cell in cells:
        model = make_char_model(cell, run, vocab_size, device)
        trained[cell] = model, train_char_model(model, run, train_data, val_data, rec=rec)
    return trained


def summarize(model: RNNLM, history: History, val_data: torch.Tensor | None = None) -> dict:
    """The numbers the chapter's table shows for one run (with ``val_data``: the loss read in order too)."""
    summary = {
        "params": model.num_params(),
        "val_loss": history.eval_loss["val"][-1],
        "best_val_loss": history.best("val")[1],
        "tokens_per_second": history.tokens_per_second,
        "seconds": history.seconds,
    }
    if val_data is not None:
        summary["val_loss_in_order"] = split_loss(model, val_data, **IN_ORDER)
    return summary


def results_table(results: dict[str, dict]) -> str:
    """A Markdown table of :func:`summarize`'s numbers, one row a run."""
    in_order = all("val_loss_in_order" in r for r in results.values())
    lines = ["| model | parameters | val loss (windows) | best | val loss (in order) | tokens/s | seconds |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for cell, r in results.items():
        read = f"{r['val_loss_in_order']:.3f}" if in_order else "-"
        lines.append(f"| {NAMES.get(cell, cell)} | {r['params']:,} | {r['val_loss']:.3f} | {r['best_val_loss']:.3f} "
                     f"| {read} | {r['tokens_per_second']:,.0f} | {r['seconds']:.0f} |")
    return "\n".join(lines)


RECIPE_VERSION = "1"  # change it when the recipe's code changes what it records
REFERENCE = {"gpu": RUNS["full"]}  # the settings of the reference recipes, per level
SMOKE = {"gpu": RUNS["fast"].replace(n_embd=8, n_hidden=16, bptt=16, batch_size=4, max_steps=4, warmup_steps=1,
                                     eval_interval=2, eval_iters=1)}  # the same recipe in seconds, for the tests


def record_gpu(rec) -> None:
    """Chapter 2's full-size experiment: the three cells trained on Tiny Shakespeare, sampled and probed.

    Recorded by ``python -m lmbook.reference record ch02 --level gpu`` into ``lmbook/references/ch02-gpu.json``.
    """
    run, device = rec.settings, rec.device
    tokenizer, train_data, val_data = shakespeare_chars()
    trained = train_cells(run, train_data, val_data, tokenizer.vocab_size, device, rec=rec)

    def gradient_norms() -> dict:
        x, y = RandomBatches(val_data, device=device, **PROBE)()
        at_init = {cell: make_char_model(cell, run, tokenizer.vocab_size, device) for cell in CELLS}
        at_init["rnn x5"] = scale_recurrent_weights(make_char_model("rnn", run, tokenizer.vocab_size, device), 5.0)
        return {"init": {name: input_gradient_norms(m, x, y).tolist() for name, m in at_init.items()},
                "trained": {cell: input_gradient_norms(m, x, y).tolist() for cell, (m, _) in trained.items()}}

    rec.result("runs", rec.compute("runs", lambda: {cell: summarize(model, history, val_data)
                                                     for cell, (model, history) in trained.items()}))
    rec.result("gradient_norms", rec.compute("gradient norms", gradient_norms))
    for cell, (model, _) in trained.items():
        for t in TEMPERATURES:
            text = rec.compute(f"sample {cell} {t}", lambda: complete(model, tokenizer, "ROMEO:", max_new_tokens=400,
                                                                      temperature=t, seed=0))
            rec.sample(f"{cell} {t}", text)
