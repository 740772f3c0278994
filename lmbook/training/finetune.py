"""Fine-tuning a pretrained GPT on a labelled task (chapter 4).

:class:`SequenceClassifier` puts a linear head on a pretrained GPT's features; like every model of the
book it returns ``(logits, loss)``, so :func:`lmbook.training.train.train` trains it. :func:`encode_examples`,
:func:`labelled_subset` and :class:`ExampleBatches` turn labelled texts into its batches, :func:`accuracy`
scores it, :func:`freeze_backbone` makes it a linear probe. The chapter's runs are in
:mod:`lmbook.runs.ch04_finetune`.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..text.data import SeededBatches, check_sizes, to_device
from ..models.gpt import GPT
from ..interface import evaluating
from ..models.mlm import Encoder


def encode_examples(texts: list[str], labels: list[int], tokenizer,
                    block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids of each text (its first ``block_size`` tokens, padded with -1) and its label.

    Returns ``x`` (N, block_size) and ``y`` (N,); texts with no tokens are left out.
    """
    rows, kept = [], []
    for text, label in zip(texts, labels):
        ids = tokenizer.encode(text)[:block_size]
        if ids:
            rows.append(ids + [-1] * (block_size - len(ids)))
            kept.append(label)
    if not rows:
        raise ValueError("no example with at least one token to encode.")
    return torch.tensor(rows), torch.tensor(kept)  # (N, T), (N,)


def labelled_subset(x: torch.Tensor, y: torch.Tensor, per_class: int | None,
                    seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_class`` examples of each class, drawn at random (``None``: all of them)."""
    if per_class is None:
        return x, y
    n_classes = int(y.max()) + 1
    if per_class < 1:
        raise ValueError(f"need at least one labelled example per class ({n_classes} classes), not {per_class}.")
    generator = torch.Generator().manual_seed(seed)
    keep = []
    for c in range(n_classes):
        members = (y == c).nonzero().flatten()
        if len(members) < per_class:
            raise ValueError(f"class {c} has {len(members)} examples, fewer than the {per_class} asked for.")
        keep.append(members[torch.randperm(len(members), generator=generator)[:per_class]])
    keep = torch.cat(keep)
    return x[keep], y[keep]


class ExampleBatches(SeededBatches):
    """Random labelled examples ``(x, y)``, (B, T) cut to the longest in the batch, and (B,)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, device="cpu", seed: int = 0):
        if len(x) != len(y) or len(x) == 0:
            raise ValueError(f"need as many labels as examples, and at least one: got {len(x)} and {len(y)}.")
        check_sizes(batch_size=batch_size)
        super().__init__(device, seed)
        self.x, self.y, self.batch_size = x, y, batch_size

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.randint(len(self.x), (self.batch_size,), generator=self.generator)
        x = self.x[rows]
        longest = int((x >= 0).sum(1).max())
        return to_device(x[:, :longest], self.device), to_device(self.y[rows], self.device)  # (B, T'), (B,)


class SequenceClassifier(nn.Module):
    """A linear head on a causal GPT's final hidden states: token ids (B, T) -> class logits (B, n_classes).

    Padding is -1. ``pool="mean"`` averages the features of the real tokens; ``"last"`` reads
    the features of the last real token, the only one that has seen the whole sequence. Padding comes
    after the real tokens, which a causal model never reads, so it changes nothing.
    ``model(x, y)`` returns ``(logits, cross-entropy)``, so :func:`lmbook.training.train.train` trains it.
    """

    def __init__(self, backbone: GPT, n_classes: int, pool: str = "mean", dropout: float = 0.0):
        super().__init__()
        if pool not in ("last", "mean"):
            raise ValueError(f"pool must be 'last' or 'mean', not {pool!r}.")
        if isinstance(backbone, Encoder):
            raise ValueError("a bidirectional backbone would read the padding; use a causal GPT.")
        if n_classes < 2:
            raise ValueError(f"a classifier needs at least 2 classes, not {n_classes}.")
        self.backbone, self.pool = backbone, pool
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(backbone.config.n_embd, n_classes)

    def forward(self, idx: torch.Tensor,
                targets: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        real = idx >= 0  # (B, T)
        lengths = real.sum(dim=1)  # (B,)
        if not bool((lengths > 0).all()):
            raise ValueError("every sequence needs at least one real token (padding is -1).")
        features = self.backbone.features(idx.clamp_min(0))  # (B, T, C)
        if self.pool == "last":
            pooled = features[torch.arange(len(idx), device=idx.device), lengths - 1]  # (B, C)
        else:
            pooled = (features * real[..., None]).sum(dim=1) / lengths[:, None]  # (B, C)
        logits = self.head(self.drop(pooled))  # (B, n_classes)
        loss = None if targets is None else F.cross_entropy(logits.float(), targets)
        return logits, loss


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> float:
    """The share of examples whose likeliest class is the right one, in eval mode."""
    device = next(model.parameters()).device
    right = 0
    with evaluating(model):
        for i in range(0, len(x), batch_size):
            xb = x[i : i + batch_size]
            xb = xb[:, : int((xb >= 0).sum(1).max())].to(device)
            right += (model(xb)[0].argmax(dim=-1).cpu() == y[i : i + batch_size]).sum().item()
    return right / len(x)


def freeze_backbone(classifier: SequenceClassifier) -> SequenceClassifier:
    """A linear probe: the backbone's weights stay as pretrained, only the head trains."""
    classifier.backbone.requires_grad_(False)
    return classifier
