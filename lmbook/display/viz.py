"""Plots the chapters show: loss curves of one or more runs, the reader's run beside a reference run,
attention heat maps and the cost of attention (chapter 3).

matplotlib only; every function draws on a given ``ax`` (or makes one) and returns it.
"""

from __future__ import annotations

import math
from typing import Mapping

import matplotlib.pyplot as plt

from ..training.history import History

AXES = ("step", "tokens", "seconds")  # what plot_history draws the losses against


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
    uniform: int | None = None,
    title: str | None = None,
    **style,
):
    """Training loss (faint) and evaluation losses (solid) of a run against steps, tokens or seconds.

    ``splits`` (one name or several; all by default) must have been evaluated; ``x="tokens"`` needs the history's
    ``tokens_per_step``. ``uniform``, a vocabulary size V, draws the loss of uniform guessing, ln V, as a dashed
    line. What cannot be drawn is refused before anything is drawn.
    """
    splits = _check_drawable(history, x, splits)
    ax = _ax(ax)
    _uniform(ax, uniform)
    scale = {"step": 1, "tokens": history.tokens_per_step}.get(x)
    prefix = f"{label} " if label else ""
    if train and history.steps and x != "seconds":
        line, = ax.plot([s * scale for s in history.steps], history.train_loss, alpha=0.3, lw=1,
                        label=f"{prefix}train (batch)", **style)
        style.setdefault("color", line.get_color())
    for split in splits:
        xs = history.eval_seconds if x == "seconds" else [s * scale for s in history.eval_steps]
        ax.plot(xs, history.eval_loss[split], marker="o", ms=3, label=f"{prefix}{split}", **style)
        style.pop("color", None)
    ax.set_xlabel({"step": "step", "tokens": "tokens seen", "seconds": "seconds of training"}[x])
    ax.set_ylabel("cross-entropy (nats per token)")
    ax.grid(alpha=0.3)
    ax.legend()
    if title is not None:
        ax.set_title(title)
    return ax


def _uniform(ax, vocab_size: int | None) -> None:
    """The loss of uniform guessing over ``vocab_size`` tokens, ln V, as a dashed line (nothing for ``None``)."""
    if vocab_size is None:
        return
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 2:
        raise ValueError(f"uniform must be a vocabulary size of at least 2, not {vocab_size!r}.")
    ax.axhline(math.log(vocab_size), color="gray", ls="--", lw=1, label="uniform guessing")


def _check_drawable(history: History, x: str, splits) -> tuple[str, ...]:
    """The splits to draw (a bare name is one split), once ``x`` and every split are known to be drawable."""
    if x not in AXES:
        raise ValueError(f"x must be one of {', '.join(map(repr, AXES))}, not {x!r}.")
    if x == "tokens" and not history.tokens_per_step:
        raise ValueError("x='tokens' needs the history's tokens_per_step, which this one does not record (0): "
                         "set history.tokens_per_step, or draw against x='step'.")
    if x == "seconds" and len(history.eval_seconds) != len(history.eval_steps):
        raise ValueError("x='seconds' needs the time of every evaluation (eval_seconds), which this history does not "
                         "record: draw against x='step'.")
    splits = (splits,) if isinstance(splits, str) else tuple(splits or history.eval_loss)
    unknown = [s for s in splits if s not in history.eval_loss]
    if unknown:
        raise ValueError(f"no evaluation on split(s) {unknown} in this history; choose splits among the ones "
                         f"recorded: {sorted(history.eval_loss)}.")
    return splits


def compare_histories(histories: Mapping[str, History], split: str = "val", x: str = "step", ax=None,
                      uniform: int | None = None, title: str | None = None):
    """One evaluation curve per run, on the same axes (e.g. RNN against LSTM against GPT); ``uniform`` and
    ``title`` as for :func:`plot_history` (the title is the split's loss by default)."""
    for history in histories.values():
        _check_drawable(history, x, (split,))  # every run, before any is drawn
    ax = _ax(ax)
    _uniform(ax, uniform)
    for name, history in histories.items():
        plot_history(history, ax=ax, label=name, splits=(split,), x=x, train=False)
    ax.set_title(f"{split} loss" if title is None else title)
    return ax


def plot_attention(weights, tokens: list[str], ax=None, title: str = ""):
    """One head's attention weights (T, T) as a heat map: row = query (the position predicting), column = key."""
    T = len(tokens)
    ax = _ax(ax, figsize=(0.22 * T + 1.5, 0.22 * T + 1))
    ax.imshow(weights[:T, :T].detach().cpu().float().numpy(), cmap="Blues", vmin=0, vmax=1)
    labels = [{" ": "␣", "\n": "⏎"}.get(t, t) for t in tokens]  # spaces and newlines made visible
    ax.set_xticks(range(T), labels, fontsize=7, family="monospace")
    ax.set_yticks(range(T), labels, fontsize=7, family="monospace")
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query")
    ax.set_title(title, fontsize=9)
    return ax


def plot_attention_grid(maps, tokens: list[str], heads: list[tuple[int, int]], columns: int = 2):
    """Heat maps of chosen (layer, head) pairs from ``maps`` (L, nh, T, T), as returned for one text."""
    rows = -(-len(heads) // columns)
    size = 0.16 * len(tokens) + 1.2
    fig, axes = plt.subplots(rows, columns, figsize=(columns * size, rows * size), squeeze=False)
    for ax, (layer, head) in zip(axes.flat, heads):
        plot_attention(maps[layer, head], tokens, ax=ax, title=f"layer {layer}, head {head}")
    for ax in axes.flat[len(heads):]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def plot_attention_cost(cost: Mapping, axes=None):
    """Time and memory of attention against sequence length (log-log), one line per implementation."""
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(10, 4))
    lengths = cost["lengths"]
    for name in ("written out", "fused (SDPA)"):
        axes[0].loglog(lengths, [s * 1e3 for s in cost[name]["seconds"]], marker="o", label=name)
        memory = cost[name]["bytes"]
        if all(m is not None for m in memory):
            axes[1].loglog(lengths, [m / 2**20 for m in memory], marker="o", label=name)
    quadratic = [cost["written out"]["seconds"][-1] * 1e3 * (t / lengths[-1]) ** 2 for t in lengths]
    axes[0].loglog(lengths, quadratic, ls=":", color="gray", label="∝ T²")
    axes[0].set_ylabel("milliseconds per call")
    measured = " (peak, CUDA)" if cost["device"].startswith("cuda") else " (score and weight tensors)"
    axes[1].set_ylabel("MiB" + measured)
    for ax in axes:
        ax.set_xlabel("sequence length T")
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    return axes


def plot_intervals(labels: list[str], series: Mapping[str, list[tuple[float, float, float]]], ax=None,
                   xlabel: str = "", zero: float | None = None, height: float = 0.32):
    """Dots with interval bars, one row per label, read across (chapters 6 and 7): ``series`` maps a name to one
    ``(value, low, high)`` per label (NaN bounds: a dot without a bar). Several series sit side by side within
    a row; ``zero`` draws a vertical line where there is no effect."""
    if not labels:
        raise ValueError("labels is empty: give one label per row to draw.")
    if not series:
        raise ValueError("series is empty: give at least one series of (value, low, high) per label.")
    for name, points in series.items():
        if len(points) != len(labels):
            raise ValueError(f"series {name!r} has {len(points)} points for {len(labels)} labels: give one per label.")
    ax = _ax(ax, figsize=(7, 1.0 + height * len(labels) * max(1, len(series) * 0.6)))
    offsets = [0.0] if len(series) == 1 else [0.3 * (i / (len(series) - 1) - 0.5) for i in range(len(series))]
    for offset, (name, points) in zip(offsets, series.items()):
        ys = [i + offset for i in range(len(labels))]
        values = [p[0] for p in points]
        lows = [p[0] - p[1] if p[1] == p[1] else 0.0 for p in points]  # NaN != NaN: no bar
        highs = [p[2] - p[0] if p[2] == p[2] else 0.0 for p in points]
        ax.errorbar(values, ys, xerr=[lows, highs], fmt="o", ms=4, capsize=3, label=name if len(series) > 1 else None)
    if zero is not None:
        ax.axvline(zero, color="gray", lw=1, ls="--")
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.invert_yaxis()  # the first label on top
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3, axis="x")
    if len(series) > 1:
        ax.legend(fontsize=8)
    return ax


def plot_reliability(results: Mapping[float, object], ax=None, title: str = ""):
    """Reliability diagrams (chapter 6): for each temperature, the share right against the mean confidence of each
    bin of :class:`~lmbook.evaluation.calibration.Reliability`, the diagonal where a calibrated model lies, and
    the ECE in the legend. ``results`` maps a temperature to a ``Reliability`` (or to a dict holding one under
    ``"reliability"``, as :func:`~lmbook.evaluation.calibration.by_temperature` returns)."""
    if not results:
        raise ValueError("results is empty: give at least one temperature's reliability diagram.")
    ax = _ax(ax, figsize=(5, 4.5))
    ax.plot([0, 1], [0, 1], color="gray", ls="--", lw=1, label="calibrated")
    for t, r in results.items():
        r = r["reliability"] if isinstance(r, Mapping) else r
        kept = [(c, a) for c, a, n in zip(r.confidence, r.accuracy, r.counts) if n]
        ax.plot([c for c, _ in kept], [a for _, a in kept], marker="o", ms=4, label=f"T = {t:g}, ECE {r.ece:.3f}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (probability of the top token)")
    ax.set_ylabel("share of positions where it was right")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return ax


def plot_timeline(milestones, ours: tuple[int, str] | None = None, since: float = 2016.5, floor: float = 1e5,
                  place: Mapping[str, tuple[float, float, str]] | None = None):
    """Parameters against first public release, in two panels (chapter 7): the whole history on the left, the
    years from ``since`` on the right, where most milestones crowd. Models tuned to follow instructions, and
    the ways of tuning them, in red; milestones without a parameter count as triangles at ``floor``, named in the
    panel that holds their year; ``ours``, a size and its label, as a dotted line. ``place`` moves a label
    that would sit on another: name -> (dx, dy in points, alignment). ``milestones`` are
    :class:`lmbook.runs.ch07_questions.Milestone` (``name``, ``date``, ``params``, ``kind``). Returns both axes."""
    place = place or {}
    fig, (whole, recent) = plt.subplots(1, 2, figsize=(13, 5), sharey=True, gridspec_kw={"width_ratios": [1, 1.7]})
    end = max(m.date for m in milestones) + 0.7
    for ax in (whole, recent):
        for m in milestones:
            red = m.kind in ("assistant", "method")  # tuned to follow instructions, or the way to tune
            ax.semilogy(m.date, m.params or floor, "o" if m.params else "v",
                        color="C3" if red else "C0" if m.params else "C1")
            dx, dy, ha = place.get(m.name, (5, -3, "left"))
            if m.params is None and (ax is whole) == (m.date < since):
                ax.annotate(m.name, (m.date, floor), fontsize=7, rotation=60, xytext=(-2, 6),
                            textcoords="offset points")
            elif m.params is not None and ax is recent:
                size = f"{m.params / 1e9:g}B" if m.params >= 1e9 else f"{m.params / 1e6:g}M"
                ax.annotate(f"{m.name} ({size})", (m.date, m.params), fontsize=7, xytext=(dx, dy), ha=ha,
                            textcoords="offset points")
        if ours is not None:
            ax.axhline(ours[0], color="C2", ls=":", label=ours[1])
        ax.set_xlabel("first public release")
        ax.grid(alpha=0.3, which="major")
    whole.axvspan(since, end, color="0.9")
    whole.set_ylim(floor / 3, 3e12)
    whole.set_ylabel("parameters")
    if ours is not None:
        whole.legend(loc="upper left", fontsize=8)
    recent.set_xlim(since, end)
    recent.set_title("since the Transformer (the shaded years on the left)", fontsize=9)
    fig.tight_layout()
    return whole, recent
