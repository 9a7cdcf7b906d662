"""The one training engine: the optimiser, its warm-up + cosine schedule, gradient accumulation, clipping and
mixed precision on CUDA, shared by fine-tuning, pretraining, mSTAR's self-teaching and the report decoder.

A loop owns its data order and its loss; it calls :meth:`Engine.backward` for each part of a step's loss and
:meth:`Engine.step` once per optimiser step (clip, step, schedule, clear the gradients). The device, the
deterministic mode and the peak memory come from :mod:`pathmm_pipeline.core.runtime`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn

from pathmm_pipeline.core.runtime import deterministic_mode, peak_gpu_mb, peak_rss_mb, reset_peak_gpu, resolve_device
from pathmm_pipeline.training.settings import OPTIMIZERS

__all__ = ["OPTIMIZERS", "Engine", "cosine_with_warmup", "deterministic_mode", "linear_warmup_cosine",
           "peak_gpu_mb", "peak_rss_mb", "reset_peak_gpu", "resolve_device"]

Schedule = Callable[[int], float]


def cosine_with_warmup(total_steps: int, warmup_steps: int, min_ratio: float = 0.0) -> Schedule:
    """The lr factor per optimiser step: linear warm-up over ``warmup_steps`` steps (``(step + 1) / warmup``),
    then cosine decay to ``min_ratio`` x lr at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def linear_warmup_cosine(total_steps: int, warmup_steps: int) -> Schedule:
    """The report decoder's schedule: warm-up ``(step + 1) / (warmup + 1)``, then cosine decay to 0."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup_steps) / max(1, total_steps - warmup_steps)))

    return factor


class Engine:
    """The optimisation of one model's trainable parameters.

    ``optimizer``: ``adamw`` or ``radam`` (decoupled weight decay); ``schedule``: an lr factor per optimiser
    step (None: constant lr); ``max_grad_norm``: clip the gradient norm before each step; ``amp``: bfloat16
    autocast on CUDA (no effect on the CPU, where runs stay bit-for-bit repeatable).
    """

    def __init__(self, parameters: Iterable[nn.Parameter], *, lr: float, weight_decay: float = 0.0,
                 optimizer: str = "adamw", schedule: Schedule | None = None, max_grad_norm: float | None = None,
                 device: torch.device | str = "cpu", amp: bool = False) -> None:
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
        self.parameters = [p for p in parameters if p.requires_grad]
        if optimizer == "radam":
            self.optimizer: torch.optim.Optimizer = torch.optim.RAdam(
                self.parameters, lr=lr, weight_decay=weight_decay, decoupled_weight_decay=True)
        else:
            self.optimizer = torch.optim.AdamW(self.parameters, lr=lr, weight_decay=weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule) if schedule else None
        self.max_grad_norm = max_grad_norm
        self.device = resolve_device(device)
        self.amp = bool(amp and self.device.type == "cuda")
        self.steps = 0

    @property
    def lr(self) -> float:
        """The learning rate the next step uses."""
        return float(self.optimizer.param_groups[0]["lr"])

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        """The forward pass's precision: bfloat16 autocast with ``amp`` on CUDA, else full precision."""
        if self.amp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def backward(self, loss: torch.Tensor) -> None:
        """Accumulate the gradient of ``loss`` (a step may take several: an accumulation window, tile chunks)."""
        loss.backward()

    def step(self) -> None:
        """One optimiser step on the accumulated gradient: clip, step, advance the schedule, clear the grads."""
        if self.max_grad_norm:
            nn.utils.clip_grad_norm_(self.parameters, self.max_grad_norm)
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        self.zero_grad()
        self.steps += 1


@contextlib.contextmanager
def run_on(device_name: str, *, deterministic: bool, threads: int | None, seed: int,
           algorithms: bool = True) -> Iterator[torch.device]:
    """A training run's context: the resolved device, deterministic mode with the caller's RNG restored
    afterwards, torch seeded with ``seed``, and the GPU peak-memory counter reset."""
    device = resolve_device(device_name)
    reset_peak_gpu(device)
    with deterministic_mode(deterministic, device, threads, algorithms=algorithms):
        torch.manual_seed(seed)
        yield device
