"""Tissue segmentation against known ground truth, on real TIFF slides."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from pathmm_pipeline.core.provenance import read_provenance, verify_provenance
from pathmm_pipeline.preprocess.segmentation import (
    STATUS_NO_TISSUE,
    STATUS_OK,
    SegmentationSettings,
    load_mask,
    segment_slide,
)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return float((a & b).sum() / max(1, (a | b).sum()))


def truth_at(mask_shape: tuple[int, int], truth: np.ndarray) -> np.ndarray:
    small = cv2.resize(truth.astype(np.float32), (mask_shape[1], mask_shape[0]), interpolation=cv2.INTER_AREA)
    return (small >= 0.5).astype(np.uint8)


def run(slide, tmp_path, **overrides):
    settings = SegmentationSettings(**overrides)
    out = tmp_path / "seg"
    result = segment_slide(slide.path, out / "s.zarr", out / "s.geojson", out / "s.png", settings, slide_id="s")
    return result, out


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
def test_mask_matches_ground_truth(slide_factory, tmp_path, backend):
    slide = slide_factory("s")
    settings = SegmentationSettings()
    out = tmp_path / backend
    result = segment_slide(slide.path, out / "s.zarr", out / "s.geojson", out / "s.png", settings, slide_id="s",
                           backend=backend, fallback=False)
    assert result.status == STATUS_OK
    assert result.mask_mpp == pytest.approx(8.0, rel=0.02)
    score = iou(result.mask, truth_at(result.mask.shape, slide.truth))
    assert score > 0.93, score
    assert len(result.contours) == 2
    assert sum(len(c.holes) for c in result.contours) == 1  # the hole is kept, not filled
    expected_area = slide.truth.sum() * 0.5 ** 2
    assert result.tissue_area_um2 == pytest.approx(expected_area, rel=0.06)


def test_pen_mark_is_not_tissue(slide_factory, tmp_path):
    slide = slide_factory("pen", pen=True)
    with_pen, _ = run(slide, tmp_path / "a", min_tissue_area_um2=20_000.0)
    assert with_pen.pen_fraction > 0
    score = iou(with_pen.mask, truth_at(with_pen.mask.shape, slide.truth))
    assert score > 0.9, score
    without_filter, _ = run(slide, tmp_path / "b", remove_pen=False, min_tissue_area_um2=20_000.0)
    assert iou(without_filter.mask, truth_at(without_filter.mask.shape, slide.truth)) < score


def test_blank_slide_is_recorded_not_crashed(slide_factory, tmp_path):
    slide = slide_factory("blank", blank=True)
    result, out = run(slide, tmp_path)
    assert result.status == STATUS_NO_TISSUE
    stored = load_mask(out / "s.zarr")
    assert stored.status == STATUS_NO_TISSUE and "no tissue" in stored.reason
    assert json.loads((out / "s.geojson").read_text())["features"] == []


def test_outputs_geojson_thumbnail_and_provenance(slide_factory, tmp_path):
    slide = slide_factory("s")
    result, out = run(slide, tmp_path)
    geo = json.loads((out / "s.geojson").read_text())
    assert geo["type"] == "FeatureCollection" and len(geo["features"]) == 2
    biggest = geo["features"][0]
    assert biggest["properties"]["objectType"] == "annotation"
    rings = biggest["geometry"]["coordinates"]
    assert len(rings) == 2  # exterior + hole
    exterior = np.array(rings[0])
    assert (exterior[0] == exterior[-1]).all()
    # level-0 coordinates: the exterior spans the drawn ellipse (the largest truth component)
    _, labels, stats, _ = cv2.connectedComponentsWithStats(slide.truth)
    ys, xs = np.nonzero(labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA])))
    assert exterior[:, 0].min() == pytest.approx(xs.min(), abs=40)
    assert exterior[:, 1].max() == pytest.approx(ys.max(), abs=40)
    thumb = cv2.imread(str(out / "s.png"))
    assert thumb is not None and max(thumb.shape[:2]) <= 1024
    record = read_provenance(out / "s.zarr")
    assert record["stage"] == "segmentation"
    assert record["inputs"]["slide"]["path"] == str(slide.path.resolve())
    assert record["params"]["settings"]["mpp"] == 8.0
    assert set(record["outputs"]) == {"geojson", "thumbnail"}
    assert verify_provenance(out / "s.zarr") == []
    (out / "s.geojson").write_text("{}")
    assert [f.role for f in verify_provenance(out / "s.zarr")] == ["geojson"]


def test_small_pieces_and_holes_filtered_by_area(slide_factory, tmp_path):
    slide = slide_factory("s")
    # a minimum piece area above the small circle's (pi * 384^2 px * 0.25 um^2 = 0.116 mm^2) drops it
    result, _ = run(slide, tmp_path / "a", min_tissue_area_um2=200_000.0)
    assert len(result.contours) == 1
    # a minimum hole area above the hole's size fills it
    filled, _ = run(slide, tmp_path / "b", min_hole_area_um2=500_000.0)
    assert sum(len(c.holes) for c in filled.contours) == 0
    assert filled.mask.sum() > result.mask.sum()
