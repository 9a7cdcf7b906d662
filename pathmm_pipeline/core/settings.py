"""One mixin for the settings dataclasses of the stages (training, pretraining, self-teaching, genomics): build
from a config mapping, refusing unknown keys with the list of known ones, and back to a plain dict."""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any, ClassVar, TypeVar

S = TypeVar("S", bound="SettingsMixin")


class SettingsMixin:
    """``from_dict`` / ``to_dict`` for a dataclass; ``settings_name`` names it in error messages."""

    settings_name: ClassVar[str] = "settings"

    @classmethod
    def from_dict(cls: type[S], values: dict[str, Any]) -> S:
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown {cls.settings_name} setting(s): {sorted(unknown)} -- known: {sorted(known)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]
