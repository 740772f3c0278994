"""What every language model of the book offers, whatever is inside it (chapters 1 to 7).

The GPT, the recurrent models and the masked-language-model encoder are called the same way:

- ``model(idx, targets=None) -> (logits, loss)``: token ids (B, T) give next-token logits (B, T, vocab)
  and, with targets, the mean cross-entropy over the targets that are not -1;
- ``model.make_cache()`` and ``model(idx, cache=cache)``: incremental reading, for decoding
  (:func:`lmbook.generate.generate` is the one generation entry point);
- ``model.context_length``: the most tokens the model can see at once (``None``: no limit).

:func:`lmbook.metrics.split_loss` is the one loss over a whole split, and :func:`num_params` the one way
parameters are counted in every table of the book. :func:`evaluating` puts a model in evaluation mode
for a block of code and restores its mode afterwards, even when the block fails.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn as nn


def num_params(model: nn.Module) -> int:
    """Every number the model stores as a parameter, a tensor shared by two layers counted once.

    The book's one convention: trained or frozen, embeddings and position tables included. It gives
    GPT-2 small its familiar 124,439,808 (the "124M").
    """
    return sum(p.numel() for p in model.parameters())  # parameters() yields a shared tensor once


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """``with evaluating(model):`` runs the block in eval mode (dropout off) and restores the mode after."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def check_token_ids(idx: torch.Tensor, vocab_size: int) -> None:
    """Raise a clear ``ValueError`` unless ``idx`` is a (batch, time) tensor of ids in ``range(vocab_size)``.

    The range is checked for tensors on the CPU, where it costs next to nothing; on a GPU the check would
    wait for the device at every call, so there an id out of range fails inside the embedding instead.
    """
    if not isinstance(idx, torch.Tensor) or idx.dim() != 2 or idx.dtype not in (torch.int64, torch.int32):
        what = f"{idx.dtype} {tuple(idx.shape)}" if isinstance(idx, torch.Tensor) else type(idx).__name__
        raise ValueError(f"idx must be a (batch, time) tensor of integer token ids, not {what}.")
    if idx.numel() == 0:
        raise ValueError(f"idx holds no token (shape {tuple(idx.shape)}): a batch needs at least one row of at "
                         "least one token id. An empty batch usually means a batch source with nothing left to give.")
    if idx.device.type == "cpu" and not torch.compiler.is_compiling():
        low, high = int(idx.min()), int(idx.max())
        if low < 0 or high >= vocab_size:
            raise ValueError(f"token ids must lie in range({vocab_size}), the model's vocabulary; "
                             f"idx holds ids from {low} to {high}.")
