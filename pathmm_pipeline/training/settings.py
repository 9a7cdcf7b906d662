"""The settings of the training stages, one dataclass each and the single source of its defaults: fine-tuning
(:class:`TrainConfig`, ``training.settings``), pretraining (:class:`PretrainConfig`,
``training.pretraining.settings``) and mSTAR's self-teaching (:class:`SelfTaughtConfig`,
``training.mstar.settings``). Torch-free: the planning floor checks a run's settings against them while the
Snakefile is parsed, so that a typo fails before any job, naming the key."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pathmm_pipeline.cohort.selection import SELECTIONS
from pathmm_pipeline.core.settings import SettingsMixin

MONITORS = ("val_loss", "val_metric")
OPTIMIZERS = ("adamw", "radam")
SIMILARITIES = ("cosine", "mse")


@dataclass
class TrainConfig(SettingsMixin):
    """How a fold is trained (``training:`` in a config). See the module docstring."""

    settings_name = "training"

    epochs: int = 20
    lr: float = 2e-4
    weight_decay: float = 1e-5
    optimizer: str = "adamw"
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.0
    grad_accum: int = 32
    max_grad_norm: float | None = None
    n_bins: int = 4
    alpha_surv: float = 0.0
    class_weighting: bool = True
    aux_loss_weight: float = 1.0
    weighted_sampling: bool = False
    selection: str = "last"
    inner_fraction: float = 0.2
    inner_seed: int = 0
    monitor: str = "val_loss"
    patience: int | None = 10
    min_delta: float = 0.0
    min_epochs: int = 1
    seed: int = 0
    device: str = "auto"
    deterministic: bool = True
    threads: int | None = None
    #: bfloat16 autocast of the forward pass on CUDA (no effect on the CPU)
    amp: bool = False
    #: None: one patient per forward pass; an int: each accumulation window's patients in padded batches of at
    #: most this many rows (patients x largest bag), for the models that can pad (:mod:`.batching`)
    batch_tiles: int | None = None
    progress: bool = True
    model_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = []
        if self.epochs < 1:
            problems.append(f"epochs must be >= 1, got {self.epochs}")
        if self.lr <= 0:
            problems.append(f"lr must be > 0, got {self.lr}")
        if self.batch_tiles is not None and self.batch_tiles < 1:
            problems.append(f"batch_tiles must be >= 1 or None, got {self.batch_tiles}")
        if self.optimizer not in OPTIMIZERS:
            problems.append(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.selection not in SELECTIONS:
            problems.append(f"selection must be one of {SELECTIONS}, got {self.selection!r}")
        if not 0 < self.inner_fraction < 1:
            problems.append(f"inner_fraction must be in (0, 1), got {self.inner_fraction}")
        if self.monitor not in MONITORS:
            problems.append(f"monitor must be one of {MONITORS}, got {self.monitor!r}")
        if self.grad_accum < 1:
            problems.append(f"grad_accum must be >= 1, got {self.grad_accum}")
        if self.warmup_epochs < 0 or not 0 <= self.min_lr_ratio <= 1:
            problems.append("warmup_epochs must be >= 0 and min_lr_ratio in [0, 1]")
        if self.patience is not None and self.patience < 1:
            problems.append(f"patience must be >= 1 or None, got {self.patience}")
        if problems:
            raise ValueError("TrainConfig: " + "; ".join(problems))


@dataclass
class PretrainConfig(SettingsMixin):
    """How a method is pretrained (``training.pretraining`` in a config)."""

    settings_name = "pretraining"

    epochs: int = 20
    lr: float = 2e-4
    weight_decay: float = 1e-5
    batch_size: int = 8
    warmup_epochs: float = 1.0
    n_bins: int = 4
    max_grad_norm: float | None = 1.0
    seed: int = 0
    device: str = "auto"
    deterministic: bool = True
    threads: int | None = None
    #: bfloat16 autocast of the forward pass on CUDA (no effect on the CPU)
    amp: bool = False
    progress: bool = True
    model_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = []
        if self.epochs < 1:
            problems.append(f"epochs must be >= 1, got {self.epochs}")
        if self.lr <= 0:
            problems.append(f"lr must be > 0, got {self.lr}")
        if self.batch_size < 2:
            problems.append(f"batch_size must be >= 2 (contrastive and triplet terms need pairs), got "
                            f"{self.batch_size}")
        if problems:
            raise ValueError("PretrainConfig: " + "; ".join(problems))


@dataclass
class SelfTaughtConfig(SettingsMixin):
    """How the patch encoder is self-taught (stage 2).

    ``epochs`` (each visits every slide once), ``lr`` / ``weight_decay`` (AdamW on the student),
    ``batch_size`` (tiles per encoder forward pass), ``tiles_per_slide`` (tiles sampled per step: the bag the
    aggregator sees), ``momentum`` (EMA of the teacher), ``w_patch`` / ``w_slide`` (loss weights),
    ``similarity`` ("cosine" or "mse"), ``max_grad_norm``, ``max_steps`` (None: epochs x slides), ``seed``,
    ``device`` ("auto": CUDA when present), ``deterministic``, ``threads``, ``progress``, and how slides are
    read (``backend``, ``fallback``, as in extraction)."""

    settings_name = "self-taught"

    epochs: int = 1
    lr: float = 1e-5
    weight_decay: float = 1e-4
    batch_size: int = 64
    tiles_per_slide: int = 256
    momentum: float = 0.996
    w_patch: float = 1.0
    w_slide: float = 0.0
    similarity: str = "cosine"
    max_grad_norm: float | None = 1.0
    max_steps: int | None = None
    seed: int = 0
    device: str = "auto"
    deterministic: bool = True
    threads: int | None = None
    progress: bool = True
    backend: str = "openslide"
    fallback: bool = True

    def __post_init__(self) -> None:
        problems = []
        for name in ("epochs", "batch_size", "tiles_per_slide"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            problems.append(f"lr must be > 0, got {self.lr}")
        if not 0.0 <= self.momentum <= 1.0:
            problems.append(f"momentum must be in [0, 1], got {self.momentum}")
        if self.similarity not in SIMILARITIES:
            problems.append(f"similarity must be one of {', '.join(SIMILARITIES)}, got {self.similarity!r}")
        if min(self.w_patch, self.w_slide) < 0 or self.w_patch + self.w_slide == 0:
            problems.append("w_patch and w_slide must be >= 0, not both 0")
        if self.max_steps is not None and self.max_steps < 1:
            problems.append(f"max_steps must be >= 1 or None, got {self.max_steps}")
        if problems:
            raise ValueError("SelfTaughtConfig: " + "; ".join(problems))
