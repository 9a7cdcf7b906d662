"""Memory requests of cluster jobs: a base per rule, scaled with what a job holds in memory (model weights, feature
bags) and grown on every retry, so a job that SLURM killed for memory asks for more when Snakemake restarts it."""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Iterable
from pathlib import Path

MB = 1024 * 1024


def path_size_mb(path: str | os.PathLike[str]) -> float:
    """Size in MiB of a file, or of every file under a folder (a Zarr store); 0 for a path not yet written.
    A folder's walk is remembered while the folder itself is unchanged (stores are replaced by a rename)."""
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return 0.0
    if not Path(path).is_dir():
        return stat.st_size / MB
    return _folder_size_mb(str(path), stat.st_ino, stat.st_mtime_ns)


@functools.lru_cache(maxsize=65536)
def _folder_size_mb(path: str, inode: int, mtime_ns: int) -> float:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / MB


def inputs_size_mb(paths: Iterable[str | os.PathLike[str]]) -> float:
    """Total size in MiB of ``paths`` (files or stores)."""
    return sum(path_size_mb(p) for p in paths)


def job_memory_mb(base_mb: int, attempt: int = 1, *, input_mb: float = 0.0, per_input_mb: float = 0.0,
                  retry_growth: float = 1.5, cap_mb: int | None = None) -> int:
    """``(base_mb + per_input_mb * input_mb) * retry_growth ** (attempt - 1)``, capped at ``cap_mb``.

    ``attempt`` is Snakemake's (1 on the first try); ``per_input_mb`` is how many MiB of memory one MiB of input
    costs (e.g. float32 features decompressed into a bag, weights plus activations)."""
    if base_mb <= 0 or attempt < 1 or retry_growth < 1 or per_input_mb < 0 or input_mb < 0:
        raise ValueError(f"invalid memory request: base {base_mb} MB, attempt {attempt}, growth {retry_growth}, "
                         f"{per_input_mb} MB per input MB of {input_mb} MB")
    request = math.ceil((base_mb + per_input_mb * input_mb) * retry_growth ** (attempt - 1))
    return min(request, cap_mb) if cap_mb else request
