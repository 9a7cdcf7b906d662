"""The settings of the downstream evaluations that have their own (torch-free: the planning floor checks
``training.downstream.<name>.settings`` against them while the Snakefile is parsed)."""

from __future__ import annotations

from dataclasses import dataclass

from pathmm_pipeline.core.settings import SettingsMixin


@dataclass(frozen=True)
class GenerationConfig(SettingsMixin):
    """Model size, training schedule and decoding limits of the report decoder
    (:mod:`pathmm_pipeline.downstream.report_generation`; ``training.downstream.report_generation.settings``)."""

    settings_name = "report_generation"

    d_model: int = 128
    n_heads: int = 4
    n_layers: int = 2
    ff_dim: int = 512
    dropout: float = 0.1
    n_prefix: int = 4
    max_len: int = 256  # tokens per report, BOS and EOS included
    epochs: int = 30
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.05
    grad_clip: float | None = 1.0
    seed: int = 0
    restrict_vocab: bool = True
    standardize: bool = True
    device: str = "cpu"  # "cpu", "cuda", "cuda:N" or "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        problems = []
        for name in ("d_model", "n_heads", "n_layers", "ff_dim", "n_prefix", "epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.d_model % max(self.n_heads, 1):
            problems.append(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.max_len < 3:
            problems.append(f"max_len must be >= 3 (BOS, one token, EOS), got {self.max_len}")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {self.dropout}")
        if not self.lr > 0:
            problems.append(f"lr must be > 0, got {self.lr}")
        if not 0.0 <= self.warmup_fraction < 1.0:
            problems.append(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            problems.append(f"grad_clip must be > 0 or None, got {self.grad_clip}")
        if problems:
            raise ValueError("bad GenerationConfig: " + "; ".join(problems))
