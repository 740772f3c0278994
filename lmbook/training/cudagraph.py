"""A whole training step recorded once as a CUDA graph and replayed (chapter 3's speed run).

Eager PyTorch launches every kernel of a step from Python, one by one. For a small
model the GPU finishes each kernel before the next one is launched, so a step costs
a fixed few milliseconds of launching however little there is to compute. A CUDA
graph records the kernels of one step (forward, backward, clipping, AdamW) once;
replaying it launches them all with one call. What that asks of the step:

- fixed memory: each batch is copied into the same input tensors, and the loss and
  gradient norm are read from the same output tensors;
- nothing in the step waits for the CPU (no ``.item()``, no branch on a value);
- the learning rate lives on the GPU as a tensor (``AdamW(lr=tensor, capturable=True)``,
  see :func:`lmbook.training.optim.make_optimizer`) and is written before each replay;
- a few ordinary steps first, on a side stream, so that everything created lazily
  (optimizer moments, library workspaces) exists before the recording.

:func:`lmbook.training.train.train` uses it with ``TrainConfig(cuda_graph=True)``.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn

WARMUP_STEPS = 3  # ordinary steps before the recording, as PyTorch's CUDA graph notes advise


class CapturedStep:
    """Call with ``(x, y, lr)`` for one optimizer update; returns ``(loss, grad_norm)`` as tensors.

    The first :data:`WARMUP_STEPS` calls train eagerly on a side stream; the last of
    them is followed by the recording, and every later call replays it. Every call is
    a real update of the model, with the batch and learning rate it was given.
    ``loss_fn(x, y)`` runs the forward pass (under autocast if wanted) and returns the
    loss; ``grad_clip`` of ``None`` leaves the gradient as it is.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        optimizer: torch.optim.Optimizer,
        grad_clip: float | None,
    ):
        device = next(model.parameters()).device
        if device.type != "cuda":
            raise ValueError(
                f"a CUDA graph needs the model on a CUDA device; it is on {device.type}. "
                "Train with TrainConfig(cuda_graph=False) here."
            )
        groups = optimizer.param_groups
        if not all(isinstance(group["lr"], torch.Tensor) and group.get("capturable") for group in groups):
            raise ValueError(
                "a CUDA graph needs AdamW(capturable=True) with the learning rate as a tensor; "
                "make the optimizer with lmbook.training.optim.make_optimizer and TrainConfig(cuda_graph=True)."
            )
        self.loss_fn, self.optimizer = loss_fn, optimizer
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.max_norm = math.inf if grad_clip is None else grad_clip
        self.graph: torch.cuda.CUDAGraph | None = None
        self.calls = 0
        self.x = self.y = self.loss = self.norm = None  # the graph's fixed inputs and outputs

    def _step(self) -> tuple[torch.Tensor, torch.Tensor]:
        loss = self.loss_fn(self.x, self.y)
        loss.backward()
        norm = nn.utils.clip_grad_norm_(self.params, self.max_norm)  # the norm before clipping
        self.optimizer.step()
        return loss.detach().float(), norm.float()

    def __call__(self, x: torch.Tensor, y: torch.Tensor, lr: float) -> tuple[torch.Tensor, torch.Tensor]:
        if self.x is None:
            self.x, self.y = x.clone(), y.clone()
        elif x.shape != self.x.shape or y.shape != self.y.shape:
            raise ValueError(
                f"a CUDA graph replays one batch shape; it was recorded for {tuple(self.x.shape)}, "
                f"not {tuple(x.shape)}. Draw batches of one size, or train with cuda_graph=False."
            )
        else:
            self.x.copy_(x)
            self.y.copy_(y)
        for group in self.optimizer.param_groups:
            group["lr"].fill_(lr)
        self.calls += 1
        if self.graph is not None:
            self.graph.replay()
            return self.loss.clone(), self.norm.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self.optimizer.zero_grad(set_to_none=True)
            loss, norm = self._step()
        torch.cuda.current_stream().wait_stream(side)
        for t in (loss, norm):  # made on the side stream, read on this one
            t.record_stream(torch.cuda.current_stream())
        if self.calls == WARMUP_STEPS:
            # With no gradients at the start of the recording, backward allocates them from the
            # graph's own memory and each replay writes them afresh: no zero_grad is needed.
            self.optimizer.zero_grad(set_to_none=True)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.loss, self.norm = self._step()  # recorded, not run
        return loss, norm
