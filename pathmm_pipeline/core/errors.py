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


#: what to do when a stage runs out of memory, by where the memory ran out
_MEMORY_HINT = ("request more memory for this rule (config.yaml resources.*_mem_mb, or --set-resources on the "
                "command line) or lower its batch / tile sizes; the input itself was not judged damaged")


def is_out_of_memory(exc: BaseException) -> bool:
    """True for host (MemoryError, numpy's array-allocation error) and accelerator (``torch.OutOfMemoryError``,
    a RuntimeError saying "out of memory") allocation failures."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def describe_failure(exc: BaseException, subject: str | None) -> str:
    """One line for an error the pipeline did not raise on purpose: the file (the OSError's own, else
    ``subject``, the command's main input), the problem and, where there is one, what to do."""
    if isinstance(exc, OSError) and not is_out_of_memory(exc):
        where = exc.filename if exc.filename is not None else subject
        problem = exc.strerror or str(exc) or type(exc).__name__
        if exc.filename2 is not None:
            where = f"{exc.filename} -> {exc.filename2}"
        hint = " -- the disk is full: free space and run again (the partial output was removed)" \
            if exc.errno == 28 else ""
        return f"{where}: {problem}{hint}" if where is not None else f"{problem}{hint}"
    if is_out_of_memory(exc):
        detail = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        where = f"{subject}: " if subject else ""
        return f"{where}out of memory ({detail}) -- {_MEMORY_HINT}"
    text = " ".join(str(exc).split())
    if len(text) > 500:
        text = text[:500] + " ..."
    where = f"{subject}: " if subject else ""
    return f"{where}{type(exc).__name__}: {text or 'no message'} -- run again with --verbose for the traceback"
