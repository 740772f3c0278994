"""Chapter 7's sweep of GPT sizes, and its reference recipe.

``SWEEP`` trains GPTs of at least five sizes, spanning more than 30 times in parameters, on the same characters
for the same number of steps (:func:`size_sweep`); :func:`power_law` fits the falling stretch of the losses.
``REFERENCE`` and :func:`record_cpu` record the sweep at a larger budget (``python -m lmbook.runs.reference record
ch07``), which the chapter plots with its fit (:func:`plot_reference_sweep`, :func:`reference_sweep_facts`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..text.data import RandomBatches
from ..models.gpt import GPT
from ..interface import num_params
from ..evaluation.metrics import split_loss
from ..runtime import get_device
from .common import Settings, trainer
from .common import GPTRun, make_char_gpt


def flops_per_token(model: GPT, seq_len: int | None = None) -> int:
    """Training FLOPs per token of a GPT: 6·N for the weights plus 12·L·T·C for attention scores and mixing
    (the sweep's compute axis; the benchmarks' utilisation).

    N leaves out the position table: a table lookup multiplies nothing (Kaplan et al., 2020, count the same way).
    """
    c = model.config
    T = seq_len or c.block_size
    return 6 * (num_params(model) - model.wpe.weight.numel()) + 12 * c.n_layer * T * c.n_embd


# --- Which model size: the sweep -------------------------------------------------------------
@dataclass(frozen=True)
class SizeSweep(Settings):
    """GPT shapes ``(n_layer, n_head, n_embd)``, smallest first, all trained as ``base`` says on the same data."""

    base: GPTRun  # all but the shape, which each of ``shapes`` sets: context, batches, steps, learning rate
    shapes: tuple[tuple[int, int, int], ...]
    train_chars: int | None  # the training data: the first train_chars characters of the training split (None: all)

    def runs(self) -> list[GPTRun]:
        return [self.base.replace(n_layer=L, n_head=H, n_embd=C) for L, H, C in self.shapes]


SWEEP = {
    # a GPU: from 0.1M to 25M parameters, 2,000 steps of 64 windows of 256 on the whole training split
    "full": SizeSweep(
        base=GPTRun(n_layer=2, n_head=2, n_embd=64, block_size=256, dropout=0.0, batch_size=64, max_steps=2000,
                    lr=2e-3, min_lr=0.0, warmup_steps=100, schedule="linear", weight_decay=0.1, beta2=0.99,
                    eval_interval=250, eval_iters=10),
        shapes=((2, 2, 64), (2, 4, 128), (4, 4, 192), (4, 8, 256), (6, 6, 384), (8, 8, 512)),
        train_chars=None,
    ),
    # two CPU cores: from 5 thousand to 0.23M parameters (the largest is chapter 3's fast shape), 300 steps of 16
    # windows of 32 on the first 20,000 characters, so that each character is read several times over
    "fast": SizeSweep(
        base=GPTRun(n_layer=1, n_head=2, n_embd=16, block_size=32, dropout=0.0, batch_size=16, max_steps=300,
                    lr=5e-3, min_lr=0.0, warmup_steps=30, schedule="linear", weight_decay=0.1, beta2=0.99,
                    eval_interval=100, eval_iters=2),
        shapes=((1, 2, 16), (1, 4, 32), (2, 4, 48), (2, 4, 64), (2, 4, 96)),
        train_chars=20_000,
    ),
}


def non_embedding_params(model: GPT) -> int:
    """Parameters outside the token and position tables: the N of Kaplan et al. (2020)."""
    return num_params(model) - model.wte.weight.numel() - model.wpe.weight.numel()


def size_sweep(sweep: SizeSweep, train_data: torch.Tensor, val_data: torch.Tensor, vocab_size: int,
               device=None, seed: int = 0, rec=None) -> list[dict]:
    """Train one GPT per shape of ``sweep`` on the same data with the same steps; one dict of results per size.

    Each dict holds the shape, ``params`` (the book's count), ``non_embedding`` (Kaplan's N), ``tokens`` seen,
    training ``flops`` (:func:`flops_per_token` times tokens), the loss over the whole validation split
    (``val_loss``) and over as many training characters (``train_loss``), seconds and the :class:`History`
    (evaluated on random training and validation windows along the way). In a reference recipe, ``rec`` (a
    :class:`~lmbook.runs.recording.Recording`) trains each size resumably and computes its losses once.
    """
    device = device or get_device()
    data = train_data[: sweep.train_chars] if sweep.train_chars else train_data
    results = []
    for run in sweep.runs():
        model = make_char_gpt(run, vocab_size, device, seed)
        evaluation = {"train": RandomBatches(data, run.block_size, 64, device, seed=seed + 1),
                      "val": RandomBatches(val_data, run.block_size, 64, device, seed=seed + 2)}
        batches = RandomBatches(data, run.block_size, run.batch_size, device, seed=seed)
        config = run.train_config(seed=seed, desc=f"{num_params(model):,} parameters")
        label = "size {} {} {}".format(run.n_layer, run.n_head, run.n_embd)
        history = trainer(rec, label)(model, batches, config, evaluation)
        tokens = history.tokens_per_step * run.max_steps

        def losses() -> dict:
            return {"train_loss": split_loss(model, data[: len(val_data)], run.block_size),
                    "val_loss": split_loss(model, val_data, run.block_size)}

        results.append({
            "shape": (run.n_layer, run.n_head, run.n_embd),
            "params": num_params(model),
            "non_embedding": non_embedding_params(model),
            "tokens": tokens,
            "flops": flops_per_token(model, run.block_size) * tokens,
            **(losses() if rec is None else rec.compute(f"losses {label}", losses)),
            "seconds": history.seconds,
            "history": history,
        })
    return results


def power_law(params: list[float], losses: list[float]) -> dict | None:
    """``L = c * N^-alpha`` fitted by least squares in log-log to the sizes up to the one with the lowest loss (the
    falling stretch): ``{"alpha", "c", "upto"}`` (``upto``: how many sizes it used), or ``None`` when the smallest
    size is already the lowest and nothing falls."""
    best = min(range(len(losses)), key=losses.__getitem__)
    if best < 1:
        return None
    slope, intercept = np.polyfit(np.log(params[: best + 1]), np.log(losses[: best + 1]), 1)
    return {"alpha": float(-slope), "c": float(np.exp(intercept)), "upto": best + 1}


def show_sweep(sizes: list[dict], alpha: float):
    """Print the sweep's rows (:func:`size_sweep`) and draw them: held-out and training loss against parameters,
    with Kaplan et al. (2020)'s slope (exponent ``alpha``) drawn through the smallest model, and held-out loss
    against training compute. Returns both axes."""
    import matplotlib.pyplot as plt

    print(f"{'shape (L, heads, C)':>20} {'parameters':>11} {'tokens/param':>12} {'FLOPs':>9} {'train loss':>10} "
          f"{'val loss':>9} {'gap':>6} {'seconds':>7}")
    for r in sizes:
        print(f"{str(r['shape']):>20} {r['params']:>11,} {r['tokens'] / r['params']:>12.2f} {r['flops']:>9.1e} "
              f"{r['train_loss']:>10.3f} {r['val_loss']:>9.3f} {r['val_loss'] - r['train_loss']:>6.3f} "
              f"{r['seconds']:>7.0f}")
    params, val = np.array([r["params"] for r in sizes]), np.array([r["val_loss"] for r in sizes])
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
    ax.loglog(params, val, "o-", label="validation split (held out)")
    ax.loglog(params, [r["train_loss"] for r in sizes], "s--", label="training characters")
    ax.loglog(params, val[0] * (params / params[0]) ** -alpha, ":", color="gray",
              label=f"Kaplan et al. (2020)'s slope, $N^{{-{alpha}}}$ (their data;\ndrawn through our smallest model)")
    ax.set(xlabel="parameters", ylabel="loss (nats per character)")
    ax.legend(fontsize=8)
    bx.loglog([r["flops"] for r in sizes], val, "o-")
    for r in sizes:
        bx.annotate(f"{r['params']:,}", (r["flops"], r["val_loss"]), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    bx.set(xlabel="training compute (FLOPs)", ylabel="validation loss (nats per character)")
    for a in (ax, bx):
        a.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return ax, bx


def sweep_facts(sizes: list[dict], sweep: SizeSweep, train_chars: int) -> dict:
    """What chapter 7 says of the sweep (:func:`size_sweep`'s rows, trained on ``train_chars`` characters): its
    span, the best size and whether larger ones stopped paying, the book's own exponent (:func:`power_law`), the
    gap between held-out and training loss by size, and the characters each size read per parameter."""
    from ..display.show import md, than, trend

    params = [r["params"] for r in sizes]
    val = [r["val_loss"] for r in sizes]
    gaps = [r["val_loss"] - r["train_loss"] for r in sizes]
    best = min(range(len(val)), key=val.__getitem__)
    last = best == len(sizes) - 1
    fit = power_law(params, val)
    return {
        "sweep_sizes": len(sizes), "sweep_smallest": int(params[0]), "sweep_largest": int(params[-1]),
        "sweep_span": params[-1] / params[0], "sweep_steps": sweep.base.max_steps, "sweep_chars": train_chars,
        "sweep_tokens": sizes[0]["tokens"], "sweep_epochs": sizes[0]["tokens"] / train_chars,
        "sweep_best_params": int(params[best]), "sweep_best_loss": float(val[best]),
        "sweep_verdict": md("The largest model is the best on held-out text: within this budget of data and steps, "
                            "no size of the sweep has yet reached the point where more parameters stop paying."
                            if last else f"Beyond {int(params[best]):,} parameters the held-out loss stops falling: "
                            f"the larger models end at {', '.join(f'{v:.3f}' for v in val[best + 1:])}."),
        "sweep_fit": md(f"Fitted on the sizes up to that one, the book's own points fall as $N^{{-{fit['alpha']:.3f}}}$"
                        if fit else "The smallest model is already the best, so there is no falling stretch to fit a "
                        "power to"),
        "sweep_gap_small": float(gaps[0]), "sweep_gap_large": float(gaps[-1]),
        "sweep_gap_trend": trend({f"{p:,} parameters": g for p, g in zip(params, gaps)}),
        "sweep_gap_change": md(f"{than(float(gaps[-1]), float(gaps[0]), 'shrinks', 'grows').data}, from "
                               f"{gaps[0]:.3f} to {gaps[-1]:.3f} nats"),
        "sweep_tpp_small": sizes[0]["tokens"] / params[0], "sweep_tpp_large": sizes[-1]["tokens"] / params[-1],
        "sweep_pay_off": md("within this budget the largest model is still the best, so size still pays off here; "
                            "beyond it, more (and new) text rather than more steps over the same text is what such a "
                            "model needs" if last else "here the larger ones no longer pay off: they would need more "
                            "(and new) text, not more steps over the same text"),
    }


def reference_sweep_facts(record) -> dict:
    """What chapter 7 says of its reference sweep (``lmbook.runs.reference.load("ch07")``, or ``None``): the sizes,
    the budget, the best size, the fitted exponent and ``reference_sweep_verdict``, the sentences."""
    from IPython.display import Markdown

    if record is None:
        return {"reference_sweep_verdict": Markdown(
            "No reference sweep is recorded in this copy of the book: "
            "`python -m lmbook.runs.reference record ch07` makes one (under half an hour on two CPU cores).")}
    sizes = record.results["sizes"]
    params, val = [r["params"] for r in sizes], [r["val_loss"] for r in sizes]
    best = min(range(len(val)), key=val.__getitem__)
    fit = power_law(params, val)
    text = (f"The reference sweep ({record.describe()}) trained {len(sizes)} sizes, from {params[0]:,} to "
            f"{params[-1]:,} parameters, each reading {sizes[0]['tokens']:,} training characters. The lowest "
            f"held-out loss, {val[best]:.3f} nats per character, belongs to the model of {params[best]:,} parameters"
            + ("; it is the largest, so within this budget more parameters still paid." if best == len(sizes) - 1
               else f"; the larger ones end at {', '.join(f'{v:.3f}' for v in val[best + 1:])}.")
            + (f" Fitted to the {fit['upto']} sizes up to it, the loss falls as $N^{{-{fit['alpha']:.3f}}}$."
               if fit else " The smallest is already the lowest, so no falling stretch can be fitted."))
    return {"reference_sweep_verdict": Markdown(text), "reference_sweep_alpha": fit["alpha"] if fit else float("nan"),
            "reference_sweep_best": params[best]}


def plot_reference_sweep(record, sizes: list[dict] | None = None, ax=None):
    """Held-out loss against parameters: the reference sweep's points with the fitted power law over them, and the
    reader's own sweep (``sizes``, from :func:`size_sweep`) beside them."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4))
    if sizes:
        ax.loglog([r["params"] for r in sizes], [r["val_loss"] for r in sizes], "s--", label="your sweep")
    if record is not None:
        points = record.results["sizes"]
        params, val = [r["params"] for r in points], [r["val_loss"] for r in points]
        ax.loglog(params, val, "o-", label=f"reference sweep ({record.level})")
        if (fit := power_law(params, val)) is not None:
            xs = np.geomspace(params[0], params[fit["upto"] - 1], 50)
            ax.loglog(xs, fit["c"] * xs ** -fit["alpha"], ":", color="black",
                      label=f"fit: $L = {fit['c']:.2f}\\,N^{{-{fit['alpha']:.3f}}}$")
        ax.set_title(record.describe(), fontsize=9)
    ax.set(xlabel="parameters", ylabel="held-out loss (nats per character)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return ax


# --- The reference recipe: the size sweep at a larger budget -----------------------------------------
RECIPE_VERSION = "1"  # change it when the recipe's code changes what it records
# Two CPU cores, under half an hour: seven sizes from 5 thousand to 1.8 M parameters (the fast sweep's five, then
# chapter 3's CPU reference shape and a wider one), each 1,000 steps of 32 windows of 64 characters on the whole
# training split (2 M characters, about two passes). benchmarks/NOTES.md has the measured speeds behind it.
CPU_SWEEP = SizeSweep(
    base=GPTRun(n_layer=1, n_head=2, n_embd=16, block_size=64, dropout=0.0, batch_size=32, max_steps=1000,
                lr=5e-3, min_lr=0.0, warmup_steps=50, schedule="linear", weight_decay=0.1, beta2=0.99,
                eval_interval=100, eval_iters=4),
    shapes=((1, 2, 16), (1, 4, 32), (2, 4, 48), (2, 4, 64), (2, 4, 96), (4, 4, 128), (4, 4, 192)),
    train_chars=None,
)
REFERENCE = {"gpu": SWEEP["full"], "cpu": CPU_SWEEP}
_TINY = SWEEP["fast"].replace(base=SWEEP["fast"].base.replace(block_size=8, batch_size=2, max_steps=3, warmup_steps=1,
                                                              eval_interval=3, eval_iters=1),
                              shapes=((1, 2, 8), (1, 2, 16)), train_chars=2_000)
SMOKE = {"gpu": _TINY, "cpu": _TINY}  # the same recipes in seconds, for the tests


def record_gpu(rec) -> None:
    """Chapter 7's reference: the size sweep at a larger budget, each size's curves and whole-split losses.

    Recorded by ``python -m lmbook.runs.reference record ch07 --level cpu`` (two CPU cores) or ``--level gpu`` (the
    full size) into ``lmbook/references/ch07-<level>.json``; the chapter fits its power law to the points.
    """
    from ..text.data import shakespeare_chars

    tokenizer, train_data, val_data = shakespeare_chars()
    sizes = size_sweep(rec.settings, train_data, val_data, tokenizer.vocab_size, rec.device, rec=rec)
    rec.result("sizes", [{**{k: v for k, v in r.items() if k != "history"}, "shape": list(r["shape"])}
                         for r in sizes])


record_cpu = record_gpu  # one recipe, two sizes
