"""Contrastive search (chapter 5): the likeliest tokens, minus a penalty for saying what was said before.

Su et al. (2022) pick each token among the ``top_k`` likeliest ``v`` by

    (1 - alpha) * p(v | x) - alpha * max_j cos(h_v, h_j),

where ``h_v`` is the model's last hidden state (the one its output layer reads) at the new position
if ``v`` were chosen and ``h_j`` the hidden states of every token before it, prompt included. With
``alpha = 0`` it is greedy decoding; a larger ``alpha`` refuses tokens whose representation repeats
the context's, which is what a loop looks like from inside the model. It was a mode of
``transformers``' ``generate`` (``penalty_alpha``, ``top_k``) until version 5 moved it out of the
library's core to a community repository on the Hub (``transformers-community/contrastive-search``,
loaded with ``custom_generate``): here it is written out.

Each step feeds the ``top_k`` candidates of every row as one batch (the cache holds ``top_k`` copies
of each row, as ``transformers`` did), so a step costs one forward pass over ``N * top_k`` tokens.
The hidden states are read with a hook on the model's output layer (``lm_head``): the models need
no change (:func:`last_hidden_states`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn

from .shared import GenerationConfig, process_scores
from ..interface import check_int, check_model, check_number, check_token_ids, device_of, evaluating


@contextmanager
def last_hidden_states(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """While open, every forward pass of ``model`` appends the input of its ``lm_head`` (B, T, C) to the list it
    yields: the last hidden states, after the final normalisation (``transformers``' ``hidden_states[-1]``)."""
    head = getattr(model, "lm_head", None)
    if not isinstance(head, nn.Module):
        raise TypeError(f"{type(model).__name__} has no lm_head to read its last hidden states from: contrastive "
                        "search needs a model whose output layer is called lm_head (the book's GPT and Llama).")
    seen: list[torch.Tensor] = []
    handle = head.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    try:
        yield seen
    finally:
        handle.remove()


def _check(model, idx, max_new_tokens, penalty_alpha, top_k) -> torch.Tensor:
    check_model(model)
    check_int("max_new_tokens", max_new_tokens, 1)
    check_number("penalty_alpha", penalty_alpha, "in [0, 1] (0: greedy decoding)", lambda a: 0 <= a <= 1)
    check_int("top_k", top_k, 1)
    if top_k > model.vocab_size:
        raise ValueError(f"top_k={top_k} is more than the vocabulary of {model.vocab_size} tokens: lower it.")
    if not isinstance(idx, torch.Tensor) or idx.dtype.is_floating_point or idx.dtype == torch.bool:
        raise TypeError(f"the prompts must be a tensor of integer token ids (B, T) or (T,), not {idx!r:.80}.")
    idx = (idx[None] if idx.dim() == 1 else idx).long()
    if idx.dim() != 2 or idx.numel() == 0:
        raise ValueError(f"the prompts must be a non-empty (B, T) tensor, not of shape {tuple(idx.shape)}.")
    check_token_ids(idx, model.vocab_size)
    context, need = model.context_length, idx.size(1) + max_new_tokens
    if context is not None and need > context:
        raise ValueError(f"the prompt ({idx.size(1)}) and max_new_tokens ({max_new_tokens}) need {need} positions, "
                         f"more than the model's context of {context}: shorten one of them.")
    return idx


def degeneration_penalty(candidates: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """``max_j cos(h_v, h_j)`` for candidates (N, k, C) against the context's hidden states (N, S, C): (N, k)."""
    candidates = candidates / candidates.norm(dim=-1, keepdim=True)
    context = context / context.norm(dim=-1, keepdim=True)
    return (candidates @ context.transpose(1, 2)).amax(dim=-1)  # (N, k, S) -> (N, k)


@torch.inference_mode()
def contrastive_search(model: nn.Module, idx: torch.Tensor, max_new_tokens: int, penalty_alpha: float = 0.6,
                       top_k: int = 4, repetition_penalty: float = 1.0, no_repeat_ngram_size: int = 0,
                       eos_token_id: int | None = None) -> torch.Tensor:
    """Continue the prompts ``idx`` (B, T) or (T,) by contrastive search; returns (B, T + new tokens).

    ``repetition_penalty`` and ``no_repeat_ngram_size`` act on the scores first, as
    :func:`lmbook.decoding.generate.generate`'s do. A row that writes ``eos_token_id`` is filled with
    it after. The whole text must fit in the model's context (no sliding window).
    """
    idx = _check(model, idx, max_new_tokens, penalty_alpha, top_k)
    check_int("eos_token_id", eos_token_id, 0, allow_none=True)
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, repetition_penalty=repetition_penalty,
                              no_repeat_ngram_size=no_repeat_ngram_size)
    N, k = idx.size(0), top_k
    ids = idx.to(device_of(model))
    done = torch.zeros(N, dtype=torch.bool, device=ids.device)
    with evaluating(model), last_hidden_states(model) as seen:
        cache = model.make_cache()
        logits = model(ids, cache=cache)[0][:, -1].float()  # (N, V)
        context = seen.pop()  # (N, T, C): the prompt's hidden states
        cache.reorder(torch.arange(N, device=ids.device).repeat_interleave(k))  # k copies of each row
        for _ in range(max_new_tokens):
            probs = process_scores(logits, ids, config, sampling=False).softmax(dim=-1)  # (N, V)
            top_probs, top_ids = probs.topk(k, dim=-1)  # (N, k)
            out = model(top_ids.reshape(N * k, 1), cache=cache)[0][:, -1].float()  # (N * k, V)
            hidden = seen.pop()[:, -1].reshape(N, k, -1)  # (N, k, C): each candidate's hidden state
            score = (1 - penalty_alpha) * top_probs - penalty_alpha * degeneration_penalty(hidden, context)
            choice = score.argmax(dim=-1)  # (N,)
            rows = torch.arange(N, device=ids.device)
            token = top_ids[rows, choice]
            if eos_token_id is not None:
                token = torch.where(done, eos_token_id, token)
                done |= token == eos_token_id
            ids = torch.cat([ids, token[:, None]], dim=1)
            context = torch.cat([context, hidden[rows, choice][:, None]], dim=1)  # (N, t + 1, C)
            chosen = rows * k + choice  # (N,) the rows of the chosen candidates
            logits = out[chosen]
            cache.reorder(chosen.repeat_interleave(k))
            if eos_token_id is not None and bool(done.all()):
                break
    return ids
