"""Decoding speed of lmbook's generate against transformers' generate, on the same weights in the same process.

Each shape gets random weights (seed 0), converted with ``lmbook.models.hf.to_hf``. Both decode greedily
from the same random prompt for ``--new-tokens`` tokens (no end token, so every row runs to the
end) with their key/value caches; the ids are checked equal. The two run alternately, ``--repeats``
times after one warm-up each, and the script prints the median and best tokens/s of each (new
tokens of all rows over wall time), their ratio, and the device, threads, versions, sizes and the
host's load average, which matters: other processes on a shared CPU slow both sides.

    python benchmarks/bench_decode.py                                   # both shapes, batch 1 and 8, 200 tokens
    python benchmarks/bench_decode.py --shapes shakespeare-char --batch-sizes 1 --threads 1
    python benchmarks/bench_decode.py --out benchmarks/results/decode-cpu.json
    python benchmarks/bench_decode.py --shapes shakespeare-char --batch-sizes 1 --profile   # where the time goes
    python benchmarks/bench_decode.py --shapes shakespeare-char --dtype bfloat16             # both sides in bf16

``--profile`` runs each side once more under ``torch.profiler`` (which slows both) and prints the share of
its operator time spent in matrix products (``addmm``, ``mm``, ``linear``'s kernels) and its top operators.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lmbook.decoding.generate import generate  # noqa: E402
from lmbook.models.gpt import GPT  # noqa: E402
from lmbook.models.hf import to_hf  # noqa: E402
from lmbook.interface import num_params  # noqa: E402
from lmbook.runs.common import named_config  # noqa: E402
from lmbook.runtime import commit, environment, get_device  # noqa: E402

SHAPES = ("shakespeare-char", "gpt2")  # chapter 3's full character GPT, and GPT-2 124M's shape


def timed(fn) -> tuple[float, torch.Tensor]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def profile_share(fn, top: int = 6) -> dict:
    """The share of operator self-time ``fn`` spends in matrix products, and its ``top`` operators by self-time."""
    from torch.profiler import profile

    with profile() as prof:
        fn()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    matmul = sum(e.self_cpu_time_total for e in events if e.key in ("aten::addmm", "aten::mm", "aten::bmm"))
    return {"matmul_share": matmul / total, "ms": total / 1e3,
            "top": [(e.key, round(e.self_cpu_time_total / total, 3)) for e in events[:top]]}


def bench_shape(shape: str, batch_sizes: list[int], new_tokens: int, prompt_length: int, repeats: int,
                device: torch.device, profiled: bool = False, dtype: torch.dtype = torch.float32) -> list[dict]:
    torch.manual_seed(0)
    config = named_config(shape, dropout=0.0)
    model = GPT(config).to(device).eval()
    hf_model = to_hf(model).eval()
    model, hf_model = model.to(dtype), hf_model.to(dtype)  # both sides in the same precision
    rows = []
    for batch in batch_sizes:
        idx = torch.randint(0, config.vocab_size, (batch, prompt_length), device=device)
        mask = torch.ones_like(idx)

        def ours(n=new_tokens, idx=idx):
            return generate(model, idx, n, do_sample=False)

        def theirs(n=new_tokens, idx=idx, mask=mask):
            with torch.inference_mode():
                return hf_model.generate(idx, attention_mask=mask, max_new_tokens=n, do_sample=False)

        ours(8), theirs(8)  # warm-up: first calls allocate and pick kernels
        times = {"lmbook": [], "transformers": []}
        outputs = {}
        for _ in range(repeats):
            for name, fn in (("lmbook", ours), ("transformers", theirs)):
                seconds, outputs[name] = timed(fn)
                times[name].append(seconds)
        same = torch.equal(outputs["lmbook"].cpu(), outputs["transformers"].cpu())
        row = {"shape": shape, "dtype": str(dtype).removeprefix("torch."), "batch": batch, "new_tokens": new_tokens,
               "prompt_length": prompt_length,
               "params": num_params(model), "same_ids": same, "load_average": os.getloadavg()}
        for name, seconds in times.items():
            row[f"{name}_tok_s_median"] = batch * new_tokens / statistics.median(seconds)
            row[f"{name}_tok_s_best"] = batch * new_tokens / min(seconds)
            row[f"{name}_seconds"] = seconds
        row["ratio_median"] = row["lmbook_tok_s_median"] / row["transformers_tok_s_median"]
        row["ratio_best"] = row["lmbook_tok_s_best"] / row["transformers_tok_s_best"]
        rows.append(row)
        print(f"{shape:17s} {row['dtype']:8s} batch {batch:2d}: lmbook {row['lmbook_tok_s_median']:8.1f} tok/s "
              f"(best {row['lmbook_tok_s_best']:8.1f}), transformers {row['transformers_tok_s_median']:8.1f} "
              f"(best {row['transformers_tok_s_best']:8.1f}); ratio {row['ratio_median']:.2f}x median, "
              f"{row['ratio_best']:.2f}x best; same ids: {same}; load {os.getloadavg()[0]:.1f}", flush=True)
        if profiled:
            row["profile"] = {"lmbook": profile_share(ours), "transformers": profile_share(theirs)}
            for name, p in row["profile"].items():
                print(f"    {name}: {p['ms']:.0f} ms of operators, {p['matmul_share']:.0%} in matrix products; "
                      f"top: {p['top']}")
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), help="named GPT shapes (lmbook.runs.ch03_gpt)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--new-tokens", type=int, default=200)
    parser.add_argument("--prompt-length", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--profile", action="store_true", help="also profile one run of each side")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                        help="the weights' and activations' precision, the same for both sides")
    parser.add_argument("--out", type=Path, default=None, help="write the results here as JSON")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = get_device()
    info = {**environment(), "commit": commit(), "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "load_average_before": os.getloadavg()}
    print(" | ".join(f"{k} {v}" for k, v in info.items()), flush=True)
    rows = [row for shape in args.shapes
            for row in bench_shape(shape, args.batch_sizes, args.new_tokens, args.prompt_length, args.repeats, device,
                                   args.profile, getattr(torch, args.dtype))]
    result = {**info, "load_average_after": os.getloadavg(), "rows": rows}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
