"""How fast the character-level Shakespeare GPT reaches a validation loss, from process start.

Trains chapter 3's full GPT, ``shakespeare-char`` (6 layers, 6 heads, 384 dims, context 256,
dropout 0.2, the 90/10 split) with lmbook's own training loop, then measures the
validation loss over the whole validation split (every character predicted once, in
consecutive windows of 256), or with ``--final-eval random`` on 200 random batches of
64 x 256 tokens, as the runs before 2026-11-23 did. The clock starts when
the operating system started this process, so importing torch, reading the data,
compiling and evaluating all count. Prints the figures and can write them as JSON.

    python benchmarks/speedrun_char.py --steps 2500 --batch-size 64 --lr 2e-3
    python benchmarks/speedrun_char.py --cuda-graph --steps 1100 --batch-size 128 ...
"""

from __future__ import annotations

import os
import time


def process_start_seconds_ago() -> float:
    """Seconds since this process was started (Linux /proc; else since this module ran)."""
    try:
        ticks = os.sysconf("SC_CLK_TCK")
        with open("/proc/self/stat") as f:
            start = int(f.read().rsplit(")", 1)[1].split()[19]) / ticks
        with open("/proc/uptime") as f:
            return float(f.read().split()[0]) - start
    except (OSError, ValueError, IndexError):
        return 0.0


CLOCK0 = time.perf_counter() - process_start_seconds_ago()

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lmbook.text.data import RandomBatches, shakespeare_chars  # noqa: E402
from lmbook.models.gpt import GPT  # noqa: E402
from lmbook.evaluation.metrics import split_loss  # noqa: E402
from lmbook.runs.common import named_config  # noqa: E402
from lmbook.runtime import commit, environment, get_device  # noqa: E402
from lmbook.training.train import TrainConfig, estimate_loss, train  # noqa: E402


def since_start() -> float:
    return time.perf_counter() - CLOCK0


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2500)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--min-lr", type=float, default=None, help="default: lr / 10")
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--schedule", default="cosine", choices=["cosine", "linear", "constant"])
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--beta2", type=float, default=0.99)
    parser.add_argument("--dropout", type=float, default=0.2)
    parser.add_argument("--compile", default="none", choices=["none", "model", "blocks"])
    parser.add_argument("--cuda-graph", action="store_true", help="replay each step as one CUDA graph")
    parser.add_argument("--eval-interval", type=int, default=250)
    parser.add_argument("--eval-iters", type=int, default=10, help="batches per evaluation during training")
    parser.add_argument("--final-eval", default="split", choices=["split", "random"],
                        help="the whole validation split, or --final-batches random batches of 64 x 256")
    parser.add_argument("--final-batches", type=int, default=200, help="with --final-eval random")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--preset", default="shakespeare-char")
    parser.add_argument("--label", default="")
    parser.add_argument("--out", default=None)
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args(argv)

    device = get_device()
    torch.set_float32_matmul_precision("high")
    tokenizer, train_data, val_data = shakespeare_chars(0.1)
    config = named_config(args.preset, vocab_size=tokenizer.vocab_size, dropout=args.dropout)
    T = config.block_size
    torch.manual_seed(args.seed)
    model = GPT(config).to(device)
    train_cfg = TrainConfig(
        max_steps=args.steps,
        lr=args.lr,
        min_lr=args.lr / 10 if args.min_lr is None else args.min_lr,
        warmup_steps=args.warmup,
        schedule=args.schedule,
        weight_decay=args.weight_decay,
        betas=(0.9, args.beta2),
        eval_interval=args.eval_interval,
        eval_iters=args.eval_iters,
        log_interval=50,
        compile=False if args.compile == "none" else args.compile,
        cuda_graph=args.cuda_graph,
        progress=args.progress,
        seed=args.seed,
    )
    batches = RandomBatches(train_data, T, args.batch_size, device, seed=args.seed)
    val = RandomBatches(val_data, T, 64, device, seed=args.seed + 1)
    setup_seconds = since_start()
    history = train(model, batches, train_cfg, {"val": val})
    trained_at = since_start()
    if args.final_eval == "split":
        final = split_loss(model, val_data, T)
        final_eval = f"the whole validation split ({len(val_data):,} characters) in consecutive windows of {T}"
    else:
        final = estimate_loss(model, RandomBatches(val_data, T, 64, device, seed=12345), args.final_batches)
        final_eval = f"{args.final_batches} random batches of 64 x {T} from the validation split"
    done_at = since_start()

    result = {
        "label": args.label,
        "environment": environment(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": commit(),
        "args": vars(args),
        "model": config.to_dict(),
        "parameters": model.num_params(),
        "setup_seconds": setup_seconds,
        "train_seconds": history.seconds,
        "seconds_to_final_loss": done_at,
        "final_eval_seconds": done_at - trained_at,
        "final_val_loss": final,
        "final_eval": final_eval,
        "tokens_per_second": history.tokens_per_second,
        "curve": {"step": history.eval_steps, "val_loss": history.eval_loss["val"],
                  "seconds_from_start": [setup_seconds + s for s in history.eval_seconds]},
    }
    best_step, best = history.best("val")
    print(
        f"{args.label or 'run'}: val {final:.4f} at {done_at:.1f} s from process start "
        f"(setup {setup_seconds:.1f} s, training {trained_at - setup_seconds:.1f} s, "
        f"final eval {done_at - trained_at:.1f} s); "
        f"{args.steps} steps of {args.batch_size}x{T}, {history.tokens_per_second:,.0f} tok/s; "
        f"best quick eval {best:.4f} at step {best_step}; device {result['environment']['device']}"
    )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
