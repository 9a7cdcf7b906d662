"""Heatmaps of a real slide: segmentation, tiling and a feature store on a pyramidal TIFF, a small ABMIL."""

from __future__ import annotations

import json

import cv2
import numpy as np
import torch

from pathmm_pipeline.core.provenance import build_provenance
from pathmm_pipeline.core.stores import ArraySpec, write_store
from pathmm_pipeline.interpret.heatmap import heatmap_figures, slide_heatmap
from pathmm_pipeline.models import InputDims, TaskSpec, build_model
from pathmm_pipeline.preprocess.segmentation import SegmentationSettings, segment_slide
from pathmm_pipeline.preprocess.tiling import TilingSettings, load_tiles, tile_slide


def test_png_geojson_and_tiles_of_a_real_slide(slide_factory, tmp_path):
    slide = slide_factory("heat", size=(2048, 1536))
    seg, thumb = tmp_path / "seg.zarr", tmp_path / "seg.qc.png"
    segment_slide(slide.path, seg, tmp_path / "seg.geojson", thumb, SegmentationSettings(), fallback=False)
    tile_slide(slide.path, seg, tmp_path / "tiles.zarr", TilingSettings(), fallback=False)
    tiles = load_tiles(tmp_path / "tiles.zarr")
    n = len(tiles.coords)
    assert n > 4
    features = np.random.default_rng(0).normal(size=(n, 12)).astype(np.float16)
    attrs = {"slide_id": "heat", "status": "ok", "reason": "", "n_tiles": n,
             "encoder": {"name": "toy", "weights_sha256": "0" * 64, "embed_dim": 12},
             "transform": {"tile_px": 256, "input_size": 224, "tile_mpp": 0.5}}
    write_store(tmp_path / "feat.zarr", {"features": ArraySpec(features, ("tile", "feature")),
                                         "coords": ArraySpec(tiles.coords, ("tile", "xy"))},
                attrs, build_provenance("features", {}, {}))
    torch.manual_seed(0)
    model = build_model("abmil", InputDims(wsi=12), TaskSpec.survival(4), hidden_dim=16, attn_dim=8).eval()
    out = tmp_path / "heatmaps" / "abmil" / "fold_0" / "heat"
    slide_heatmap(model, out, features_store=tmp_path / "feat.zarr", tiles_store=tmp_path / "tiles.zarr",
                  segmentation_store=seg, thumbnail=thumb, slide_path=slide.path, top_k=3,
                  caption={"patient": "P1", "fold": 0, "why": "highest risk", "order": 0})

    qc = cv2.imread(str(thumb))
    for name in ("attention.png", "contribution.png"):
        png = cv2.imread(str(out / name))
        assert png.shape == qc.shape and not np.array_equal(png, qc)

    geo = json.loads((out / "tiles.geojson").read_text())
    assert geo["type"] == "FeatureCollection" and len(geo["features"]) == n
    f = geo["features"][0]
    assert f["type"] == "Feature" and f["geometry"]["type"] == "Polygon"
    ring = np.array(f["geometry"]["coordinates"][0])
    assert ring.shape == (5, 2) and np.allclose(ring[0], ring[-1]) and np.allclose(ring[0], tiles.coords[0])
    assert np.allclose(ring[2] - ring[0], tiles.geometry.tile_size_level0)
    props = f["properties"]
    assert set(props["measurements"]) == {"attention", "contribution"}
    assert props["classification"]["name"].startswith("attention decile") and len(props["classification"]["color"]) == 3
    total = sum(g["properties"]["measurements"]["attention"] for g in geo["features"])
    assert abs(total - 1) < 1e-6

    summary = json.loads((out / "heatmap.json").read_text())
    assert summary["n_tiles"] == n and summary["crops"] == {"top": ["top_01.png", "top_02.png", "top_03.png"],
                                                            "bottom": ["bottom_01.png", "bottom_02.png",
                                                                       "bottom_03.png"]}
    assert set(summary["provenance"]["inputs"]) == {"features", "tiles", "thumbnail"}
    crop = cv2.imread(str(out / "tiles" / "top_01.png"))
    assert crop.shape == (256, 256, 3)
    figures = heatmap_figures(tmp_path, "abmil")
    assert [(p, s, png.name) for p, s, png, _ in figures] == [("P1", "heat", "attention.png")]
    assert "highest risk" in figures[0][3]
