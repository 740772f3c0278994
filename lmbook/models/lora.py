"""Low-rank adaptation (LoRA, Hu et al., 2022): fine-tune a few small matrices beside frozen weights (chapter 4).

A frozen linear layer ``W x`` becomes ``W x + (alpha / r) B A x``, with ``A`` of shape
(r, in) and ``B`` of shape (out, r) for a small rank ``r``. ``B`` starts at zero, so the
wrapped model computes exactly what the original did until training moves it; afterwards
the update can be merged into ``W`` (:meth:`LoRALinear.merged`) at no cost at inference.
A layer's state dict holds ``W``, ``A`` and ``B`` whether it is merged or not, so a saved state loads into
any adapted model, merged or not, as the same function.
"""

from __future__ import annotations

import copy as copy_module
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class LoRALinear(nn.Module):
    """``base(x) + (alpha / r) * x Aᵀ Bᵀ`` around a frozen ``nn.Linear``; only ``A`` and ``B`` train."""

    def __init__(self, base: nn.Linear, r: int = 4, alpha: float = 8.0):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear wraps an nn.Linear, not a {type(base).__name__}.")
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise ValueError(f"the LoRA rank r must be an integer of at least 1, not {r!r}.")
        if isinstance(alpha, bool) or not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0):
            raise ValueError(f"the LoRA scale alpha must be a finite number > 0, not {alpha!r}.")
        self.base = base
        self.base.requires_grad_(False)
        self.r, self.alpha, self.scaling = r, alpha, alpha / r
        weight = base.weight
        self.A = nn.Parameter(torch.empty(r, base.in_features, device=weight.device, dtype=weight.dtype))
        self.B = nn.Parameter(torch.zeros(base.out_features, r, device=weight.device, dtype=weight.dtype))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))  # as nn.Linear initialises its weight; B = 0 keeps the output
        # W + (alpha / r) B A while merged, else None; not in the state dict, which keeps W, A and B apart
        self.register_buffer("merged_weight", None, persistent=False)
        self.register_load_state_dict_post_hook(_merge_loaded)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged_weight is not None:  # merged: one matrix product, the update inside it
            return F.linear(x, self.merged_weight, self.base.bias)
        return self.base(x) + (x @ self.A.T @ self.B.T) * self.scaling  # (..., out)

    @torch.no_grad()
    def merge(self) -> None:
        """Compute with ``W + (alpha / r) B A`` from now on (no extra work per call); :meth:`unmerge` goes back.

        The base weight itself is left as it is, so the state dict, and a checkpoint of it, stay the same.
        """
        if self.merged_weight is not None:
            raise ValueError("this LoRA layer is merged already; unmerge() it first.")
        self.merged_weight = self.base.weight + self.delta_weight()

    def unmerge(self) -> None:
        """Compute with the base weight and the adapters apart again (the base weight was never changed)."""
        if self.merged_weight is None:
            raise ValueError("this LoRA layer is not merged; there is nothing to unmerge.")
        self.merged_weight = None

    def delta_weight(self) -> torch.Tensor:
        """The update ``(alpha / r) B A`` (out, in) that training added to the frozen weight."""
        return self.scaling * self.B @ self.A

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """A plain ``nn.Linear`` with ``W + (alpha / r) B A``: the same function, no adapter left."""
        base = self.base
        linear = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None,
                           device=base.weight.device, dtype=base.weight.dtype)
        linear.weight.copy_(base.weight + self.delta_weight())
        if base.bias is not None:
            linear.bias.copy_(base.bias)
        return linear


@torch.no_grad()
def _merge_loaded(layer: LoRALinear, incompatible_keys) -> None:
    """After ``load_state_dict``, a merged layer merges the weights it was given, not the ones it had."""
    if layer.merged_weight is not None:
        layer.merged_weight = layer.base.weight + layer.delta_weight()


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def apply_lora(model: nn.Module, targets: tuple[str, ...] = ("attn.c_attn", "attn.c_proj"), r: int = 4,
               alpha: float = 8.0) -> list[str]:
    """Freeze every parameter of ``model`` and wrap each ``nn.Linear`` whose name ends with one of ``targets``.

    Returns the names of the wrapped layers; afterwards only their ``A`` and ``B`` train (a task
    head outside ``model`` keeps training). For a GPT the targets may be any of ``attn.c_attn``,
    ``attn.c_proj``, ``mlp.c_fc`` and ``mlp.c_proj``.
    """
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(f"the LoRA rank r must be an integer of at least 1, not {r!r}.")
    if isinstance(targets, str):  # one name, not its characters: "attn.c_attn" must not match every name ending in "n"
        targets = (targets,)
    targets = tuple(targets)
    if not targets or not all(isinstance(t, str) and t for t in targets):
        raise ValueError(f"targets must be one or more non-empty layer names (strings), not {targets!r}.")
    if any(isinstance(m, LoRALinear) for m in model.modules()):
        raise ValueError("the model carries LoRA adapters already: merge them (merge_lora) or adapt a fresh copy; "
                         "adapters on adapters would train the wrong matrices.")
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.endswith(tuple(targets))]
    if not names:
        linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        shown = ", ".join(linear[:6]) + (", ..." if len(linear) > 6 else "") if linear else "none"
        raise ValueError(f"targets={targets} name no nn.Linear of the model, so there is nothing to adapt (a layer is "
                         f"adapted when its name ends with a target): choose targets among the ends of its linear "
                         f"layers' names ({shown}).")
    uses: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        uses[id(p)] = uses.get(id(p), 0) + 1
    tied = [n for n in names if uses[id(model.get_submodule(n).weight)] > 1]
    if tied:
        raise ValueError(f"{tied} share their weight with another layer (tied weights): an adapter merged into it "
                         "would change the other layer too. Leave them out of targets.")
    wrapped = {name: LoRALinear(model.get_submodule(name), r, alpha) for name in names}  # may refuse: model untouched
    model.requires_grad_(False)
    for name, layer in wrapped.items():
        _replace(model, name, layer)
    return names


def merge_lora(model: nn.Module, copy: bool = False) -> nn.Module:
    """Replace every :class:`LoRALinear` in ``model`` by its merged ``nn.Linear``; returns the merged model.

    In place by default (the adapters are gone for good); ``copy=True`` merges a copy and leaves ``model``,
    adapters and all, as it was. :meth:`LoRALinear.merge` and :meth:`~LoRALinear.unmerge` do the same
    reversibly, layer by layer, keeping the adapters.
    """
    if not isinstance(copy, bool):
        raise TypeError(f"copy must be True or False, not {copy!r}.")
    if copy:
        model = copy_module.deepcopy(model)
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            _replace(model, name, module.merged())
    return model


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` numbers of parameters (a tied matrix counts once)."""
    params = list(model.parameters())  # parameters() yields a shared tensor once
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
