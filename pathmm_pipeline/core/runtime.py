"""The runtime of every job that runs torch, in one place: which device, deterministic execution with the
caller's RNG state restored, and the peak memory a run used (RSS, and GPU memory on CUDA)."""

from __future__ import annotations

import contextlib
import os
import resource
from collections.abc import Iterator

import torch


def resolve_device(name: str | torch.device) -> torch.device:
    """``"auto"``: CUDA when present, else the CPU; any other name as torch reads it."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@contextlib.contextmanager
def deterministic_mode(enabled: bool, device: torch.device, threads: int | None = None, *,
                       algorithms: bool = True) -> Iterator[None]:
    """Run the block repeatably: the caller's RNG state is forked and restored afterwards; with ``enabled``,
    cuDNN deterministic (no benchmark) and, with ``algorithms``, torch's deterministic algorithms (warn-only;
    ``CUBLAS_WORKSPACE_CONFIG`` set on CUDA); ``threads`` sets the intra-op thread count for the block."""
    prev = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark, torch.get_num_threads())
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        try:
            if enabled:
                torch.backends.cudnn.deterministic = True
                torch.backends.cudnn.benchmark = False
                if algorithms:
                    if device.type == "cuda":
                        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
                    torch.use_deterministic_algorithms(True, warn_only=True)
            if threads:
                torch.set_num_threads(int(threads))
            yield
        finally:
            torch.use_deterministic_algorithms(prev[0], warn_only=prev[1])
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = prev[2], prev[3]
            torch.set_num_threads(prev[4])


def peak_rss_mb() -> float:
    """The process's peak resident memory so far, MiB (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def reset_peak_gpu(device: torch.device) -> None:
    """Start counting the peak GPU memory from now (no-op off CUDA)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gpu_mb(device: torch.device) -> float | None:
    """The peak GPU memory allocated since :func:`reset_peak_gpu`, MiB; None off CUDA."""
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
