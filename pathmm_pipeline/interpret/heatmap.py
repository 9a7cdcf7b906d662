"""One slide's heatmap outputs, from a trained fold's checkpoint and the slide's stored features.

:func:`slide_heatmap` writes, into one folder per slide (atomically, the folder appears whole):

* ``attention.png`` / ``contribution.png``: the QC thumbnail (same size) with each tile's value blended in;
* ``tiles.geojson``: tile squares in level-0 pixels with ``measurements`` {attention, contribution} (QuPath:
  File > Import objects), classified by attention decile (or contribution where the model has no attention);
* ``tiles/top_XX.png`` / ``tiles/bottom_XX.png``: the k highest / lowest tiles read from the slide at the
  tiling's mpp (only with the slide file);
* ``heatmap.json``: the numbers (per-slide seconds, the top / bottom tiles) and the provenance record, whose
  inputs are the checkpoint, the feature store, the tile store and the thumbnail.

:func:`heatmap_figures` lists what the report shows for a run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pathmm_pipeline.core.atomic import atomic_path
from pathmm_pipeline.core.errors import InputError
from pathmm_pipeline.core.provenance import build_provenance, jsonable
from pathmm_pipeline.interpret.attention import has_attention, tile_attention
from pathmm_pipeline.interpret.contribution import tile_contribution
from pathmm_pipeline.interpret.render import (
    level0_per_thumbnail_px,
    overlay,
    read_rgb,
    tiles_geojson,
    top_bottom,
    write_png,
)
from pathmm_pipeline.models.base import PathmmModel, PatientInput
from pathmm_pipeline.preprocess.features import load_features
from pathmm_pipeline.preprocess.segmentation import load_mask
from pathmm_pipeline.preprocess.slides import open_slide
from pathmm_pipeline.preprocess.tiling import TileGeometry, load_tiles, read_tile

STAGE = "heatmap"
SUMMARY = "heatmap.json"


@dataclass
class TileWeights:
    """A slide's per-tile values: ``attention`` (N,) summing to 1, or None for a model that weighs no tiles;
    ``contribution`` (N,) gradient x input of the prediction score; seconds each took."""

    attention: np.ndarray | None
    contribution: np.ndarray
    attention_seconds: float
    contribution_seconds: float


def slide_input(features: np.ndarray, coords: np.ndarray, context: PatientInput | None = None) -> PatientInput:
    """The patient as the model reads it with this one slide's tiles as its bag (``context``: the patient's
    other modalities, e.g. from :func:`~pathmm_pipeline.evaluation.predict.model_input`)."""
    wsi = torch.from_numpy(np.asarray(features, np.float32))
    xy = torch.from_numpy(np.asarray(coords, np.int64).reshape(-1, 2))
    return PatientInput(wsi=wsi, wsi_coords=xy) if context is None else dataclasses.replace(
        context, wsi=wsi, wsi_coords=xy)


def tile_weights(model: PathmmModel, x: PatientInput, target_class: int | None = None) -> TileWeights:
    """Attention (where the model's family has an extractor) and contribution of every tile of ``x``."""
    start = time.perf_counter()
    attention = tile_attention(model, x) if has_attention(model.name) else None
    middle = time.perf_counter()
    contribution = tile_contribution(model, x, target_class)
    return TileWeights(attention, contribution, middle - start, time.perf_counter() - middle)


def _crops(slide: Path, geometry: TileGeometry, coords: np.ndarray, order: dict[str, np.ndarray], folder: Path,
           backend: str) -> dict[str, list[str]]:
    folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, list[str]] = {}
    with open_slide(slide, backend=backend) as reader:
        for name, indices in order.items():
            for rank, i in enumerate(indices, start=1):
                path = folder / f"{name}_{rank:02d}.png"
                write_png(path, read_tile(reader, geometry, int(coords[i, 0]), int(coords[i, 1])))
                written.setdefault(name, []).append(path.name)
    return written


def slide_heatmap(model: PathmmModel, out_dir: str | os.PathLike[str], *, features_store: str | os.PathLike[str],
                  tiles_store: str | os.PathLike[str], segmentation_store: str | os.PathLike[str],
                  thumbnail: str | os.PathLike[str], checkpoint: str | os.PathLike[str] | None = None,
                  slide_path: str | os.PathLike[str] | None = None, context: PatientInput | None = None,
                  top_k: int = 8, target_class: int | None = None, backend: str = "openslide",
                  caption: dict[str, Any] | None = None) -> Path:
    """Write ``out_dir`` (see the module docstring) for one slide; returns it."""
    fs, tiles, mask = load_features(features_store), load_tiles(tiles_store), load_mask(segmentation_store)
    if fs.coords.shape != tiles.coords.shape or not np.array_equal(fs.coords, tiles.coords):
        raise InputError(features_store, f"its {len(fs.coords)} tile coordinates differ from the tile store "
                         f"{tiles_store} ({len(tiles.coords)})", "re-extract the features from this tile store")
    if not len(fs.features):
        raise InputError(features_store, "has no tile", "a slide without tiles has no heatmap")
    weights = tile_weights(model, slide_input(fs.features, fs.coords, context), target_class)
    thumb = read_rgb(thumbnail)
    scale = level0_per_thumbnail_px(mask.mask.shape, mask.scale_to_level0, thumb.shape)
    size = tiles.geometry.tile_size_level0
    shown = weights.attention if weights.attention is not None else weights.contribution
    measurements = {"contribution": weights.contribution}
    if weights.attention is not None:
        measurements = {"attention": weights.attention, **measurements}
    top, bottom = top_bottom(shown, top_k)
    out = Path(out_dir)
    with atomic_path(out, use_scratch=False) as tmp:
        tmp.mkdir(parents=True)
        if weights.attention is not None:
            write_png(tmp / "attention.png", overlay(thumb, fs.coords, size, weights.attention, scale, "sequential",
                                                     f"{model.name} attention (percentile)"))
        write_png(tmp / "contribution.png", overlay(thumb, fs.coords, size, weights.contribution, scale,
                                                    "diverging", f"{model.name} contribution"))
        geojson = tiles_geojson(fs.slide_id, fs.coords, size, measurements,
                                "attention" if weights.attention is not None else "contribution")
        (tmp / "tiles.geojson").write_text(json.dumps(geojson))
        crops = (_crops(Path(slide_path), tiles.geometry, fs.coords, {"top": top, "bottom": bottom},
                        tmp / "tiles", backend) if slide_path is not None and top_k > 0 else {})
        inputs = {"features": features_store, "tiles": tiles_store, "thumbnail": thumbnail}
        if checkpoint is not None:
            inputs["checkpoint"] = checkpoint
        params = {"model": model.name, "task": dataclasses.asdict(model.task), "top_k": int(top_k),
                  "target_class": target_class}
        summary = {"slide_id": fs.slide_id, "model": model.name, "n_tiles": int(len(fs.features)),
                   "ranked_by": "attention" if weights.attention is not None else "contribution",
                   "attention_seconds": weights.attention_seconds,
                   "contribution_seconds": weights.contribution_seconds,
                   "top": [int(i) for i in top], "bottom": [int(i) for i in bottom], "crops": crops,
                   "caption": caption or {},
                   "provenance": build_provenance(STAGE, inputs, params)}
        (tmp / SUMMARY).write_text(json.dumps(jsonable(summary), indent=1))
    return out


def heatmap_figures(results_dir: str | os.PathLike[str], run: str) -> list[tuple[str, str, Path, str]]:
    """``(patient, slide, png, caption)`` for every slide heatmap of ``run`` under
    ``<results_dir>/heatmaps/<run>/``, the attention PNG where there is one (else the contribution), in the order
    the heatmap stage chose them (highest-risk patients first). For the evaluation report to embed."""
    root = Path(results_dir) / "heatmaps" / run
    found = []
    for summary in sorted(root.glob(f"*/*/{SUMMARY}")):
        data = json.loads(summary.read_text())
        note = data.get("caption") or {}
        png = summary.parent / ("attention.png" if (summary.parent / "attention.png").is_file()
                                else "contribution.png")
        text = (f"{run} fold {note.get('fold', '?')}: patient {note.get('patient', '?')} ({note.get('why', '')}), "
                f"slide {data['slide_id']}, {data['n_tiles']} tiles, ranked by {data['ranked_by']}")
        found.append((str(note.get("patient", "")), str(data["slide_id"]), png, text, note.get("order", 0)))
    found.sort(key=lambda f: (f[4], f[0], f[1]))
    return [f[:4] for f in found]
