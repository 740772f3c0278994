"""How fast chapter 3's fast-size GPT reaches a validation loss on a CPU, from process start.

Trains the recipe ``lmbook.runs.ch03_gpt.RUNS["fast"]`` (the GPT that chapter 3 trains at
the fast size) on Tiny Shakespeare's characters with lmbook's own training loop, on the
CPU, with the evaluations the chapter makes along the way; then measures the loss on
the whole validation split (111,540 characters) cut into consecutive windows of the
context length, each character predicted once (but the last few, which fill no window).
The clock starts when the operating system started this process, so importing torch,
reading the data and evaluating all count. The target is
a validation loss of at most 1.88 within 65 seconds on two cores.

    python benchmarks/speedrun_char_cpu.py                 # the chapter's recipe
    python benchmarks/speedrun_char_cpu.py --max-steps 700 --seed 1 --label steps700-seed1
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speedrun_char import process_start_seconds_ago  # noqa: E402  (the same clock as the GPU speed run)

CLOCK0 = time.perf_counter() - process_start_seconds_ago()

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lmbook.runs.ch03_gpt import RUNS
from lmbook.runs.common import make_char_gpt, train_char_gpt  # noqa: E402
from lmbook.evaluation.metrics import split_loss  # noqa: E402
from lmbook.text.data import shakespeare_chars  # noqa: E402
from lmbook.runtime import commit, environment  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "speedrun-char-cpu"
TARGET = dict(loss=1.88, seconds=65.0)


def since_start() -> float:
    return time.perf_counter() - CLOCK0


def host_matmul_gflops(n_embd: int, tokens: int, seconds: float = 0.5) -> float:
    """The host's speed now: GFLOP/s of the MLP's first product, (tokens, C) @ (C, 4C), for ``seconds``.

    Measured after a run, outside its clock. The same code has run nearly 2x slower on the same
    virtual machine an hour apart; this reading says which kind of hour a run had.
    """
    a, b = torch.randn(tokens, n_embd), torch.randn(n_embd, 4 * n_embd)
    for _ in range(5):
        a @ b
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        calls += 1
    return 2 * tokens * n_embd * 4 * n_embd * calls / (time.perf_counter() - start) / 1e9


def main(argv=None) -> dict:
    recipe = RUNS["fast"]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, value in recipe.to_dict().items():  # every field of the recipe can be changed
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--label", default="recipe")
    parser.add_argument("--out", default=None,
                        help="JSON file (default: benchmarks/results/speedrun-char-cpu/<label>.json)")
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    run = recipe.replace(**{k: getattr(args, k) for k in recipe.to_dict()})
    tokenizer, train_data, val_data = shakespeare_chars(0.1)
    model = make_char_gpt(run, tokenizer.vocab_size, device="cpu", seed=args.seed)
    setup_seconds = since_start()
    history = train_char_gpt(model, run, train_data, val_data, seed=args.seed, progress=args.progress)
    trained_at = since_start()
    final = split_loss(model, val_data, run.block_size)
    done_at = since_start()
    gflops = host_matmul_gflops(run.n_embd, run.batch_size * run.block_size)

    met = final <= TARGET["loss"] and done_at <= TARGET["seconds"]
    result = {
        "label": args.label,
        "environment": environment(),
        "threads": torch.get_num_threads(),
        "host_matmul_gflops": gflops,  # read after the run: compare runs' seconds at like host speeds
        "load_average": os.getloadavg(),  # over 1, 5 and 15 minutes: other work on the machine inflates times
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": commit(),
        "recipe": run.to_dict(),
        "seed": args.seed,
        "parameters": model.num_params(),
        "setup_seconds": setup_seconds,
        "train_seconds": history.seconds,
        "seconds_to_final_loss": done_at,
        "final_val_loss": final,
        "final_eval": f"the whole validation split ({len(val_data):,} characters) "
                      f"in consecutive windows of {run.block_size}",
        "target": TARGET,
        "target_met": met,
        "tokens_per_second": history.tokens_per_second,
        "curve": {"step": history.eval_steps, "val_loss": history.eval_loss["val"],
                  "seconds_from_start": [setup_seconds + s for s in history.eval_seconds]},
    }
    print(
        f"{args.label}: val {final:.4f} at {done_at:.1f} s from process start (setup {setup_seconds:.1f} s, "
        f"training {trained_at - setup_seconds:.1f} s, final eval {done_at - trained_at:.1f} s); "
        f"{run.max_steps} steps of {run.batch_size}x{run.block_size}, {history.tokens_per_second:,.0f} tok/s, "
        f"{model.num_params():,} parameters; target <= {TARGET['loss']} in {TARGET['seconds']:.0f} s "
        f"{'met' if met else 'NOT met'}; device {result['environment']['device']}, torch "
        f"{result['environment']['torch']}, load average {result['load_average'][0]:.2f}, "
        f"host matrix products {gflops:.0f} GFLOP/s"
    )
    out = Path(args.out) if args.out else RESULTS / f"{args.label}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
