"""The chapters' runs: what each chapter trains, at each size, and its reference recipes.

The concept modules (:mod:`lmbook.gpt`, :mod:`lmbook.rnn`, ...) say what a model is; the modules here say
what a chapter does with it: one module per chapter, each with its settings per size in ``RUNS``
(``{"full": ..., "fast": ...}``, chosen by ``lmbook.runtime.pick(**RUNS)``), its experiments and its
reference recipes: ``REFERENCE`` (settings per level, ``"cpu"`` and ``"gpu"``), ``RECIPE_VERSION`` and
``record_<level>(rec)``, which ``python -m lmbook.reference record`` runs through a resumable
:class:`~lmbook.runs.recording.Recording`. Every settings class
derives from :class:`Settings`; those that train with :func:`lmbook.train.train` from :class:`RunSettings`,
so each one makes its :class:`~lmbook.train.TrainConfig` the same way.

- :mod:`lmbook.runs.ch01_background`: the n-gram orders and tokenizer sizes of chapter 1;
- :mod:`lmbook.runs.quickstart`: the quick start's GPT;
- :mod:`lmbook.runs.ch02_rnn`: RNN, LSTM and GRU on characters;
- :mod:`lmbook.runs.ch03_gpt`: the character-level GPT, its position tables and its LayerNorm placements;
- :mod:`lmbook.runs.ch04_finetune`: pretraining, domain adaptation, a labelled task;
- :mod:`lmbook.runs.ch06_evaluation`, :mod:`lmbook.runs.ch06_generated`: every model scored, generated text scored;
- :mod:`lmbook.runs.ch07_sweep`: the sweep of GPT sizes; :mod:`lmbook.runs.ch07_questions`: the rest of chapter 7;
- :mod:`lmbook.runs.recording`: recording a recipe, resumably (for :mod:`lmbook.reference`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..config import Presets
from ..train import TrainConfig, train


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
        """The :class:`~lmbook.train.TrainConfig` fields these settings fix (subclasses add theirs)."""
        return dict(max_steps=self.max_steps, lr=self.lr, warmup_steps=self.warmup_steps,
                    eval_interval=self.eval_interval, eval_iters=self.eval_iters)

    def train_config(self, **changes) -> TrainConfig:
        """The training configuration of these settings, with ``changes`` to any of its fields."""
        return TrainConfig(**{**self.train_settings(), **changes})


def trainer(rec, label: str) -> Callable:
    """How a chapter's function trains: :func:`lmbook.train.train`, or, in a reference recipe, through the
    recording ``rec`` under ``label`` (:meth:`~lmbook.runs.recording.Recording.train`), which resumes."""
    if rec is None:
        return lambda model, batches, config, eval_batches=None, tokenizer=None, keep=True: train(
            model, batches, config, eval_batches, tokenizer=tokenizer)

    def resumable(model, train_batches, config, eval_batches=None, tokenizer=None, keep: bool = True):
        return rec.train(label, model, train_batches, config, eval_batches, tokenizer, keep=keep)

    return resumable
