"""Turning a language model into text: greedy decoding and sampling (chapter 5 adds more).

Works with any model of the book that offers ``make_cache()`` and is called as
``model(idx, cache=cache)``: the GPT keeps keys and values in its cache, so each
step feeds only the newest token. When the context fills up, the cache is
rebuilt from the most recent half of the context, an amortised sliding window.
"""

from __future__ import annotations

import torch
import torch.nn as nn


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick the next token from ``logits`` (B, V): greedy at ``temperature == 0``, else sampled."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, not {temperature}.")
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)  # (B, 1)
    logits = logits.float() / temperature
    if top_k is not None:
        k = min(top_k, logits.size(-1))
        kth = torch.topk(logits, k, dim=-1).values[:, -1:]  # (B, 1) the k-th largest logit
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)  # (B, V)
    if generator is not None and generator.device != probs.device:
        return torch.multinomial(probs.cpu(), 1, generator=generator).to(probs.device)
    return torch.multinomial(probs, 1, generator=generator)  # (B, 1)


@torch.no_grad()
def generate(
    model: nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
) -> torch.Tensor:
    """Extend ``idx`` (B, T) by ``max_new_tokens`` tokens; returns (B, T + max_new_tokens).

    ``temperature=0`` is greedy decoding. ``use_cache=False`` recomputes the whole
    window at every step (the slow reference the KV cache is checked against).
    """
    if idx.dim() == 1:
        idx = idx[None]
    if idx.size(1) == 0:
        raise ValueError("the prompt is empty: give at least one token to condition on.")
    context = getattr(model, "context_length", None)
    if context is not None and idx.size(1) > context:
        raise ValueError(
            f"the prompt has {idx.size(1)} tokens but the model's context is {context}: "
            f"shorten it, e.g. keep the last {context} tokens with idx[:, -{context}:]."
        )
    was_training = model.training
    model.eval()
    cache = model.make_cache(idx.size(0)) if use_cache else None
    window = idx
    for _ in range(max_new_tokens):
        if cache is None:
            window = idx if context is None else idx[:, -context:]  # everything, or the last context tokens
            logits, _ = model(window)
        else:
            if context is not None and cache.pos + window.size(1) > context:
                cache.reset()  # slide: re-read the most recent half of the context
                window = idx[:, -(context // 2 or 1) :]
            logits, _ = model(window, cache=cache)
        next_id = sample_next(logits[:, -1, :], temperature, top_k, generator)  # (B, 1)
        idx = torch.cat([idx, next_id], dim=1)
        window = next_id
    model.train(was_training)
    return idx


def complete(
    model: nn.Module,
    tokenizer,
    prompt: str,
    max_new_tokens: int = 200,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int | None = None,
) -> str:
    """Continue the text ``prompt`` with ``model`` and return prompt plus continuation."""
    device = next(model.parameters()).device
    idx = torch.tensor([tokenizer.encode(prompt)], dtype=torch.long, device=device)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    out = generate(model, idx, max_new_tokens, temperature, top_k, generator)
    return tokenizer.decode(out[0].tolist())
