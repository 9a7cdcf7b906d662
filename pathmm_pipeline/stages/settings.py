"""The settings of the stages that had none of their own, one dataclass each (the single source of their
defaults; :class:`~pathmm_pipeline.core.settings.SettingsMixin` refuses unknown keys): the manifest, the splits,
report cleaning and report embedding, the cohort a training job reads, and a fold's evaluation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pathmm_pipeline.core.settings import SettingsMixin
from pathmm_pipeline.reports.clean import MAX_REPORT_CHARS


@dataclass(frozen=True)
class ManifestSettings(SettingsMixin):
    """``cancer_types`` the cohort may hold and the extra ``labels`` columns (``cancer_types`` / ``labels``)."""

    settings_name = "manifest"

    cancer_types: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class SplitSettings(SettingsMixin):
    """The patient-level folds (``training.folds``, ``stratify``, ``split_seed``, ``published_splits``) and each
    fold's inner-validation split (``training.inner_validation``)."""

    settings_name = "splits"

    k: int = 5
    stratify: list[str] | None = field(default_factory=lambda: ["event"])
    seed: int = 0
    published: str | None = None
    inner_fraction: float = 0.2
    inner_seed: int = 0


@dataclass(frozen=True)
class CleanReportSettings(SettingsMixin):
    """Report cleaning: whether to de-identify (``reports.deid``) and the longest report accepted, in characters
    (``reports.max_chars``)."""

    settings_name = "reports"

    deid: bool = True
    max_chars: int = MAX_REPORT_CHARS


@dataclass(frozen=True)
class EmbedReportSettings(SettingsMixin):
    """Report embedding (``reports``): the registered text ``encoder``, its ``pooling`` (None: the encoder's),
    whether to keep the token states, the encoder's ``options`` and the stored states' ``hidden_dtype``."""

    settings_name = "reports"

    encoder: str = "minilm"
    pooling: str | None = None
    keep_tokens: bool = True
    hidden_dtype: str = "float16"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CohortSettings(SettingsMixin):
    """The cohort a training, pretraining or downstream job reads (``training.max_tiles`` and a run's own
    ``pathway_collection`` / ``family_collection``; ``seed`` is the run's)."""

    settings_name = "cohort"

    max_tiles: int | None = 4096
    pathway_collection: str | None = "survpath"
    family_collection: str | None = "mcat_families"
    #: "zscore" (per gene) or "minmax" (SurvPath's global MinMax to [-1, 1], zeros restored)
    gene_scaling: str = "zscore"
    seed: int = 0


@dataclass(frozen=True)
class FoldEvaluationSettings(SettingsMixin):
    """How a trained fold is evaluated: bootstrap resamples of the C-index CI (``training.n_boot``)."""

    settings_name = "evaluation"

    n_boot: int = 1000
