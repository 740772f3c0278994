"""Plots the chapters show: loss curves of one or more runs, the reader's run beside a reference run.

matplotlib only; every function draws on a given ``ax`` (or makes one) and returns it.
"""

from __future__ import annotations

from typing import Mapping

import matplotlib.pyplot as plt

from .train import History


def _ax(ax=None, figsize=(7, 4)):
    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


def plot_history(
    history: History,
    ax=None,
    label: str = "",
    splits: tuple[str, ...] | None = None,
    x: str = "step",
    train: bool = True,
    **style,
):
    """Training loss (faint) and evaluation losses (solid) of a run against steps, tokens or seconds."""
    ax = _ax(ax)
    scale = {"step": 1, "tokens": history.tokens_per_step}.get(x)
    prefix = f"{label} " if label else ""
    if train and history.steps and x != "seconds":
        line, = ax.plot([s * scale for s in history.steps], history.train_loss, alpha=0.3, lw=1, label=f"{prefix}train (batch)", **style)
        style.setdefault("color", line.get_color())
    for split in splits or tuple(history.eval_loss):
        xs = history.eval_seconds if x == "seconds" else [s * scale for s in history.eval_steps]
        ax.plot(xs, history.eval_loss[split], marker="o", ms=3, label=f"{prefix}{split}", **style)
        style.pop("color", None)
    ax.set_xlabel({"step": "step", "tokens": "tokens seen", "seconds": "seconds of training"}[x])
    ax.set_ylabel("cross-entropy (nats per token)")
    ax.grid(alpha=0.3)
    ax.legend()
    return ax


def compare_histories(histories: Mapping[str, History], split: str = "val", x: str = "step", ax=None):
    """One evaluation curve per run, on the same axes (e.g. RNN against LSTM against GPT)."""
    ax = _ax(ax)
    for name, history in histories.items():
        plot_history(history, ax=ax, label=name, splits=(split,), x=x, train=False)
    ax.set_title(f"{split} loss")
    return ax


def glue(name: str, value, display: bool = False) -> None:
    """Hand a number computed in a chapter to its prose (myst-nb's ``glue``); a no-op outside the book build.

    In the rendered book, ``{glue:text}`name:.2f``` in Markdown shows the value; in Colab or
    plain Jupyter, where myst-nb is absent, the value is simply not glued.
    """
    try:
        from myst_nb import glue as myst_glue
    except ImportError:
        return
    myst_glue(name, value, display=display)
