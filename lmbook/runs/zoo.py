"""The book's trained models, shared between chapters: each trained once per size by its chapter's recipe.

Chapters 2 to 4 train their models in front of the reader and leave them here with :func:`remember`;
chapters 5 to 7 decode, score and compare them with :func:`trained`, which loads a remembered model or,
when there is none (a reader who opens chapter 6 first), trains it by the same recipe, the same seed and
the same code the chapter that owns it runs. A model is stored under the folder of :func:`lmbook.runtime.cache_dir`,
named by its size and a digest of its settings, so a changed recipe never loads an old model.

    from lmbook.runs.zoo import trained
    gpt = trained("gpt-char")   # gpt.model, gpt.tokenizer, gpt.history, gpt.val_data
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from ..training.checkpoint import CheckpointError, atomic_save, load_checkpoint
from ..text.data import shakespeare_chars
from ..models.gpt import GPT, GPTConfig
from ..training.history import History
from ..models.mlm import Encoder
from ..models.rnn import RNNLM, RNNConfig
from ..runtime import cache_dir, get_device, pick, size
from ..text.tokenizers import Tokenizer
from . import ch02_rnn, ch03_gpt, ch04_finetune
from .common import (CharRun, ChapterRun, GPTRun, Settings, make_char_gpt, make_char_model, train_char_gpt,
                     train_char_model)

TRAINING_ANEW = "is not in the zoo yet"  # what trained() says before it trains a model (tests/test_book.py looks)
CLASSES = {cls.__name__: (cls, config) for cls, config in
           ((GPT, GPTConfig), (Encoder, GPTConfig), (RNNLM, RNNConfig))}


@dataclass
class Trained:
    """A trained model with what it needs to be used and scored."""

    name: str
    model: nn.Module
    tokenizer: Tokenizer
    history: History
    val_data: torch.Tensor  # the held-out ids the model was evaluated on, in its tokenizer's ids
    settings: Settings  # the recipe it was trained by


@dataclass(frozen=True)
class Recipe:
    """How a model of the zoo is trained: the chapter that owns it and its settings per size."""

    chapter: str
    runs: dict
    train: Callable  # (settings, device) -> Trained

    def settings(self) -> Settings:
        return pick(**self.runs)


def _train_cell(cell: str) -> Callable:
    def train(run: CharRun, device) -> Trained:
        tokenizer, train_data, val_data = shakespeare_chars()
        model = make_char_model(cell, run, tokenizer.vocab_size, device)
        history = train_char_model(model, run, train_data, val_data)
        return Trained(cell, model, tokenizer, history, val_data, run)

    return train


def _train_char_gpt(run: GPTRun, device) -> Trained:
    tokenizer, train_data, val_data = shakespeare_chars()
    model = make_char_gpt(run, tokenizer.vocab_size, device)
    history = train_char_gpt(model, run, train_data, val_data, desc="GPT")
    return Trained("gpt-char", model, tokenizer, history, val_data, run)


def _pretrain(causal: bool) -> Callable:
    def train(run: ChapterRun, device) -> Trained:
        data = ch04_finetune.prepare(run)
        model, history = ch04_finetune.pretrain(run, data, causal=causal, device=device)
        return Trained("gpt-bpe" if causal else "encoder-bpe", model, data.tokenizer, history, data.val_ids, run)

    return train


RECIPES: dict[str, Recipe] = {
    "rnn": Recipe("ch02_rnn", ch02_rnn.RUNS, _train_cell("rnn")),
    "lstm": Recipe("ch02_rnn", ch02_rnn.RUNS, _train_cell("lstm")),
    "gru": Recipe("ch02_rnn", ch02_rnn.RUNS, _train_cell("gru")),
    "gpt-char": Recipe("ch03_attention", ch03_gpt.RUNS, _train_char_gpt),
    "gpt-bpe": Recipe("ch04_finetuning", ch04_finetune.RUNS, _pretrain(causal=True)),
    "encoder-bpe": Recipe("ch04_finetuning", ch04_finetune.RUNS, _pretrain(causal=False)),
}


def _recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise KeyError(f"no model {name!r} in the zoo; there are: {', '.join(RECIPES)}")
    return RECIPES[name]


def path_of(name: str) -> Path:
    """The file model ``name`` is stored in at the current size and with its current settings."""
    settings = _recipe(name).settings()
    digest = hashlib.sha256(json.dumps(settings.to_dict(), sort_keys=True, default=str).encode()).hexdigest()[:12]
    return cache_dir() / f"{name}-{size()}-{digest}.pt"


def remember(name: str, model: nn.Module, tokenizer: Tokenizer, history: History, val_data: torch.Tensor,
             settings: Settings) -> Path:
    """Store model ``name``, which its chapter has just trained by the zoo's recipe, for the later chapters."""
    if settings != _recipe(name).settings():
        raise ValueError(f"{name!r} was trained with other settings than its recipe's at the size {size()!r}: "
                         "the zoo keeps only models made by the recipe.")
    if type(model).__name__ not in CLASSES:
        raise TypeError(f"the zoo stores {', '.join(CLASSES)}, not a {type(model).__name__}.")
    path = path_of(name)
    atomic_save({"class": type(model).__name__, "config": asdict(model.config),
                 "model": {k: v.cpu() for k, v in model.state_dict().items()},
                 "history": history.to_dict(), "val_data": torch.as_tensor(val_data).cpu()}, path)
    tokenizer.save(path.with_suffix(".tokenizer.json"))
    return path


def trained(name: str, device=None) -> Trained:
    """Model ``name`` trained at the current size: loaded if remembered, else trained now and remembered."""
    recipe, path = _recipe(name), path_of(name)
    device = torch.device(device or get_device())
    if path.exists() and path.with_suffix(".tokenizer.json").exists():
        try:
            state = load_checkpoint(path)
        except CheckpointError:
            state = None  # a damaged file is trained anew and replaced
        if state is not None:
            cls, config_class = CLASSES[state["class"]]
            model = cls(config_class(**state["config"]))
            model.load_state_dict(state["model"])
            tokenizer = Tokenizer.load(path.with_suffix(".tokenizer.json"))
            history = History.from_dict(state["history"])
            return Trained(name, model.to(device), tokenizer, history, state["val_data"], recipe.settings())
    print(f"{name} {TRAINING_ANEW} at the size {size()!r} (folder {cache_dir()}): training it now by the recipe of "
          f"{recipe.chapter}, once; later calls load it.", flush=True)
    result = recipe.train(recipe.settings(), device)
    remember(result.name, result.model, result.tokenizer, result.history, result.val_data, result.settings)
    return result
