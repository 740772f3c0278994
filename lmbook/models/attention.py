"""Attention written out step by step, and what chapter 3 measures with it.

The GPT of :mod:`lmbook.models.gpt` calls PyTorch's fused ``scaled_dot_product_attention``;
this module computes the same thing in plain tensor operations (scores, scaling,
mask, softmax, weighted sum, heads split and merged), so that chapter 3 can show
each step, check it against the fused kernel, draw the attention weights of a
trained model, and measure what attention costs as the sequence grows.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

from .gpt import GPT, CausalSelfAttention
from ..interface import evaluating
from ..runtime import get_device


# --- Scaled dot-product attention ------------------------------------------------
def causal_mask(T: int, device=None) -> torch.Tensor:
    """(T, T) booleans, True where query i may look at key j, that is j <= i."""
    return torch.ones(T, T, dtype=torch.bool, device=device).tril()


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False, scale: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q kᵀ / √d_k) v, written out: returns the output (..., T, d_v) and the weights (..., T, T).

    ``q`` and ``k`` are (..., T, d_k), ``v`` is (..., T, d_v); the leading dimensions are
    batch and heads. ``scale=False`` leaves out the division by √d_k (to see why it is there).
    """
    d_k = q.size(-1)
    scores = q @ k.transpose(-2, -1)  # (..., T, T): one dot product per query and key
    if scale:
        scores = scores / math.sqrt(d_k)  # keeps the scores' spread near 1 whatever d_k is
    if causal:
        T_q, T_k = scores.shape[-2:]
        allowed = causal_mask(T_k, scores.device)[T_k - T_q :]  # the last T_q queries
        scores = scores.masked_fill(~allowed, float("-inf"))  # exp(-inf) = 0: no weight on the future
    weights = torch.softmax(scores, dim=-1)  # (..., T, T): each row sums to 1
    return weights @ v, weights  # (..., T, d_v), (..., T, T)


def split_heads(x: torch.Tensor, n_head: int) -> torch.Tensor:
    """(B, T, C) -> (B, nh, T, C/nh): each head gets its own slice of the channels."""
    B, T, C = x.shape
    return x.view(B, T, n_head, C // n_head).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, nh, T, hs) -> (B, T, nh·hs): the heads' outputs side by side again."""
    B, nh, T, hs = x.shape
    return x.transpose(1, 2).reshape(B, T, nh * hs)


def self_attention(module: CausalSelfAttention, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What ``module`` computes for ``x`` (B, T, C), written out with its weights: (output, weights (B, nh, T, T))."""
    B, T, C = x.shape
    q, k, v = module.c_attn(x).split(C, dim=2)  # each (B, T, C)
    q, k, v = (split_heads(t, module.n_head) for t in (q, k, v))  # each (B, nh, T, hs)
    y, weights = attention(q, k, v, causal=module.is_causal)  # (B, nh, T, hs), (B, nh, T, T)
    return module.c_proj(merge_heads(y)), weights  # (B, T, C)


def softmax_saturation(d_ks=(4, 16, 64, 256, 1024), n_keys: int = 64, samples: int = 256, seed: int = 0) -> dict:
    """How peaked softmax(q·k) is for random q, k with N(0, 1) entries, with and without the 1/√d_k.

    For each d_k: the spread (standard deviation) of the scores, the mean largest weight of
    a row and the mean entropy of a row in nats (log(n_keys) is uniform, 0 is one-hot).
    """
    g = torch.Generator().manual_seed(seed)
    out = {"d_k": list(d_ks), "log_n_keys": math.log(n_keys)}
    for scaled in (False, True):
        rows = {"score_std": [], "max_weight": [], "entropy": []}
        for d_k in d_ks:
            q = torch.randn(samples, 1, d_k, generator=g)  # (S, 1, d_k)
            k = torch.randn(samples, n_keys, d_k, generator=g)  # (S, n, d_k)
            scores = (q @ k.transpose(1, 2)).squeeze(1) / (math.sqrt(d_k) if scaled else 1.0)  # (S, n)
            p = torch.softmax(scores, -1)
            rows["score_std"].append(scores.std().item())
            rows["max_weight"].append(p.max(-1).values.mean().item())
            rows["entropy"].append(-(p * p.clamp_min(1e-30).log()).sum(-1).mean().item())
        out["scaled" if scaled else "unscaled"] = rows
    return out


# --- Looking inside a trained GPT --------------------------------------------------
@torch.no_grad()
def attention_maps(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    """The attention weights of every layer and head of ``model`` for ``idx`` (B, T): (L, B, nh, T, T).

    A forward hook on each block's ``attn`` recomputes q·k from the input it received with
    its own weights (:func:`self_attention`); the model's fast path is left unchanged.
    """
    if idx.dim() == 1:
        idx = idx[None]
    maps: list[torch.Tensor] = []

    def hook(module, args, output):
        maps.append(self_attention(module, args[0])[1])

    handles = [block.attn.register_forward_hook(hook) for block in model.h]
    try:
        with evaluating(model):
            model(idx)
    finally:
        for handle in handles:
            handle.remove()
    return torch.stack(maps)  # (L, B, nh, T, T)


@torch.no_grad()
def order_test(model: GPT, idx: torch.Tensor, seed: int = 0) -> dict:
    """Shuffle every context of ``idx`` (B, T) but its last token: how much do the last predictions change?

    Returns the mean total-variation distance between the next-token distributions before
    and after, and the mean loss of the shuffled windows' last predictions. A model that
    knows where tokens are changes its mind; an order-blind one does not.
    """
    g = torch.Generator().manual_seed(seed)
    x, target = idx[:, :-1], idx[:, -1]
    perm = torch.stack([torch.randperm(x.size(1) - 1, generator=g) for _ in range(x.size(0))]).to(x.device)
    shuffled = torch.cat([x[:, :-1].gather(1, perm), x[:, -1:]], dim=1)  # the last input token stays last
    with evaluating(model):
        p = torch.softmax(model(x)[0][:, -1].float(), -1)  # (B, vocab)
        p_shuffled = torch.softmax(model(shuffled)[0][:, -1].float(), -1)
    return {
        "total_variation": 0.5 * (p - p_shuffled).abs().sum(-1).mean().item(),
        "loss": F.nll_loss(p.log(), target).item(),
        "loss_shuffled": F.nll_loss(p_shuffled.log(), target).item(),
    }


# --- What attention costs ----------------------------------------------------------
def attention_cost(lengths=(64, 128, 256, 512, 1024), batch: int = 4, n_head: int = 4, head_size: int = 32,
                   repeats: int = 3, device=None) -> dict:
    """Time (seconds, best of ``repeats``) and memory (bytes) of one attention call at each sequence length.

    Compares :func:`attention` written out with ``scaled_dot_product_attention`` (causal). Memory
    on CUDA is ``torch.cuda.max_memory_allocated`` during the call, above what was already held;
    on other devices it is the size of the (B, nh, T, T) score and weight tensors the written-out
    version allocates, which the fused kernel avoids (its own memory is not measured there).
    """
    device = torch.device(device or get_device())
    result = {"lengths": list(lengths), "device": str(device), "batch": batch, "n_head": n_head, "head_size": head_size}
    functions = {"written out": lambda q, k, v: attention(q, k, v, causal=True)[0],
                 "fused (SDPA)": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)}
    for name, fn in functions.items():
        seconds, memory = [], []
        for T in lengths:
            q, k, v = torch.randn(3, batch, n_head, T, head_size, device=device).unbind(0)  # each (B, nh, T, hs)
            best = math.inf
            with torch.no_grad():
                fn(q, k, v)  # warm-up
                for _ in range(repeats):
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                        torch.cuda.reset_peak_memory_stats(device)
                        held = torch.cuda.memory_allocated(device)
                    start = time.perf_counter()
                    fn(q, k, v)
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    best = min(best, time.perf_counter() - start)
            seconds.append(best)
            if device.type == "cuda":
                memory.append(torch.cuda.max_memory_allocated(device) - held)
            else:
                memory.append(2 * batch * n_head * T * T * 4 if name == "written out" else None)
        result[name] = {"seconds": seconds, "bytes": memory}
    return result


def layer_gradient_norms(model: GPT, x: torch.Tensor, y: torch.Tensor) -> list[float]:
    """The gradient norm of each block's parameters for one batch (x, y): where the learning signal arrives."""
    model.zero_grad(set_to_none=True)
    model(x, y)[1].backward()
    norms = [torch.cat([p.grad.flatten() for p in block.parameters()]).norm().item() for block in model.h]
    model.zero_grad(set_to_none=True)
    return norms
