"""Supervised fine-tuning on (prompt, answer) pairs, with the loss on the answer's tokens only (chapter 9).

Everything here works on token ids, whatever turned a conversation into ids. An example is a pair
``(prompt_ids, completion_ids)``; the model reads ``prompt + completion`` and learns to predict each next token.
With ``completion_only=True`` (the usual choice) the targets that are prompt tokens are -1, so the loss counts
only the answer: the model is taught to answer, not to write questions. ``completion_only=False`` trains on
every token, to compare. Append the end-of-answer token to ``completion_ids`` yourself where the model should
learn to stop: nothing is added here (``trl``'s ``SFTTrainer`` appends the tokenizer's EOS to plain-text data,
not to conversations, whose template writes its own end).

Two ways to make a batch of examples of different lengths (:func:`make_sft_batch`):

- **padding**: one example a row, padded on the right with ``pad_id``, the padded targets -1. No attention mask is
  needed for the book's models: causal attention lets a token see only those before it, so a real token never
  sees the padding that follows it, and the padded positions carry no target. The loss of a padded batch is
  therefore the mean over all the batch's answer tokens, each example weighing as many tokens as it has
  (tested against the examples one at a time). ``attention_mask`` is returned for ``transformers`` models.
- **packing**: whole examples laid end to end in rows of at most ``context_length`` inputs, so that short
  examples waste no padding. The target of each example's last token (which would be the next example's first
  token) is -1: no example learns to predict another. Attention, however, *does* cross the boundaries: the book's
  models read a packed row as one text, so an example's tokens see the examples before it in the row (and its
  positions continue theirs). Only the row's first example computes exactly what it would alone.

:func:`sft_loss` is the mean next-token loss over the labelled tokens (:func:`lmbook.interface.next_token_loss`),
for the book's models and for ``transformers`` models alike; :class:`SFTBatches` draws batches for the book's
one training loop, :func:`lmbook.training.train.train`, for full fine-tuning or LoRA (:mod:`lmbook.models.lora`).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn

from ..interface import LanguageModel, check_bool, check_int, next_token_loss
from ..text.data import SeededBatches, check_sizes

Example = tuple[Sequence[int], Sequence[int]]  # (prompt_ids, completion_ids)


@dataclass
class SFTBatch:
    """Inputs ``x`` (B, T), targets ``y`` (B, T) (-1 where nothing is learned) and ``attention_mask`` (B, T), 1 on
    real tokens and 0 on the right padding."""

    x: torch.Tensor
    y: torch.Tensor
    attention_mask: torch.Tensor

    def to(self, device) -> SFTBatch:
        return SFTBatch(self.x.to(device), self.y.to(device), self.attention_mask.to(device))

    @property
    def labelled(self) -> int:
        """How many targets the loss counts."""
        return int((self.y != -1).sum())


def _ids(value, name: str) -> list[int]:
    """``value`` (a list, tuple or 1-D integer tensor of token ids >= 0) as a list of ints, or a clear error."""
    if isinstance(value, torch.Tensor):
        if value.dim() != 1 or value.dtype.is_floating_point or value.dtype == torch.bool:
            raise ValueError(f"{name} must be a 1-D tensor of integer token ids, not {value.dtype} "
                             f"{tuple(value.shape)}.")
        value = value.tolist()
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"{name} must be a sequence of token ids (a list of ints), not {type(value).__name__}: "
                        "encode text with the tokenizer first.")
    ids = list(value)
    for i in ids:
        if isinstance(i, bool) or not isinstance(i, numbers.Integral) or i < 0:
            raise ValueError(f"{name} must hold token ids (integers >= 0); it holds {i!r}.")
    return [int(i) for i in ids]


def check_examples(examples, context_length: int | None, name: str = "examples") -> list[tuple[list[int], list[int]]]:
    """The ``(prompt_ids, completion_ids)`` pairs as lists of ints, after checking each: a prompt and an answer of at
    least one token each, and, with a ``context_length``, no more than ``context_length + 1`` tokens in all (the
    model reads every token but the last)."""
    check_int("context_length", context_length, minimum=1, allow_none=True)
    if isinstance(examples, (str, bytes)) or not isinstance(examples, Sequence) or not len(examples):
        raise ValueError(f"{name} must be a non-empty list of (prompt_ids, completion_ids) pairs, not {examples!r}.")
    pairs = []
    for i, example in enumerate(examples):
        if isinstance(example, (str, bytes)) or not isinstance(example, Sequence) or len(example) != 2:
            raise ValueError(f"{name}[{i}] must be a pair (prompt_ids, completion_ids), not {example!r}.")
        prompt, completion = _ids(example[0], f"{name}[{i}]'s prompt"), _ids(example[1], f"{name}[{i}]'s completion")
        if not prompt:
            raise ValueError(f"{name}[{i}] has an empty prompt: nothing would predict the answer's first token. Start "
                             "every sequence with at least one token (a beginning-of-text token or the template's).")
        if not completion:
            raise ValueError(f"{name}[{i}] has an empty completion: there is no answer to learn.")
        n = len(prompt) + len(completion)
        if context_length is not None and n > context_length + 1:
            raise ValueError(f"{name}[{i}] holds {n} tokens (prompt {len(prompt)} + completion {len(completion)}), "
                             f"longer than the context: the model reads all but the last, so at most "
                             f"context_length + 1 = {context_length + 1} fit. Shorten the prompt or the answer, or "
                             "leave the example out.")
        pairs.append((prompt, completion))
    return pairs


def sft_tokens(prompt_ids, completion_ids, completion_only: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """One example as the model reads it: inputs ``prompt + completion`` but the last token (n-1,), and the next
    token after each (n-1,), -1 where that next token belongs to the prompt (``completion_only``)."""
    check_bool("completion_only", completion_only)
    ((prompt, completion),) = check_examples([(prompt_ids, completion_ids)], None)
    ids = prompt + completion
    targets = ids[1:]
    if completion_only:
        targets = [-1] * (len(prompt) - 1) + targets[len(prompt) - 1:]  # learn the answer's tokens only
    return torch.tensor(ids[:-1]), torch.tensor(targets)


def _rows(pairs, completion_only: bool, packing: bool, context_length: int | None) -> list[tuple[list, list]]:
    """Each row's inputs and targets: one example a row, or whole examples end to end (``packing``)."""
    rows, inputs, targets = [], [], []
    for prompt, completion in pairs:
        x, y = sft_tokens(prompt, completion, completion_only)
        x, y = x.tolist() + [completion[-1]], y.tolist() + [-1]  # the last token, whose next is not this example's
        if inputs and (not packing or len(inputs) + len(x) - 1 > context_length):
            rows.append((inputs[:-1], targets[:-1]))  # a row drops its very last token: nothing follows it
            inputs, targets = [], []
        inputs, targets = inputs + x, targets + y
    rows.append((inputs[:-1], targets[:-1]))
    return rows


def make_sft_batch(examples: Sequence[Example], context_length: int | None, completion_only: bool = True,
                   packing: bool = False, pad_id: int = 0, name: str = "examples") -> SFTBatch:
    """A batch of ``(prompt_ids, completion_ids)`` examples, padded on the right with ``pad_id``: one a row, or
    packed (whole examples end to end in rows of at most ``context_length`` inputs, the target at each boundary -1;
    attention crosses the boundaries, see the module's docstring). Refuses an example longer than the context;
    ``name`` is what its errors call the examples."""
    check_bool("completion_only", completion_only)
    check_bool("packing", packing)
    check_int("pad_id", pad_id, minimum=0)
    if packing and context_length is None:
        raise ValueError("packing fills rows of context_length inputs: give the model's context_length.")
    rows = _rows(check_examples(examples, context_length, name), completion_only, packing, context_length)
    T = max(len(x) for x, _ in rows)
    x = torch.full((len(rows), T), pad_id, dtype=torch.long)  # (B, T)
    y = torch.full((len(rows), T), -1, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(rows), T), dtype=torch.long)  # (B, T)
    for row, (inputs, targets) in enumerate(rows):
        x[row, : len(inputs)], y[row, : len(inputs)], mask[row, : len(inputs)] = (
            torch.tensor(inputs), torch.tensor(targets), 1)
    return SFTBatch(x, y, mask)


def logits_of(model, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Next-token logits (B, T, V) of a book model (``model(x)``, causal; right padding needs no mask) or of a
    ``transformers`` causal LM (``model(input_ids=x, attention_mask=...)``)."""
    if isinstance(model, LanguageModel):
        return model(x)[0]
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a language model of the book or a transformers model, not "
                        f"{type(model).__name__}.")
    return model(input_ids=x, attention_mask=attention_mask).logits


def sft_loss(model, batch: SFTBatch | tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """The mean cross-entropy over the batch's labelled targets (those that are not -1): with
    ``completion_only``, the answer's tokens. ``batch`` is an :class:`SFTBatch` or an ``(x, y)`` pair."""
    if isinstance(batch, SFTBatch):
        x, y, mask = batch.x, batch.y, batch.attention_mask
    elif isinstance(batch, (tuple, list)) and len(batch) == 2:
        (x, y), mask = batch, None
    else:
        raise TypeError(f"batch must be an SFTBatch (make_sft_batch) or a pair (x, y), not {type(batch).__name__}.")
    if not isinstance(y, torch.Tensor) or not isinstance(x, torch.Tensor) or x.shape != y.shape or x.dim() != 2:
        raise ValueError("batch must hold inputs x and targets y, two (B, T) tensors of the same shape.")
    if not (y != -1).any():
        raise ValueError("the batch has no labelled target (every one is -1), so its loss is undefined: each "
                         "example needs an answer of at least one token.")
    return next_token_loss(logits_of(model, x, mask), y)


class SFTBatches(SeededBatches):
    """Batches of ``batch_size`` examples drawn at random (different examples within a batch), made by
    :func:`make_sft_batch`: called, it returns ``(x, y)`` on ``device``, as :func:`lmbook.training.train.train`
    takes them. The same seed draws the same batches; its state goes into checkpoints. With ``packing`` the drawn
    examples are packed, so the number of rows varies from batch to batch."""

    def __init__(self, examples: Sequence[Example], batch_size: int, context_length: int,
                 completion_only: bool = True, packing: bool = False, pad_id: int = 0, device="cpu", seed: int = 0):
        check_sizes(batch_size=batch_size, context_length=context_length)
        check_bool("completion_only", completion_only)
        check_bool("packing", packing)
        check_int("pad_id", pad_id, minimum=0)
        super().__init__(device, seed)
        self.examples = check_examples(examples, context_length)  # every example checked once, here
        if batch_size > len(self.examples):
            raise ValueError(f"batch_size={batch_size} is more than the {len(self.examples)} examples: lower it.")
        self.batch_size, self.context_length = batch_size, context_length
        self.completion_only, self.packing, self.pad_id = completion_only, packing, pad_id

    def batch(self) -> SFTBatch:
        """The next batch, with its attention mask (for a ``transformers`` model)."""
        chosen = torch.randperm(len(self.examples), generator=self.generator)[: self.batch_size].tolist()
        return make_sft_batch([self.examples[i] for i in chosen], self.context_length, self.completion_only,
                              self.packing, self.pad_id).to(self.device)

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.batch()
        return batch.x, batch.y
