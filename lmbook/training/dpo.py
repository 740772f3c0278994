"""Direct preference optimisation (DPO, Rafailov et al., 2023), written out (chapter 9).

From pairs of answers to the same prompt, one preferred ("chosen", y_w) and one not ("rejected", y_l), DPO trains
the policy π directly, with a frozen copy of the starting model as the reference π_ref:

    loss = -log σ(β · [(log π(y_w|x) - log π_ref(y_w|x)) - (log π(y_l|x) - log π_ref(y_l|x))])

where each log π(y|x) is the *sum* of the answer tokens' log-probabilities given the prompt
(:func:`sequence_logprobs`). β · (log π - log π_ref) is the answer's implicit reward; a larger β keeps the policy
nearer the reference. At the first step the policy is the reference, every log-ratio is 0 and the loss is ln 2.

:func:`dpo_loss` computes the loss from the four log-probabilities and the metrics ``trl``'s ``DPOTrainer`` logs
under the same names (its "sigmoid" loss, equal on the same numbers); :class:`DPOBatches` draws the
(prompt, chosen, rejected) triples and :func:`train_dpo` is a small loop with a frozen reference that reports, each
step, the loss, the reward accuracy and margin, the chosen and rejected log-probabilities and the KL divergence
from the reference on the chosen answers.
"""

from __future__ import annotations

import copy
import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..interface import check_number, context_length, device_of, evaluating
from ..runtime import autocast
from ..text.data import SeededBatches, check_sizes
from .optim import TrainConfig, lr_at, make_optimizer
from .sft import logits_of, make_sft_batch

Triple = tuple[Sequence[int], Sequence[int], Sequence[int]]  # (prompt_ids, chosen_ids, rejected_ids)


def _check_lists(prompt_ids, completion_ids) -> None:
    for name, value in (("prompt_ids", prompt_ids), ("completion_ids", completion_ids)):
        if isinstance(value, (str, bytes, torch.Tensor)) or not isinstance(value, Sequence) or not len(value):
            raise ValueError(f"{name} must be a non-empty list of token-id sequences, one per example, not {value!r}.")
        if not isinstance(value[0], (Sequence, torch.Tensor)):
            raise ValueError(f"{name} must be a list of sequences of token ids (one per example), not a list of "
                             f"{type(value[0]).__name__}: wrap a single example in a list, [ids].")
    if len(prompt_ids) != len(completion_ids):
        raise ValueError(f"prompt_ids has {len(prompt_ids)} examples but completion_ids {len(completion_ids)}: give "
                         "one completion per prompt.")


def _scored(model, prompt_ids, completion_ids) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Summed completion log-probabilities (N,), every position's log-softmax (N, T, V) and which positions'
    targets are completion tokens (N, T)."""
    batch = make_sft_batch(list(zip(prompt_ids, completion_ids)), context_length(model), completion_only=True,
                           name="(prompt, completion) pairs").to(device_of(model))
    logp = logits_of(model, batch.x, batch.attention_mask).float().log_softmax(dim=-1)  # (N, T, V)
    labelled = batch.y != -1  # (N, T): the targets that are completion tokens
    token = logp.gather(-1, batch.y.clamp(min=0)[..., None]).squeeze(-1)  # (N, T)
    return (token * labelled).sum(dim=1), logp, labelled


def sequence_logprobs(model, prompt_ids: Sequence[Sequence[int]],
                      completion_ids: Sequence[Sequence[int]]) -> torch.Tensor:
    """log π(completion | prompt) for each of N examples (N,): the sum of the completion tokens' log-probabilities,
    read in one right-padded batch. Gradients flow through it (a policy's); wrap it in ``torch.no_grad()`` for a
    reference. Works for the book's models and ``transformers`` causal LMs; refuses a pair longer than the context."""
    _check_lists(prompt_ids, completion_ids)
    return _scored(model, prompt_ids, completion_ids)[0]


def _check_logps(**tensors) -> None:
    shape = None
    for name, value in tensors.items():
        if not isinstance(value, torch.Tensor) or not value.is_floating_point() or value.dim() != 1 or not len(value):
            what = f"{value.dtype} {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"{name} must be a 1-D float tensor of summed log-probabilities, one per pair, "
                             f"not {what} (sequence_logprobs gives them).")
        if shape is not None and value.shape != shape:
            raise ValueError(f"the four log-probabilities must have one value per pair, the same shape; {name} has "
                             f"{tuple(value.shape)}, policy_chosen {tuple(shape)}.")
        shape = value.shape


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float = 0.1) -> tuple[torch.Tensor, dict[str, float]]:
    """The DPO loss, mean over the pairs, from summed log-probabilities (N,) each, and the metrics ``trl`` logs:
    ``rewards/chosen`` and ``rewards/rejected`` (mean β · (log π - log π_ref)), ``rewards/margins`` (mean chosen
    minus rejected reward), ``rewards/accuracies`` (the share of pairs whose chosen reward is the larger),
    ``logps/chosen`` and ``logps/rejected`` (the policy's mean log-probabilities)."""
    _check_logps(policy_chosen=policy_chosen, policy_rejected=policy_rejected, ref_chosen=ref_chosen,
                 ref_rejected=ref_rejected)
    check_number("beta", beta, "a finite number > 0 (about 0.1; larger keeps the policy nearer the reference)",
                 lambda b: 0 < b < math.inf)
    chosen_rewards = beta * (policy_chosen - ref_chosen)  # (N,)
    rejected_rewards = beta * (policy_rejected - ref_rejected)  # (N,)
    loss = -F.logsigmoid(chosen_rewards - rejected_rewards).mean()
    chosen, rejected = chosen_rewards.detach(), rejected_rewards.detach()
    metrics = {
        "rewards/chosen": chosen.mean().item(),
        "rewards/rejected": rejected.mean().item(),
        "rewards/margins": (chosen - rejected).mean().item(),
        "rewards/accuracies": (chosen > rejected).float().mean().item(),
        "logps/chosen": policy_chosen.detach().mean().item(),
        "logps/rejected": policy_rejected.detach().mean().item(),
    }
    return loss, metrics


class DPOBatches(SeededBatches):
    """Batches of ``batch_size`` (prompt_ids, chosen_ids, rejected_ids) triples drawn at random, different within
    a batch; called, it returns three lists (prompts, chosen, rejected). The same seed draws the same batches."""

    def __init__(self, triples: Sequence[Triple], batch_size: int, seed: int = 0):
        check_sizes(batch_size=batch_size)
        super().__init__("cpu", seed)
        if isinstance(triples, (str, bytes)) or not isinstance(triples, Sequence) or not len(triples):
            raise ValueError(f"triples must be a non-empty list of (prompt_ids, chosen_ids, rejected_ids), "
                             f"not {triples!r}.")
        for i, triple in enumerate(triples):
            if not isinstance(triple, Sequence) or len(triple) != 3:
                raise ValueError(f"triples[{i}] must be (prompt_ids, chosen_ids, rejected_ids), not {triple!r}.")
            make_sft_batch([triple[:2], (triple[0], triple[2])], None, name=f"triples[{i}]")  # checks the ids
        if batch_size > len(triples):
            raise ValueError(f"batch_size={batch_size} is more than the {len(triples)} triples: lower it.")
        self.triples, self.batch_size = list(triples), batch_size

    def __call__(self) -> tuple[list, list, list]:
        chosen = torch.randperm(len(self.triples), generator=self.generator)[: self.batch_size].tolist()
        prompts, wins, losses = zip(*(self.triples[i] for i in chosen))
        return list(prompts), list(wins), list(losses)


def dpo_step(policy: nn.Module, reference: nn.Module, prompts, chosen, rejected,
             beta: float = 0.1) -> tuple[torch.Tensor, dict[str, float]]:
    """The DPO loss of one batch (to backpropagate) and its metrics, with ``kl``: the mean over the chosen answers'
    tokens of KL(π(·|context) ‖ π_ref(·|context)), the exact divergence of the next-token distributions computed
    over the whole vocabulary at each position of the chosen answers (teacher-forced on them; not a sampled
    estimate of the sequence-level KL, which would need answers sampled from the policy)."""
    _check_lists(prompts, chosen)
    _check_lists(prompts, rejected)
    n = len(prompts)
    logps, logp, labelled = _scored(policy, list(prompts) * 2, list(chosen) + list(rejected))  # [chosen; rejected]
    with torch.no_grad():
        ref_logps, ref_logp, _ = _scored(reference, list(prompts) * 2, list(chosen) + list(rejected))
    loss, metrics = dpo_loss(logps[:n], logps[n:], ref_logps[:n], ref_logps[n:], beta)
    with torch.no_grad():
        p = logp[:n].exp()  # (n, T, V)
        kl = (p * (logp[:n] - ref_logp[:n])).sum(-1)  # (n, T): KL at every position
        metrics["kl"] = (kl[labelled[:n]].mean()).item()
    return loss, metrics


def train_dpo(model: nn.Module, batches: DPOBatches, config: TrainConfig, beta: float = 0.1,
              reference: nn.Module | None = None) -> list[dict[str, float]]:
    """Train ``model`` in place by DPO for ``config.max_steps`` steps (AdamW, ``config``'s schedule and clipping,
    seeded by ``config.seed``) against a frozen reference: ``reference``, else a copy of ``model`` as it starts.
    Only parameters that require gradients train (LoRA adapters, when the model carries them). Dropout is off,
    as ``trl`` turns it off. Returns each step's metrics (:func:`dpo_step`) with ``loss`` and ``lr``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, not {type(model).__name__}.")
    if not isinstance(batches, DPOBatches):
        raise TypeError(f"batches must be a DPOBatches, not {type(batches).__name__}.")
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, not {type(config).__name__}.")
    check_number("beta", beta, "a finite number > 0", lambda b: 0 < b < math.inf)
    if reference is model:
        raise ValueError("the reference must be a frozen copy, not the model being trained: pass "
                         "copy.deepcopy(model), or leave reference=None for a copy of the model as it starts.")
    if reference is None:
        reference = copy.deepcopy(model)
    reference.eval().requires_grad_(False)
    torch.manual_seed(config.seed)
    device = device_of(model)
    optimizer = make_optimizer(model, config, device)
    records = []
    with evaluating(model):
        for step in tqdm(range(config.max_steps), desc=config.desc, disable=not config.progress, leave=False):
            lr = lr_at(step, config)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with autocast(device, config.precision):
                loss, metrics = dpo_step(model, reference, *batches(), beta=beta)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip or math.inf)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            records.append({"loss": loss.item(), "lr": lr, **metrics})
    return records
