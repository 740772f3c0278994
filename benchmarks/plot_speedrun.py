"""Plot recorded speed-run results: validation loss against seconds from process start.

    python benchmarks/plot_speedrun.py benchmarks/results/speedrun-char-h100 \
        --runs a-b64-lr1e-3-3500 e-b256-lr3e-3-800 p \
        --out benchmarks/results/speedrun-char-h100.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def describe(run: dict) -> str:
    a = run["args"]
    return f"batch {a['batch_size']}, {a['steps']} steps, lr {a['lr']:g} {a['schedule']}, wd {a['weight_decay']:g}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--runs", nargs="+", required=True, help="labels (file names without .json)")
    parser.add_argument("--target", type=float, default=1.47)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label in args.runs:
        run = json.loads((args.folder / f"{label}.json").read_text())
        curve = run["curve"]
        (line,) = ax.plot(curve["seconds_from_start"][1:], curve["val_loss"][1:], marker="o", ms=3,
                          label=f"{label}: {describe(run)}")
        ax.plot([run["seconds_to_final_loss"]], [run["final_val_loss"]], marker="*", ms=12, color=line.get_color())
    ax.axhline(args.target, color="grey", ls="--", lw=1)
    ax.axvline(args.seconds, color="grey", ls=":", lw=1)
    ax.set_ylim(1.4, 2.0)
    ax.set_xlabel("seconds from process start")
    ax.set_ylabel("validation loss (nats per character)")
    env = run["environment"]
    ax.set_title(f"Character-level GPT on Tiny Shakespeare, {env['device']}, torch {env['torch']}", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.text(0.01, 0.01, "dots: quick evaluations (10 batches); stars: final loss over 200 batches of 64 x 256",
             fontsize=7, color="grey")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
