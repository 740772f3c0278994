"""Training speed of lmbook's GPT against transformers' GPT2LMHeadModel of the same shape.

Both models train in the same process on the same random token batches, with the
same precision, the same fused AdamW and the same loss; the data pipeline is left
out. Prints ms/step, tokens/s, peak memory and MFU (model FLOPs utilisation:
FLOPs per token 6·N + 12·L·T·C over the device's peak dense bf16 rate), plus the
device, versions and sizes, and optionally writes them to a JSON file.

    python benchmarks/bench_gpt.py --preset tiny                # CPU, under a minute
    python benchmarks/bench_gpt.py --preset gpt2 --batch-size 16 --compile --out benchmarks/results/gpt2-h100.json
    python benchmarks/bench_gpt.py --preset shakespeare-char --batch-size 128 --no-hf --cuda-graph --profile 10
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lmbook.training.cudagraph import CapturedStep  # noqa: E402
from lmbook.models.gpt import GPT  # noqa: E402
from lmbook.runs.common import named_config  # noqa: E402
from lmbook.runs.ch07_sweep import flops_per_token  # noqa: E402
from lmbook.runtime import autocast, commit, device_name, environment, get_device  # noqa: E402
from lmbook.training.optim import make_optimizer  # noqa: E402
from lmbook.training.train import TrainConfig  # noqa: E402

# Peak dense bf16 tensor-core rates in FLOP/s, from the vendors' data sheets.
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10G": 125e12, "RTX 4090": 165e12}


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16.items():
        if key in name:
            return value
    return None


def make_step(model, forward, batches, precision: str, device: torch.device, cuda_graph: bool = False):
    """One optimizer step on batch ``i % len(batches)``: eager, or replayed as a CUDA graph."""
    config = TrainConfig(lr=1e-4, precision=precision, cuda_graph=cuda_graph)
    optimizer = make_optimizer(model, config, device)
    if cuda_graph:
        def loss_fn(x, y):
            with autocast(device, precision, cache=False):
                return forward(x, y)

        captured = CapturedStep(model, loss_fn, optimizer, grad_clip=1.0)
        return lambda i: captured(*batches[i % len(batches)], config.lr)

    def step(i: int) -> None:
        x, y = batches[i % len(batches)]
        with autocast(device, precision):
            loss = forward(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def run_steps(step, first: int, n: int, device: torch.device) -> float:
    """Seconds for calls ``first .. first + n - 1`` of ``step``, the device's queue drained at both ends."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for i in range(first, first + n):
        step(i)
    sync()
    return time.perf_counter() - start


def time_training(step, steps: int, warmup: int, device: torch.device) -> dict:
    """Run ``warmup`` untimed then ``steps`` timed calls of ``step``; returns seconds and memory."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    warm = run_steps(step, 0, warmup, device)
    seconds = run_steps(step, warmup, steps, device)
    memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"warmup_seconds": warm, "seconds": seconds, "peak_memory_gib": memory}


def profile_steps(step, steps: int, device: torch.device, rows: int = 12) -> dict:
    """Profile ``steps`` calls of ``step``: where the time goes, and how busy the device was.

    On CUDA, ``busy`` is the kernels' summed time over the wall time: well below 1, the
    GPU waits for Python to launch work (a launch-bound step). The profiler slows the Python
    side itself, so ``ms_per_step`` here is above the timed figure and ``busy`` below the truth.
    """
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        wall = run_steps(step, 0, steps, device)
    events = prof.key_averages()
    result = {"ms_per_step": 1000 * wall / steps}
    if device.type == "cuda":
        kernels = [e for e in events if e.device_type == DeviceType.CUDA]
        busy_us = sum(e.self_device_time_total for e in kernels)
        result.update(kernels_per_step=sum(e.count for e in kernels) / steps,
                      kernel_ms_per_step=busy_us / 1000 / steps, busy=busy_us / 1e6 / wall)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(events.table(sort_by=key, row_limit=rows))
    print("profile: " + ", ".join(f"{k} {v:.3g}" for k, v in result.items()))
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=None, help="default: the preset's context")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--compile-mode", default="default",
                        choices=["default", "max-autotune", "max-autotune-no-cudagraphs", "reduce-overhead"],
                        help="torch.compile's mode, with --compile")
    parser.add_argument("--cuda-graph", action="store_true",
                        help="replay each step of lmbook's model as one CUDA graph (not with --compile)")
    parser.add_argument("--profile", type=int, default=0, help="then profile this many steps of lmbook's model")
    parser.add_argument("--vocab-size", type=int, default=None, help="e.g. 50304, GPT-2's vocabulary padded to 64")
    parser.add_argument("--no-hf", action="store_true", help="skip the transformers model")
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.cuda_graph and args.compile:
        parser.error("--cuda-graph records the eager step; use it without --compile")

    device = get_device(args.device)
    overrides = {"dropout": 0.0}
    if args.vocab_size:
        overrides["vocab_size"] = args.vocab_size
    config = named_config(args.preset, **overrides)
    T = args.seq_len or config.block_size
    B = args.batch_size
    torch.manual_seed(0)
    batches = []
    for _ in range(4):
        tokens = torch.randint(0, config.vocab_size, (B, T + 1), device=device)
        batches.append((tokens[:, :-1], tokens[:, 1:]))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    peak = peak_flops(device)
    results = {
        "environment": environment(),
        "device": device_name(device),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": commit(),
        "sizes": {**config.to_dict(), "batch_size": B, "seq_len": T, "steps": args.steps, "warmup": args.warmup},
        "precision": args.precision,
        "compile": args.compile,
        "compile_mode": args.compile_mode if args.compile else None,
        "cuda_graph": args.cuda_graph,
        "peak_flops": peak,
        "models": {},
    }

    def run(name: str, model, forward) -> None:
        model.to(device).train()
        graphed = args.cuda_graph and name == "lmbook"  # transformers' model runs eagerly: its masks may sync
        step = make_step(model, forward, batches, args.precision, device, graphed)
        timing = time_training(step, args.steps, args.warmup, device)
        tokens_per_second = B * T * args.steps / timing["seconds"]
        results["models"][name] = {
            **timing,
            "cuda_graph": graphed,
            "ms_per_step": 1000 * timing["seconds"] / args.steps,
            "tokens_per_second": tokens_per_second,
            "flops_per_token": flops,
            "mfu": flops * tokens_per_second / peak if peak else None,
        }

    model = GPT(config)
    n_params, flops = model.num_params(), flops_per_token(model, T)  # same shape, same FLOPs for both

    def lmbook_forward(x, y, module=torch.compile(model, mode=args.compile_mode) if args.compile else model):
        return module(x, y)[1]

    run("lmbook", model, lmbook_forward)
    if args.profile:
        step = make_step(model, lmbook_forward, batches, args.precision, device, args.cuda_graph)
        for i in range(5):  # past the CUDA graph's recording and the optimizer's first steps
            step(i)
        results["profile"] = profile_steps(step, args.profile, device)
    del model, lmbook_forward
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()

    if not args.no_hf:
        from lmbook.models.hf import to_hf

        torch.manual_seed(0)
        hf = to_hf(GPT(config))
        hf.config._attn_implementation = "sdpa"
        hf_module = torch.compile(hf, mode=args.compile_mode) if args.compile else hf

        def hf_forward(x, y):
            logits = hf_module(input_ids=x).logits
            return F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1))

        run("transformers", hf, hf_forward)

    print(f"device      : {results['device']}")
    print(f"torch       : {torch.__version__}   transformers: {results['environment'].get('transformers')}")
    print(f"model       : preset {args.preset}, {n_params / 1e6:.2f}M parameters (positions included), "
          f"L={config.n_layer} H={config.n_head} C={config.n_embd} V={config.vocab_size}")
    compile_mode = args.compile_mode if args.compile else False
    print(f"batch       : {B} x {T} tokens, precision {args.precision}, compile {compile_mode}, "
          f"cuda graph {args.cuda_graph}, "
          f"{args.steps} timed steps after {args.warmup} warm-up")
    print(f"{'model':<14}{'ms/step':>10}{'tokens/s':>14}{'MFU':>8}{'peak GiB':>10}{'warm-up s':>11}")
    for name, r in results["models"].items():
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] else "n/a"
        mem = f"{r['peak_memory_gib']:.2f}" if r["peak_memory_gib"] is not None else "n/a"
        print(f"{name:<14}{r['ms_per_step']:>10.1f}{r['tokens_per_second']:>14,.0f}{mfu:>8}{mem:>10}"
              f"{r['warmup_seconds']:>11.1f}")
    if "transformers" in results["models"]:
        models = results["models"]
        ratio = models["lmbook"]["tokens_per_second"] / models["transformers"]["tokens_per_second"]
        results["speedup_over_transformers"] = ratio
        print(f"lmbook / transformers tokens/s: {ratio:.2f}x")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
