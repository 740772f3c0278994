"""Chapter 5's figures and tables: a distribution through the sampling filters, the degeneration table and its
figure, the cache's memory and speed, speculative decoding's table, and text coloured by the probability of each
token (beam search's tree is :func:`lmbook.display.diagrams.draw_beam_tree`). Sizes and numbers are written by
:func:`lmbook.display.show.size_text` and :func:`~lmbook.display.show.number_text`."""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import torch

from .show import number_text, size_text


def _label(tokenizer, token: int) -> str:
    return repr(tokenizer.decode([token]))[1:-1] or "·"


def plot_filters(stages: Mapping[str, torch.Tensor], tokenizer, top: int = 15, axes=None):
    """The ``top`` likeliest tokens of the first distribution, and their probability at every stage (one panel each)."""
    first = next(iter(stages.values()))
    order = first.argsort(descending=True)[:top].tolist()
    labels = [_label(tokenizer, t) for t in order]
    if axes is None:
        _, axes = plt.subplots(1, len(stages), figsize=(3.1 * len(stages), 3), sharey=True)
    for ax, (name, probs) in zip(axes, stages.items()):
        ax.bar(range(len(order)), probs[order].tolist(), color="tab:blue")
        kept = int((probs > 0).sum())
        ax.set_title(f"{name}\n{kept} of {len(probs)} tokens possible", fontsize=9)
        ax.set_xticks(range(len(order)), labels, fontsize=8, family="monospace")
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("probability")
    return axes


def plot_cache_speed(speeds: Mapping[str, Mapping[int, float]], ax=None):
    """Tokens per second against the number of tokens generated, one line per way of decoding."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    for name, by_length in speeds.items():
        ax.plot(list(by_length), list(by_length.values()), marker="o", label=name)
    ax.set(xlabel="tokens generated", ylabel="tokens per second", yscale="log")
    ax.grid(alpha=0.3)
    ax.legend()
    return ax


def tokens_html(pieces: Sequence, prompt: str = "") -> str:
    """Streamed tokens (``.text``, ``.probability``) as HTML, each on a background from red (unlikely) to green."""
    cmap = plt.get_cmap("RdYlGn")
    spans = [f'<span style="color:#555">{html.escape(prompt)}</span>']
    for piece in pieces:
        r, g, b, _ = cmap(0.15 + 0.7 * piece.probability)
        text = html.escape(piece.text).replace("\n", "↵<br>")
        spans.append(f'<span title="p = {piece.probability:.3f}" style="background:rgb({int(255 * r)},'
                     f'{int(255 * g)},{int(255 * b)})">{text}</span>')
    return '<pre style="white-space:pre-wrap;line-height:1.5">' + "".join(spans) + "</pre>"


def degeneration_table(results: Mapping[str, Mapping[str, float]], columns: Sequence[str]) -> str:
    """The degeneration scores as a Markdown table, one row a strategy (the human text last, as given)."""
    rows = ["| strategy | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    rows += [f"| {name} | " + " | ".join(number_text(r[c]) for c in columns) + " |" for name, r in results.items()]
    return "\n".join(rows)


def plot_degeneration(results: Mapping[str, Mapping[str, float]], columns: Sequence[str], reference: str = "human text",
                      axes=None):
    """One panel per score, a bar per strategy; the ``reference`` row in orange and as a dashed line."""
    names = list(results)
    if axes is None:
        _, axes = plt.subplots(1, len(columns), figsize=(3.2 * len(columns), 0.32 * len(names) + 1.2), sharey=True)
    for ax, column in zip(axes, columns):
        values = [results[n][column] for n in names]
        colours = ["tab:orange" if n == reference else "tab:blue" for n in names]
        ax.barh(range(len(names)), [v if math.isfinite(v) else 0.0 for v in values], color=colours)
        if reference in results and math.isfinite(results[reference][column]):
            ax.axvline(results[reference][column], color="tab:orange", ls="--", lw=1)
        ax.set_title(column, fontsize=10)
        ax.set_xlim(left=0)  # every score is at least 0; an empty panel still starts there
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(names)), names, fontsize=9)
    axes[0].invert_yaxis()
    return axes


def kv_cache_table(rows: Sequence[tuple[str, int, int, int, int]]) -> str:
    """(name, layers, width, bytes per token, context) rows as a Markdown table with the size of a full context."""
    lines = ["| model | layers | width | bytes per token | a full context |", "|---|---:|---:|---:|---:|"]
    for name, layers, width, per_token, context in rows:
        lines.append(f"| {name} | {layers} | {width} | {per_token:,} | {size_text(per_token * context)} "
                     f"({context:,} tokens) |")
    return "\n".join(lines)


def speculative_table(results: Mapping[str, Mapping]) -> str:
    """:func:`lmbook.runs.ch05_generation.speculative_speed`'s results as a Markdown table."""
    lines = ["| decoding | tokens/s | new tokens a pass | proposals kept | the greedy text |",
             "|---|---:|---:|---:|---|"]
    for name, r in results.items():
        drafted = "acceptance" in r
        lines.append(f"| {name} | {r['tokens_per_second']:,.0f} | {r.get('tokens_per_pass', 1.0):.2f} | "
                     + (f"{r['acceptance']:.0%} | {'yes' if r['same'] else 'no'} |" if drafted else "– | yes |"))
    return "\n".join(lines)
