"""Chapter 5's figures: a distribution through the sampling filters, the cache's speed, and text coloured by the
probability of each token (beam search's tree is :func:`lmbook.display.diagrams.draw_beam_tree`)."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import torch


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
