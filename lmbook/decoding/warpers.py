"""The truncation filters after top-p (chapter 5): min-p, typical sampling, and epsilon and eta sampling.

Each takes next-token scores (N, V) and returns them with -inf on the tokens it removes, exactly as
``transformers``' ``MinPLogitsWarper``, ``TypicalLogitsWarper``, ``EpsilonLogitsWarper`` and
``EtaLogitsWarper`` do, ties included, and :func:`lmbook.decoding.shared.process_scores` applies them
in ``transformers``' order, after temperature, top-k and top-p. Each always keeps the ``min_keep``
likeliest tokens (1 when sampling).

- **min-p** (Nguyen et al. 2025): keep the tokens whose probability is at least ``min_p`` times the
  likeliest token's, a threshold that follows the model's confidence.
- **typical** (Meister et al. 2023): keep the tokens whose surprise ``-log p`` is closest to the
  entropy, the closest first, until their mass reaches ``typical_p``; the likeliest token may go.
- **epsilon** (Hewitt et al. 2022): keep the tokens of probability at least ``epsilon``.
- **eta** (Hewitt et al. 2022): the same with ``eta = min(epsilon, sqrt(epsilon) * exp(-entropy))``,
  a cutoff that falls where the distribution is spread out.
"""

from __future__ import annotations

import torch


def _keep_top(remove: torch.Tensor, scores: torch.Tensor, min_keep: int) -> torch.Tensor:
    """``remove`` (N, V) without the ``min_keep`` highest scores (ties at the last one spared too)."""
    kth = torch.topk(scores, min(min_keep, scores.size(-1)), dim=-1).values[..., -1:]  # (N, 1)
    return remove & (scores < kth)


def min_p_filter(scores: torch.Tensor, min_p: float, min_keep: int = 1) -> torch.Tensor:
    """Remove the tokens whose probability is below ``min_p`` times the likeliest token's."""
    probs = torch.softmax(scores, dim=-1)  # (N, V)
    remove = probs < min_p * probs.amax(dim=-1, keepdim=True)
    keep = torch.topk(probs, min(min_keep, probs.size(-1)), dim=-1).indices  # as transformers: by index, not ties
    remove.scatter_(-1, keep, False)
    return scores.masked_fill(remove, float("-inf"))


def typical_filter(scores: torch.Tensor, mass: float, min_keep: int = 1) -> torch.Tensor:
    """Locally typical sampling: the tokens whose ``-log p`` lies closest to the entropy, up to ``mass``.

    Sorted by ``|-log p - H|``, the tokens are taken until their cumulative probability reaches
    ``mass`` (the one that crosses it included); every token as far from the entropy as the last one
    taken stays too (ties survive).
    """
    logp = torch.log_softmax(scores, dim=-1)  # (N, V)
    p = logp.exp()
    entropy = -(logp * p).nansum(-1, keepdim=True)  # (N, 1); nansum: 0 * -inf counts as 0
    distance = (-logp - entropy).abs()  # (N, V)
    ordered, order = torch.sort(distance, descending=False)
    cumulative = scores.gather(-1, order).softmax(dim=-1).cumsum(dim=-1)  # (N, V) in that order
    last = (cumulative < mass).sum(dim=1).clamp_(max=scores.size(-1) - 1)  # (N,) the token that reaches the mass
    remove = ordered > ordered.gather(1, last[:, None])
    remove[..., :min_keep] = False
    return scores.masked_fill(remove.scatter(1, order, remove), float("-inf"))


def epsilon_filter(scores: torch.Tensor, epsilon: float, min_keep: int = 1) -> torch.Tensor:
    """Remove the tokens of probability below ``epsilon``."""
    remove = torch.softmax(scores, dim=-1) < epsilon
    return scores.masked_fill(_keep_top(remove, scores, min_keep), float("-inf"))


def eta_threshold(scores: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Eta sampling's cutoff for each row (N, 1): ``min(epsilon, sqrt(epsilon) * exp(-entropy))``."""
    entropy = torch.distributions.Categorical(logits=scores).entropy()  # (N,)
    epsilon = torch.tensor(epsilon, device=scores.device)
    return torch.min(epsilon, torch.sqrt(epsilon) * torch.exp(-entropy))[..., None]


def eta_filter(scores: torch.Tensor, epsilon: float, min_keep: int = 1) -> torch.Tensor:
    """Remove the tokens of probability below :func:`eta_threshold`."""
    remove = torch.softmax(scores, dim=-1) < eta_threshold(scores, epsilon)
    return scores.masked_fill(_keep_top(remove, scores, min_keep), float("-inf"))
