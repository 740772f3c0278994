"""Calibration: does a model's predicted probability match how often it is right? (chapter 6)

For every held-out position the model gives the next token a distribution; its *confidence* is the probability
of its top token, and it is *right* when that token is the one that came. A calibrated model is right 70 % of
the times it says 0.7. :func:`reliability` sorts the positions into bins of equal width by confidence and
compares each bin's mean confidence with its share of right answers (the reliability diagram); the expected
calibration error (ECE, Naeini et al. 2015; Guo et al. 2017) is the mean gap, weighted by the bins' sizes:

    ECE = sum_b (n_b / n) * |accuracy_b - confidence_b|.

Dividing the logits by a temperature ``T`` before the softmax leaves the top token, so every answer's rightness,
unchanged, and moves only the confidence: ``T < 1`` sharpens it, ``T > 1`` flattens it (:func:`by_temperature`).
The same check on whole distributions compares the model's mean entropy (how surprised it expects to be) with
its mean NLL on the real next tokens (how surprised it is): equal for a calibrated model, and the reason its
own samples at ``T = 1`` read, to it, as surprising as real text.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..interface import check_int, context_length, device_of, evaluating
from .metrics import logits_of, sliding_windows


@dataclass
class Reliability:
    """One reliability diagram: per bin of confidence, the mean confidence, the share right and the count."""

    edges: list[float]  # n_bins + 1 bin edges, from 0 to 1
    confidence: list[float]  # mean confidence of the positions in each bin (NaN for an empty bin)
    accuracy: list[float]  # share of those positions where the top token was right (NaN for an empty bin)
    counts: list[int]
    ece: float  # expected calibration error
    mean_confidence: float  # over all positions
    accuracy_overall: float  # over all positions

    @property
    def n(self) -> int:
        return sum(self.counts)


def _check_pair(confidence: torch.Tensor, correct: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    confidence, correct = torch.as_tensor(confidence), torch.as_tensor(correct)
    if confidence.dim() != 1 or correct.shape != confidence.shape:
        raise ValueError(f"confidence and correct must be 1-D and of one length, not {tuple(confidence.shape)} and "
                         f"{tuple(correct.shape)}.")
    if confidence.numel() == 0:
        raise ValueError("no positions to measure: confidence and correct are empty.")
    confidence = confidence.double()
    if torch.isnan(confidence).any() or confidence.min() < 0 or confidence.max() > 1:
        raise ValueError("confidence must hold probabilities between 0 and 1.")
    return confidence, correct.double()


def reliability(confidence, correct, n_bins: int = 10) -> Reliability:
    """The reliability diagram of predictions with ``confidence`` (N,) in [0, 1] and ``correct`` (N,) 0 or 1, in
    ``n_bins`` bins of equal width; a confidence of exactly 1 falls in the last bin."""
    check_int("n_bins", n_bins, 1)
    confidence, correct = _check_pair(confidence, correct)
    index = torch.clamp((confidence * n_bins).long(), max=n_bins - 1)  # (N,) the bin of each position
    counts = torch.bincount(index, minlength=n_bins)  # (n_bins,)
    conf_sum = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, index, confidence)
    right_sum = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, index, correct)
    filled = counts > 0
    mean_conf = torch.where(filled, conf_sum / counts.clamp(min=1), torch.nan)
    accuracy = torch.where(filled, right_sum / counts.clamp(min=1), torch.nan)
    gaps = torch.where(filled, (accuracy - mean_conf).abs() * counts, 0.0)
    return Reliability([i / n_bins for i in range(n_bins + 1)], mean_conf.tolist(), accuracy.tolist(),
                       counts.tolist(), float(gaps.sum() / len(confidence)), float(confidence.mean()),
                       float(correct.mean()))


def expected_calibration_error(confidence, correct, n_bins: int = 10) -> float:
    """The ECE of :func:`reliability`: the bins' gaps between accuracy and confidence, weighted by their sizes."""
    return reliability(confidence, correct, n_bins).ece


def _check_logits(logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> None:
    if logits.dim() != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(f"logits must be (N, V) and targets (N,), not {tuple(logits.shape)} and "
                         f"{tuple(targets.shape)}.")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"temperature must be a number above 0, not {temperature!r} (greedy decoding has no "
                         "distribution to calibrate).")


def top_predictions(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0):
    """``(confidence, correct)``, each (N,): the probability of the top token of ``softmax(logits / T)`` (N, V),
    and whether it is ``targets`` (N,)."""
    _check_logits(logits, targets, temperature)
    probs = F.softmax(logits.double() / temperature, dim=-1)  # (N, V)
    confidence, top = probs.max(dim=-1)  # (N,), (N,)
    return confidence, (top == targets).double()


def entropy_and_nll(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> tuple[float, float]:
    """``(entropy, nll)`` in nats, each the mean over positions of ``softmax(logits / T)``: how surprised the model
    expects to be by the next token, and how surprised it is by the one that came."""
    _check_logits(logits, targets, temperature)
    log_probs = F.log_softmax(logits.double() / temperature, dim=-1)  # (N, V)
    entropy = -(log_probs.exp() * log_probs).sum(-1)  # (N,)
    nll = -log_probs.gather(1, targets.long().view(-1, 1)).squeeze(1)  # (N,)
    return float(entropy.mean()), float(nll.mean())


def by_temperature(logits: torch.Tensor, targets: torch.Tensor, temperatures=(0.5, 1.0, 2.0),
                   n_bins: int = 10) -> dict[float, dict]:
    """For each temperature: its :class:`Reliability` (``"reliability"``) and its mean ``"entropy"`` and
    ``"nll"`` in nats."""
    if not temperatures:
        raise ValueError("temperatures is empty: give at least one temperature above 0.")
    out = {}
    for t in temperatures:
        entropy, nll = entropy_and_nll(logits, targets, t)
        out[t] = {"reliability": reliability(*top_predictions(logits, targets, t), n_bins=n_bins),
                  "entropy": entropy, "nll": nll}
    return out


def next_token_logits(model, ids, stride: int | None = None, batch_size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits, targets)``, (N - 1, V) and (N - 1,): the model's logits for every token of ``ids`` (N,) after the
    first, read as :func:`lmbook.evaluation.metrics.token_nlls` reads them (windows of the model's context every
    ``stride`` tokens, each prediction once), on the CPU in float32."""
    ids = torch.as_tensor(ids).long()
    if ids.dim() != 1 or len(ids) < 2:
        raise ValueError(f"ids must be one text of at least 2 token ids, not of shape {tuple(ids.shape)}.")
    check_int("batch_size", batch_size, 1)
    context = context_length(model) or len(ids) - 1
    context = min(context, len(ids) - 1)
    stride = stride or context
    check_int("stride", stride, 1)
    if stride > context:
        raise ValueError(f"stride must be at most the context ({context}), not {stride}: tokens would go unscored.")
    spans = sliding_windows(len(ids) - 1, context, stride)
    device, out = device_of(model), []
    with evaluating(model), torch.no_grad():
        i = 0
        while i < len(spans):  # windows of one length in batches (only the last can be shorter)
            length = spans[i][2] - spans[i][0]
            group = [spans[i]]
            while (len(group) < batch_size and i + len(group) < len(spans)
                   and spans[i + len(group)][2] - spans[i + len(group)][0] == length):
                group.append(spans[i + len(group)])
            logits = logits_of(model, torch.stack([ids[b:e] for b, _, e in group]).to(device))  # (B, L, V)
            out += [logits[row, first - b:].float().cpu() for row, (b, first, _) in enumerate(group)]
            i += len(group)
    return torch.cat(out), ids[1:]  # (N - 1, V), (N - 1,)
