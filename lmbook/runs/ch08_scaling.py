"""Chapter 8's scaling grid: Llama-style models of several sizes, each trained on several token budgets, and the
fit of Hoffmann et al. (2022)'s law to their held-out losses.

:func:`scaling_grid` trains every (size, budget) pair from scratch, each with its own full learning-rate schedule
(a run cut short of its schedule would overstate the loss at the smaller budgets, the trap Hoffmann et al. point
out in Kaplan et al.'s fits). The reference recipe (``python -m lmbook.runs.reference record ch08-scaling``)
records the grid; the chapter fits :class:`~lmbook.evaluation.scaling.ScalingLaw` to the recorded points with
:func:`grid_fit` and draws them with :func:`plot_grid` and :func:`plot_iso_flops`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..evaluation.metrics import split_loss
from ..evaluation.scaling import HOFFMANN, ScalingLaw, bootstrap_fits, fit_scaling_law, interval
from ..interface import num_params
from ..runtime import get_device
from ..text.data import RandomBatches
from .common import GPTRun, Settings, make_char_llama, trainer


@dataclass(frozen=True)
class ScalingGrid(Settings):
    """Model shapes ``(n_layer, n_head, n_embd)`` times training budgets in steps; ``base`` sets everything else
    (context, batch, learning rate, warm-up as a share of each run's steps)."""

    base: GPTRun
    shapes: tuple[tuple[int, int, int], ...]
    steps: tuple[int, ...]  # each budget is a run of its own, with its own schedule
    warmup_share: float = 0.05
    eval_chars: int | None = None  # held-out characters each run is scored on (None: the whole split)

    def runs(self) -> list[GPTRun]:
        return [self.base.replace(n_layer=L, n_head=H, n_embd=C, max_steps=s,
                                  warmup_steps=max(1, round(self.warmup_share * s)), eval_interval=s)
                for L, H, C in self.shapes for s in self.steps]


def label_of(run: GPTRun) -> str:
    return f"L{run.n_layer} H{run.n_head} C{run.n_embd} steps {run.max_steps}"


def scaling_grid(grid: ScalingGrid, train_data: torch.Tensor, val_data: torch.Tensor, vocab_size: int,
                 device=None, seed: int = 0, rec=None) -> list[dict]:
    """Train one Llama per (shape, budget) of ``grid``; a dict per run: ``shape``, ``params`` (N, every weight),
    ``non_embedding`` (N without the token table), ``tokens`` (D, characters read), ``flops`` (6·N·D), ``val_loss``
    (nats per character over the held-out text, in windows of the context) and ``seconds``. With ``rec`` (a
    :class:`~lmbook.runs.recording.Recording`) each run trains and is scored resumably."""
    device = device or get_device()
    held_out = val_data[: grid.eval_chars] if grid.eval_chars else val_data
    results = []
    for run in grid.runs():
        model = make_char_llama(run, vocab_size, device, seed)
        batches = RandomBatches(train_data, run.block_size, run.batch_size, device, seed=seed)
        label = label_of(run)
        history = trainer(rec, label)(model, batches, run.train_config(seed=seed, desc=label), None)
        loss = (lambda: split_loss(model, held_out, run.block_size))
        params = num_params(model)
        tokens = history.tokens_per_step * run.max_steps
        results.append({"shape": [run.n_layer, run.n_head, run.n_embd], "steps": run.max_steps, "params": params,
                        "non_embedding": params - model.embed_tokens.weight.numel(), "tokens": tokens,
                        "flops": 6 * params * tokens,
                        "val_loss": loss() if rec is None else rec.compute(f"loss {label}", loss),
                        "seconds": history.seconds})
    return results


def grid_arrays(points: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """N, D and L of the grid's runs as arrays."""
    return tuple(np.array([p[key] for p in points], dtype=float) for key in ("params", "tokens", "val_loss"))


def grid_fit(points: list[dict], n_boot: int = 200, seed: int = 0) -> dict:
    """The law fitted to the grid's runs, ``n_boot`` bootstrap refits, and what the chapter reads off them: the
    fitted law (``law``), 90% intervals of α, β and E (``intervals``), and the compute-optimal tokens per parameter
    at the grid's largest compute, with its interval (``tokens_per_param``, ``tokens_per_param_interval``)."""
    N, D, L = grid_arrays(points)
    law = fit_scaling_law(N, D, L)
    fits = bootstrap_fits(N, D, L, law, n=n_boot, seed=seed)
    C = float((6 * N * D).max())

    def ratio(f: ScalingLaw) -> float:
        n_opt, d_opt = f.compute_optimal(C)
        return d_opt / n_opt

    ratios = [r for r in map(ratio, fits) if math.isfinite(r)]
    return {"law": law, "fits": fits, "compute": C, "tokens_per_param": ratio(law),
            "tokens_per_param_interval": interval(ratios),
            "intervals": {name: interval(getattr(f, name) for f in fits) for name in ("alpha", "beta", "E")}}


CHINCHILLA_FLOPS = 5.76e23  # the compute of Chinchilla's own training run (Hoffmann et al., 2022)


def scaling_facts(points: list[dict], found: dict) -> dict:
    """The numbers the chapter quotes from a grid and its fit (:func:`grid_fit`): the grid's span, the fitted
    constants with their intervals, and tokens per parameter at the compute-optimal split, from our fit and
    from Hoffmann et al.'s published constants at our compute and at Chinchilla's."""
    N, D, L = grid_arrays(points)
    law, iv = found["law"], found["intervals"]
    paper = ScalingLaw(**HOFFMANN)

    def ratio(f: ScalingLaw, C: float) -> float:
        n_opt, d_opt = f.compute_optimal(C)
        return d_opt / n_opt

    low, high = found["tokens_per_param_interval"]
    return {"grid_runs": len(points), "grid_sizes": len(set(N)), "grid_budgets": len(set(D)),
            "grid_n_min": int(N.min()), "grid_n_max": int(N.max()), "grid_d_min": int(D.min()),
            "grid_d_max": int(D.max()), "grid_tpp_min": float((D / N).min()), "grid_tpp_max": float((D / N).max()),
            "fit_E": law.E, "fit_A": law.A, "fit_B": law.B, "fit_alpha": law.alpha, "fit_beta": law.beta,
            "fit_alpha_low": iv["alpha"][0], "fit_alpha_high": iv["alpha"][1], "fit_beta_low": iv["beta"][0],
            "fit_beta_high": iv["beta"][1], "fit_E_low": iv["E"][0], "fit_E_high": iv["E"][1],
            "fit_compute": found["compute"], "fit_tpp": found["tokens_per_param"], "fit_tpp_low": low,
            "fit_tpp_high": high, "fit_n_opt": law.compute_optimal(found["compute"])[0],
            "paper_tpp_here": ratio(paper, found["compute"]), "paper_tpp_chinchilla": ratio(paper, CHINCHILLA_FLOPS),
            "chinchilla_flops": CHINCHILLA_FLOPS, "fit_worst_error": float(np.abs(law.loss(N, D) / L - 1).max())}


def scaling_summary(facts: dict, source: str) -> str:
    """The grid and its fit in sentences, from :func:`scaling_facts` of the record described by ``source``."""
    f = facts
    return (f"The grid ({source}) holds {f['grid_runs']} runs: {f['grid_sizes']} sizes from {f['grid_n_min']:,} to "
            f"{f['grid_n_max']:,} parameters times {f['grid_budgets']} budgets from {f['grid_d_min']:,} to "
            f"{f['grid_d_max']:,} characters, from {f['grid_tpp_min']:.1f} to {f['grid_tpp_max']:.0f} characters per "
            f"parameter. The fit is $E$ = {f['fit_E']:.2f} nats per character (90% interval {f['fit_E_low']:.2f} to "
            f"{f['fit_E_high']:.2f}), $\\alpha$ = {f['fit_alpha']:.2f} ({f['fit_alpha_low']:.2f} to "
            f"{f['fit_alpha_high']:.2f}) and $\\beta$ = {f['fit_beta']:.2f} ({f['fit_beta_low']:.2f} to "
            f"{f['fit_beta_high']:.2f}); it misses no run by more than {f['fit_worst_error']:.1%} of its loss. At the "
            f"grid's largest compute, {f['fit_compute']:.1e} FLOPs, the fitted law is lowest at about "
            f"{f['fit_tpp']:.0f} characters per parameter (a 90% interval of {f['fit_tpp_low']:.0f} to "
            f"{f['fit_tpp_high']:.0f} over the resampled fits); Hoffmann et al.'s published constants give "
            f"{f['paper_tpp_here']:.0f} at the same compute.")


def plot_grid(points: list[dict], law: ScalingLaw | None = None, ax=None):
    """Held-out loss against tokens read, one line per model size, with the fitted law's curves dashed."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4))
    for i, params in enumerate(sorted({p["params"] for p in points})):
        row = sorted((p for p in points if p["params"] == params), key=lambda p: p["tokens"])
        D = np.array([p["tokens"] for p in row], dtype=float)
        ax.loglog(D, [p["val_loss"] for p in row], "o", color=f"C{i}", label=f"N = {params:,}")
        if law is not None:
            xs = np.geomspace(D[0], D[-1], 50)
            ax.loglog(xs, law.loss(float(params), xs), "--", color=f"C{i}", lw=1)
    ax.set(xlabel="training characters D", ylabel="held-out loss (nats per character)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return ax


def plot_iso_flops(points: list[dict], law: ScalingLaw, budgets: int = 4, ax=None):
    """The law's loss against N along curves of constant compute C = 6ND (iso-FLOP curves), each curve's minimum
    marked (the compute-optimal size), with the grid's runs placed at their own compute's colour."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4))
    N, D, L = grid_arrays(points)
    C = 6 * N * D
    levels = np.geomspace(C.min(), C.max(), budgets)
    for i, c in enumerate(levels):
        ns = np.geomspace(N.min() / 3, N.max() * 3, 200)
        ax.semilogx(ns, law.loss(ns, c / (6 * ns)), color=f"C{i}", label=f"C = {c:.1e} FLOPs")
        n_opt, d_opt = law.compute_optimal(float(c))
        ax.plot(n_opt, law.loss(n_opt, d_opt), "*", color=f"C{i}", ms=12)
    ax.scatter(N, L, c=np.log10(C), cmap="viridis", s=18, zorder=3, label="the grid's runs")
    ax.set(xlabel="parameters N", ylabel="loss (nats per character)",
           ylim=(min(L.min(), law.E) * 0.97, L.max() * 1.05))
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return ax


# --- The reference recipe ------------------------------------------------------------------------------
RECIPE_VERSION = "1"  # change it when the recipe's code changes what it records
_BASE = GPTRun(n_layer=1, n_head=2, n_embd=32, block_size=64, dropout=0.0, batch_size=16, max_steps=150, lr=5e-3,
               min_lr=0.0, warmup_steps=8, schedule="linear", weight_decay=0.1, beta2=0.99, eval_interval=150,
               eval_iters=1)
# Two CPU cores, about 20 minutes: 4 sizes from 15 thousand to 0.8 M parameters times 5 budgets from 150 to 2,400
# steps of 16 windows of 64 characters (0.15 M to 2.5 M characters, a little over one pass of the training split at
# the largest), from about 0.2 to 160 characters per parameter.
CPU_GRID = ScalingGrid(base=_BASE, shapes=((1, 2, 32), (2, 4, 64), (3, 4, 96), (4, 4, 128)),
                       steps=(150, 300, 600, 1200, 2400))
# A GPU: 5 sizes up to 19 M parameters, budgets of 64 windows of 256 characters, 200 to 3,200 steps
GPU_GRID = ScalingGrid(base=_BASE.replace(block_size=256, batch_size=64, lr=2e-3),
                       shapes=((2, 4, 64), (4, 4, 128), (4, 8, 256), (6, 6, 384), (8, 8, 512)),
                       steps=(200, 400, 800, 1600, 3200))
REFERENCE = {"gpu": GPU_GRID, "cpu": CPU_GRID}
_TINY = ScalingGrid(base=_BASE.replace(block_size=8, batch_size=2), shapes=((1, 2, 8), (1, 2, 16)), steps=(2, 3, 4),
                    eval_chars=2_000)
SMOKE = {"gpu": _TINY, "cpu": _TINY}  # the same recipe in seconds, for the tests


def record_cpu(rec) -> None:
    """Chapter 8's scaling grid: every (size, budget) run's N, D and held-out loss, into
    ``lmbook/references/ch08-scaling-<level>.json``; the chapter fits the law to them."""
    from ..text.data import shakespeare_chars

    tokenizer, train_data, val_data = shakespeare_chars()
    grid = rec.settings
    # seconds a step, as measured on two cores: about 20 ms of overhead and 1 ms per 10^6 of L·C²·(B·T/1024)
    rec.plan({label_of(run): run.max_steps for run in grid.runs()},
             {label_of(run): 0.02 + run.n_layer * run.n_embd ** 2 * run.batch_size * run.block_size / 1024 * 1e-6
              for run in grid.runs()})
    points = scaling_grid(grid, train_data, val_data, tokenizer.vocab_size, rec.device, rec=rec)
    rec.result("grid", points)


record_gpu = record_cpu  # one recipe, two sizes
