"""What every model configuration shares: named presets, and copying with changes (chapters 2 to 6)."""

from __future__ import annotations

from dataclasses import asdict, fields, replace
from typing import ClassVar


class Presets:
    """Mixed into a dataclass config: ``Config.preset(name, **overrides)`` and ``config.replace(**changes)``."""

    PRESETS: ClassVar[dict[str, dict]] = {}

    @classmethod
    def preset(cls, name: str, **overrides):
        if name not in cls.PRESETS:
            raise KeyError(f"unknown preset {name!r}; choose one of {sorted(cls.PRESETS)}")
        cls.check_fields(overrides)
        return cls(**{**cls.PRESETS[name], **overrides})

    @classmethod
    def check_fields(cls, changes: dict) -> None:
        """Raise a ``TypeError`` naming the fields of the config unless every key of ``changes`` is one."""
        names = [f.name for f in fields(cls) if f.init]
        unknown = [key for key in changes if key not in names]
        if unknown:
            raise TypeError(f"{cls.__name__} has no field {', '.join(map(repr, unknown))}; "
                            f"use one of {', '.join(names)}.")

    def to_dict(self) -> dict:
        return asdict(self)

    def replace(self, **changes):
        self.check_fields(changes)
        return replace(self, **changes)

    def check_positive(self, *names: str) -> None:
        """Raise ``ValueError`` naming the first of the fields ``names`` that is not an integer >= 1."""
        for name in names:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{type(self).__name__}.{name} must be a positive integer, not {value!r}.")

    def check_rate(self, name: str) -> None:
        """Raise ``ValueError`` unless the field ``name`` is a probability of dropping, in [0, 1)."""
        value = getattr(self, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
            raise ValueError(f"{type(self).__name__}.{name} must lie in [0, 1), not {value!r}.")
