"""Attention written out step by step, and chapter 3's experiments with the Transformer.

The GPT of :mod:`lmbook.gpt` calls PyTorch's fused ``scaled_dot_product_attention``;
this module computes the same thing in plain tensor operations (scores, scaling,
mask, softmax, weighted sum, heads split and merged), so that chapter 3 can show
each step, check it against the fused kernel, draw the attention weights of a
trained model, and measure what attention costs as the sequence grows.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .config import Presets
from .data import RandomBatches
from .gpt import GPT, CausalSelfAttention, GPTConfig
from .metrics import split_loss
from .runtime import get_device, pick
from .train import History, TrainConfig, train


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
    y, weights = attention(q, k, v, causal=module.causal)  # (B, nh, T, hs), (B, nh, T, T)
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
    was_training = model.training
    try:
        model.eval()
        model(idx)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
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
    was_training = model.training
    model.eval()
    p = torch.softmax(model(x)[0][:, -1].float(), -1)  # (B, vocab)
    p_shuffled = torch.softmax(model(shuffled)[0][:, -1].float(), -1)
    model.train(was_training)
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


# --- The chapter's experiment: a character-level GPT on Tiny Shakespeare ----------------
@dataclass(frozen=True)
class GPTRun(Presets):
    """The sizes of chapter 3's character-level GPT run: model shape, batches, training."""

    n_layer: int
    n_head: int
    n_embd: int
    block_size: int
    dropout: float
    batch_size: int
    max_steps: int
    lr: float
    min_lr: float
    warmup_steps: int
    schedule: str
    weight_decay: float
    beta2: float
    eval_interval: int
    eval_iters: int

    def model_config(self, vocab_size: int, **changes) -> GPTConfig:
        return GPTConfig(vocab_size=vocab_size, block_size=self.block_size, n_layer=self.n_layer, n_head=self.n_head,
                         n_embd=self.n_embd, dropout=self.dropout).replace(**changes)

    def train_config(self, **changes) -> TrainConfig:
        settings = dict(max_steps=self.max_steps, lr=self.lr, min_lr=self.min_lr, warmup_steps=self.warmup_steps,
                        schedule=self.schedule, weight_decay=self.weight_decay, betas=(0.9, self.beta2),
                        eval_interval=self.eval_interval, eval_iters=self.eval_iters)
        return TrainConfig(**{**settings, **changes})


RUNS = {
    # the shakespeare-char preset on a GPU, under a minute on an H100: the schedule of the best speed runs
    # (benchmarks/NOTES.md, run p), decaying to zero where longer runs start to overfit
    "full": GPTRun(n_layer=6, n_head=6, n_embd=384, block_size=256, dropout=0.2, batch_size=128, max_steps=1100,
                   lr=2e-3, min_lr=0.0, warmup_steps=50, schedule="linear", weight_decay=0.3, beta2=0.99,
                   eval_interval=100, eval_iters=20),
    # two CPU cores, under a minute (benchmarks/speedrun_char_cpu.py times it): a context of 32 and more,
    # smaller steps beat a context of 64 on time and loss alike (benchmarks/NOTES.md)
    "fast": GPTRun(n_layer=2, n_head=4, n_embd=96, block_size=32, dropout=0.0, batch_size=32, max_steps=1000,
                   lr=1e-2, min_lr=0.0, warmup_steps=30, schedule="linear", weight_decay=0.1, beta2=0.99,
                   eval_interval=100, eval_iters=4),
}
# small runs that compare position tables: seconds each on a CPU (one layer at the fast size,
# where a model without position information is exactly blind to the order of its context)
POSITION_RUNS = {
    "full": RUNS["full"].replace(n_layer=4, n_head=4, n_embd=256, block_size=128, dropout=0.0, batch_size=64,
                                 max_steps=1000, lr=1e-3, min_lr=1e-4, warmup_steps=100, schedule="cosine",
                                 weight_decay=0.1, eval_interval=100, eval_iters=20),
    "fast": RUNS["fast"].replace(n_layer=1, n_embd=64, block_size=64, batch_size=32, max_steps=300, lr=5e-3,
                                 warmup_steps=20, eval_interval=50, eval_iters=5),
}
# deeper, narrow stacks at a high learning rate, to compare pre-LN with post-LN
NORM_RUNS = {
    "full": RUNS["full"].replace(n_layer=12, n_head=4, n_embd=128, block_size=128, dropout=0.0, batch_size=64,
                                 weight_decay=0.1, max_steps=600,
                                 lr=1e-2, min_lr=0.0, schedule="linear", warmup_steps=100, eval_interval=50, eval_iters=20),
    # 2 evaluation batches of 64: a sixth less time than 5
    "fast": RUNS["fast"].replace(n_layer=6, n_embd=64, block_size=64, batch_size=16, max_steps=300, lr=1e-2,
                                 warmup_steps=30, eval_interval=25, eval_iters=2),
}


def make_char_gpt(run: GPTRun, vocab_size: int, device=None, seed: int = 0, **changes) -> GPT:
    """A fresh :class:`GPT` at the sizes of ``run`` (``changes`` go to its :class:`GPTConfig`), from ``seed``."""
    torch.manual_seed(seed)
    return GPT(run.model_config(vocab_size, **changes)).to(device or get_device())


def train_char_gpt(model: GPT, run: GPTRun, train_data: torch.Tensor, val_data: torch.Tensor, seed: int = 0,
                   **changes) -> History:
    """Train ``model`` in place at the sizes of ``run`` on random windows; ``changes`` go to the :class:`TrainConfig`."""
    device = next(model.parameters()).device
    batches = RandomBatches(train_data, run.block_size, run.batch_size, device, seed=seed)
    eval_batches = {"val": RandomBatches(val_data, run.block_size, 64, device, seed=seed + 1)}
    return train(model, batches, run.train_config(**{"seed": seed, **changes}), eval_batches)


def layer_gradient_norms(model: GPT, x: torch.Tensor, y: torch.Tensor) -> list[float]:
    """The gradient norm of each block's parameters for one batch (x, y): where the learning signal arrives."""
    model.zero_grad(set_to_none=True)
    model(x, y)[1].backward()
    norms = [torch.cat([p.grad.flatten() for p in block.parameters()]).norm().item() for block in model.h]
    model.zero_grad(set_to_none=True)
    return norms


VARIANTS = {  # GPTConfig changes the chapter compares, each against the default
    "positions": {"learned": {}, "sinusoidal": {"position": "sinusoidal"},
                  "indexed by token id (mistake)": {"position": "token-id"}},
    "norm": {"pre-LN": {}, "post-LN": {"norm": "post"}},
}


def reference_run() -> dict:
    """Chapter 3's full-size experiment: the character-level GPT trained, sampled and measured.

    Recorded by ``python -m lmbook.reference gpt`` into ``lmbook/references/gpt.json``.
    """
    from .data import shakespeare_chars
    from .generate import complete

    run, device = RUNS["full"], get_device()
    tokenizer, train_data, val_data = shakespeare_chars()
    model = make_char_gpt(run, tokenizer.vocab_size, device)
    history = train_char_gpt(model, run, train_data, val_data)
    samples = {f"gpt {t}": complete(model, tokenizer, "ROMEO:", max_new_tokens=400, temperature=t, seed=0)
               for t in (0.5, 0.8, 1.0)}
    results = {"val_loss_whole_split": split_loss(model, val_data, run.block_size), "params": model.num_params(),
               "tokens_per_second": history.tokens_per_second, "seconds": history.seconds,
               "cost": attention_cost(lengths=(256, 512, 1024, 2048, 4096), batch=8, n_head=6, head_size=64)}
    return {"histories": {"gpt": history}, "results": results, "samples": samples, "sizes": run.to_dict()}
