"""The one registry: named entries of one kind (models, patch / slide / text encoders, task kinds, downstream
evaluations, model cards), with register / get / list / remove and a did-you-mean on unknown names.

Every registry of the library is a :class:`Registry`; each kind keeps its own error classes (so that callers
can catch an unknown model apart from an unknown encoder) and its own wording of the hint.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from pathmm_pipeline.core.errors import ConfigError, PathmmError, did_you_mean

T = TypeVar("T")
NAME = re.compile(r"^[A-Za-z0-9_]+$")


class UnknownEntryError(ConfigError, LookupError):
    """A name that is not registered (each registry raises its own subclass)."""


class DuplicateEntryError(PathmmError, ValueError):
    """A name registered twice (each registry raises its own subclass)."""


class Registry(Generic[T]):
    """Entries of one ``kind`` by name.

    ``unknown`` / ``duplicate``: the error classes raised for an unknown / taken name; ``hint``: appended to the
    unknown-name message (what to do); ``describe``: a short text naming an entry in the duplicate message;
    ``same_again``: whether registering the very same entry twice is allowed (a class whose module is imported
    again) rather than refused like any taken name.
    """

    def __init__(self, kind: str, *, unknown: type[UnknownEntryError] = UnknownEntryError,
                 duplicate: type[DuplicateEntryError] = DuplicateEntryError, hint: str = "",
                 describe: Callable[[T], str] | None = None, same_again: bool = True) -> None:
        self.kind = kind
        self.unknown, self.duplicate, self.hint = unknown, duplicate, hint
        self.describe = describe or (lambda entry: type(entry).__name__)
        self.same_again = same_again
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T, *, replace: bool = False) -> T:
        """Add ``entry`` under ``name``; a taken name raises ``duplicate`` unless ``replace`` (or, with
        ``same_again``, the same entry is registered again)."""
        if not isinstance(name, str) or not NAME.match(name):
            raise ValueError(f"{self.kind} name {name!r} must be letters, digits and underscores only")
        old = self._entries.get(name)
        if old is not None and not replace and not (self.same_again and old is entry):
            raise self.duplicate(f"{self.kind} '{name}' is already registered ({self.describe(old)}) -- register "
                                 f"yours under another name, or pass replace=True to override it deliberately")
        self._entries[name] = entry
        return entry

    def decorator(self, name: str, *, replace: bool = False) -> Callable[[T], T]:
        """``@registry.decorator("name")``: register the decorated object under ``name``."""
        return lambda entry: self.register(name, entry, replace=replace)

    def get(self, name: str) -> T:
        """The entry of ``name``; an unknown name raises ``unknown`` listing the registered ones."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise self.unknown(f"unknown {self.kind} {name!r}{did_you_mean(name, self._entries)} -- registered "
                               f"{self.kind}s: {', '.join(self.names()) or 'none'}{self.hint}") from None

    def remove(self, name: str) -> T:
        """Take an entry out (for tests and plugins); returns it."""
        self.get(name)
        return self._entries.pop(name)

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def items(self) -> list[tuple[str, T]]:
        return [(name, self._entries[name]) for name in self.names()]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
