"""How to train: the training loop's configuration, AdamW and its learning-rate schedule (chapters 2 to 7).

:class:`TrainConfig` holds every setting of :func:`lmbook.training.train.train` and checks each one;
:func:`make_optimizer` decays matrices and embeddings but not biases and LayerNorm gains;
:func:`lr_at` warms the rate up linearly, then decays it by a cosine or a straight line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..interface import check_bool, check_int
from ..runtime import PRECISIONS


@dataclass
class TrainConfig:
    """How to train. Steps count optimizer updates; each sees ``grad_accum`` batches."""

    max_steps: int = 1000
    lr: float = 1e-3
    min_lr: float = 1e-4  # where the decay ends
    warmup_steps: int = 100
    schedule: str = "cosine"  # "cosine", "linear" or "constant" after the warm-up
    weight_decay: float = 0.1  # applied to matrices and embeddings only
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float | None = 1.0
    grad_accum: int = 1
    eval_interval: int = 100
    eval_iters: int = 20
    log_interval: int = 10  # how often losses are brought back from the device
    precision: str = "auto"  # "auto" (bf16 where supported), "bf16" or "fp32"
    compile: bool | str = False  # True or "model": the whole model; "blocks": each block (compiles faster)
    cuda_graph: bool = False  # record each step as one CUDA graph and replay it (lmbook.training.cudagraph; CUDA only)
    checkpoint_path: str | None = None
    checkpoint_interval: int | None = None  # default: at every evaluation
    seed: int = 1337
    progress: bool = True
    desc: str = "train"
    # Early stopping (chapter 4): watch the evaluation loss on the split ``monitor``; stop after
    # ``patience`` evaluations in a row without a new lowest loss (None: never stop early), and with
    # ``restore_best`` end with the weights of the lowest loss instead of the last ones.
    patience: int | None = None
    restore_best: bool = False
    monitor: str = "val"

    def __post_init__(self) -> None:
        def whole(value) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        def number(value) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

        checks = [
            ("max_steps", whole(self.max_steps) and self.max_steps >= 1, "an integer >= 1"),
            ("grad_accum", whole(self.grad_accum) and self.grad_accum >= 1, "an integer >= 1"),
            ("eval_interval", whole(self.eval_interval) and self.eval_interval >= 1, "an integer >= 1"),
            ("eval_iters", whole(self.eval_iters) and self.eval_iters >= 1, "an integer >= 1"),
            ("log_interval", whole(self.log_interval) and self.log_interval >= 1, "an integer >= 1"),
            ("warmup_steps", whole(self.warmup_steps) and self.warmup_steps >= 0, "an integer >= 0"),
            ("lr", number(self.lr) and self.lr >= 0, "a finite number >= 0"),
            ("min_lr", number(self.min_lr) and 0 <= self.min_lr and (not number(self.lr) or self.min_lr <= self.lr),
             f"a number in [0, lr={self.lr}]"),
            ("weight_decay", number(self.weight_decay) and self.weight_decay >= 0, "a finite number >= 0"),
            ("betas", isinstance(self.betas, (tuple, list)) and len(self.betas) == 2
             and all(number(b) and 0 <= b < 1 for b in self.betas),
             "two numbers in [0, 1)"),
            ("grad_clip", self.grad_clip is None or (number(self.grad_clip) and self.grad_clip > 0),
             "None (no clipping) or a number > 0"),
            ("checkpoint_interval", self.checkpoint_interval is None
             or (whole(self.checkpoint_interval) and self.checkpoint_interval >= 1), "None or an integer >= 1"),
            ("seed", whole(self.seed), "an integer"),
        ]
        for name, ok, allowed in checks:
            if not ok:
                raise ValueError(f"TrainConfig.{name} must be {allowed}, not {getattr(self, name)!r}.")
        if self.schedule not in ("cosine", "linear", "constant"):
            raise ValueError(f"schedule must be 'cosine', 'linear' or 'constant', not {self.schedule!r}.")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be 'auto', 'bf16' or 'fp32', not {self.precision!r}.")
        if self.compile not in (False, True, "model", "blocks"):
            raise ValueError(f"compile must be False, True, 'model' or 'blocks', not {self.compile!r}.")
        for name in ("cuda_graph", "progress", "restore_best"):
            check_bool(name, getattr(self, name))
        if self.cuda_graph and (self.compile or self.grad_accum != 1):
            raise ValueError(
                "cuda_graph records one whole step of one batch: use it with compile=False and grad_accum=1 "
                f"(got compile={self.compile!r}, grad_accum={self.grad_accum})."
            )
        check_int("patience", self.patience, allow_none=True)
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be at least 1 evaluation (None: never stop early), not {self.patience}.")
        self.betas = tuple(self.betas)


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
    in place before every step, and the optimizer is ``capturable`` (see :mod:`lmbook.training.cudagraph`).
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
