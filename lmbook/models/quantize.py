"""Int8 weight-only quantization for decoding (chapter 8), written out.

Decoding one sequence reads every weight once a token, so its speed is the speed of reading the weights:
storing them in one byte instead of four reads a quarter of the bytes. Each output row ``W_j`` of a linear
layer gets its own scale ``s_j = max|W_j| / 127.5`` (the 255 steps of int8 spread over ``[-max, max]``, as
``torchao``'s ``Int8WeightOnlyConfig`` spreads them) and is stored as ``q_j = round(W_j / s_j)``, integers
in [-128, 127]; the layer computes ``(x @ q.T) · s + b``, the integers converted to the input's dtype as they
are read. Rounding moves each weight by at most ``s_j / 2``. Activations stay in floating point
("weight-only"). On a CPU a large matrix is converted a block of rows at a time (:data:`BLOCK_BYTES` of
float32): converted whole, GPT-2's output layer (50,257 x 768) is a fresh 154 MB allocation that the system
maps page by page at every call, and the 49 matrices of GPT-2's shape took 134 to 164 ms for one row on one
thread, against 32 to 43 ms in blocks (``benchmarks/NOTES.md``); the outputs agree within float32 rounding.

:func:`quantize_int8` swaps every ``nn.Linear`` of a model (a tied output layer too: the embedding it shares
its weight with stays in float) for an :class:`Int8Linear`.
"""

from __future__ import annotations

import copy as copy_module

import torch
import torch.nn as nn
import torch.nn.functional as F

from .lora import LoRALinear

BLOCK_BYTES = 4 * 2**20  # on a CPU, the float32 bytes of weight converted at a time


def int8_per_row(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``weight`` (out, in) as int8 ``q`` (out, in) and float32 scales ``s`` (out,), with ``q · s ≈ weight``."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny) / 127.5  # (out,) a zero row: any scale
    q = torch.round(w / scale[:, None]).clamp(-128, 127).to(torch.int8)  # (out, in)
    return q, scale


class Int8Linear(nn.Module):
    """A linear layer whose weight is stored as int8 with one float32 scale per output row (weight-only)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"Int8Linear quantizes an nn.Linear, not a {type(linear).__name__}.")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        q, scale = int8_per_row(linear.weight)
        self.register_buffer("qweight", q)  # (out, in) int8: a quarter of the float32 bytes
        self.register_buffer("scale", scale)  # (out,)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    def dequantized(self) -> torch.Tensor:
        """The weight the layer computes with, q · s (out, in), in float32."""
        return self.qweight.float() * self.scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.qweight
        rows = max(1, BLOCK_BYTES // (q.size(1) * x.element_size()))
        if x.device.type != "cpu" or q.size(0) <= rows:
            y = F.linear(x, q.to(x.dtype))  # (..., out)
        else:  # a block of rows at a time (see the module's docstring)
            y = torch.cat([F.linear(x, q[r : r + rows].to(x.dtype)) for r in range(0, q.size(0), rows)], dim=-1)
        y = y * self.scale.to(x.dtype)
        return y if self.bias is None else y + self.bias.to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weights, per-row scales"


def quantize_int8(model: nn.Module, copy: bool = True) -> nn.Module:
    """``model`` (a copy, unless ``copy=False``) with every ``nn.Linear`` replaced by an :class:`Int8Linear`, in
    eval mode: for decoding, not training (the int8 weights have no gradient)."""
    if not isinstance(copy, bool):
        raise TypeError(f"copy must be True or False, not {copy!r}.")
    adapted = [name for name, m in model.named_modules() if isinstance(m, LoRALinear)]
    if adapted:
        raise ValueError(f"the model carries LoRA adapters ({', '.join(adapted[:3])}, ...): merge them first "
                         "(lmbook.models.lora.merge_lora), then quantize the merged weights.")
    if not any(isinstance(m, nn.Linear) for m in model.modules()):
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer to quantize.")
    model = copy_module.deepcopy(model) if copy else model
    targets = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    for name, linear in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, Int8Linear(linear))
    return model.eval()


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the weights a decoding step reads: every parameter and every int8 weight and scale buffer."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    return total + sum(b.numel() * b.element_size() for m in model.modules() if isinstance(m, Int8Linear)
                       for b in (m.qweight, m.scale))
