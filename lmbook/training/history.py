"""What a training run records, step by step: losses, learning rates, gradient norms, evaluations, speed.

:func:`lmbook.training.train.train` fills a :class:`History`; :mod:`lmbook.display.viz` plots it and
:mod:`lmbook.runs.reference` stores it in the reference records (chapters 2 to 7). ``eval_seconds`` and
``seconds`` add up over a run resumed from its checkpoints: the training time since its start, less what was
lost after a last checkpoint.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields


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
