"""What every language model of the book offers, whatever is inside it (chapters 1 to 7), written as code.

:class:`LanguageModel` is the interface that the GPT and its variants, the recurrent models, the
masked-language-model encoder (which refuses a cache: it reads its whole input at once) and, through
:class:`lmbook.models.ngram.NGramModel`, the count-based models meet:

- ``model(idx, targets=None, cache=None) -> (logits, loss)``: token ids (B, T) give next-token logits
  (B, T, vocab) and, with targets, the mean cross-entropy over the targets that are not -1;
- ``model.make_cache()`` and ``model(idx, cache=cache)``: incremental reading, for decoding
  (:func:`lmbook.decoding.generate.generate` is the one generation entry point); the :class:`Cache` counts the
  positions it holds, follows beam search's surviving rows (``reorder``) and, where it can, forgets its
  last positions (``rollback``, for speculative decoding);
- ``model.context_length``: the most tokens the model can see at once (``None``: no limit), and
  ``model.vocab_size``;
- ``model.reads_padding``: whether ``model(idx, attention_mask=mask)`` reads a left-padded batch of
  prompts of different lengths (the GPT does; a recurrent model reads each prompt on its own).

Decoding, metrics and widgets use only this interface; ``tests/test_interface.py`` runs every model of
the book through one conformance suite.

:func:`lmbook.evaluation.metrics.split_loss` is the one loss over a whole split, and :func:`num_params` the one way
parameters are counted in every table of the book. :func:`evaluating` puts a model in evaluation mode
for a block of code and restores its mode afterwards, even when the block fails.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from typing import Callable, Iterator, Protocol, runtime_checkable

import torch
import torch.nn as nn
import torch.nn.functional as F


@runtime_checkable
class Cache(Protocol):
    """What ``model.make_cache()`` returns: the state a model keeps between calls while it decodes."""

    pos: int  # positions read so far
    can_rollback: bool  # whether rollback works (a key/value cache); a recurrent state cannot forget

    def reset(self) -> None:
        """Forget everything: the next call starts at position 0."""

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep the rows ``rows`` (N,) in that order (beam search follows its surviving beams)."""

    def rollback(self, n: int) -> None:
        """Forget the last ``n`` positions read (speculative decoding drops rejected proposals)."""


@runtime_checkable
class LanguageModel(Protocol):
    """A language model of the book (see the module's docstring for each member's meaning)."""

    reads_padding: bool

    @property
    def context_length(self) -> int | None: ...

    @property
    def vocab_size(self) -> int: ...

    def make_cache(self, batch_size: int | None = None) -> Cache: ...

    def __call__(self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: Cache | None = None,
                 **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]: ...


MEMBERS = ("reads_padding", "context_length", "vocab_size", "make_cache")


def check_model(model) -> None:
    """Raise a clear ``TypeError`` unless ``model`` offers the :class:`LanguageModel` interface."""
    missing = [name for name in MEMBERS if not hasattr(model, name)]
    if missing or not callable(model):
        raise TypeError(f"{type(model).__name__} is not a language model of the book: it lacks "
                        f"{', '.join(missing) or '__call__'} (see lmbook.interface.LanguageModel). A count-based "
                        "model is wrapped by lmbook.models.ngram.NGramModel; a transformers model by lmbook.models.hf.")


def context_length(model) -> int | None:
    """The most tokens ``model`` reads at once (``None``: no limit): a book model's ``context_length``, or a
    ``transformers`` model's ``config.n_positions`` (GPT-2) or ``config.max_position_embeddings``."""
    if isinstance(model, LanguageModel):
        return model.context_length
    config = getattr(model, "config", None)
    for name in ("n_positions", "max_position_embeddings"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def device_of(model: nn.Module) -> torch.device:
    """Where ``model``'s weights live: its first parameter's (or buffer's) device; the CPU for a model without
    tensors (a count-based model)."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def check_int(name: str, value, minimum: int | None = None, allow_none: bool = False) -> None:
    """Raise a clear ``TypeError`` unless ``value`` is an integer (not a bool, not a float such as 2.0), and a
    ``ValueError`` if it is below ``minimum``; ``None`` passes when ``allow_none``."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer{' or None' if allow_none else ''}, not {value!r}.")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, not {value}.")


def check_bool(name: str, value, allow_none: bool = False) -> None:
    """Raise a clear ``TypeError`` unless ``value`` is True or False (0 and 1 pass, as in Python); ``None`` passes
    when ``allow_none``."""
    if value is None and allow_none:
        return
    if not isinstance(value, numbers.Integral) or value not in (0, 1):  # a bool is an Integral
        raise TypeError(f"{name} must be True or False{' or None' if allow_none else ''}, not {value!r}.")


def check_number(name: str, value, allowed: str, ok: Callable[[float], bool]) -> None:
    """Raise a clear ``TypeError`` unless ``value`` is a real number (not a bool, not a str), and a ``ValueError``
    if it is NaN or ``ok(value)`` is false; ``allowed`` says in words what ``ok`` accepts."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, not {value!r}.")
    if math.isnan(value) or not ok(value):
        raise ValueError(f"{name} must be {allowed}, not {value}.")


def check_seed(seed, allow_none: bool = False) -> None:
    """Raise a clear error unless ``seed`` is an integer that torch's generators take, in [-2**63, 2**64)."""
    check_int("seed", seed, allow_none=allow_none)
    if seed is not None and not -2**63 <= seed < 2**64:
        raise ValueError(f"seed must lie in [-2**63, 2**64), the seeds torch's generators take, not {seed}.")


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
        raise ValueError(f"idx must be a (batch, time) tensor of integer token ids, int64 or int32, not {what} "
                         "(convert narrower ids with idx.long()).")
    if idx.numel() == 0:
        raise ValueError(f"idx holds no token (shape {tuple(idx.shape)}): a batch needs at least one row of at "
                         "least one token id. An empty batch usually means a batch source with nothing left to give.")
    if idx.device.type == "cpu" and not torch.compiler.is_compiling():
        low, high = int(idx.min()), int(idx.max())
        if low < 0 or high >= vocab_size:
            raise ValueError(f"token ids must lie in range({vocab_size}), the model's vocabulary; "
                             f"idx holds ids from {low} to {high}.")


def check_targets(targets: torch.Tensor | None, idx: torch.Tensor, vocab_size: int) -> None:
    """Raise a clear ``ValueError`` unless ``targets`` is ``None`` or a tensor of int64 ids of ``idx``'s shape, each
    in ``range(vocab_size)`` or -1 (no loss there); the range is checked on the CPU only, as in
    :func:`check_token_ids`. Every model of the book calls it before it reads ``idx``."""
    if targets is None or not isinstance(idx, torch.Tensor):
        return  # no loss asked for, or idx that check_token_ids refuses
    if not isinstance(targets, torch.Tensor) or targets.dtype not in (torch.int64, torch.uint8):
        what = targets.dtype if isinstance(targets, torch.Tensor) else type(targets).__name__
        raise ValueError(f"targets must be a tensor of int64 token ids (torch.long), not {what}.")
    if targets.shape != idx.shape:
        raise ValueError(f"targets must have the shape of idx, {tuple(idx.shape)} (one next token for each input "
                         f"token), not {tuple(targets.shape)}.")
    if targets.numel() and targets.device.type == "cpu" and not torch.compiler.is_compiling():
        low, high = int(targets.min()), int(targets.max())
        if low < -1 or high >= vocab_size:
            raise ValueError(f"targets must lie in range({vocab_size}), the model's vocabulary, or be -1 (no loss); "
                             f"they hold ids from {low} to {high}.")


def next_token_loss(logits: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor | None:
    """The mean cross-entropy of ``logits`` (B, T, V) against ``targets`` (B, T), in float32, over the targets that
    are not -1; ``None`` without targets. Every model of the book returns it as its loss."""
    if targets is None:
        return None
    return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
