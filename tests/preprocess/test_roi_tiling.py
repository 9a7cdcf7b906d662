"""ROI-restricted tiling on a real TIFF slide: QuPath GeoJSON polygons (holes, classes, include / exclude) against
the exact rectangle overlaps they imply, the file in the store's provenance, and one-line errors for bad files."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from pathmm_pipeline.cli import main
from pathmm_pipeline.core.errors import InputError, SampleSheetError
from pathmm_pipeline.core.provenance import read_provenance, verify_provenance
from pathmm_pipeline.core.stores import open_store
from pathmm_pipeline.preprocess.roi import MAX_RASTER_PIXELS, RoiPolygon, RoiSettings, rasterise, read_roi
from pathmm_pipeline.preprocess.samplesheet import load_samplesheet, slide_entries
from pathmm_pipeline.preprocess.segmentation import SegmentationSettings, segment_slide
from pathmm_pipeline.preprocess.tiling import TilingSettings, load_tiles, tile_slide

TILE = 128  # level-0 px of a tile: 128 px at 0.5 um/px on a 0.5 um/px slide (64 um: a few hundred)
TILING = TilingSettings(tile_px=TILE)
SLIDE = (3072, 2560)
# rectangles (x0, y0, x1, y1) in level-0 px, their edges off the 128 px grid
TUMOR = (300.0, 350.0, 1650.0, 1010.0)  # the upper part of the large tissue piece
STROMA = (1880.0, 1390.0, 2700.0, 2200.0)  # the round piece
HOLE = (700.0, 420.0, 1200.0, 800.0)  # inside TUMOR


def ring(x0: float, y0: float, x1: float, y1: float) -> list[list[float]]:
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def feature(rings: list, cls: object = None, kind: str = "Polygon", **properties: object) -> dict:
    if cls is not None:
        properties["classification"] = cls if isinstance(cls, str) else {"name": cls["name"], "color": [255, 0, 0]}
    return {"type": "Feature", "geometry": {"type": kind, "coordinates": rings},
            "properties": {"objectType": "annotation", **properties}}


def write_roi(path, features: list | dict) -> str:
    doc = features if isinstance(features, dict) else {"type": "FeatureCollection", "features": features}
    path.write_text(json.dumps(doc))
    return str(path)


def overlap(coords: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    """Exact share of each tile inside an axis-aligned box."""
    x0, y0, x1, y1 = box
    wx = np.clip(np.minimum(coords[:, 0] + TILE, x1) - np.maximum(coords[:, 0], x0), 0, None)
    wy = np.clip(np.minimum(coords[:, 1] + TILE, y1) - np.maximum(coords[:, 1], y0), 0, None)
    return wx * wy / TILE**2


@pytest.fixture(scope="module")
def slide(slide_factory, tmp_path_factory):
    """(slide, segmentation store, the tiles without any ROI)."""
    s = slide_factory("s")
    out = tmp_path_factory.mktemp("roi")
    segment_slide(s.path, out / "seg.zarr", out / "seg.geojson", out / "seg.png", SegmentationSettings(),
                  fallback=False)
    tile_slide(s.path, out / "seg.zarr", out / "plain.zarr", TILING, fallback=False)
    return s, out / "seg.zarr", load_tiles(out / "plain.zarr")


def tile(slide, tmp_path, roi, name="tiles.zarr", **roi_settings):
    s, seg, _ = slide
    tile_slide(s.path, seg, tmp_path / name, replace(TILING, roi=RoiSettings(**roi_settings)), fallback=False,
               roi=roi)
    return load_tiles(tmp_path / name)


def as_set(coords: np.ndarray) -> set[tuple[int, int]]:
    return {tuple(int(v) for v in c) for c in coords}


def test_tiles_lie_inside_the_include_polygon(slide, tmp_path):
    plain = slide[2]
    tiles = tile(slide, tmp_path, write_roi(tmp_path / "r.geojson", [feature([ring(*TUMOR)], {"name": "Tumor"})]))
    share = overlap(tiles.coords, TUMOR)
    assert len(tiles.coords) > 5 and (share >= 0.5).all()
    # exactly the tissue tiles at least half inside the rectangle
    assert as_set(tiles.coords) == as_set(plain.coords[overlap(plain.coords, TUMOR) >= 0.5])
    np.testing.assert_array_equal(tiles.tissue_fraction,
                                  plain.tissue_fraction[overlap(plain.coords, TUMOR) >= 0.5])
    strict = tile(slide, tmp_path, str(tmp_path / "r.geojson"), "strict.zarr", min_overlap=1.0)
    assert 0 < len(strict.coords) < len(tiles.coords) and (overlap(strict.coords, TUMOR) == 1.0).all()
    assert "Tumor" not in tiles.reason and tiles.status == "ok"


def test_exclude_polygon_removes_the_tiles_it_touches(slide, tmp_path):
    plain = slide[2]
    path = write_roi(tmp_path / "r.geojson", [feature([ring(*STROMA)], {"name": "Pen"})])
    tiles = tile(slide, tmp_path, path, exclude_classes=["Pen"])
    touched = overlap(plain.coords, STROMA) > 0
    assert touched.sum() >= 3 and as_set(tiles.coords) == as_set(plain.coords[~touched])  # nothing else restricted
    lenient = tile(slide, tmp_path, path, "lenient.zarr", exclude_classes=["Pen"], max_exclude_overlap=0.5)
    assert as_set(lenient.coords) == as_set(plain.coords[overlap(plain.coords, STROMA) <= 0.5])


def test_a_hole_removes_its_tiles(slide, tmp_path):
    plain = slide[2]
    tiles = tile(slide, tmp_path, write_roi(tmp_path / "r.geojson",
                                            [feature([ring(*TUMOR), ring(*HOLE)[::-1]], {"name": "Tumor"})]))
    share = overlap(plain.coords, TUMOR) - overlap(plain.coords, HOLE)
    assert as_set(tiles.coords) == as_set(plain.coords[share >= 0.5])
    assert (overlap(tiles.coords, HOLE) <= 0.5).all() and (overlap(plain.coords, HOLE) > 0.5).sum() >= 1


def test_classes_choose_the_polygons(slide, tmp_path):
    """QuPath's classification object, a bare classification string and a name all give the class; detections
    are ignored; a MultiPolygon is the union of its parts."""
    plain = slide[2]
    features = [feature([ring(*TUMOR)], {"name": "Tumor"}),
                feature([[ring(*STROMA)]], "Stroma", kind="MultiPolygon"),
                feature([ring(0, 0, *SLIDE)], name="Tumor", objectType="detection"),  # a cell: not a region
                {"type": "Feature", "geometry": {"type": "Point", "coordinates": [5, 5]}, "properties": {}}]
    path = write_roi(tmp_path / "r.geojson", features)
    in_tumor = overlap(plain.coords, TUMOR) >= 0.5
    in_stroma = overlap(plain.coords, STROMA) >= 0.5
    assert as_set(tile(slide, tmp_path, path, "t.zarr", include_classes=["Tumor"]).coords) == \
        as_set(plain.coords[in_tumor])
    assert as_set(tile(slide, tmp_path, path, "s.zarr", include_classes=["Stroma"]).coords) == \
        as_set(plain.coords[in_stroma])
    assert as_set(tile(slide, tmp_path, path, "all.zarr").coords) == as_set(plain.coords[in_tumor | in_stroma])
    # the class from properties.name; Stroma excluded from "every annotation"
    named = write_roi(tmp_path / "n.geojson", [feature([ring(*TUMOR)], name="Tumor"),
                                               feature([ring(*STROMA)], "Stroma")])
    assert as_set(tile(slide, tmp_path, named, "n.zarr", exclude_classes=["Stroma"]).coords) == \
        as_set(plain.coords[in_tumor & (overlap(plain.coords, STROMA) == 0)])
    assert [p.name for p in read_roi(named)] == ["Tumor", "Stroma"]


def test_provenance_records_the_roi_file_and_its_settings(slide, tmp_path):
    path = write_roi(tmp_path / "r.geojson", [feature([ring(*TUMOR)], {"name": "Tumor"})])
    tile(slide, tmp_path, path, include_classes=["Tumor"], min_overlap=0.75)
    record = read_provenance(tmp_path / "tiles.zarr")
    assert set(record["inputs"]) == {"slide", "segmentation", "roi"}
    assert record["inputs"]["roi"]["sha256"] == hashlib.sha256((tmp_path / "r.geojson").read_bytes()).hexdigest()
    assert record["params"]["settings"]["roi"] == {"include_classes": ["Tumor"], "exclude_classes": [],
                                                   "min_overlap": 0.75, "max_exclude_overlap": 0.0}
    assert verify_provenance(tmp_path / "tiles.zarr") == []
    assert open_store(tmp_path / "tiles.zarr").attrs["roi"] == "ROI r.geojson: at least 0.75 inside Tumor"
    # an edited ROI file no longer verifies against the store
    (tmp_path / "r.geojson").write_text(json.dumps({"type": "FeatureCollection",
                                                    "features": [feature([ring(*STROMA)], {"name": "Tumor"})]}))
    assert verify_provenance(tmp_path / "tiles.zarr") != []


def test_without_roi_nothing_changes(slide, tmp_path):
    s, seg, plain = slide
    whole = tile(slide, tmp_path, write_roi(tmp_path / "r.geojson", [feature([ring(-50, -50, 4000, 3000)])]),
                 min_overlap=1.0)
    np.testing.assert_array_equal(whole.coords, plain.coords)  # an ROI holding the whole slide changes nothing
    np.testing.assert_array_equal(whole.tissue_fraction, plain.tissue_fraction)
    tile_slide(s.path, seg, tmp_path / "again.zarr", replace(TILING, roi=RoiSettings(include_classes=["X"])),
               fallback=False)  # ROI settings without an ROI file play no part
    again = load_tiles(tmp_path / "again.zarr")
    np.testing.assert_array_equal(again.coords, plain.coords)
    record = read_provenance(tmp_path / "again.zarr")
    assert set(record["inputs"]) == {"slide", "segmentation"} and record["params"]["settings"]["roi"] is None


BAD = {
    "missing": (None, "not found"),
    "not JSON": ("{'type': 'FeatureCollection',", "not JSON"),
    "not GeoJSON": (json.dumps({"slides": ["a"]}), "not GeoJSON"),
    "no polygon": (json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 2]}, "properties": {}}]}),
        "no Polygon or MultiPolygon"),
    "bad ring": (json.dumps([feature([[[0, 0], [5]]], {"name": "Tumor"})]), "feature 1: a ring is not"),
    "unknown geometry": (json.dumps(feature([], kind="Polygn")), "unknown geometry type 'Polygn'"),
    "no included class": (json.dumps([feature([ring(*TUMOR)], {"name": "Tumour"})]),
                          "no polygon of an included class (Tumor)"),
    "outside the slide": (json.dumps([feature([ring(5000, 5000, 6000, 6000)], {"name": "Tumor"})]),
                          "outside the 3072 x 2560 px slide"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_roi_file_is_one_clear_line(slide, tmp_path, case):
    text, problem = BAD[case]
    path = tmp_path / "bad.geojson"
    if text is not None:
        path.write_text(text)
    with pytest.raises(InputError) as caught:
        tile(slide, tmp_path, path, include_classes=["Tumor"])
    message = str(caught.value)
    assert message.startswith(str(path)) and problem in message and "\n" not in message, message
    assert not (tmp_path / "tiles.zarr").exists()


def test_cli_takes_the_roi(slide, tmp_path, capsys):
    s, seg, plain = slide
    path = write_roi(tmp_path / "r.geojson", [feature([ring(*TUMOR)], {"name": "Tumor"})])
    settings = json.dumps({"tile_px": TILE, "roi": {"include_classes": ["Tumor"]}})
    assert main(["tile-slide", str(s.path), "--segmentation", str(seg), "--store", str(tmp_path / "t.zarr"),
                 "--settings", settings, "--no-fallback", "--roi", path]) == 0
    assert as_set(load_tiles(tmp_path / "t.zarr").coords) == as_set(plain.coords[overlap(plain.coords, TUMOR) >= 0.5])
    assert main(["tile-slide", str(s.path), "--segmentation", str(seg), "--store", str(tmp_path / "u.zarr"),
                 "--settings", settings, "--roi", str(tmp_path / "nowhere.geojson")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nowhere.geojson: ROI file not found" in err[0]


def test_rasterised_coverage_is_exact_to_about_a_raster_pixel():
    rng = np.random.default_rng(0)
    for _ in range(20):
        x0, x1 = sorted(rng.uniform(0, 3000, 2))
        y0, y1 = sorted(rng.uniform(0, 2500, 2))
        raster = rasterise([RoiPolygon("r", np.array(ring(x0, y0, x1, y1)))], SLIDE, TILE)
        coords = rng.uniform(-100, 3000, (200, 2))
        got = raster.coverage(coords, TILE)
        assert np.abs(got - overlap(coords, (x0, y0, x1, y1))).max() <= 1.5 / 32  # ~a raster px of a side


def test_a_huge_slide_is_never_rasterised_at_level_0():
    """A 100k x 80k px slide at 0.25 um/px (512 px tiles) with an ROI over all of it: one bounded raster."""
    polygon = RoiPolygon("Tumor", np.array(ring(10.5, 20.5, 99_990.0, 79_000.0)),
                         (np.array(ring(40_000.0, 30_000.0, 60_000.0, 50_000.0)),))
    raster = rasterise([polygon], (100_000, 80_000), 512.0)
    assert (raster.table.shape[0] - 1) * (raster.table.shape[1] - 1) <= MAX_RASTER_PIXELS * 1.01
    assert raster.scale >= 16
    coords = np.array([[1_000, 1_000], [50_000, 40_000], [39_800, 30_000], [99_900, 1_000]], float)
    np.testing.assert_allclose(raster.coverage(coords, 512.0), [1.0, 0.0, 200 / 512, 90 / 512], atol=0.05)


def test_sample_sheet_roi_path_resolves_like_slide_path(tmp_path):
    (tmp_path / "slides").mkdir()
    (tmp_path / "slides" / "s1.svs").write_bytes(b"x")
    (tmp_path / "slides" / "s2.svs").write_bytes(b"x")
    write_roi(tmp_path / "slides" / "s1.geojson", [feature([ring(*TUMOR)])])
    rows = [{"patient_id": "P1", "slide_id": "s1", "slide_path": "slides/s1.svs", "roi_path": "slides/s1.geojson",
             "cancer_type": "BLCA"},
            {"patient_id": "P1", "slide_id": "s2", "slide_path": "slides/s2.svs", "roi_path": "",
             "cancer_type": "BLCA"}]
    pd.DataFrame(rows).to_csv(tmp_path / "sheet.csv", index=False)
    entries = slide_entries(load_samplesheet(tmp_path / "sheet.csv", ["BLCA"]))
    assert entries["s1"].roi == str(tmp_path / "slides" / "s1.geojson") and entries["s2"].roi is None
    rows[1]["roi_path"] = "slides/s2.geojson"
    rows.append({"patient_id": "P2", "slide_id": "", "slide_path": "", "roi_path": "slides/s1.geojson",
                 "cancer_type": "BLCA"})
    pd.DataFrame(rows).to_csv(tmp_path / "sheet.csv", index=False)
    with pytest.raises(SampleSheetError) as caught:
        load_samplesheet(tmp_path / "sheet.csv", ["BLCA"])
    assert "row 2 (line 3): roi_path 'slides/s2.geojson' does not exist" in str(caught.value)
    assert "row 3 (line 4): roi_path is given but the row has no slide" in str(caught.value)
