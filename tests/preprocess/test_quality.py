"""Quality control that decides: real pyramidal TIFFs cut from the real CMU-1 H&E region, sharp, blurred, inked
and folded; each tile and slide is included or excluded with its reason, the tile store keeps what passes, an
excluded slide says so down to its feature store and the cohort QC summary."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import compose

from pathmm_pipeline.core.errors import ConfigError
from pathmm_pipeline.core.provenance import PARQUET_KEY
from pathmm_pipeline.preprocess.qc import summarize_slides
from pathmm_pipeline.preprocess.quality import SLIDE_DECISION_KEY, STATUS_QC_EXCLUDED, QCSettings
from pathmm_pipeline.preprocess.segmentation import SegmentationSettings, segment_slide
from pathmm_pipeline.preprocess.slidewriter import write_pyramidal_tiff
from pathmm_pipeline.preprocess.tiling import TilingSettings, load_tiles, tile_slide

SIZE = (3072, 2560)
TILING = TilingSettings(tile_px=128)  # 64 um tiles: a few hundred on the slide


def _slide(he_texture, root, name: str, edit=None):
    rgb, _ = compose(he_texture, SIZE, seed=1)
    if edit is not None:
        rgb = edit(rgb)
    return write_pyramidal_tiff(root / f"{name}.svs", rgb, mpp=0.5, style="aperio", app_mag=20.0)


def _tile(slide, root, qc: QCSettings | None = QCSettings()):
    seg = root / f"{slide.stem}.seg.zarr"
    if not seg.exists():
        segment_slide(slide, seg, root / f"{slide.stem}.geojson", root / f"{slide.stem}.png", SegmentationSettings())
    store, table = root / f"{slide.stem}.{id(qc)}.tiles.zarr", root / f"{slide.stem}.{id(qc)}.qc.parquet"
    n = tile_slide(slide, seg, store, TILING, qc=qc, qc_table=table if qc is not None else None)
    return n, load_tiles(store), (pd.read_parquet(table) if qc is not None else None), table


def _blur_left_half(rgb: np.ndarray) -> np.ndarray:
    out = rgb.copy()
    half = rgb.shape[1] // 2
    out[:, :half] = cv2.GaussianBlur(rgb[:, :half], (0, 0), 6.0)  # 3 um at 0.5 um/px: out of focus
    return out


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("quality")


def test_sharp_tissue_passes_every_default_rule(he_texture, root):
    slide = _slide(he_texture, root, "sharp")
    n, tiles, table, path = _tile(slide, root)
    n_plain, plain, _, _ = _tile(slide, root, qc=None)
    # the test slide fills the texture's gaps with one flat pale colour: tiles wholly in such a fill show no detail
    # (blur 0) and are the only ones excluded
    flat = table.blur == 0
    assert len(table) == n_plain > 100 and tiles.status == "ok" and flat.mean() < 0.1
    assert table.include[~flat].all() and (table.reason[~flat] == "").all() and n == int((~flat).sum())
    assert table.blur[~flat].min() > 1.0 and table.dark_fraction.max() < 0.5 and table.pen_fraction.max() < 0.1
    metadata = pq.read_schema(path).metadata
    assert json.loads(metadata[PARQUET_KEY])["stage"] == "tiling"
    assert json.loads(metadata[SLIDE_DECISION_KEY.encode()])["include"] is True


def test_blurred_tiles_are_excluded_with_their_reason(he_texture, root):
    slide = _slide(he_texture, root, "half_blurred", _blur_left_half)
    n, tiles, table, _ = _tile(slide, root)
    half = SIZE[0] // 2
    left = table.x + tiles.geometry.tile_size_level0 <= half
    right = table.x >= half
    assert left.sum() > 20 and right.sum() > 20
    assert not table.include[left].any() and table.reason[left].str.startswith("blur").all()
    assert table.include[right & (table.blur > 0)].all()
    assert n == int(table.include.sum()) and set(map(tuple, tiles.coords)) == set(
        zip(table.x[table.include], table.y[table.include]))
    assert tiles.status == "ok"  # half the tissue is still usable: the slide stays


def test_a_slide_mostly_out_of_focus_is_excluded_down_to_the_qc_summary(he_texture, root):
    slide = _slide(he_texture, root, "blurred", lambda rgb: cv2.GaussianBlur(rgb, (0, 0), 6.0))
    n, tiles, table, _ = _tile(slide, root)
    assert n == 0 and tiles.status == STATUS_QC_EXCLUDED and "excluded_tile_fraction" in tiles.reason
    assert len(table) > 100 and (~table.include).mean() > 0.8
    seg = root / "blurred.seg.zarr"
    store = next(root.glob("blurred.*.tiles.zarr"))
    row = summarize_slides([store], [seg]).iloc[0]
    assert row.qc_decision == "exclude" and row.n_tiles == 0 and row.n_qc_candidates == len(table)
    assert row.tiles_excluded_by_qc == int((~table.include).sum())
    assert "blur" in row.tile_qc_reasons


def test_marker_ink_and_folds_are_excluded_as_such(he_texture, root):
    def ink_and_fold(rgb: np.ndarray) -> np.ndarray:
        out = rgb.copy()
        cv2.line(out, (300, 700), (1700, 800), (30, 60, 170), 40)  # a 20 um blue marker stroke over tissue
        # the round piece folded onto itself: three layers of tissue, so (Beer-Lambert) transmittance cubed
        fold = out[1408:2176, 1920:2688].astype(np.float32) / 255.0
        out[1408:2176, 1920:2688] = np.clip(255.0 * fold ** 3, 0, 255).astype(np.uint8)
        return out

    slide = _slide(he_texture, root, "inked", ink_and_fold)
    _, _, table, _ = _tile(slide, root)
    size = 256  # level-0 px of a 128 px tile at 0.5 um/px on a 0.5 um/px slide
    inside = lambda x0, y0, x1, y1: (table.x >= x0) & (table.y >= y0) & (table.x + size <= x1) & (table.y + size <= y1)  # noqa: E731
    fold = inside(1920, 1408, 2688, 2176)
    dark = table.reason.str.startswith("dark_fraction")
    assert fold.sum() >= 10 and dark[fold].sum() >= 5  # the densest parts of the fold are too dark to use
    assert not dark[~fold & ~(table.x + size > 1920)].any()  # and nothing away from it
    inked = table.pen_fraction > 0.1
    assert inked.sum() >= 3 and table.reason[inked].str.startswith("pen_fraction").all()
    assert ((table.y[inked] < 900) & (table.y[inked] + size > 600)).all()  # along the stroke only


def test_an_air_bubble_rim_is_excluded_and_clean_tissue_is_not(he_texture, root):
    centre, radius = (1100, 1500), 420  # level-0 px at 0.5 um/px: a 420 um wide bubble under the coverslip

    def bubble(rgb: np.ndarray) -> np.ndarray:
        out = rgb.copy()
        inside = np.zeros(out.shape[:2], np.uint8)
        cv2.circle(inside, centre, radius, 1, -1)
        out[inside == 1] = (0.5 * out[inside == 1] + 0.5 * 235).astype(np.uint8)  # washed out under the air
        cv2.circle(out, centre, radius, (45, 45, 50), 7)  # the refraction edge: a dark grey 3.5 um rim
        return out

    slide = _slide(he_texture, root, "bubble", bubble)
    _, _, table, _ = _tile(slide, root)
    size = TILING.tile_px  # level-0 px: 64 um tiles at 0.5 um/px, measured at 1 um/px (64 px)
    cx, cy = table.x + size / 2, table.y + size / 2
    distance = np.hypot(cx - centre[0], cy - centre[1])
    on_rim = np.abs(distance - radius) < size / 4  # the rim runs through the tile's middle
    far = np.abs(distance - radius) > size  # no part of the tile near the rim
    bubbled = table.reason.str.startswith("bubble_rim_fraction")
    assert on_rim.sum() >= 4 and bubbled[on_rim].all()
    assert not bubbled[far].any() and (table.bubble_rim_fraction[far] == 0).mean() >= 0.95


def test_rules_are_configurable_and_checked(he_texture, root):
    slide = _slide(he_texture, root, "sharp")
    strict = QCSettings(tile_rules={"blur_min": 1e9})
    n, tiles, table, _ = _tile(slide, root, strict)
    assert n == 0 and tiles.status == STATUS_QC_EXCLUDED and table.reason.str.startswith("blur").all()
    off = QCSettings(enabled=False, tile_rules={"blur_min": 1e9})
    n_off, tiles_off, table_off, _ = _tile(slide, root, off)
    assert n_off == len(table_off) > 100 and tiles_off.status == "ok" and table_off.include.all()
    with pytest.raises(ConfigError, match="rule 'sharpness_min' names no known metric"):
        QCSettings(tile_rules={"sharpness_min": 1.0})
    with pytest.raises(ConfigError, match="must be <metric>_min or <metric>_max"):
        QCSettings(slide_rules={"n_tiles": 3})
