"""Tiling at exact mpp against a brute-force reference, on real TIFF slides, with both backends."""

from __future__ import annotations

import numpy as np
import pytest

from pathmm_pipeline.core.errors import InputError
from pathmm_pipeline.core.provenance import read_provenance, verify_provenance
from pathmm_pipeline.preprocess.segmentation import SegmentationSettings, TissueMask, segment_slide
from pathmm_pipeline.preprocess.slides import open_slide
from pathmm_pipeline.preprocess.tiling import (
    TilingSettings,
    grid_positions,
    load_tiles,
    read_tile,
    tile_geometry,
    tile_slide,
    tissue_fractions,
)


def brute_force_fraction(mask: np.ndarray, scale: tuple[float, float], x: float, y: float, size: float) -> float:
    """Area of overlap of the tile box with every mask pixel, pixel by pixel."""
    sx, sy = scale
    x0, x1, y0, y1 = x / sx, (x + size) / sx, y / sy, (y + size) / sy
    total = 0.0
    for j in range(int(np.floor(y0)), int(np.ceil(y1))):
        for i in range(int(np.floor(x0)), int(np.ceil(x1))):
            if 0 <= j < mask.shape[0] and 0 <= i < mask.shape[1] and mask[j, i]:
                ox = min(x1, i + 1) - max(x0, i)
                oy = min(y1, j + 1) - max(y0, j)
                total += max(0.0, ox) * max(0.0, oy)
    return total / ((x1 - x0) * (y1 - y0))


def test_tissue_fraction_matches_brute_force():
    rng = np.random.default_rng(3)
    mask = (rng.random((40, 50)) > 0.5).astype(np.uint8)
    tissue = TissueMask(mask, 8.0, (15.7, 16.3), "ok", "")
    coords = rng.uniform(0, 600, size=(60, 2)).round().astype(np.int64)
    got = tissue_fractions(coords, 73.3, tissue)
    want = np.array([brute_force_fraction(mask, tissue.scale_to_level0, x, y, 73.3) for x, y in coords])
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("slide_mpp, target, level, read_px", [
    (0.5, 0.5, 0, 256),      # 20x slide, 20x tiles: read as is
    (0.25, 0.5, 0, 512),     # 40x slide: read 512 at level 0 and halve
    (0.25, 2.0, 1, 512),     # coarse tiles come from the reduced level
    (0.499, 0.5, 0, 257),    # the CMU scanner's 0.499: exact, not rounded to 256
])
def test_geometry_picks_level_and_read_size(slide_mpp, target, level, read_px):
    from pathmm_pipeline.preprocess.slides import SlideInfo

    info = SlideInfo("x", "openslide", (8192, 8192), ((8192, 8192), (2048, 2048), (512, 512)), (1.0, 4.0, 16.0),
                     slide_mpp, "metadata", None, None)
    geometry = tile_geometry(info, TilingSettings(mpp=target))
    assert (geometry.level, geometry.read_px) == (level, read_px)
    assert geometry.achieved_mpp == pytest.approx(target, rel=0.005)
    assert geometry.tile_size_level0 == pytest.approx(256 * target / slide_mpp)


def test_refuses_upsampling_beyond_limit():
    from pathmm_pipeline.preprocess.slides import SlideInfo

    info = SlideInfo("coarse.svs", "openslide", (100, 100), ((100, 100),), (1.0,), 1.0, "metadata", None, None)
    with pytest.raises(InputError, match="coarser"):
        tile_geometry(info, TilingSettings(mpp=0.5))
    assert tile_geometry(info, TilingSettings(mpp=0.5, max_upsample=2.0)).read_px == 128


def test_grid_stays_inside_slide_and_honours_overlap():
    from pathmm_pipeline.preprocess.slides import SlideInfo

    info = SlideInfo("x", "openslide", (1000, 700), ((1000, 700),), (1.0,), 0.5, "m", None, None)
    g = tile_geometry(info, TilingSettings(overlap=0.5))
    coords = grid_positions(info.dimensions, g)
    assert (coords[:, 0] + 256 <= 1000).all() and (coords[:, 1] + 256 <= 700).all()
    assert np.diff(np.unique(coords[:, 0])).tolist() == [128] * 5


def segment_and_tile(slide, out, backend="openslide", **tiling):
    segment_slide(slide.path, out / "seg.zarr", out / "seg.geojson", out / "seg.png", SegmentationSettings(),
                  backend=backend, fallback=False)
    n = tile_slide(slide.path, out / "seg.zarr", out / "tiles.zarr", TilingSettings(**tiling), backend=backend,
                   fallback=False)
    return n, load_tiles(out / "tiles.zarr")


def test_tiles_cover_tissue_and_carry_their_spec(slide_factory, tmp_path):
    slide = slide_factory("s")
    n, tiles = segment_and_tile(slide, tmp_path)
    assert n == len(tiles.coords) > 20
    assert tiles.geometry.achieved_mpp == pytest.approx(0.5)
    assert (tiles.tissue_fraction >= 0.5).all()
    # kept tiles really lie on tissue: compare with the exact truth mask at full resolution
    truth_frac = np.array([slide.truth[y:y + 256, x:x + 256].mean() for x, y in tiles.coords])
    assert np.median(truth_frac) > 0.9 and truth_frac.min() > 0.3
    # and no tile that is mostly tissue in the truth was dropped
    all_coords = grid_positions((3072, 2560), tiles.geometry)
    full = np.array([slide.truth[y:y + 256, x:x + 256].mean() for x, y in all_coords])
    kept = {tuple(c) for c in tiles.coords}
    missed = [tuple(c) for c, f in zip(all_coords, full) if f > 0.9 and tuple(c) not in kept]
    assert len(missed) <= 0.05 * n
    record = read_provenance(tmp_path / "tiles.zarr")
    assert set(record["inputs"]) == {"slide", "segmentation"} and verify_provenance(tmp_path / "tiles.zarr") == []


def test_both_backends_give_the_same_tiles(slide_factory, tmp_path):
    slide = slide_factory("s")
    _, a = segment_and_tile(slide, tmp_path / "a", backend="openslide")
    _, b = segment_and_tile(slide, tmp_path / "b", backend="tiffslide")
    np.testing.assert_array_equal(a.coords, b.coords)
    with open_slide(slide.path, backend="openslide", fallback=False) as ra, \
            open_slide(slide.path, backend="tiffslide", fallback=False) as rb:
        for x, y in a.coords[:5]:
            ta = read_tile(ra, a.geometry, x, y).astype(int)
            tb = read_tile(rb, b.geometry, x, y).astype(int)
            assert ta.shape == (256, 256, 3) and np.abs(ta - tb).mean() < 1.5


def test_forty_x_slide_gives_the_same_physical_tiles(slide_factory, tmp_path, he_texture):
    """The same tissue scanned at 0.25 um/px tiles to the same positions in microns as at 0.5 um/px."""
    import cv2

    from pathmm_pipeline.preprocess.slidewriter import write_pyramidal_tiff

    slide20 = slide_factory("s")
    with open_slide(slide20.path) as reader:
        rgb = reader.read_region((0, 0), 0, reader.info.dimensions)
    big = cv2.resize(rgb, (rgb.shape[1] * 2, rgb.shape[0] * 2), interpolation=cv2.INTER_LINEAR)
    path40 = write_pyramidal_tiff(tmp_path / "s40.svs", big, mpp=0.25, app_mag=40)

    class Slide40:
        path = path40

    _, t20 = segment_and_tile(slide20, tmp_path / "20")
    _, t40 = segment_and_tile(Slide40, tmp_path / "40")
    assert t40.geometry.read_px == 512 and t40.geometry.achieved_mpp == pytest.approx(0.5)
    um20 = {tuple(c) for c in (t20.coords * 0.5).astype(int)}
    um40 = {tuple(c) for c in (t40.coords * 0.25).astype(int)}
    assert len(um20 & um40) >= 0.95 * max(len(um20), len(um40))
    with open_slide(slide20.path) as r20, open_slide(path40) as r40:
        x, y = t20.coords[len(t20.coords) // 2]
        a = read_tile(r20, t20.geometry, x, y).astype(int)
        b = read_tile(r40, t40.geometry, 2 * x, 2 * y).astype(int)
    assert np.abs(a - b).mean() < 6


def test_no_tissue_slide_is_skipped_explicitly(slide_factory, tmp_path):
    n, tiles = segment_and_tile(slide_factory("blank", blank=True), tmp_path)
    assert n == 0 and tiles.status == "skipped" and "no tissue" in tiles.reason
    assert tiles.coords.shape == (0, 2)
