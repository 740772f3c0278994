"""Chapter 9's figures and the sentences its prose quotes, from the results of :mod:`lmbook.runs.ch09_assistant`
(plain dicts, as the runs return them and the reference record keeps them).

Accuracies are shares of right answers with Wilson intervals (``share``, ``low``, ``high``); a verdict says
"more" or "fewer" only where two intervals do not overlap, and otherwise that the difference is within the
noise of that many questions.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from .show import and_list

SPLIT_NAMES = {"held_out_lines": "held-out lines", "held_out_phrasings": "held-out phrasings",
               "held_out_task": "the held-out task"}


def pooled(table: dict[str, dict]) -> dict[str, float]:
    """A split's tasks pooled: right answers, questions, the share and its 95% Wilson interval."""
    from ..evaluation.bias import share_interval

    right, n = sum(t["right"] for t in table.values()), sum(t["n"] for t in table.values())
    return {"right": right, "n": n, **share_interval(right, n)}


def compare(a: dict, b: dict, more: str = "more right answers than", fewer: str = "fewer right answers than",
            same: str = "about as many right answers as") -> str:
    """``more`` or ``fewer`` as share ``a`` lies above or below ``b`` with intervals apart, else ``same``."""
    if a["low"] > b["high"]:
        return more
    if a["high"] < b["low"]:
        return fewer
    return same


def plot_accuracy(tables: dict[str, dict[str, dict]], ax=None, title: str = ""):
    """Share right per task, one bar per model (``{model: {task: score}}``), with 95% intervals."""
    ax = ax or plt.subplots(figsize=(10, 3.8))[1]
    tasks = sorted({task for table in tables.values() for task in table})
    width = 0.8 / len(tables)
    for k, (name, table) in enumerate(tables.items()):
        x = np.arange(len(tasks)) + (k - (len(tables) - 1) / 2) * width
        share = np.array([table[t]["share"] if t in table else np.nan for t in tasks])
        low = np.array([table[t]["low"] if t in table else np.nan for t in tasks])
        high = np.array([table[t]["high"] if t in table else np.nan for t in tasks])
        ax.bar(x, share, width, label=name, yerr=np.clip([share - low, high - share], 0, None), capsize=2)
    ax.set_xticks(np.arange(len(tasks)), [t.replace("_", " ") for t in tasks])
    ax.set_ylim(0, 1)
    ax.set_ylabel("share right (95% interval)")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    return ax


def plot_sft_curves(summaries: list[dict], ax=None):
    """The held-out answers' loss during instruction tuning, one curve per way of tuning."""
    ax = ax or plt.subplots(figsize=(6, 3.5))[1]
    for s in summaries:
        ax.plot(s["eval_steps"], s["val"], marker="o", label=s["variant"])
    ax.set_xlabel("step")
    ax.set_ylabel("held-out loss on the answers (nats)")
    ax.legend(fontsize=8)
    return ax


DPO_PANELS = (("rewards/accuracies", "reward accuracy"), ("rewards/margins", "reward margin"),
              ("logps", "log-probability of the answers"), ("kl", "KL from the reference"))


def plot_dpo(sweep: dict[str, dict], axes=None):
    """DPO's training at each β (``{beta: {"steps": [...]}}``): reward accuracy, margin, the chosen (solid) and
    rejected (dashed) answers' summed log-probabilities, and the KL from the reference, per step."""
    if axes is None:
        axes = plt.subplots(1, 4, figsize=(15, 3.4))[1]
    for k, (beta, result) in enumerate(sweep.items()):
        steps = result["steps"]
        x = np.arange(1, len(steps) + 1)
        for ax, (key, label) in zip(axes, DPO_PANELS):
            if key == "logps":
                ax.plot(x, [s["logps/chosen"] for s in steps], color=f"C{k}", label=f"β = {beta}")
                ax.plot(x, [s["logps/rejected"] for s in steps], color=f"C{k}", ls="--")
            else:
                ax.plot(x, [s[key] for s in steps], color=f"C{k}", label=f"β = {beta}")
            ax.set_title(label, fontsize=9)
            ax.set_xlabel("step")
    axes[0].legend(fontsize=8)
    return axes


def plot_refusals(result: dict, ax=None):
    """Share of replies that refuse, before and after the refusal stage, for each set of requests."""
    ax = ax or plt.subplots(figsize=(7, 3.4))[1]
    names = list(result["before"])
    for k, when in enumerate(("before", "after")):
        share = np.array([result[when][n]["share"] for n in names])
        low = np.array([result[when][n]["low"] for n in names])
        high = np.array([result[when][n]["high"] for n in names])
        ax.bar(np.arange(len(names)) + (k - 0.5) * 0.4, share, 0.4, yerr=np.clip([share - low, high - share], 0, None),
               capsize=3,
               label=f"{when} the refusal stage")
    ax.set_xticks(np.arange(len(names)), names)
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of replies that refuse")
    ax.legend(fontsize=8)
    return ax


# --- Sentences --------------------------------------------------------------------------------------------------
def _pct(score: dict) -> str:
    """A share with its interval, as a sentence or a table cell shows it: ``4% (2% to 10%)``."""
    low = max(0.0, score["low"])  # records made before wilson_interval kept its bounds in [0, 1]
    return f"{score['share']:.0%} ({low:.0%} to {score['high']:.0%})"


def sft_table(base_summary: dict, summaries: list[dict]):
    """The base model and each way of tuning, one row each: parameters trained, seconds, the share right on each
    held-out split with its interval, the replies closed, held-out bits per character and the voice's bits."""
    from .show import html_table

    rows = []
    for s in [{"variant": "base model", "trainable": 0, "share": 0.0, "seconds": 0.0, **base_summary}, *summaries]:
        acc = {split: pooled(t) for split, t in s["evaluation"]["accuracy"].items()}
        rows.append([s["variant"], f"{s['trainable']:,}", f"{s['seconds']:.0f}"]
                    + [_pct(acc[k]) for k in SPLIT_NAMES]
                    + [f"{s['evaluation']['ended']['held_out_lines']['share']:.0%}", f"{s['held_out_bits']:.3f}",
                       f"{s['voice_bits']:.3f}"])
    return html_table(["model", "parameters trained", "seconds"] + [f"right: {v}" for v in SPLIT_NAMES.values()]
                      + ["replies closed", "held-out bits per char", "voice: bits per token"], rows)


def pairs_facts(counts: dict, samples: int) -> str:
    """How the preference pairs came about (:func:`lmbook.runs.ch09_assistant.preference_pairs`'s counts)."""
    from .show import count_phrase

    n = counts["requests"]
    gave = count_phrase(counts["pairs"], n, "request")
    own = counts["chosen_from_samples"]
    chosen = ("none of them" if own == 0 else "all of them" if own == counts["pairs"] else f"{own:,} of them")
    return (f"Of {n:,} requests, each sampled {samples} times, {gave} gave a pair, {chosen} with a right sample "
            "of the model's own as the chosen answer.")


def sft_facts(base: dict, summaries: list[dict]) -> str:
    """What instruction tuning changed, from the base model's evaluation and each way of tuning's summary."""
    before = {split: pooled(t) for split, t in base["evaluation"]["accuracy"].items()}
    parts = [f"Before tuning, the base model answers {_pct(before['held_out_lines'])} of the held-out questions "
             "right."]
    for s in summaries:
        after = {split: pooled(t) for split, t in s["evaluation"]["accuracy"].items()}
        parts.append(
            f"Tuned ({s['variant']}, {s['trainable']:,} parameters trained, {s['share']:.1%} of the model, "
            f"{s['seconds']:.0f} s): {_pct(after['held_out_lines'])} on held-out lines, "
            f"{_pct(after['held_out_phrasings'])} in held-out phrasings and {_pct(after['held_out_task'])} on the "
            f"task it never saw; {compare(after['held_out_lines'], before['held_out_lines'])} before on held-out "
            "lines.")
    return " ".join(parts)


def forgetting_facts(base: dict, summaries: list[dict]) -> str:
    """Held-out bits per character of plain text before and after each way of tuning."""
    changes = [f"{s['variant']} {s['held_out_bits'] - base['held_out_bits']:+.3f}" for s in summaries]
    return (f"The base model scores {base['held_out_bits']:.3f} bits per character on the held-out text; after "
            f"tuning the change is {and_list(changes)} bits per character (positive: worse at plain text).")


def dpo_facts(sweep: dict[str, dict], tuned: dict[str, dict]) -> str:
    """Each β's last step (reward accuracy, margin, the two log-probabilities' change, KL) and its accuracy."""
    base = pooled(tuned)
    parts = []
    for beta, result in sweep.items():
        first, last = result["steps"][0], result["steps"][-1]
        after = pooled(result["accuracy"])
        falls = [name for name in ("chosen", "rejected") if last[f"logps/{name}"] < first[f"logps/{name}"]]
        parts.append(
            f"At β = {beta}, the last step's reward accuracy is {last['rewards/accuracies']:.0%}, its margin "
            f"{last['rewards/margins']:.2f} and its KL {last['kl']:.3f}; "
            + (f"the log-probability of the {and_list(falls)} answers fell" if falls else
               "neither answer's log-probability fell")
            + f"; accuracy after: {_pct(after)}, {compare(after, base)} the tuned model's {_pct(base)}.")
    return " ".join(parts)


def refusal_facts(result: dict) -> str:
    """Refusals before and after the refusal stage, per set of requests."""
    parts = []
    for name in result["before"]:
        b, a = result["before"][name], result["after"][name]
        parts.append(f"{name}: {a['refused']} of {a['n']} refused after, {_pct(a)}, against {b['refused']} before")
    return "; ".join(parts) + "."
