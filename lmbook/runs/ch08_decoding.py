"""Chapter 8's decoding measurements: what grouped-query attention saves in the cache, and what int8 weights
cost and give.

- :func:`kv_cache_rows`: Llamas of one shape with multi-head, grouped-query and multi-query attention; for each,
  the cache's bytes per token computed from the shape (:meth:`~lmbook.models.llama.LlamaConfig.kv_bytes_per_token`)
  and measured on the cache a prompt fills, and the decoding speed with a long prompt;
- :func:`quantization_rows`: a model's weights in float32, bfloat16 and int8 (:func:`~lmbook.models.quantize.
  quantize_int8`): bytes, held-out bits per character, greedy tokens per second and how often the most likely
  next token is the float32 model's.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch

from ..decoding.generate import tokens_per_second
from ..evaluation.metrics import split_loss
from ..interface import context_length, device_of
from ..models.llama import Llama, LlamaConfig
from ..models.quantize import quantize_int8, weight_bytes
from ..display.show import and_list, capital, than
from .common import Settings


@dataclass(frozen=True)
class DecodingRun(Settings):
    """The sizes of the chapter's decoding measurements."""

    kv_shape: tuple[int, int, int]  # (n_layer, n_head, n_embd) of the cache comparison's models
    kv_heads: tuple[int, ...]  # key/value heads compared: n_head (multi-head) down to 1 (multi-query)
    kv_prompt: int  # prompt tokens in the cache before decoding starts
    kv_new: int  # tokens decoded per timing
    kv_batch: int
    quant_chars: int  # held-out characters the bits per character are measured on
    quant_new: int  # greedy tokens decoded per timing (batch 1)
    speed_shape: tuple[int, int, int]  # (n_layer, n_head, n_embd) of a larger Llama, random weights, timed only
    repeats: int = 2  # timings: the best of this many


RUNS = {
    "full": DecodingRun(kv_shape=(8, 8, 512), kv_heads=(8, 2, 1), kv_prompt=1536, kv_new=128, kv_batch=8,
                        quant_chars=100_000, quant_new=256, speed_shape=(12, 12, 768), repeats=3),
    "fast": DecodingRun(kv_shape=(4, 8, 256), kv_heads=(8, 2, 1), kv_prompt=256, kv_new=24, kv_batch=8,
                        quant_chars=20_000, quant_new=64, speed_shape=(6, 6, 384)),
}
ATTENTION_NAMES = {1: "multi-query"}


def attention_name(n_kv_head: int, n_head: int) -> str:
    return "multi-head" if n_kv_head == n_head else ATTENTION_NAMES.get(n_kv_head, f"grouped ({n_kv_head} kv heads)")


@torch.no_grad()
def kv_cache_rows(run: DecodingRun, vocab_size: int = 65, device=None, seed: int = 0) -> list[dict]:
    """One row per entry of ``run.kv_heads``: ``name``, ``n_kv_head``, ``computed`` and ``measured`` bytes of cache
    per token (float32), ``cache_mib`` for the batch's prompts, ``params`` and ``tokens_per_second`` (greedy, the
    whole batch, after a prompt of ``kv_prompt`` tokens). Random weights: speed does not depend on them."""
    L, H, C = run.kv_shape
    rows = []
    for n_kv in run.kv_heads:
        torch.manual_seed(seed)
        config = LlamaConfig(vocab_size=vocab_size, block_size=run.kv_prompt + run.kv_new, n_layer=L, n_head=H,
                             n_kv_head=n_kv, n_embd=C)
        model = Llama(config).to(device or "cpu").eval()
        prompt = torch.randint(vocab_size, (run.kv_batch, run.kv_prompt), device=device_of(model))
        cache = model.make_cache()
        model(prompt, cache=cache)
        stored = (cache.k.numel() * cache.k.element_size() + cache.v.numel() * cache.v.element_size())
        rows.append({"name": attention_name(n_kv, H), "n_kv_head": n_kv, "computed": config.kv_bytes_per_token(),
                     "measured": stored / (run.kv_batch * cache.max_len),
                     "cache_mib": config.kv_bytes_per_token() * run.kv_batch * run.kv_prompt / 2**20,
                     "params": model.num_params(),
                     "tokens_per_second": tokens_per_second(model, prompt, run.kv_new, run.repeats)})
    return rows


def variants(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The model's weights as float32, bfloat16 and int8 (weight-only, per-row scales), each a copy in eval mode."""
    return {"float32": copy.deepcopy(model).float().eval(), "bfloat16": copy.deepcopy(model).to(torch.bfloat16).eval(),
            "int8": quantize_int8(copy.deepcopy(model).float())}


@torch.no_grad()
def top1(model: torch.nn.Module, windows: torch.Tensor) -> torch.Tensor:
    """The most likely next token at every position of ``windows`` (N, T): (N, T)."""
    was_training = model.training
    model.eval()
    out = torch.cat([model(windows[i : i + 64])[0].argmax(-1) for i in range(0, len(windows), 64)])
    model.train(was_training)
    return out


@torch.no_grad()
def quantization_rows(model: torch.nn.Module, val_data: torch.Tensor, run: DecodingRun, prompt: torch.Tensor,
                      bits: bool = True) -> list[dict]:
    """For each of :func:`variants`: ``dtype``, weight ``mib``, held-out ``bits`` per character on the first
    ``quant_chars`` held-out characters, greedy ``tokens_per_second`` at batch 1 from ``prompt`` (1, T), and
    ``agreement``: the share of the held-out positions where its most likely next token is the float32 model's.
    With ``bits=False`` (a model of random weights, timed only) ``bits`` and ``agreement`` are NaN."""
    rows, reference = [], None
    block = context_length(model)
    new = min(run.quant_new, block - prompt.size(1))
    held_out = val_data[: run.quant_chars]
    n = (len(held_out) - 1) // block
    if n < 1:
        raise ValueError(f"quant_chars={run.quant_chars} held-out characters do not fill one window of {block}.")
    windows = held_out[: n * block].view(n, block).to(device_of(model))  # (N, T)
    for dtype, variant in variants(model).items():
        agreement = math.nan
        if bits:  # a random model's scores say nothing: it is timed only
            choice = top1(variant, windows)
            reference = choice if reference is None else reference
            agreement = float((choice == reference).float().mean())
        rows.append({"dtype": dtype, "mib": weight_bytes(variant) / 2**20,
                     "bits": split_loss(variant, held_out, block) / math.log(2) if bits else math.nan,
                     "tokens_per_second": tokens_per_second(variant, prompt, new, run.repeats),
                     "agreement": agreement})
    return rows


def plot_quantization(tables: dict[str, list[dict]], axes=None):
    """Held-out bits per character against tokens per second, one marker per dtype and one colour per model."""
    import matplotlib.pyplot as plt

    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    markers = {"float32": "o", "bfloat16": "s", "int8": "^"}
    for i, (name, rows) in enumerate(tables.items()):
        for r in rows:
            axes[0].scatter(r["tokens_per_second"], r["bits"], marker=markers[r["dtype"]], color=f"C{i}", s=50,
                            label=f"{name}, {r['dtype']}")
        axes[1].bar([f"{name}\n{r['dtype']}" for r in rows], [r["mib"] for r in rows], color=f"C{i}")
    axes[0].set(xlabel="greedy tokens per second (batch 1)", ylabel="held-out bits per character")
    axes[0].grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    axes[1].set(ylabel="weights read per token (MiB)")
    axes[1].tick_params(axis="x", labelsize=7)
    return axes


def cache_facts(table: list[dict], run: DecodingRun) -> str:
    """The cache comparison in sentences: bytes per token (formula and measurement), and the speed each gives."""
    mha, mqa = table[0], table[-1]
    agree = all(r["measured"] == r["computed"] for r in table)
    speed = mqa["tokens_per_second"] / mha["tokens_per_second"]
    return (f"{mha['name'].capitalize()} attention keeps {mha['computed']:,} bytes a token, {mqa['name']} "
            f"{mqa['computed']:,}: {mha['computed'] / mqa['computed']:.0f} times less, "
            + ("exactly what the caches filled by the prompts hold. " if agree else
               "and the caches the prompts filled hold " + and_list(f"{r['measured']:,.0f}" for r in table) + ". ")
            + f"Decoding {run.kv_batch} sequences after prompts of {run.kv_prompt:,} tokens, {mqa['name']} attention "
            f"runs at {mqa['tokens_per_second']:,.0f} tokens a second against {mha['tokens_per_second']:,.0f}, "
            f"{speed:.2f} times the speed: {than(speed, 1.0, 'slower', 'faster', 0.05).data}.")


def quantization_facts(tables: dict[str, list[dict]]) -> str:
    """Per model: what bfloat16 and int8 cost in held-out bits per character and give in bytes and speed."""
    sentences = []
    for name, rows in tables.items():
        base = rows[0]
        parts = []
        for r in rows[1:]:
            loss = ("" if math.isnan(r["bits"]) else f"{r['bits'] - base['bits']:+.4f} bits per character, ")
            same = ("" if math.isnan(r["agreement"]) else
                    f" (the same most likely next token as float32 at {r['agreement']:.1%} of the positions)")
            parts.append(f"{r['dtype']} {loss}{base['mib'] / r['mib']:.1f} times fewer bytes and "
                         f"{r['tokens_per_second'] / base['tokens_per_second']:.2f} times the tokens a second{same}")
        sentences.append(f"{capital(name)}: " + "; ".join(parts) + ".")
    return " ".join(sentences)
