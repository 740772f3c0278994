"""AdamW and its learning-rate schedule, as the training loop uses them (chapters 2 to 7).

:func:`make_optimizer` decays matrices and embeddings but not biases and LayerNorm gains;
:func:`lr_at` warms the rate up linearly, then decays it by a cosine or a straight line.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

if TYPE_CHECKING:
    from .train import TrainConfig


def lr_at(step: int, config: TrainConfig) -> float:
    """The learning rate for update ``step`` (0-based): linear warm-up, then the chosen decay."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.schedule == "constant":
        return config.lr
    progress = min(1.0, (step - config.warmup_steps) / max(1, config.max_steps - config.warmup_steps))
    if config.schedule == "cosine":
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        shape = 1.0 - progress
    return config.min_lr + shape * (config.lr - config.min_lr)


def make_optimizer(model: nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on tensors of two or more dimensions (fused kernels on CUDA and CPU).

    With ``config.cuda_graph`` each group's learning rate is a tensor on the device, written
    in place before every step, and the optimizer is ``capturable`` (see :mod:`lmbook.cudagraph`).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    fused = device.type in ("cuda", "cpu")  # one kernel for all tensors instead of a loop over them
    if config.cuda_graph:
        if device.type != "cuda":
            raise ValueError(f"cuda_graph needs a CUDA device; the model is on {device.type}. Set cuda_graph=False.")
        for group in groups:  # one tensor per group, so that a group's rate is never shared by accident
            group["lr"] = torch.tensor(config.lr, dtype=torch.float32, device=device)
        return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, fused=True, capturable=True)
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, fused=fused)
