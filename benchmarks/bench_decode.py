"""Decoding speed of lmbook's generate against transformers' generate, on the same weights in the same process.

Each shape gets random weights (seed 0), converted with ``lmbook.models.hf.to_hf`` (``to_hf_llama`` with
``--llama``). Both decode greedily from the same random prompt for ``--new-tokens`` tokens (no end token, so
every row runs to the end) with their key/value caches; the ids are checked equal. The two run alternately,
``--repeats`` times after one warm-up each, and the script prints the median and best tokens/s of each (new
tokens of all rows over wall time), their ratio, and the device, threads, versions, sizes and the
host's load average, which matters: other processes on a shared CPU slow both sides.

    python benchmarks/bench_decode.py                                   # both shapes, batch 1 and 8, 200 tokens
    python benchmarks/bench_decode.py --shapes shakespeare-char --batch-sizes 1 --threads 1
    python benchmarks/bench_decode.py --out benchmarks/results/decode-cpu.json
    python benchmarks/bench_decode.py --shapes shakespeare-char --batch-sizes 1 --profile   # where the time goes
    python benchmarks/bench_decode.py --shapes shakespeare-char --dtype bfloat16             # both sides in bf16
    python benchmarks/bench_decode.py --threads 1 --bandwidth --int8 --kernels   # chapter 8's figures
    python benchmarks/bench_decode.py --threads 1 --llama --bandwidth            # the Llama against LlamaForCausalLM

``--profile`` runs each decoder once more under ``torch.profiler`` (which slows it) and prints the share of
its operator time spent in matrix products (``addmm``, ``mm``, ``linear``'s kernels) and its top operators.

Chapter 8's options (``decode_rates.py``, ``decode_models.py`` and ``decode_kernels.py`` say how each is measured):

- ``--bandwidth``: this machine's streaming-read rate (``.sum()`` over a float32 buffer of ``--stream-mib``
  MiB, 1 GiB by default, best of three) and, for each shape, the rate of PyTorch's matrix-vector product over
  distinct matrices of the model's own shapes (``--matvec-mib`` in all, by default 16 times the last-level
  cache and at least 256 MiB), in both layouts. Each decoder's effective rate is then the bytes of weights a
  step reads, counted matrix by matrix (``decode_rates.step_bytes``: every linear layer's weight and bias, the
  tied output layer once, an int8 layer's int8 weight and scales; not the embeddings' lookups, the norms or
  the key/value cache), times steps/s (tokens/s over the batch: one step reads the weights once for all its
  rows), printed in GB/s and as a share of the streaming rate and of the matrix-vector rate (PyTorch's
  faster layout).
- ``--int8``: a third decoder, lmbook's generate on ``quantize_int8(model)``, with its ratio to transformers'
  float32 generate, the share of its greedy tokens equal to lmbook's float32 ones, and what int8 changes:
  for the char GPT the held-out bits per character of the trained model (``decode_models.int8_quality``),
  for other shapes the relative change of the logits on the random weights.
- ``--kernels``: lmbook's generate with every linear layer computed by the C kernels of ``decode_kernels.py``
  (compiled here; one thread, CPU, float32): float32 weights, and with ``--int8`` int8 weights converted in
  registers as they are read. A decoder path of this benchmark only.
- ``--llama``: the shapes are Llama shapes (``decode_models.LLAMA_SHAPES``, default ``llama-char``, chapter 3's
  char GPT's shape with 2 key/value heads), decoded by lmbook's generate and by ``to_hf_llama(model).generate``.
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

import decode_rates  # noqa: E402
from decode_models import GPT_SHAPES, LLAMA_SHAPES, agreement, build, check_shapes, int8_quality  # noqa: E402
from lmbook.decoding.generate import generate  # noqa: E402
from lmbook.interface import num_params  # noqa: E402
from lmbook.models.quantize import quantize_int8  # noqa: E402
from lmbook.runtime import commit, environment, get_device  # noqa: E402

SHAPES = ("shakespeare-char", "gpt2")  # chapter 3's full character GPT, and GPT-2 124M's shape
BASE = ("lmbook", "transformers")  # the decoders of every run; --int8 and --kernels add others


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


def decoder_models(model, int8: bool, kernels: bool) -> dict:
    """lmbook's decoders besides the plain one: int8 weights, and the C kernels (float32, and int8 with --int8)."""
    models = {}
    if int8:
        models["lmbook-int8"] = quantize_int8(model)
    if kernels:
        from decode_kernels import with_kernels

        models["lmbook-c"] = with_kernels(model)
        if int8:
            models["lmbook-int8-c"] = with_kernels(models["lmbook-int8"])
    return models


def run_alternately(fns: dict, repeats: int) -> tuple[dict, dict]:
    """Each decoder once short (warm-up), then ``repeats`` rounds of each in turn: seconds and outputs by name."""
    for fn in fns.values():
        fn(8)  # first calls allocate and pick kernels
    times, outputs = {name: [] for name in fns}, {}
    for _ in range(repeats):
        for name, fn in fns.items():
            seconds, outputs[name] = timed(fn)
            times[name].append(seconds)
    return times, outputs


def make_row(shape, dtype, batch, args, model, times, outputs) -> dict:
    same = torch.equal(outputs["lmbook"].cpu(), outputs["transformers"].cpu())
    row = {"shape": shape, "dtype": str(dtype).removeprefix("torch."), "batch": batch, "new_tokens": args.new_tokens,
           "prompt_length": args.prompt_length,
           "params": num_params(model), "same_ids": same, "load_average": os.getloadavg()}
    for name, seconds in times.items():
        row[f"{name}_tok_s_median"] = batch * args.new_tokens / statistics.median(seconds)
        row[f"{name}_tok_s_best"] = batch * args.new_tokens / min(seconds)
        row[f"{name}_seconds"] = seconds
    row["ratio_median"] = row["lmbook_tok_s_median"] / row["transformers_tok_s_median"]
    row["ratio_best"] = row["lmbook_tok_s_best"] / row["transformers_tok_s_best"]
    for name in times:
        if name not in BASE:
            row[f"{name}_ratio_median"] = row[f"{name}_tok_s_median"] / row["transformers_tok_s_median"]
            row[f"{name}_ratio_best"] = row[f"{name}_tok_s_best"] / row["transformers_tok_s_best"]
    if "lmbook-int8" in outputs:  # int8 against lmbook's float32 tokens: not required to be equal
        row["lmbook-int8_agreement"] = agreement(outputs["lmbook-int8"], outputs["lmbook"], args.prompt_length)
    for name, reference in (("lmbook-c", "lmbook"), ("lmbook-int8-c", "lmbook-int8")):
        if name in outputs:  # the same numbers up to the order of the sums
            row[f"{name}_same_ids"] = torch.equal(outputs[name].cpu(), outputs[reference].cpu())
            row[f"{name}_agreement"] = agreement(outputs[name], outputs[reference], args.prompt_length)
    return row


def print_row(row: dict, names, rates: bool) -> None:
    shape, batch = row["shape"], row["batch"]
    print(f"{shape:17s} {row['dtype']:8s} batch {batch:2d}: lmbook {row['lmbook_tok_s_median']:8.1f} tok/s "
          f"(best {row['lmbook_tok_s_best']:8.1f}), transformers {row['transformers_tok_s_median']:8.1f} "
          f"(best {row['transformers_tok_s_best']:8.1f}); ratio {row['ratio_median']:.2f}x median, "
          f"{row['ratio_best']:.2f}x best; same ids: {row['same_ids']}; load {os.getloadavg()[0]:.1f}", flush=True)
    for name in names:
        if name in BASE:
            continue
        check = (f"ids agree with lmbook float32's: {row['lmbook-int8_agreement']:.1%}" if name == "lmbook-int8"
                 else f"same ids as {name.removesuffix('-c')}: {row[f'{name}_same_ids']} "
                      f"({row[f'{name}_agreement']:.1%} agree)")
        print(f"    {name:14s} {row[f'{name}_tok_s_median']:8.1f} tok/s (best {row[f'{name}_tok_s_best']:8.1f}), "
              f"{row[f'{name}_ratio_median']:.2f}x transformers' float32 median ({row[f'{name}_ratio_best']:.2f}x "
              f"best); {check}", flush=True)
    if rates:
        for name in names:
            share = "" if row[f"{name}_of_stream"] is None else (
                f": {row[f'{name}_of_stream']:.0%} of the streaming read, "
                f"{row[f'{name}_of_matvec']:.0%} of the matrix-vector rate")
            print(f"    {name:14s} effective {row[f'{name}_gb_s']:6.2f} GB/s "
                  f"({row[f'{name}_step_bytes'] / 1e6:.1f} MB of weights a step){share}", flush=True)


def bench_shape(shape: str, args, device: torch.device, dtype: torch.dtype = torch.float32,
                stream: dict | None = None) -> list[dict]:
    model, hf_model = build(shape, args.llama, device, dtype)
    if args.prompt_length + args.new_tokens > model.context_length:
        raise SystemExit(f"--prompt-length {args.prompt_length} + --new-tokens {args.new_tokens} exceed the context "
                         f"of {shape} ({model.context_length} positions), past which the two sides slide differently.")
    vocab = model.vocab_size
    others = decoder_models(model, args.int8, args.kernels)
    step_bytes = {"lmbook": decode_rates.step_bytes(model), "transformers": decode_rates.step_bytes(model),
                  **{name: decode_rates.step_bytes(m) for name, m in others.items()}}
    matvec = None
    if args.bandwidth:
        matvec = matvec_report(shape, model, args, device)
    quality = None
    rows = []
    for batch in args.batch_sizes:
        idx = torch.randint(0, vocab, (batch, args.prompt_length), device=device)
        mask = torch.ones_like(idx)
        if args.int8 and quality is None:
            quality = int8_quality(shape, model, others["lmbook-int8"], idx, device, args.kernels)

        def theirs(n=args.new_tokens, idx=idx, mask=mask):
            with torch.inference_mode():
                return hf_model.generate(idx, attention_mask=mask, max_new_tokens=n, do_sample=False)

        def ours(m, idx=idx):
            return lambda n=args.new_tokens: generate(m, idx, n, do_sample=False)

        fns = {"lmbook": ours(model), "transformers": theirs, **{name: ours(m) for name, m in others.items()}}
        times, outputs = run_alternately(fns, args.repeats)
        row = make_row(shape, dtype, batch, args, model, times, outputs)
        if args.bandwidth:
            for name in fns:
                decode_rates.effective(row, name, step_bytes[name], stream, matvec)
            row["matvec"] = matvec
        if quality is not None:
            row["int8_quality"] = quality
        rows.append(row)
        print_row(row, list(fns), args.bandwidth)
        if args.profile:
            row["profile"] = {name: profile_share(fn) for name, fn in fns.items()}
            for name, p in row["profile"].items():
                print(f"    {name}: {p['ms']:.0f} ms of operators, {p['matmul_share']:.0%} in matrix products; "
                      f"top: {p['top']}")
    return rows


def matvec_report(shape: str, model, args, device: torch.device) -> dict:
    shapes = decode_rates.matrix_shapes(model)
    mib = args.matvec_mib or max(256, 16 * (decode_rates.last_level_cache_bytes() or 32 * 2**20) // 2**20)
    rates = decode_rates.matvec_rates(shapes, mib, device, kernels=args.kernels)
    kernels = "" if not args.kernels else (f"; C kernel (out, in) {rates['kernel_f32_gb_s']:.2f} GB/s, "
                                           f"int8 {rates['kernel_i8_gb_s']:.2f} GB/s of int8 "
                                           f"({rates['kernel_i8_matrices']} matrices)")
    print(f"matrix-vector rate, {shape} ({len(shapes)} matrices a step, repeated to {rates['matrices']} distinct, "
          f"{rates['mib']:.0f} MiB): PyTorch (out, in) {rates['out_in_gb_s']:.2f} GB/s, (in, out) "
          f"{rates['in_out_gb_s']:.2f} GB/s{kernels}", flush=True)
    return rates


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, not {text}")
    return value


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=None,
                        help=f"named GPT shapes ({', '.join(GPT_SHAPES)}; default {' '.join(SHAPES)}), or with "
                             f"--llama Llama shapes ({', '.join(LLAMA_SHAPES)}; default llama-char)")
    parser.add_argument("--batch-sizes", type=positive, nargs="+", default=[1, 8])
    parser.add_argument("--new-tokens", type=positive, default=200)
    parser.add_argument("--prompt-length", type=positive, default=16)
    parser.add_argument("--repeats", type=positive, default=3)
    parser.add_argument("--threads", type=positive, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--profile", action="store_true", help="also profile one run of each decoder")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                        help="the weights' and activations' precision, the same for both sides")
    parser.add_argument("--bandwidth", action="store_true",
                        help="measure the streaming-read and matrix-vector rates, and each decoder's effective rate")
    parser.add_argument("--stream-mib", type=positive, default=1024, help="the streaming-read buffer, MiB")
    parser.add_argument("--matvec-mib", type=positive, default=None,
                        help="the matrices of the matrix-vector rate, MiB in all (default: 16 x last-level cache)")
    parser.add_argument("--int8", action="store_true", help="add lmbook's generate on quantize_int8(model)")
    parser.add_argument("--kernels", action="store_true", help="add lmbook's generate through the C kernels")
    parser.add_argument("--llama", action="store_true", help="decode Llama shapes against LlamaForCausalLM")
    parser.add_argument("--out", type=Path, default=None, help="write the results here as JSON")
    args = parser.parse_args(argv)
    args.shapes = args.shapes or (["llama-char"] if args.llama else list(SHAPES))
    check_shapes(args.shapes, args.llama)
    if args.dtype != "float32" and (args.int8 or args.kernels):
        parser.error("--int8 and --kernels are compared with float32 decoding: leave --dtype at float32.")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = get_device()
    if args.kernels and device.type != "cpu":
        raise SystemExit(f"--kernels runs C kernels on the CPU, and the device here is {device}.")
    info = {**environment(), "commit": commit(), "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "load_average_before": os.getloadavg()}
    print(" | ".join(f"{k} {v}" for k, v in info.items()), flush=True)
    stream = None
    if args.bandwidth:
        stream = decode_rates.stream_rate(args.stream_mib, device)
        info["stream"] = stream
        info["last_level_cache_bytes"] = decode_rates.last_level_cache_bytes()
        print(f"streaming read: {stream['gb_s']:.2f} GB/s (.sum() of a float32 buffer of {args.stream_mib} MiB, "
              f"best of {stream['passes']}; last-level cache {info['last_level_cache_bytes']} bytes)", flush=True)
    rows = [row for shape in args.shapes
            for row in bench_shape(shape, args, device, getattr(torch, args.dtype), stream)]
    result = {**info, "load_average_after": os.getloadavg(), "rows": rows}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
