"""The heatmap stage as the DAG runs it (rule ``heatmaps``, one job per trained run and fold), and per slide on
request (``pathmm heatmaps --run RUN --fold K --slide S``): :func:`~pathmm_pipeline.interpret.stage.fold_heatmaps`
with the rule's settings, and the results folder's layout for a request that names a run instead of paths."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pathmm_pipeline.core.errors import InputError


def heatmaps(checkpoint: str | os.PathLike[str], manifest: str | os.PathLike[str], out_dir: str | os.PathLike[str],
             settings: dict[str, Any], *, features_dir: str | os.PathLike[str], tiles_dir: str | os.PathLike[str],
             segmentation_dir: str | os.PathLike[str], genomics: str | os.PathLike[str] | None = None,
             reports: str | os.PathLike[str] | None = None, slides: list[str] | None = None,
             run: str | None = None) -> Path:
    """Heatmaps of one trained fold's highest- and lowest-scored held-out patients (or of ``slides``) into
    ``out_dir``; ``settings``: :class:`~pathmm_pipeline.interpret.settings.HeatmapSettings` fields."""
    from pathmm_pipeline.interpret.settings import HeatmapSettings
    from pathmm_pipeline.interpret.stage import fold_heatmaps

    return fold_heatmaps(checkpoint, manifest, out_dir, features_dir=features_dir, tiles_dir=tiles_dir,
                         segmentation_dir=segmentation_dir, genomics=genomics, reports=reports,
                         settings=HeatmapSettings.from_dict(settings), slides=slides, run=run)


def _only(folder: Path, what: str, flag: str) -> str:
    names = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    if len(names) != 1:
        raise InputError(folder, f"holds {len(names)} {what} folders ({', '.join(names) or 'none'})",
                         f"name one with {flag}")
    return names[0]


def run_paths(results: str | os.PathLike[str], run: str, fold: int, encoder: str | None = None,
              task: str | None = None) -> dict[str, Path | None]:
    """Where a trained run's fold and the stores its heatmaps read are in a results folder (the DAG's layout):
    ``results/training/<encoder>/<run>/<task>/fold_<k>/checkpoint.pt``, the manifest, the encoder's features,
    tiles, segmentation, genomics and reports (None when absent), and the output folder
    ``results/heatmaps/<encoder>/<run>/<task>/fold_<k>``. ``encoder`` / ``task``: needed only when the results
    hold more than one. Slides drawn on request go to ``requested_out`` (under ``results/heatmaps/requested/``),
    never into the DAG's folder."""
    root = Path(results)
    name = run.split("@")[0]
    if encoder is None:
        encoder = run.split("@")[1] if "@" in run else _only(root / "training", "encoder", "--encoder")
    task = task or _only(root / "training" / encoder / name, "task", "--task")
    fold_dir = root / "training" / encoder / name / task / f"fold_{fold}"
    if not (fold_dir / "checkpoint.pt").is_file():
        raise InputError(fold_dir / "checkpoint.pt", "not found", "train that run and fold first (snakemake "
                         "train), or check --run / --fold / --encoder / --task")
    genomics, reports = root / "genomics" / "expression.zarr", root / "reports" / "embeddings.zarr"
    features = root / "features" / encoder
    if not features.is_dir() and (root / "features" / f"{encoder}_fold{fold}").is_dir():
        features = root / "features" / f"{encoder}_fold{fold}"  # a per-fold encoder (mSTAR's, per_fold mode)
    return {"checkpoint": fold_dir / "checkpoint.pt", "manifest": root / "cohort" / "manifest.parquet",
            "features": features, "tiles": root / "tiles", "segmentation": root / "segmentation",
            "genomics": genomics if genomics.exists() else None, "reports": reports if reports.exists() else None,
            "out": root / "heatmaps" / encoder / name / task / f"fold_{fold}",
            "requested_out": root / "heatmaps" / "requested" / encoder / name / task / f"fold_{fold}"}
