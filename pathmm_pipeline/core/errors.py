"""Exceptions with messages that name the file, the problem and what to do."""

from __future__ import annotations

from collections.abc import Iterable


class PathmmError(Exception):
    """Base class: every error the pipeline raises on purpose derives from it."""


class InputError(PathmmError):
    """An input file is missing, unreadable or malformed."""

    def __init__(self, path: object, problem: str, hint: str = "") -> None:
        self.path = str(path)
        self.problem = problem
        self.hint = hint
        message = f"{self.path}: {problem}"
        if hint:
            message += f" -- {hint}"
        super().__init__(message)


class SlideReadError(InputError):
    """A slide cannot be opened or read by any configured backend."""


class MissingMppError(InputError):
    """A slide has no microns-per-pixel metadata and no override in the sample sheet."""


class ImplausibleMppError(InputError):
    """A slide's microns per pixel cannot be a scanner's: outside the configured range (``slide.min_mpp`` /
    ``max_mpp``), a screen or print default resolution (72, 96, 150, 300 dpi) without scanner metadata, or x and y
    that differ beyond ``slide.max_mpp_xy_ratio``."""


class SlideTooLargeError(InputError):
    """A slide's dimensions or tile count exceed the configured caps (``slide.max_*``): refused before any pixel
    is decoded."""


class ConfigError(PathmmError):
    """The pipeline configuration does not match its schema."""


class SampleSheetError(InputError):
    """The sample sheet has bad rows or columns; lists every problem found."""

    def __init__(self, path: object, problems: list[str]) -> None:
        self.problems = list(problems)
        listing = "\n  - ".join(self.problems)
        super().__init__(path, f"{len(self.problems)} problem(s) in the sample sheet:\n  - {listing}",
                         "fix these rows and run again; no job was started")


class ProvenanceError(PathmmError):
    """A store has no provenance, or its provenance does not verify."""


def did_you_mean(name: object, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices`` to ``name``, or ``""`` when none is close."""
    import difflib

    close = difflib.get_close_matches(str(name), list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""
