"""The one training loop, used by every chapter and every model (n-gram aside).

A model is anything whose call ``model(x, y)`` returns ``(logits, loss)``; a batch
source is a callable returning ``(x, y)`` (see :class:`lmbook.text.data.RandomBatches`).
The loop brings AdamW (fused kernels on CUDA and CPU), warm-up then cosine or linear decay,
gradient accumulation and clipping, bf16 autocast where the GPU supports it, optional
``torch.compile`` or CUDA graphs, evaluation on fixed batches, a tqdm bar, a
:class:`~lmbook.training.history.History`, atomic checkpoints with exact resume, early stopping, and a
clear error at the step where the loss stopped being finite. :func:`train` runs a
:class:`TrainingRun`, whose parts (``resume``, ``step``, ``evaluate``, ``save``, ``record``)
each do one thing.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from .checkpoint import (CheckpointError, atomic_save, check_identity, checkpoint_file, load_checkpoint, model_identity,
                         process_state, set_rng_state)
from .cudagraph import CapturedStep
from .history import History
from ..interface import evaluating
from .optim import TrainConfig, lr_at, make_optimizer
from ..runtime import autocast, mean_over_processes, world

Batches = Callable[[], tuple[torch.Tensor, torch.Tensor]]


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


@torch.no_grad()
def estimate_loss(model: nn.Module, batches: Batches, iters: int, precision: str = "auto") -> float:
    """Mean loss of ``model`` over ``iters`` batches, in eval mode (dropout off)."""
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
        raise ValueError(f"iters must be an integer >= 1, not {iters!r}.")
    device = next(model.parameters()).device
    total = torch.zeros((), device=device)
    with evaluating(model), autocast(device, precision):
        for _ in range(iters):
            x, y = batches()
            total += model(x, y)[1].float()
    return total.item() / iters


def compiled(model: nn.Module, how: bool | str) -> nn.Module:
    """``model`` to call in training: itself, ``torch.compile(model)``, or with each block compiled.

    ``"blocks"`` compiles the repeated blocks one by one (``model.h`` or ``model.blocks``); they share
    their generated kernels, so compiling takes a fraction of the whole-model time.
    """
    if how in (True, "model"):
        return torch.compile(model)
    if how == "blocks":
        blocks = getattr(model, "h", None) or getattr(model, "blocks", None)
        if blocks is None:
            raise ValueError(f"compile='blocks' needs a model with .h or .blocks; {type(model).__name__} has neither.")
        for block in blocks:
            block.compile()
    return model


class TrainingRun:
    """One run of the loop: the model, its optimizer and batch sources, and where the run stands.

    :func:`train` is ``TrainingRun(...).run(resume)``; the parts are methods so that each reads on its own.
    """

    def __init__(self, model: nn.Module, train_batches: Batches, config: TrainConfig,
                 eval_batches: dict[str, Batches] | None = None, tokenizer=None):
        if not callable(train_batches):
            raise TypeError(f"train_batches must be a callable returning (x, y), not a {type(train_batches).__name__}.")
        if eval_batches is not None and not (isinstance(eval_batches, dict)
                                             and all(map(callable, eval_batches.values()))):
            raise TypeError("eval_batches must map split names to batch sources, e.g. {'val': val_batches}; "
                            f"got a {type(eval_batches).__name__}.")
        self.path = checkpoint_file(config.checkpoint_path)  # a path no checkpoint can be written to fails here
        self.model, self.train_batches, self.config = model, train_batches, config
        self.tokenizer = tokenizer  # recorded in checkpoints, so that a resume with another one is refused
        self.eval_batches = eval_batches or {}
        self.device = next(model.parameters()).device
        self.rank, self.n_proc = world()
        self.watching = config.patience is not None or config.restore_best
        if self.watching and config.monitor not in self.eval_batches:
            raise ValueError(
                f"early stopping watches the split {config.monitor!r}, which eval_batches does not have "
                f"({sorted(self.eval_batches)}): pass it in eval_batches or set TrainConfig.monitor."
            )
        self.best_state: dict | None = None  # the weights at the lowest loss on config.monitor (restore_best)
        # every evaluation starts each source from this state, so all points of a curve see the same batches
        self.eval_states = {k: b.state_dict() for k, b in self.eval_batches.items() if hasattr(b, "state_dict")}
        self.optimizer = make_optimizer(model, config, self.device)
        self.history, self.step_number = History(), 0
        self.forward: nn.Module = model  # what a training step calls: the model, compiled or wrapped
        self.captured: CapturedStep | None = None
        self.started = time.perf_counter()  # the start of the wall time not yet added to history.seconds
        self.batch_tokens = 0
        self.bar = None

    def resume(self) -> bool:
        """Continue from ``config.checkpoint_path`` if it exists; ``False`` when there is nothing to resume."""
        if self.path is None or not self.path.exists():
            return False
        state = load_checkpoint(self.path, map_location=self.device)
        check_identity(self.path, state.get("identity"), self.model, self.tokenizer)
        self.model.load_state_dict(state["model"])
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except ValueError as err:  # the same model, other parameters trainable (frozen or adapted layers)
            raise CheckpointError(f"{self.path} holds the optimizer of a run that trained other parameters "
                                  f"({err}): freeze and adapt the same layers as that run, or start anew.") from err
        if self.config.cuda_graph:  # a checkpoint of an eager run holds plain rates: the graph needs tensors
            for group in self.optimizer.param_groups:
                group["lr"] = torch.as_tensor(group["lr"], dtype=torch.float32, device=self.device).clone()
                group["capturable"] = True
        local = state["processes"][self.rank]
        if hasattr(self.train_batches, "load_state_dict"):
            self.train_batches.load_state_dict(local["batches"])
        set_rng_state(local["rng"])
        if hasattr(self.model, "load_training_state"):  # a recurrent model's state, carried between batches
            self.model.load_training_state(local.get("carried"))
        self.history, self.step_number = History.from_dict(state["history"]), state["step"]
        self.eval_states = state["eval_batches"]
        self.best_state = state.get("best_model")
        return True

    def prepare(self) -> None:
        """Compile, wrap for several processes or record as a CUDA graph, as the configuration asks."""
        config = self.config
        self.forward = compiled(self.model, config.compile)
        if self.n_proc > 1:
            if config.cuda_graph:
                raise ValueError("cuda_graph trains in one process; under torchrun set TrainConfig(cuda_graph=False).")
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.forward = DistributedDataParallel(self.forward, device_ids=device_ids)
        if config.cuda_graph:

            def graph_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
                with autocast(self.device, config.precision, cache=False):
                    return self.forward(x, y)[1]

            self.captured = CapturedStep(self.model, graph_loss, self.optimizer, config.grad_clip)
        self.model.train()

    def eager_step(self, lr: float) -> tuple[torch.Tensor, torch.Tensor]:
        """One update of every weight: forward, backward, clip, AdamW. Returns the loss and the gradient norm."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        accum, total = self.config.grad_accum, torch.zeros((), device=self.device)
        for micro in range(accum):  # the gradients of `accum` batches add up before one update
            x, y = self.train_batches()
            last = micro == accum - 1
            sync = contextlib.nullcontext() if last or self.n_proc == 1 else self.forward.no_sync()  # all-reduce once
            with sync:
                with autocast(self.device, self.config.precision):
                    _, loss = self.forward(x, y)
                (loss / accum).backward()
            total += loss.detach().float()
        # the norm before clipping; without clipping (an infinite threshold) the gradient is left as it is
        grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip or math.inf)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.batch_tokens = x.numel()
        return total / accum, grad_norm

    def step(self, lr: float) -> tuple[torch.Tensor, torch.Tensor]:
        """One update: :meth:`eager_step`, or the same step replayed as a CUDA graph (``config.cuda_graph``)."""
        if self.captured is None:
            return self.eager_step(lr)
        x, y = self.train_batches()
        self.batch_tokens = x.numel()
        return self.captured(x, y, lr)  # the rate is written into the graph's own tensor

    def evaluate(self) -> None:
        """The mean loss on each evaluation split, each from the same batches every time, into the history."""
        history = self.history
        for name, batches in self.eval_batches.items():
            if name in self.eval_states:
                batches.load_state_dict(self.eval_states[name])
            with torch.compiler.set_stance("force_eager"):  # no recompiling for eval mode or new shapes
                loss = estimate_loss(self.model, batches, self.config.eval_iters, self.config.precision)
            loss = mean_over_processes(torch.tensor(loss, device=self.device)).item()
            history.eval_loss.setdefault(name, []).append(loss)
        history.eval_steps.append(self.step_number)
        history.eval_seconds.append(history.seconds + time.perf_counter() - self.started)
        if self.config.restore_best and history.evaluations_since_best(self.config.monitor) == 0:
            self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def save(self) -> None:
        """An atomic checkpoint of everything an exact resume needs (process 0 writes it)."""
        processes = [process_state(self.train_batches, self.model)]
        if self.n_proc > 1:
            processes = [None] * self.n_proc
            dist.all_gather_object(processes, process_state(self.train_batches, self.model))
        if self.rank == 0:
            atomic_save(
                {
                    "model": self.model.state_dict(),
                    "identity": model_identity(self.model, self.tokenizer),
                    "optimizer": self.optimizer.state_dict(),
                    "step": self.step_number,
                    "history": self.history.to_dict(),
                    "eval_batches": self.eval_states,
                    "processes": processes,
                    "config": {**asdict(self.config), "checkpoint_path": str(self.path)},  # a str loads, a Path not
                    "best_model": self.best_state,
                },
                self.path,
            )
        if self.n_proc > 1:
            dist.barrier()  # no process runs ahead of a checkpoint being written

    def record(self, pending: list[torch.Tensor], steps: list[tuple[int, float]]) -> list[float]:
        """Bring the pending losses and norms back from the device (one sync) into the history; stop on NaN."""
        values = mean_over_processes(torch.stack(pending)).tolist()
        for (step, rate), (value, norm) in zip(steps, values):
            if not math.isfinite(value):
                self.bar.close()
                path = self.path
                where = (f"the last good checkpoint is {path}." if path and path.exists()
                         else "no checkpoint was written.")
                raise NonFiniteLossError(
                    f"the training loss became {value} at step {step} (learning rate {rate:.3g}). "
                    f"Lower the learning rate, raise the warm-up or check the data; {where}"
                )
            self.history.steps.append(step)
            self.history.train_loss.append(value)
            self.history.lr.append(rate)
            self.history.grad_norm.append(norm)
        return [value for value, _ in values]

    def stop_early(self, last_step: bool) -> bool:
        """Evaluate, show the losses on the progress bar (the history keeps them all), and say whether early
        stopping ends the run here."""
        self.evaluate()
        history, monitor = self.history, self.config.monitor
        self.shown.update({split: f"{losses[-1]:.4f}" for split, losses in history.eval_loss.items()})
        self.bar.set_postfix(self.shown)
        since_best = history.evaluations_since_best(monitor) if self.watching else 0
        stopping = self.config.patience is not None and since_best >= self.config.patience and not last_step
        if stopping:
            history.stopped_early = self.step_number
            if self.rank == 0:
                self.bar.write(f"step {self.step_number}: stopping early, no lower {monitor} loss "
                               f"in {since_best} evaluations")
        return stopping

    def run(self, resume: bool = False) -> History:
        """Train for ``config.max_steps`` updates (from the checkpoint, with ``resume``) and return the history."""
        if not isinstance(resume, bool):
            raise TypeError(f"resume must be True or False, not {resume!r}.")
        config, history = self.config, self.history
        if not (resume and self.resume()):
            torch.manual_seed(config.seed + self.rank)  # dropout masks, different in each process
        history = self.history
        self.prepare()
        self.started = time.perf_counter()
        if self.step_number == 0 and self.eval_batches:
            self.evaluate()
        self.bar = tqdm(total=config.max_steps, initial=self.step_number, desc=config.desc,
                        disable=not config.progress or self.rank != 0)
        self.shown = {}  # what the bar shows after it: the last batch's loss, the speed, the last evaluations
        first_step, tick, train_seconds, pending, pending_steps = self.step_number, time.perf_counter(), 0.0, [], []
        while self.step_number < config.max_steps and history.stopped_early is None:  # a resumed stop stays one
            lr = lr_at(self.step_number, config)
            loss, grad_norm = self.step(lr)
            history.tokens_per_step = self.batch_tokens * config.grad_accum * self.n_proc
            pending.append(torch.stack([loss, grad_norm.float()]))
            pending_steps.append((self.step_number, lr))
            self.step_number += 1
            step, last_step = self.step_number, self.step_number == config.max_steps
            checkpoint_due = self.path is not None and (
                step % (config.checkpoint_interval or config.eval_interval) == 0 or last_step)
            eval_due = bool(self.eval_batches) and (step % config.eval_interval == 0 or last_step)
            if not (step % config.log_interval == 0 or checkpoint_due or eval_due or last_step):
                continue
            losses = self.record(pending, pending_steps)
            now = time.perf_counter()
            train_seconds += now - tick
            self.bar.update(len(losses))
            tokens_per_second = len(losses) * history.tokens_per_step / (now - tick)
            self.shown.update(loss=f"{losses[-1]:.4f}", tok_s=f"{tokens_per_second:,.0f}")
            self.bar.set_postfix(self.shown)
            pending, pending_steps = [], []
            stopping = eval_due and self.stop_early(last_step)
            if checkpoint_due or (stopping and self.path is not None):
                history.seconds += time.perf_counter() - self.started
                self.started = time.perf_counter()
                self.save()
            tick = time.perf_counter()
            if stopping:
                break
        self.bar.close()
        self.finish(first_step, train_seconds)
        return history

    def finish(self, first_step: int, train_seconds: float) -> None:
        """Leave no graph gradients behind, put back the best weights if asked, and total the times."""
        history = self.history
        if self.captured is not None:
            self.optimizer.zero_grad(set_to_none=True)  # the graph's gradients are not left on the model
        if self.config.restore_best and self.best_state is not None:
            self.model.load_state_dict(self.best_state)
            history.restored_step = history.best(self.config.monitor)[0]
        history.seconds += time.perf_counter() - self.started
        if self.step_number > first_step:
            history.tokens_per_second = history.tokens_per_step * (self.step_number - first_step) / train_seconds


def train(
    model: nn.Module,
    train_batches: Batches,
    config: TrainConfig,
    eval_batches: dict[str, Batches] | None = None,
    resume: bool = False,
    tokenizer=None,
) -> History:
    """Train ``model`` in place for ``config.max_steps`` updates and return its
    :class:`~lmbook.training.history.History`.

    ``eval_batches`` maps split names to batch sources; each evaluation starts them
    from the same state, so every point of a curve is measured on the same batches.
    With ``resume=True`` and an existing ``config.checkpoint_path`` the run continues
    exactly where the checkpoint left it (the schedule is a function of the step); a checkpoint
    written for another model (class, configuration, shapes, or ``tokenizer`` when given) is refused.

    Under ``torchrun`` (a process group initialised) the model is wrapped in
    ``DistributedDataParallel``: each process draws its own batches, gradients and
    reported losses are averaged over processes, and process 0 writes checkpoints.
    """
    return TrainingRun(model, train_batches, config, eval_batches, tokenizer).run(resume)
