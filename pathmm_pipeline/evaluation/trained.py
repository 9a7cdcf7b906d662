"""A trained fold as training hands it to evaluation: the model with its chosen epoch's weights, and everything
fitted on the fold's training patients that predicting needs (time bins, gene scaler, label classes)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pathmm_pipeline.core.settings import SettingsMixin
from pathmm_pipeline.genomics.normalize import GeneScaler
from pathmm_pipeline.models.base import InputDims, PathmmModel, TaskSpec


@dataclass
class FoldResult:
    """One trained fold. ``model`` holds the best epoch's weights (eval mode, on the CPU)."""

    model_name: str
    task_name: str
    task: TaskSpec
    fold_index: int
    model: PathmmModel
    model_options: dict[str, Any]
    dims: InputDims
    history: pd.DataFrame
    best_epoch: int
    stopped_early: bool
    monitor: str
    metric_name: str
    time_bins: np.ndarray | None
    scaler: GeneScaler | None
    train_patients: list[str]
    val_patients: list[str]
    dropped: dict[str, str]
    config: SettingsMixin  # the run's TrainConfig
    seconds: float
    peak_rss_mb: float
    peak_gpu_mb: float | None
    device: str
    label_classes: list[str]
    cancer_types: list[str]
    checkpoint: Path | None = None
    log_csv: Path | None = None
    log_json: Path | None = None
    split_file: str | None = None
    #: ``last`` or ``inner``; the inner-validation patients the epoch was chosen on (empty under ``last``)
    selection: str = "last"
    inner_val_patients: list[str] = field(default_factory=list)
    inner_split_file: str | None = None

    @property
    def best(self) -> dict[str, Any]:
        """The history row of the best epoch."""
        return self.history.loc[self.history.epoch == self.best_epoch].iloc[0].to_dict()
