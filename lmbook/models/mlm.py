"""Masked language modelling and next-sentence prediction, BERT's two objectives (chapter 4).

A GPT learns to predict each token from the tokens before it. BERT (Devlin et al., 2019)
reads the whole text in both directions and learns from two other tasks: *masked language
modelling* (MLM), where 15% of the tokens are chosen and the model must recover them
(of the chosen ones, 80% are replaced by a mask token, 10% by a random token and 10% are
left as they are), and *next-sentence prediction* (NSP), where it tells a pair of
consecutive segments from a pair drawn at random.

:class:`Encoder` is the GPT with its causal mask taken away, :func:`mask_tokens` does the masking,
:class:`MLMBatches` feeds it to the training loop, :func:`nsp_pairs` makes NSP's pairs, and
:func:`fill_blank` asks either kind of model what goes in a blank.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn

from ..text.data import SeededBatches, check_sizes, to_device
from .gpt import GPT, GPTConfig
from ..interface import evaluating


class Encoder(GPT):
    """A bidirectional encoder: the GPT with the causal mask taken away, so every token sees both sides.

    Trained by masked language modelling it is a small BERT. It reads its whole input at once,
    so it has no key/value cache and does not generate text.
    """

    def __init__(self, config: GPTConfig):
        super().__init__(config)
        for block in self.h:
            block.attn.is_causal = False

    def make_cache(self, batch_size: int | None = None):
        raise ValueError("a bidirectional encoder reads its whole input at once: it has no cache and cannot "
                         "generate text. Use a causal GPT for decoding.")


@dataclass(frozen=True)
class Masking:
    """BERT's masking rates: the share of tokens chosen, and what becomes of the chosen ones."""

    p_choose: float = 0.15
    p_mask: float = 0.8  # of the chosen: replaced by the mask token
    p_random: float = 0.1  # of the chosen: replaced by a random token; the rest stay as they are

    def __post_init__(self) -> None:
        if not 0.0 < self.p_choose <= 1.0:
            raise ValueError(f"p_choose must lie in (0, 1], not {self.p_choose}.")
        if self.p_mask < 0 or self.p_random < 0 or self.p_mask + self.p_random > 1.0:
            raise ValueError(f"p_mask={self.p_mask} and p_random={self.p_random} must be >= 0 and add up to at most 1.")


def mask_tokens(
    ids: torch.Tensor,
    mask_id: int,
    n_random: int,
    masking: Masking = Masking(),
    special_ids: Sequence[int] = (),
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking of token ids ``ids`` (any shape): returns ``(inputs, targets)`` of the same shape.

    ``targets`` holds the original id at the chosen positions and -1 elsewhere (the loss
    ignores -1). Random replacements are drawn from ``range(n_random)``, the ordinary tokens;
    positions holding one of ``special_ids`` are never chosen.
    """
    if mask_id < 0 or n_random < 1:
        raise ValueError(f"mask_id must be a token id and n_random at least 1; got {mask_id} and {n_random}.")
    ids = torch.as_tensor(ids, dtype=torch.long)
    draw = lambda: torch.rand(ids.shape, generator=generator).to(ids.device)  # noqa: E731 (same draws on any device)
    chosen = draw() < masking.p_choose
    for special in special_ids:
        chosen &= ids != special
    what = draw()  # which of the three things happens to a chosen token
    to_mask = chosen & (what < masking.p_mask)
    to_random = chosen & (what >= masking.p_mask) & (what < masking.p_mask + masking.p_random)
    random_ids = torch.randint(n_random, ids.shape, generator=generator).to(ids.device)
    inputs = torch.where(to_mask, torch.full_like(ids, mask_id), ids)
    inputs = torch.where(to_random, random_ids, inputs)
    targets = torch.where(chosen, ids, torch.full_like(ids, -1))
    return inputs, targets


class MLMBatches(SeededBatches):
    """Random windows of ``block_size`` tokens, masked by :func:`mask_tokens`: ``(inputs, targets)`` (B, T).

    The model must recover the chosen tokens from both sides; ``mask_id`` is usually
    ``vocab_size`` of the tokenizer, one more id than it has. Seeded, with ``state_dict``
    for exact resume (:class:`lmbook.text.data.SeededBatches`).
    """

    def __init__(self, data: torch.Tensor, block_size: int, batch_size: int, mask_id: int, n_random: int,
                 masking: Masking = Masking(), device="cpu", seed: int = 0):
        check_sizes(block_size=block_size, batch_size=batch_size)
        data = torch.as_tensor(data, dtype=torch.long)
        if data.dim() != 1 or len(data) < block_size:
            raise ValueError(
                f"need a 1-D tensor of at least block_size={block_size} token ids, got shape {tuple(data.shape)}."
            )
        self.data, self.block_size, self.batch_size = data, block_size, batch_size
        self.mask_id, self.n_random, self.masking = mask_id, n_random, masking
        super().__init__(device, seed)

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor]:
        starts = torch.randint(len(self.data) - self.block_size + 1, (self.batch_size,), generator=self.generator)
        windows = self.data[starts[:, None] + torch.arange(self.block_size)]  # (B, T)
        inputs, targets = mask_tokens(windows, self.mask_id, self.n_random, self.masking, generator=self.generator)
        return to_device(inputs, self.device), to_device(targets, self.device)  # (B, T), (B, T)


def nsp_pairs(segments: Sequence, n: int, seed: int = 0) -> list[tuple[object, object, int]]:
    """``n`` next-sentence-prediction examples ``(a, b, is_next)`` from consecutive ``segments``.

    Half of them (at random) pair a segment with the one that follows it (``is_next=1``),
    the others with a segment drawn from anywhere else (``is_next=0``), as BERT's were.
    """
    if len(segments) < 3:
        raise ValueError(f"need at least 3 segments to make pairs, got {len(segments)}.")
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        i = rng.randrange(len(segments) - 1)
        if rng.random() < 0.5:
            pairs.append((segments[i], segments[i + 1], 1))
        else:
            j = rng.randrange(len(segments) - 2)  # any segment but the pair's own two
            j = j if j < i else j + 2
            pairs.append((segments[i], segments[j], 0))
    return pairs


@torch.no_grad()
def fill_blank(model: nn.Module, tokenizer, text: str, mask_id: int | None = None, blank: str = "___",
               k: int = 5) -> list[tuple[str, float]]:
    """The ``k`` likeliest tokens for the one ``blank`` in ``text``, with their probabilities.

    A causal GPT sees only the text before the blank (it predicts the next token); a
    bidirectional :class:`Encoder` reads the text on both sides, with
    ``mask_id`` in the blank's place. A space just before the blank goes with the blank, as
    byte-level BPE attaches it to the following word (``"I will ___ thee"`` asks for `` love``).
    """
    if text.count(blank) != 1:
        raise ValueError(f"the text must hold exactly one blank {blank!r}; it holds {text.count(blank)}.")
    left, right = text.split(blank)
    if left.endswith(" "):
        left = left[:-1]  # byte-level BPE puts a space in front of the word that follows it: the blank's
    ids = tokenizer.encode(left)
    if not isinstance(model, Encoder):
        position = len(ids) - 1  # the next-token prediction after the left side
    else:
        if mask_id is None:
            raise ValueError("a bidirectional model needs mask_id, the id it was trained to read as a blank.")
        position = len(ids)
        ids = ids + [mask_id] + tokenizer.encode(right)
    if position < 0:
        raise ValueError("a causal model needs some text before the blank.")
    device = next(model.parameters()).device
    with evaluating(model):
        logits, _ = model(torch.tensor([ids], device=device))  # (1, T, vocab)
    probs = torch.softmax(logits[0, position, : tokenizer.vocab_size].float(), dim=-1)  # ordinary tokens only
    top = torch.topk(probs, k)
    return [(tokenizer.decode([i]), p) for i, p in zip(top.indices.tolist(), top.values.tolist())]
