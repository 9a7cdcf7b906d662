"""The heatmap stage's settings (torch-free: the planning floor reads them): the single source of their defaults;
the config schema's ``heatmaps`` section lists the same keys with the same defaults (a test checks it), plus the
keys only the DAG reads (``enabled``, ``runs``, ``folds``)."""

from __future__ import annotations

from dataclasses import dataclass

from pathmm_pipeline.core.settings import SettingsMixin


@dataclass(frozen=True)
class HeatmapSettings(SettingsMixin):
    """One heatmap job (a trained run's fold): the ``top_k_patients`` highest- and as many lowest-scored held-out
    patients (risk for survival, P(class 1) for a binary task, the predicted class's probability for
    classification) get a heatmap of every slide, each with its ``top_k_tiles`` highest and lowest tiles as
    images; ``backend`` reads the slide for those crops."""

    settings_name = "heatmaps"

    top_k_patients: int = 2
    top_k_tiles: int = 8
    backend: str = "openslide"

    def __post_init__(self) -> None:
        if int(self.top_k_patients) < 1:
            raise ValueError(f"heatmaps top_k_patients must be at least 1, got {self.top_k_patients}")
        if int(self.top_k_tiles) < 0:
            raise ValueError(f"heatmaps top_k_tiles must be 0 or more, got {self.top_k_tiles}")
