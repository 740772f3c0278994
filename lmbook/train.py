"""The one training loop, used by every chapter and every model (n-gram aside).

A model is anything whose call ``model(x, y)`` returns ``(logits, loss)``; a batch
source is a callable returning ``(x, y)`` (see :class:`lmbook.data.RandomBatches`).
The loop brings AdamW (fused on CUDA), linear warm-up then cosine (or linear)
decay, gradient accumulation and clipping, bf16 autocast where the GPU supports
it, optional ``torch.compile``, periodic evaluation on fixed batches, a tqdm bar
with loss and tokens/s, a :class:`History` to plot, atomic checkpoints with exact
resume, early stopping on an evaluation split (keeping the best weights if asked),
and a clear error naming the step at which the loss stopped being finite.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from .cudagraph import CapturedStep
from .runtime import autocast_dtype

Batches = Callable[[], tuple[torch.Tensor, torch.Tensor]]


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
    cuda_graph: bool = False  # record each step as one CUDA graph and replay it (lmbook.cudagraph; CUDA only)
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
        if self.schedule not in ("cosine", "linear", "constant"):
            raise ValueError(f"schedule must be 'cosine', 'linear' or 'constant', not {self.schedule!r}.")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"precision must be 'auto', 'bf16' or 'fp32', not {self.precision!r}.")
        if self.compile not in (False, True, "model", "blocks"):
            raise ValueError(f"compile must be False, True, 'model' or 'blocks', not {self.compile!r}.")
        if self.max_steps < 1 or self.grad_accum < 1 or self.eval_interval < 1 or self.log_interval < 1:
            raise ValueError("max_steps, grad_accum, eval_interval and log_interval must be at least 1.")
        if self.cuda_graph and (self.compile or self.grad_accum != 1):
            raise ValueError(
                "cuda_graph records one whole step of one batch: use it with compile=False and grad_accum=1 "
                f"(got compile={self.compile!r}, grad_accum={self.grad_accum})."
            )
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


@dataclass
class History:
    """What a run recorded: training loss per step and evaluation losses per split."""

    steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)  # of the whole gradient, before clipping, per step
    eval_steps: list[int] = field(default_factory=list)
    eval_loss: dict[str, list[float]] = field(default_factory=dict)
    eval_seconds: list[float] = field(default_factory=list)  # training wall time at each evaluation
    tokens_per_step: int = 0
    tokens_per_second: float = 0.0  # over the whole run, evaluation excluded
    seconds: float = 0.0  # wall time spent in this loop, evaluation included
    stopped_early: int | None = None  # the step at which early stopping ended the run, if it did
    restored_step: int | None = None  # the step whose weights restore_best put back, if it did

    def best(self, split: str = "val") -> tuple[int, float]:
        """The step and loss of the lowest evaluation loss on ``split``."""
        losses = self.eval_loss.get(split)
        if not losses:
            raise KeyError(f"no evaluation on split {split!r}; recorded: {sorted(self.eval_loss)}")
        i = min(range(len(losses)), key=losses.__getitem__)
        return self.eval_steps[i], losses[i]

    def evaluations_since_best(self, split: str = "val") -> int:
        """How many evaluations on ``split`` came after its lowest loss (0 when the last one is the lowest)."""
        losses = self.eval_loss.get(split) or []
        if not losses:
            return 0
        return len(losses) - 1 - min(range(len(losses)), key=losses.__getitem__)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "History":
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read."""


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
    fused = device.type in ("cuda", "cpu")  # one kernel for all tensors: on a CPU 5x faster than the loop
    if config.cuda_graph:
        if device.type != "cuda":
            raise ValueError(f"cuda_graph needs a CUDA device; the model is on {device.type}. Set cuda_graph=False.")
        for group in groups:  # one tensor per group, so that a group's rate is never shared by accident
            group["lr"] = torch.tensor(config.lr, dtype=torch.float32, device=device)
        return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, fused=True, capturable=True)
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, fused=fused)


def autocast(device: torch.device, precision: str = "auto", cache: bool = True):
    """The autocast context for ``precision`` on ``device`` (a no-op for float32).

    ``cache=False`` recasts the weights at every use instead of keeping the casts, as a
    CUDA graph's recording needs.
    """
    dtype = autocast_dtype(device) if precision == "auto" else torch.bfloat16 if precision == "bf16" else None
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype, cache_enabled=cache)


@torch.no_grad()
def estimate_loss(model: nn.Module, batches: Batches, iters: int, precision: str = "auto") -> float:
    """Mean loss of ``model`` over ``iters`` batches, in eval mode (dropout off)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total = torch.zeros((), device=device)
    with autocast(device, precision):
        for _ in range(iters):
            x, y = batches()
            total += model(x, y)[1].float()
    model.train(was_training)
    return total.item() / iters


def atomic_save(obj, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file, flushed to disk, then renamed over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # the old checkpoint stays whole until this instant
    finally:
        if tmp.exists():
            tmp.unlink()


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Read a checkpoint written by :func:`train`, with a clear error if it is damaged."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise CheckpointError(
            f"{path} is not a readable checkpoint ({type(err).__name__}: {err}). It may be truncated or "
            "from another program: delete it to train from the start, or point checkpoint_path elsewhere."
        ) from err


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


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def world() -> tuple[int, int]:
    """This process's rank and the number of processes (``(0, 1)`` outside ``torchrun``)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _mean_over_processes(values: torch.Tensor) -> torch.Tensor:
    if world()[1] > 1:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        values /= world()[1]
    return values


def _local_state(train_batches: Batches) -> dict:
    """What differs between processes and must come back on resume: random generators and batches."""
    batches = train_batches.state_dict() if hasattr(train_batches, "state_dict") else None
    return {"rng": _rng_state(), "batches": batches}


def train(
    model: nn.Module,
    train_batches: Batches,
    config: TrainConfig,
    eval_batches: dict[str, Batches] | None = None,
    resume: bool = False,
) -> History:
    """Train ``model`` in place for ``config.max_steps`` updates and return its :class:`History`.

    ``eval_batches`` maps split names to batch sources; each evaluation starts them
    from the same state, so every point of a curve is measured on the same batches.
    With ``resume=True`` and an existing ``config.checkpoint_path`` the run continues
    exactly where the checkpoint left it (the schedule is a function of the step).

    Under ``torchrun`` (a process group initialised) the model is wrapped in
    ``DistributedDataParallel``: each process draws its own batches, gradients and
    reported losses are averaged over processes, and process 0 writes checkpoints.
    """
    device = next(model.parameters()).device
    rank, n_proc = world()
    eval_batches = eval_batches or {}
    watching = config.patience is not None or config.restore_best
    if watching and config.monitor not in eval_batches:
        raise ValueError(
            f"early stopping watches the split {config.monitor!r}, which eval_batches does not have "
            f"({sorted(eval_batches)}): pass it in eval_batches or set TrainConfig.monitor."
        )
    best_state: dict | None = None  # the weights at the lowest loss on config.monitor (restore_best)
    eval_states = {k: b.state_dict() for k, b in eval_batches.items() if hasattr(b, "state_dict")}
    optimizer = make_optimizer(model, config, device)
    history, step = History(), 0
    path = Path(config.checkpoint_path) if config.checkpoint_path else None
    if resume and path is not None and path.exists():
        state = load_checkpoint(path, map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if config.cuda_graph:  # a checkpoint of an eager run holds plain rates: the graph needs tensors
            for group in optimizer.param_groups:
                group["lr"] = torch.as_tensor(group["lr"], dtype=torch.float32, device=device).clone()
                group["capturable"] = True
        local = state["processes"][rank]
        if hasattr(train_batches, "load_state_dict"):
            train_batches.load_state_dict(local["batches"])
        _set_rng_state(local["rng"])
        history, step = History.from_dict(state["history"]), state["step"]
        eval_states = state["eval_batches"]
        best_state = state.get("best_model")
    else:
        torch.manual_seed(config.seed + rank)  # dropout masks, different in each process
    forward = compiled(model, config.compile)
    if n_proc > 1:
        if config.cuda_graph:
            raise ValueError("cuda_graph trains in one process; under torchrun set TrainConfig(cuda_graph=False).")
        forward = DistributedDataParallel(forward, device_ids=[device.index] if device.type == "cuda" else None)
    captured = None
    if config.cuda_graph:

        def graph_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            with autocast(device, config.precision, cache=False):
                return forward(x, y)[1]

        captured = CapturedStep(model, graph_loss, optimizer, config.grad_clip)
    model.train()

    def evaluate() -> None:
        nonlocal best_state
        for name, batches in eval_batches.items():
            if name in eval_states:
                batches.load_state_dict(eval_states[name])
            with torch.compiler.set_stance("force_eager"):  # no recompiling for eval mode or new shapes
                loss = estimate_loss(model, batches, config.eval_iters, config.precision)
            loss = _mean_over_processes(torch.tensor(loss, device=device)).item()
            history.eval_loss.setdefault(name, []).append(loss)
        history.eval_steps.append(step)
        history.eval_seconds.append(history.seconds + time.perf_counter() - started)
        if config.restore_best and history.evaluations_since_best(config.monitor) == 0:
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def save() -> None:
        processes = [_local_state(train_batches)]
        if n_proc > 1:
            processes = [None] * n_proc
            dist.all_gather_object(processes, _local_state(train_batches))
        if rank == 0:
            atomic_save(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "step": step,
                    "history": history.to_dict(),
                    "eval_batches": eval_states,
                    "processes": processes,
                    "config": asdict(config),
                    "best_model": best_state,
                },
                path,
            )
        if n_proc > 1:
            dist.barrier()  # no process runs ahead of a checkpoint being written

    def record(pending: list[torch.Tensor], steps: list[tuple[int, float]]) -> list[float]:
        values = _mean_over_processes(torch.stack(pending)).tolist()  # one device sync per log interval
        losses = [loss for loss, _ in values]
        for (s, rate), (value, norm) in zip(steps, values):
            if not math.isfinite(value):
                bar.close()
                where = f"the last good checkpoint is {path}." if path and path.exists() else "no checkpoint was written."
                raise NonFiniteLossError(
                    f"the training loss became {value} at step {s} (learning rate {rate:.3g}). "
                    f"Lower the learning rate, raise the warm-up or check the data; {where}"
                )
            history.steps.append(s)
            history.train_loss.append(value)
            history.lr.append(rate)
            history.grad_norm.append(norm)
        return losses

    started = time.perf_counter()
    if step == 0 and eval_batches:
        evaluate()
    bar = tqdm(total=config.max_steps, initial=step, desc=config.desc, disable=not config.progress or rank != 0)
    first_step, tick, train_seconds, pending, pending_steps = step, time.perf_counter(), 0.0, [], []
    while step < config.max_steps:
        lr = lr_at(step, config)
        if captured is not None:  # the whole update in one replay (the rate is written into the graph's tensor)
            x, y = train_batches()
            step_loss, grad_norm = captured(x, y, lr)
        else:
            for group in optimizer.param_groups:
                group["lr"] = lr
            step_loss = torch.zeros((), device=device)
            for micro in range(config.grad_accum):
                x, y = train_batches()
                last = micro == config.grad_accum - 1
                sync = contextlib.nullcontext() if last or n_proc == 1 else forward.no_sync()  # all-reduce once
                with sync:
                    with autocast(device, config.precision):
                        _, loss = forward(x, y)
                    (loss / config.grad_accum).backward()
                step_loss += loss.detach().float()
            # the norm before clipping; without clipping (an infinite threshold) the gradient is left as it is
            grad_norm = nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip or math.inf)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        history.tokens_per_step = x.numel() * config.grad_accum * n_proc
        pending.append(torch.stack([step_loss / config.grad_accum, grad_norm.float()]))
        pending_steps.append((step, lr))
        step += 1
        last_step = step == config.max_steps
        checkpoint_due = path is not None and (step % (config.checkpoint_interval or config.eval_interval) == 0 or last_step)
        eval_due = bool(eval_batches) and (step % config.eval_interval == 0 or last_step)
        if step % config.log_interval == 0 or checkpoint_due or eval_due or last_step:
            losses = record(pending, pending_steps)
            now = time.perf_counter()
            train_seconds += now - tick
            bar.update(len(losses))
            bar.set_postfix(loss=f"{losses[-1]:.4f}", tok_s=f"{len(losses) * history.tokens_per_step / (now - tick):,.0f}")
            pending, pending_steps = [], []
            stopping = False
            if eval_due:
                evaluate()
                if rank == 0:
                    bar.write(f"step {step}: " + ", ".join(f"{k} {v[-1]:.4f}" for k, v in history.eval_loss.items()))
                since_best = history.evaluations_since_best(config.monitor) if watching else 0
                stopping = config.patience is not None and since_best >= config.patience and not last_step
                if stopping:
                    history.stopped_early = step
                    if rank == 0:
                        bar.write(f"step {step}: stopping early, no lower {config.monitor} loss "
                                  f"in {since_best} evaluations")
            if checkpoint_due or (stopping and path is not None):
                history.seconds += time.perf_counter() - started
                started = time.perf_counter()
                save()
            tick = time.perf_counter()
            if stopping:
                break
    bar.close()
    if captured is not None:
        optimizer.zero_grad(set_to_none=True)  # the graph's gradients are not left on the model
    if config.restore_best and best_state is not None:
        model.load_state_dict(best_state)
        history.restored_step = history.best(config.monitor)[0]
    history.seconds += time.perf_counter() - started
    if step > first_step:
        history.tokens_per_second = history.tokens_per_step * (step - first_step) / train_seconds
    return history
