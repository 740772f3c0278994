"""Chapter 3's speed runs: the character-level GPT raced against the clock, on an H100 GPU
(``benchmarks/speedrun_char.py``) and on two CPU cores (``benchmarks/speedrun_char_cpu.py``).

The scripts write one JSON file a run into the repository's ``benchmarks/results/<name>/``; :func:`recorded`
reads them, and :func:`gpu_speedruns` and :func:`cpu_speedruns` plot them and return the sentences the chapter
says of them (or that this copy of the book has none).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..display.show import capital, count_phrase, md

H100_AIM = {"loss": 1.47, "seconds": 30.0}  # the GPU speed run's aim: this validation loss within these seconds
OVERFIT = 0.002  # a rise of the validation loss above its lowest point that counts as overfitting


def recorded(name: str, start: Path | None = None) -> list[dict] | None:
    """The speed runs recorded in ``benchmarks/results/<name>/`` of the repository around ``start`` (the working
    folder by default), oldest file name first; ``None`` outside a copy of the repository."""
    start = Path.cwd() if start is None else Path(start)
    folder = next((p / "benchmarks/results" / name for p in [start, *start.parents]
                   if (p / "benchmarks/results" / name).is_dir()), None)
    return None if folder is None else [json.loads(f.read_text()) for f in sorted(folder.glob("*.json"))]


def _rise(r: dict) -> float:
    """How far a run's last quick evaluation lies above its lowest."""
    return r["curve"]["val_loss"][-1] - min(r["curve"]["val_loss"])


def _lowest(r: dict) -> tuple[float, int]:
    """A run's lowest quick evaluation and its step."""
    return min(zip(r["curve"]["val_loss"], r["curve"]["step"]))


def _gpu_verdict(runs: list[dict], best: dict) -> str:
    aim = H100_AIM
    met = [r for r in runs if r["final_val_loss"] <= aim["loss"] and r["seconds_to_final_loss"] <= aim["seconds"]]
    if met:
        return f"{capital(count_phrase(len(met), len(runs), 'recorded run'))} met it."
    within = [r["final_val_loss"] for r in runs if r["seconds_to_final_loss"] <= aim["seconds"]]
    verdict = (f"None of the {len(runs)} recorded runs met it: the best reached {best['final_val_loss']:.4f} at "
               f"{best['seconds_to_final_loss']:.1f} seconds")
    if within:
        verdict += (f", and {count_phrase(len(within), len(runs), 'run')} finished within {aim['seconds']:.0f} "
                    f"seconds, ending between {min(within):.3f} and {max(within):.3f}")
    return verdict + "."


def _gpu_story(best: dict, overfit: dict) -> str:
    """What the curves of the best run and of the run that overfit most show."""
    low, low_step = _lowest(overfit)
    story = (f"Run `{overfit['label']}`, {overfit['args']['steps']:,} steps of {overfit['args']['batch_size']} "
             f"windows, reached its lowest validation loss, {low:.3f}, at step {low_step:,}, and ")
    story += (f"then overfit: the model went on learning the training text by heart while the validation loss rose "
              f"to {overfit['curve']['val_loss'][-1]:.3f}." if _rise(overfit) >= OVERFIT else
              f"ended within {OVERFIT} of it: none of the recorded runs overfit much.")
    how = {"linear": "linearly", "cosine": "along a cosine", "constant": "not at all"}
    args = best["args"]
    ends_lowest = _lowest(best)[1] == best["curve"]["step"][-1] or _rise(best) < OVERFIT
    return story + (f" The best run, `{best['label']}`, decays its learning rate {how[args['schedule']]} to "
                    f"{args['min_lr'] or 'zero'} over {args['steps']:,} steps of {args['batch_size']} and ends "
                    + (f"at (or within {OVERFIT} of) the lowest point of its curve: it stops before overfitting "
                       "sets in." if ends_lowest else f"{_rise(best):.3f} above the lowest point of its curve."))


def gpu_speedruns(runs: list[dict] | None) -> dict:
    """Plot the H100 speed runs (final loss against seconds; the curves of the best run and of the one that
    overfit most) and return what chapter 3 says of them: ``h100_shape``, ``h100_verdict``, ``h100_curves``
    and the aim. ``runs`` is :func:`recorded`'s list, or ``None`` (nothing is drawn)."""
    import matplotlib.pyplot as plt

    facts = {"h100_aim_loss": H100_AIM["loss"], "h100_aim_seconds": H100_AIM["seconds"]}
    if not runs:
        return {**facts, "h100_shape": md("at the full size"), "h100_curves": md(""), "h100_verdict": md(
            "The recorded runs are in the repository's benchmarks/results folder, not in this copy of the book.")}
    fig, (ax, curves) = plt.subplots(1, 2, figsize=(12, 4))
    for r in runs:
        ax.plot(r["seconds_to_final_loss"], r["final_val_loss"], "o", color="C0")
    ax.axhline(H100_AIM["loss"], color="gray", ls=":", label=f"aim: {H100_AIM['loss']}")
    ax.axvline(H100_AIM["seconds"], color="gray", ls="--", label=f"aim: {H100_AIM['seconds']:.0f} s")
    ax.set(xlabel="seconds from process start", ylabel="final validation loss", ylim=(1.4, 1.6))
    ax.grid(alpha=0.3)
    best = min(runs, key=lambda r: r["final_val_loss"])
    env = best["environment"]
    ax.set_title(f"{len(runs)} speed runs on {env['device']}, torch {env['torch']}", fontsize=9)
    ax.legend()
    overfit = max(runs, key=_rise)
    for r, colour in ((best, "C0"), (overfit, "C3")):
        c = r["curve"]
        args = r["args"]
        label = f"{r['label']}: {args['steps']:,} steps of {args['batch_size']}, {args['schedule']} decay"
        curves.plot(c["seconds_from_start"], c["val_loss"], marker=".", color=colour, label=label)
        curves.plot(r["seconds_to_final_loss"], r["final_val_loss"], "*", ms=10, color=colour)
    curves.set(xlabel="seconds from process start", ylabel="validation loss", ylim=(1.4, 1.7))
    curves.grid(alpha=0.3)
    curves.legend(fontsize=8)
    curves.set_title("curves (dots: quick evaluations; star: the final one)", fontsize=9)
    fig.tight_layout()
    shape = best["model"]
    return {**facts, "h100_verdict": md(_gpu_verdict(runs, best)), "h100_curves": md(_gpu_story(best, overfit)),
            "h100_shape": md(f"with {shape['n_layer']} layers, {shape['n_embd']} channels and a context of "
                             f"{shape['block_size']}")}


def _cpu_spread(runs: list[dict]) -> str:
    """The widest spread of time over repeats of one computation (same recipe, seed and loss to four digits), each
    run with the machine to itself (a one-minute load average of at most the run's own threads)."""
    same = {}
    for r in runs:
        if r["load_average"][0] <= r["threads"]:
            key = (json.dumps(r["recipe"], sort_keys=True), r["seed"], round(r["final_val_loss"], 4))
            same.setdefault(key, []).append(r["seconds_to_final_loss"])
    repeated = [times for times in same.values() if len(times) > 1]
    if not repeated:
        return ""
    widest = max(repeated, key=lambda times: max(times) / min(times))
    return (f"The points include the same computation run again: one recipe and seed, with the same loss to four "
            f"digits, took from {min(widest):.1f} to {max(widest):.1f} seconds over {len(widest)} runs on the same "
            "virtual machine, each with the machine to itself. A time measured on a shared host is a sample, not a "
            "constant, which is why the script also records the host's matrix-product speed after each run.")


def cpu_speedruns(runs: list[dict] | None, recipe: dict) -> dict:
    """Plot the CPU speed runs, those of ``recipe`` (the fast recipe's ``to_dict()``) apart from earlier recipes', and
    return what chapter 3 says of them: ``cpu_aim``, ``cpu_verdict`` and ``cpu_spread``."""
    import matplotlib.pyplot as plt

    if not runs:
        return {"cpu_aim": md("Its aim and its recorded runs are in the repository's benchmarks folder, not in this "
                              "copy of the book."), "cpu_verdict": md(""), "cpu_spread": md("")}
    current = [r for r in runs if r["recipe"] == recipe]
    earlier = [r for r in runs if r["recipe"] != recipe]
    target = (current or earlier)[-1]["target"]  # what the script checks each run against
    fig, ax = plt.subplots(figsize=(7, 4))
    for group, colour, label in ((earlier, "0.7", "earlier recipes"), (current, "C0", "the fast recipe")):
        ax.plot([r["seconds_to_final_loss"] for r in group], [r["final_val_loss"] for r in group], "o",
                color=colour, label=f"{label} ({len(group)} runs)")
    ax.axhline(target["loss"], color="gray", ls=":", label=f"aim: {target['loss']}")
    ax.axvline(target["seconds"], color="gray", ls="--", label=f"aim: {target['seconds']:.0f} s")
    ax.set(xlabel="seconds from process start", ylabel="final validation loss (whole split)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    env = (current or earlier)[0]["environment"]
    ax.set_title(f"speed runs on {env['device']}, torch {env['torch']}", fontsize=9)
    fig.tight_layout()
    verdict = "The fast recipe as it stands has no recorded run yet."
    if current:
        met = sum(r["target_met"] for r in current)
        losses = [r["final_val_loss"] for r in current]
        seconds = [r["seconds_to_final_loss"] for r in current]
        seeds = ", ".join(str(s) for s in sorted({r["seed"] for r in current}))
        verdict = (f"{capital(count_phrase(met, len(current), 'recorded run'))} of the fast recipe met it, with "
                   f"losses from {min(losses):.3f} to {max(losses):.3f} (seeds {seeds}) at {min(seconds):.1f} to "
                   f"{max(seconds):.1f} seconds from process start.")
    return {"cpu_aim": md(f"The aim is a validation loss of at most {target['loss']} within "
                          f"{target['seconds']:.0f} seconds."),
            "cpu_verdict": md(verdict), "cpu_spread": md(_cpu_spread(runs))}
