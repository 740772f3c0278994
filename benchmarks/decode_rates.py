"""The rates ``bench_decode.py --bandwidth`` compares decoding with: memory, PyTorch's matrix-vector product, and
the weights a decoding step reads.

- :func:`stream_rate`: this machine's streaming-read rate, the best of a few ``.sum()`` passes over a float32
  buffer (1 GiB by default, far larger than any cache): bytes of the buffer over the seconds of a pass.
- :func:`matvec_rates`: the rate at which PyTorch's matrix-vector product reads weights: the model's own weight
  matrices, repeated (distinct copies) until they hold far more bytes than the last-level cache, so that every
  matrix comes from memory, one row vector times each in turn; bytes of the matrices over the seconds of a pass,
  best of a few. Both layouts: (out, in) as ``nn.Linear`` stores it, computed as ``F.linear(x, W)``, and
  (in, out) as GPT-2's ``Conv1D`` stores it, computed as ``x @ W``. With ``kernels=True`` also the C kernels of
  ``decode_kernels.py`` on the same matrices in float32 and in int8 (the int8 rate in bytes of int8 read).
- :func:`step_bytes`: the bytes of weights one decoding step reads, counted matrix by matrix: the weight (and
  bias) of every linear layer, the output layer included (a tied output layer counts its matrix once), and for
  an int8 layer its int8 weight, its scales and its bias. Embedding lookups (one row a token), norms and the
  key/value cache are not counted. At batch B one step reads the weights once for B tokens, so a decoder's
  effective rate is ``step_bytes × tokens/s / B``.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmbook.models.quantize import Int8Linear

MIB = 2**20


def last_level_cache_bytes() -> int | None:
    """The largest CPU cache of CPU 0, from Linux's ``/sys`` (None elsewhere)."""
    sizes = []
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            text = (index / "size").read_text().strip()
        except OSError:
            continue
        units = {"K": 2**10, "M": 2**20, "G": 2**30}
        sizes.append(int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text))
    return max(sizes) if sizes else None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def best_seconds(fn, device: torch.device, passes: int) -> float:
    """The fastest of ``passes`` timed calls of ``fn``, after one untimed call."""
    fn()
    best = float("inf")
    for _ in range(passes):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def stream_rate(mib: int, device: torch.device, passes: int = 3) -> dict:
    """GB/s of reading a float32 buffer of ``mib`` MiB with ``.sum()``, the best of ``passes``."""
    buffer = torch.ones(mib * MIB // 4, dtype=torch.float32, device=device)
    seconds = best_seconds(buffer.sum, device, passes)
    return {"method": "sum", "mib": mib, "passes": passes, "gb_s": buffer.numel() * 4 / seconds / 1e9}


def linear_layers(model: nn.Module) -> list[nn.Module]:
    """The distinct linear layers of ``model`` (``nn.Linear``, ``Int8Linear`` and anything with a 2-D weight and
    ``in_features``), each once even if its weight is shared."""
    seen, layers = set(), []
    for module in model.modules():
        weight = getattr(module, "qweight", None) if isinstance(module, Int8Linear) else getattr(module, "weight", None)
        if isinstance(module, nn.Embedding) or not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            continue
        if id(weight) not in seen:
            seen.add(id(weight))
            layers.append(module)
    return layers


def step_bytes(model: nn.Module) -> int:
    """Bytes of the weights one decoding step reads (see the module's docstring for what counts)."""
    total = 0
    for layer in linear_layers(model):
        weight = layer.qweight if isinstance(layer, Int8Linear) else layer.weight
        parts = [t for t in (weight, getattr(layer, "scale", None), getattr(layer, "bias", None)) if t is not None]
        total += sum(t.numel() * t.element_size() for t in parts)
    return total


def matrix_shapes(model: nn.Module) -> list[tuple[int, int]]:
    """The (out, in) shapes of the weight matrices a decoding step multiplies by, in the order it does."""
    return [tuple((layer.qweight if isinstance(layer, Int8Linear) else layer.weight).shape)
            for layer in linear_layers(model)]


def repeated(shapes: list[tuple[int, int]], target_bytes: int, element_size: int) -> list[tuple[int, int]]:
    """``shapes`` repeated in turn until they hold at least ``target_bytes`` (whole matrices)."""
    out, total = [], 0
    while total < target_bytes:
        for shape in shapes:
            out.append(shape)
            total += shape[0] * shape[1] * element_size
            if total >= target_bytes:
                break
    return out


def _rate(matrices: list[torch.Tensor], product, device: torch.device, passes: int, in_dim: int) -> float:
    vectors = {n: torch.randn(1, n, device=device) for n in {m.shape[in_dim] for m in matrices}}

    def run():
        for m in matrices:
            product(vectors[m.shape[in_dim]], m)

    seconds = best_seconds(run, device, passes)
    return sum(m.numel() * m.element_size() for m in matrices) / seconds / 1e9


def matvec_rates(shapes: list[tuple[int, int]], target_mib: int, device: torch.device, passes: int = 3,
                 kernels: bool = False) -> dict:
    """GB/s of one row vector times each of distinct matrices of ``shapes`` (out, in), ``target_mib`` MiB in all."""
    plan = repeated(shapes, target_mib * MIB, 4)
    result = {"matrices": len(plan), "mib": sum(o * i for o, i in plan) * 4 / MIB, "passes": passes}
    out_in = [torch.randn(o, i, device=device) for o, i in plan]
    result["out_in_gb_s"] = _rate(out_in, F.linear, device, passes, 1)
    if kernels:
        from decode_kernels import kernel_linear

        result["kernel_f32_gb_s"] = _rate(out_in, kernel_linear, device, passes, 1)
    del out_in
    in_out = [torch.randn(i, o, device=device) for o, i in plan]
    result["in_out_gb_s"] = _rate(in_out, torch.mm, device, passes, 0)
    del in_out
    if kernels:
        plan8 = repeated(shapes, target_mib * MIB, 1)
        q = [torch.randint(-128, 128, (o, i), dtype=torch.int8) for o, i in plan8]
        scales = {id(m): torch.rand(m.shape[0]) for m in q}
        result["kernel_i8_gb_s"] = _rate(q, lambda x, m: kernel_linear(x, m, scale=scales[id(m)]), device, passes, 1)
        result["kernel_i8_matrices"] = len(plan8)
    result["best_gb_s"] = max(result["out_in_gb_s"], result["in_out_gb_s"])  # PyTorch's faster layout
    return result


def effective(row: dict, name: str, bytes_per_step: int, stream: dict | None, matvec: dict | None) -> None:
    """Add decoder ``name``'s effective rate to ``row``: bytes a step reads × steps/s, and its share of the
    streaming rate and of PyTorch's matrix-vector rate (the faster layout)."""
    rate = bytes_per_step * row[f"{name}_tok_s_median"] / row["batch"] / 1e9
    row[f"{name}_step_bytes"] = bytes_per_step
    row[f"{name}_gb_s"] = rate
    row[f"{name}_of_stream"] = rate / stream["gb_s"] if stream else None
    row[f"{name}_of_matvec"] = rate / matvec["best_gb_s"] if matvec else None
