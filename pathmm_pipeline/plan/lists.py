"""Cohort-sized lists handed to a job through a file, never on its command line: Linux refuses one argument over
128 KiB and a whole command over 2 MiB (a few thousand patients, about 12,000 slide paths).

The main Snakemake process writes each list once, at parse time, to ``.snakemake/pathmm/lists/<name>-<digest>.txt``
(one item per line). The file name carries the digest of its content, so a rule that passes it as a parameter
re-runs exactly when the list changes (Snakemake's params trigger), and no job depends on another job for it.
The command reads it as ``@path`` (:func:`expand_items`)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

from pathmm_pipeline.core.atomic import atomic_path
from pathmm_pipeline.core.errors import InputError

#: where the list files live, relative to Snakemake's working directory
LIST_DIR = Path(".snakemake") / "pathmm" / "lists"

#: the prefix that marks a command-line value as "the lines of this file"
FILE_PREFIX = "@"


def list_file(name: str, items: Iterable[object], folder: str | os.PathLike[str] = LIST_DIR) -> str:
    """Write ``items`` (one per line, in the given order) to a content-addressed file under ``folder`` unless it
    is there already, and return ``@<path>`` for a command line."""
    lines = [str(item) for item in items]
    bad = [line for line in lines if "\n" in line or "\r" in line]
    if bad:
        raise InputError(bad[0].splitlines()[0], "a path or id with a line break cannot be listed",
                         "rename it in the sample sheet")
    text = "".join(f"{line}\n" for line in lines)
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    path = Path(folder) / f"{name}-{digest}.txt"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path, use_scratch=False) as tmp:
            tmp.write_text(text)
    return f"{FILE_PREFIX}{path}"


def expand_items(values: Iterable[str]) -> list[str]:
    """Command-line values with every ``@file`` replaced by the file's lines (empty lines dropped)."""
    out: list[str] = []
    for value in values:
        value = str(value)
        if not value.startswith(FILE_PREFIX):
            out.append(value)
            continue
        path = Path(value[len(FILE_PREFIX):])
        try:
            text = path.read_text()
        except OSError as exc:
            raise InputError(path, f"cannot read the list file: {exc.strerror or exc}",
                             "it is written by the main Snakemake process: run snakemake again") from None
        out.extend(line for line in text.splitlines() if line)
    return out
