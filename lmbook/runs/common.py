"""What the chapters' runs share, so that no chapter's module imports another's (chapters 2 to 7).

- :class:`Settings` and :class:`RunSettings`: every chapter's settings derive from them, and those that
  train with :func:`lmbook.training.train.train` make their :class:`~lmbook.training.train.TrainConfig`
  the same way; :func:`trainer` trains directly or, in a reference recipe, through a resumable recording;
- the character-level models of chapters 2 and 3 and how they train (:class:`CharRun`,
  :func:`make_char_model`, :func:`train_char_model`; :class:`GPTRun`, ``GPT_RUNS``, :func:`make_char_gpt`,
  :func:`train_char_gpt`, :func:`named_config`), which the quick start, chapters 5 to 7, the model zoo and
  the benchmarks reuse, and chapter 8's Llama of the same shapes (:func:`make_char_llama`);
- chapter 3's equal-time record as chapters 6 and 7 read it (:func:`equal_time_windows`,
  :func:`plot_equal_time`), and chapter 4's settings (:class:`ChapterRun`), which chapter 7 reads from
  its record; chapter 6's settings (:class:`EvaluationRun`), which its two modules read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from ..config import Presets
from ..models.gpt import GPT, GPTConfig
from ..models.llama import Llama, LlamaConfig
from ..models.rnn import NAMES, RNNConfig, RNNLM
from ..models.variants import gpt_class
from ..runtime import get_device
from ..text.data import RandomBatches, SequentialBatches
from ..training.history import History
from ..training.train import TrainConfig, train


@dataclass(frozen=True)
class Settings(Presets):
    """A chapter's settings at one size: frozen, printable, copied with changes by ``replace``."""


@dataclass(frozen=True)
class RunSettings(Settings):
    """What the settings of every run of the training loop have: batches, optimisation, evaluation."""

    batch_size: int
    max_steps: int
    lr: float
    warmup_steps: int
    eval_interval: int
    eval_iters: int

    def train_settings(self) -> dict:
        """The :class:`~lmbook.training.train.TrainConfig` fields these settings fix (subclasses add theirs)."""
        return dict(max_steps=self.max_steps, lr=self.lr, warmup_steps=self.warmup_steps,
                    eval_interval=self.eval_interval, eval_iters=self.eval_iters)

    def train_config(self, **changes) -> TrainConfig:
        """The training configuration of these settings, with ``changes`` to any of its fields."""
        return TrainConfig(**{**self.train_settings(), **changes})


def trainer(rec, label: str) -> Callable:
    """How a chapter's function trains: :func:`lmbook.training.train.train`, or, in a reference recipe, through the
    recording ``rec`` under ``label`` (:meth:`~lmbook.runs.recording.Recording.train`), which resumes."""
    if rec is None:
        return lambda model, batches, config, eval_batches=None, tokenizer=None, keep=True: train(
            model, batches, config, eval_batches, tokenizer=tokenizer)

    def resumable(model, train_batches, config, eval_batches=None, tokenizer=None, keep: bool = True):
        return rec.train(label, model, train_batches, config, eval_batches, tokenizer, keep=keep)

    return resumable


# --- Chapter 2's character-level recurrent models --------------------------------------------------
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


IN_ORDER = dict(block_size=250, batch_size=16, carry_state=True)  # how the table reads the split in order


def make_char_model(cell: str, run: CharRun, vocab_size: int, device=None, seed: int = 0) -> RNNLM:
    """A fresh :class:`~lmbook.models.rnn.RNNLM` with ``cell`` at the sizes of ``run``, initialised from ``seed``."""
    torch.manual_seed(seed)
    return RNNLM(run.model_config(cell, vocab_size)).to(device or get_device())


def train_char_model(model: RNNLM, run: CharRun, train_data: torch.Tensor, val_data: torch.Tensor,
                     seed: int = 0, eval_batches: dict | None = None, rec=None, label: str | None = None,
                     **changes) -> History:
    """Train ``model`` in place at the sizes of ``run`` with :func:`lmbook.training.train.train`; returns its history.

    Training reads :class:`~lmbook.text.data.SequentialBatches` and the model carries its state
    from batch to batch; evaluation reads random windows from a zero state, as for the GPT
    (``eval_batches`` replaces them). ``changes`` override fields of the :class:`~lmbook.training.train.TrainConfig`
    (``grad_clip=None``, say). In a reference recipe, ``rec`` (a :class:`~lmbook.runs.recording.Recording`)
    trains it under ``label`` (the cell's name by default), resumably.
    """
    device = next(model.parameters()).device
    batches = SequentialBatches(train_data, run.bptt, run.batch_size, device)
    eval_batches = eval_batches or {
        "train": RandomBatches(train_data, run.bptt, run.batch_size, device, seed=seed + 1),
        "val": RandomBatches(val_data, run.bptt, run.batch_size, device, seed=seed + 2),
    }
    model.reset_state()
    config = run.train_config(**{"desc": NAMES[model.config.cell], "seed": seed, **changes})
    return trainer(rec, label or model.config.cell)(model, batches, config, eval_batches)


# --- Chapter 3's character-level GPT ------------------------------------------------------------
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


GPT_RUNS = {
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


def named_config(name: str, **overrides) -> GPTConfig:
    """A GPT shape by name, for the benchmarks: ``"shakespeare-char"`` is this chapter's full GPT (vocabulary 65),
    any other name a :class:`~lmbook.models.gpt.GPTConfig` preset."""
    if name == "shakespeare-char":
        return GPT_RUNS["full"].model_config(65).replace(**overrides)
    return GPTConfig.preset(name, **overrides)


def make_char_gpt(run: GPTRun, vocab_size: int, device=None, seed: int = 0, **variant) -> GPT:
    """A fresh GPT at the sizes of ``run``, initialised from ``seed``; ``variant`` goes to :func:`gpt_class`."""
    torch.manual_seed(seed)
    return gpt_class(**variant)(run.model_config(vocab_size)).to(device or get_device())


def make_char_llama(run: GPTRun, vocab_size: int, device=None, seed: int = 0, **choices) -> Llama:
    """A fresh :class:`~lmbook.models.llama.Llama` of the shape of ``run`` (layers, heads, width, context, dropout),
    initialised from ``seed``; ``choices`` are :class:`~lmbook.models.llama.LlamaConfig` fields (``position``,
    ``n_kv_head``, a longer ``block_size`` than the windows it trains on, ...). Chapter 8 trains it as the GPT,
    with :func:`train_char_gpt`."""
    torch.manual_seed(seed)
    shape = dict(vocab_size=vocab_size, block_size=run.block_size, n_layer=run.n_layer, n_head=run.n_head,
                 n_embd=run.n_embd, dropout=run.dropout)
    return Llama(LlamaConfig(**{**shape, **choices})).to(device or get_device())


def train_char_gpt(model: GPT, run: GPTRun, train_data: torch.Tensor, val_data: torch.Tensor, seed: int = 0,
                   eval_batches: dict | None = None, rec=None, label: str = "gpt", **changes) -> History:
    """Train ``model`` in place at the sizes of ``run`` on random windows; ``changes`` go to the training config.

    ``eval_batches`` replaces the held-out windows it evaluates on; in a reference recipe, ``rec`` (a
    :class:`~lmbook.runs.recording.Recording`) trains it under ``label``, resumably.
    """
    device = next(model.parameters()).device
    batches = RandomBatches(train_data, run.block_size, run.batch_size, device, seed=seed)
    eval_batches = eval_batches or {"val": RandomBatches(val_data, run.block_size, 64, device, seed=seed + 1)}
    return trainer(rec, label)(model, batches, run.train_config(**{"seed": seed, **changes}), eval_batches)


# --- Chapter 3's equal-time record, as chapters 6 and 7 read it ------------------------------
EQUAL_TIME_NAMES = {"gpt": "GPT", "lstm": "LSTM", "gru": "GRU"}


def equal_time_windows(eval_block: int, eval_batch: int, eval_seed: int, val_data: torch.Tensor,
                       device=None) -> RandomBatches:
    """The held-out windows of the equal-time recipe (:func:`record_cpu`), drawn the same way for every model and
    every evaluation; chapter 6 reads them again to score an n-gram on exactly these windows."""
    return RandomBatches(val_data, eval_block, eval_batch, device or "cpu", seed=eval_seed)


def plot_equal_time(record, ax=None):
    """Held-out bits per character against seconds of training, one curve per model of chapter 3's CPU record
    (``lmbook.runs.reference.load("ch03", level="cpu")``): the GPT, the LSTM and the GRU at equal training time."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4))
    names = {"gpt": "GPT", "lstm": "LSTM", "gru": "GRU"}
    for label, history in record.histories.items():
        bits = [loss / math.log(2) for loss in history.eval_loss["val"]]
        ax.plot(history.eval_seconds, bits, marker="o", ms=3, label=names.get(label, label))
    ax.set_xlabel("seconds of training (two CPU cores)")
    ax.set_ylabel("held-out bits per character")
    ax.set_title(record.describe(), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    return ax


# --- Chapter 4's settings ----------------------------------------------------------------------
@dataclass(frozen=True)
class ChapterRun(RunSettings):
    """The sizes of chapter 4's runs: tokenizer, model, pretraining (``max_steps``) and each fine-tuning."""

    vocab_size: int  # BPE tokens (the MLM encoder has one more: the mask)
    n_layer: int
    n_head: int
    n_embd: int
    block_size: int
    mlm_steps: int  # the masked language model's pretraining
    adapt_steps: int  # domain adaptation: continued training on one speaker
    adapt_lr: float
    classify_steps: int
    classify_lr: float  # full fine-tuning
    probe_lr: float  # a linear probe: only the head trains
    lora_lr: float
    per_class: tuple = (4, 16, 64, None)  # labelled examples per class (None: all)
    n_speakers: int = 4
    adapt_speaker: str = "ROMEO"
    lora_rank: int = 4
    lora_alpha: float = 8.0
    small_tokens: int = 20_000  # the small training set of the overfitting runs
    overfit_batch_size: int = 16
    overfit_steps: int = 400
    overfit_lr: float = 3e-3
    dropout: float = 0.2  # compared against none in the overfitting runs
    weight_decay: float = 1.0  # compared against none in the overfitting runs
    patience: int = 2
    hf_steps: int = 20
    sample_tokens: int = 200
    sweep_seeds: tuple = (0,)  # the label sweep's seeds (of the labelled subset and the classifier's head)

    def gpt_config(self, vocab_size: int, dropout: float = 0.0) -> GPTConfig:
        return GPTConfig(vocab_size=vocab_size, block_size=self.block_size, n_layer=self.n_layer, n_head=self.n_head,
                         n_embd=self.n_embd, dropout=dropout)

    def train_settings(self) -> dict:
        return {**super().train_settings(), "min_lr": self.lr / 10}


# --- Chapter 6's settings ----------------------------------------------------------------------
@dataclass(frozen=True)
class EvaluationRun(Settings):
    """How much text the chapter scores and generates, at one size."""

    heldout_chars: int  # the scoreboard reads this many characters of the held-out split (0: all of it)
    ngram_orders: tuple[int, ...]  # character n-grams on the scoreboard, each with both smoothings
    add_k: float  # add-k smoothing's k (1: Laplace)
    stride_chars: int  # characters of held-out text the stride sweep reads
    strides: tuple[int, ...]  # strides of the sweep (the character GPT's context first)
    n_prompts: int  # held-out prompts continued and scored against their true continuation
    prompt_chars: int
    continuation_chars: int
    temperatures: tuple[float, ...]  # the diversity sweep: sampling temperatures (0: greedy) ...
    top_ps: tuple[float, ...]  # ... and top-p values at temperature 1
    sample_chars: int  # characters generated per prompt in the diversity sweep
    seed: int = 0


BATCH = 64  # windows scored at once: the book's models are small (GPT-2's would want fewer)
