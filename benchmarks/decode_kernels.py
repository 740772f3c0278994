"""Matrix-vector kernels written in C for ``bench_decode.py --kernels``: a decoder path of the benchmark only.

At batch 1 a decoding step multiplies one row by every weight matrix, so it runs at the rate its kernel
reads weights. Two kernels, compiled here with the system's C compiler (``cc -O3 -march=native``, once per
source, kept in the temporary folder) and called through ``ctypes``:

- ``linear_f32``: ``y = x @ W.T + b`` with ``W`` (out, in) float32 as ``nn.Linear`` stores it, each output a
  dot product of the row ``x`` with one row of ``W``; several rows of ``x`` go eight at a time (each weight
  read once for all eight, the rows padded to a multiple of 8), with AVX2 and FMA where the compiler targets them;
- ``linear_i8``: ``y = (x @ q.T) * s + b`` with ``q`` (out, in) int8 and one float32 scale per output row,
  the numbers of :class:`lmbook.models.quantize.Int8Linear`, but each int8 weight converted to float32 in a
  register as it is read: one byte a weight comes from memory, where ``Int8Linear`` first writes the whole
  matrix out as float32 (four bytes a weight written and read again).

Both run on one thread, on a CPU, in float32; the sums run in another order than PyTorch's, so outputs agree
within float32 rounding, not bit for bit. :func:`with_kernels` swaps them into a copy of a model.
"""

from __future__ import annotations

import copy
import ctypes
import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
import torch.nn as nn

from lmbook.models.quantize import Int8Linear

SOURCE = r"""
#include <stdint.h>
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define VEC 1
static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}
static inline __m256 widen(const int8_t *q) {  /* 8 int8 -> 8 float32 */
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)q)));
}
#else
#define VEC 0
#endif
#define BLOCK 8

/* rows m0 .. m0+7 of y (M, N): dot products with the rows of w (N, K), float32 (wide = 0) or int8 (wide = 1) */
static void dots8(const float *x, const void *w, int wide, const float *s, const float *b, float *y,
                  int64_t m0, int64_t K, int64_t N) {
    for (int64_t n = 0; n < N; n++) {
        float out[BLOCK];
        int64_t k = 0;
#if VEC
        __m256 acc[BLOCK];
        for (int i = 0; i < BLOCK; i++) acc[i] = _mm256_setzero_ps();
        for (; k + 8 <= K; k += 8) {
            __m256 wv = wide ? widen((const int8_t *)w + n * K + k) : _mm256_loadu_ps((const float *)w + n * K + k);
            for (int i = 0; i < BLOCK; i++) acc[i] = _mm256_fmadd_ps(_mm256_loadu_ps(x + (m0 + i) * K + k), wv, acc[i]);
        }
        for (int i = 0; i < BLOCK; i++) out[i] = hsum(acc[i]);
#else
        for (int i = 0; i < BLOCK; i++) out[i] = 0.0f;
#endif
        for (int64_t j = k; j < K; j++) {
            float wj = wide ? (float)((const int8_t *)w)[n * K + j] : ((const float *)w)[n * K + j];
            for (int i = 0; i < BLOCK; i++) out[i] += x[(m0 + i) * K + j] * wj;
        }
        for (int i = 0; i < BLOCK; i++) {
            float v = s ? out[i] * s[n] : out[i];
            y[(m0 + i) * N + n] = b ? v + b[n] : v;
        }
    }
}

/* one vector at a time: four accumulators, so that the loads of one row overlap */
static void dot1(const float *x, const void *w, int wide, const float *s, const float *b, float *y,
                 int64_t K, int64_t N) {
#if VEC
    if (K % 32 == 0) {
        for (int64_t n = 0; n < N; n++) {
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            if (wide) {
                const int8_t *q = (const int8_t *)w + n * K;
                for (int64_t k = 0; k < K; k += 32) {
                    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k), widen(q + k), a0);
                    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k + 8), widen(q + k + 8), a1);
                    a2 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k + 16), widen(q + k + 16), a2);
                    a3 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k + 24), widen(q + k + 24), a3);
                }
            } else {
                const float *r = (const float *)w + n * K;
                for (int64_t k = 0; k < K; k += 32) {
                    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k), _mm256_loadu_ps(r + k), a0);
                    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k + 8), _mm256_loadu_ps(r + k + 8), a1);
                    a2 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k + 16), _mm256_loadu_ps(r + k + 16), a2);
                    a3 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k + 24), _mm256_loadu_ps(r + k + 24), a3);
                }
            }
            float v = hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
            v = s ? v * s[n] : v;
            y[n] = b ? v + b[n] : v;
        }
        return;
    }
#endif
    for (int64_t n = 0; n < N; n++) {
        float v = 0.0f;
        for (int64_t k = 0; k < K; k++)
            v += x[k] * (wide ? (float)((const int8_t *)w)[n * K + k] : ((const float *)w)[n * K + k]);
        v = s ? v * s[n] : v;
        y[n] = b ? v + b[n] : v;
    }
}

/* M == 1, or M a multiple of 8 (the caller pads) */
void linear(const float *x, const void *w, int wide, const float *s, const float *b, float *y,
            int64_t M, int64_t K, int64_t N) {
    if (M == 1) { dot1(x, w, wide, s, b, y, K, N); return; }
    for (int64_t m0 = 0; m0 < M; m0 += BLOCK) dots8(x, w, wide, s, b, y, m0, K, N);
}

int vectorised(void) { return VEC; }
"""

_library = None


def compiler() -> str | None:
    """The C compiler the kernels are built with (``$CC`` is not read: ``cc``, ``gcc`` or ``clang``)."""
    return next((c for c in ("cc", "gcc", "clang") if shutil.which(c)), None)


def library() -> ctypes.CDLL:
    """The compiled kernels, built on first use (a second or two) and then loaded from the temporary folder."""
    global _library
    if _library is not None:
        return _library
    cc = compiler()
    if cc is None:
        raise RuntimeError("--kernels needs a C compiler (cc, gcc or clang) on the PATH, and none was found.")
    digest = hashlib.sha256(SOURCE.encode()).hexdigest()[:12]
    folder = Path(tempfile.gettempdir()) / "lmbook-decode-kernels"
    folder.mkdir(exist_ok=True)
    path = folder / f"kernels-{digest}.so"
    if not path.exists():
        source = folder / f"kernels-{digest}.c"
        source.write_text(SOURCE, encoding="utf-8")
        partial = folder / f"kernels-{digest}.{id(source)}.so"
        done = subprocess.run([cc, "-O3", "-march=native", "-shared", "-fPIC", "-o", str(partial), str(source)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"compiling the decoding kernels failed:\n{done.stderr}")
        partial.replace(path)  # whole or not at all, should two processes build at once
    lib = ctypes.CDLL(str(path))
    lib.linear.restype = None
    lib.linear.argtypes = [ctypes.c_void_p] * 2 + [ctypes.c_int] + [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 3
    lib.vectorised.restype = ctypes.c_int
    _library = lib
    return lib


def vectorised() -> bool:
    """Whether the kernels were compiled with AVX2 and FMA (else plain loops, much slower)."""
    return bool(library().vectorised())


def _pointer(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def kernel_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  scale: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T (* scale) (+ bias)`` by the C kernel: ``x`` (..., in) float32, ``weight`` (out, in) float32
    or int8 (then ``scale`` (out,) is required), all on the CPU."""
    if x.device.type != "cpu" or weight.device.type != "cpu":
        raise ValueError(f"the C kernels run on the CPU, not on {x.device} / {weight.device}.")
    if x.dtype != torch.float32:
        raise ValueError(f"the C kernels take float32 inputs, not {x.dtype}.")
    wide = weight.dtype == torch.int8
    if wide == (scale is None) or weight.dtype not in (torch.float32, torch.int8):
        raise ValueError("give a float32 weight without scales, or an int8 weight with its float32 scales.")
    N, K = weight.shape
    if x.size(-1) != K:
        raise ValueError(f"x has {x.size(-1)} features, the weight takes {K}.")
    x2 = x.reshape(-1, K).contiguous()
    M = x2.size(0)
    if M > 1 and M % 8:  # the kernel takes rows eight at a time: pad with zero rows
        x2 = torch.cat([x2, x2.new_zeros(8 - M % 8, K)])
    y = torch.empty(x2.size(0), N, dtype=torch.float32)
    library().linear(x2.data_ptr(), weight.contiguous().data_ptr(), int(wide), _pointer(scale), _pointer(bias),
                     y.data_ptr(), x2.size(0), K, N)
    return y[:M].view(*x.shape[:-1], N)


class KernelLinear(nn.Module):
    """An ``nn.Linear`` or :class:`Int8Linear` computed by the C kernel: the same weights (shared, not copied)."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        if isinstance(layer, Int8Linear):
            self.weight, self.scale = layer.qweight, layer.scale.float().contiguous()
        elif isinstance(layer, nn.Linear):
            if layer.weight.dtype != torch.float32:
                raise ValueError(f"the C kernels read float32 or int8 weights, not {layer.weight.dtype}.")
            self.weight, self.scale = layer.weight, None
        else:
            raise TypeError(f"KernelLinear wraps an nn.Linear or an Int8Linear, not a {type(layer).__name__}.")
        self.bias = None if layer.bias is None else layer.bias.detach().float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernel_linear(x, self.weight.detach(), self.bias, self.scale)


def with_kernels(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (on the CPU, float32 activations) with every ``nn.Linear`` and :class:`Int8Linear`
    computed by the C kernels; weights tied in ``model`` stay tied in the copy."""
    if any(p.device.type != "cpu" for p in model.parameters()):
        raise ValueError("the C kernels run on the CPU: move the model there first.")
    library()  # fail early, with the compiler's message
    model = copy.deepcopy(model)
    targets = [(name, m) for name, m in model.named_modules() if isinstance(m, (nn.Linear, Int8Linear))]
    for name, layer in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, KernelLinear(layer))
    return model.eval()
