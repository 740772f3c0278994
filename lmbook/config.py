"""What every model configuration shares: named presets, and copying with changes (chapters 2 to 6)."""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import ClassVar


class Presets:
    """Mixed into a dataclass config: ``Config.preset(name, **overrides)`` and ``config.replace(**changes)``."""

    PRESETS: ClassVar[dict[str, dict]] = {}

    @classmethod
    def preset(cls, name: str, **overrides):
        if name not in cls.PRESETS:
            raise KeyError(f"unknown preset {name!r}; choose one of {sorted(cls.PRESETS)}")
        return cls(**{**cls.PRESETS[name], **overrides})

    def to_dict(self) -> dict:
        return asdict(self)

    def replace(self, **changes):
        return replace(self, **changes)
