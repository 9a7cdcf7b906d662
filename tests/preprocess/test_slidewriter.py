"""The tile-by-tile BigTIFF writer and its TCGA-like content: both backends read the Aperio layout (levels, mpp,
objective), the pixels are the renderer's within JPEG noise, and the writer's memory does not grow with the slide."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import tifffile

from pathmm_pipeline.preprocess.slides import open_slide
from pathmm_pipeline.preprocess.slidewriter import pyramid_sizes, write_tiled_slide
from pathmm_pipeline.preprocess.synthetic import SyntheticHE, write_synthetic_slide

SIZE = (4096, 3072)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> tuple:
    render = SyntheticHE(SIZE, seed=3)
    path = write_tiled_slide(tmp_path_factory.mktemp("bigslide") / "tcga_like.svs", SIZE, render, mpp=0.25,
                             app_mag=40.0, quality=85, min_level_px=128, progress=False)
    return path, render


def test_pyramid_sizes_divide_by_the_factor_down_to_the_smallest_level():
    assert pyramid_sizes((100_000, 80_000)) == [(100_000, 80_000), (25_000, 20_000), (6_250, 5_000), (1_562, 1_250)]
    assert pyramid_sizes((4096, 3072), min_level_px=128) == [(4096, 3072), (1024, 768), (256, 192)]


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
def test_both_backends_read_an_aperio_40x_bigtiff(synthetic, backend):
    path, _ = synthetic
    with tifffile.TiffFile(path) as tif:
        assert tif.is_bigtiff and tif.pages[0].is_tiled and tif.pages[0].compression == 7  # JPEG
    with open_slide(path, backend=backend, fallback=False) as reader:
        info = reader.info
    assert info.backend == backend and info.vendor == "aperio"
    assert info.dimensions == SIZE and info.level_dimensions == ((4096, 3072), (1024, 768), (256, 192))
    assert info.level_downsamples == pytest.approx((1.0, 4.0, 16.0))
    assert info.mpp == pytest.approx(0.25) and info.objective_power == 40.0


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
def test_regions_are_what_the_renderer_drew(synthetic, backend):
    path, render = synthetic
    # a region across tile borders and the tissue edge (found on the renderer's own tissue map), and level 1
    tissue = render.tissue(16.0, 0, 0, 256, 192)
    rows, cols = np.nonzero(tissue)
    y, x = int(rows[len(rows) // 2]) * 16, int(cols[len(cols) // 2]) * 16
    with open_slide(path, backend=backend, fallback=False) as reader:
        for level, ds, tolerance in ((0, 1, 6), (1, 4, 10)):  # level 1's mosaic texture is finer: more JPEG noise
            lx, ly = x // ds - 150, y // ds - 100
            got = reader.read_region((lx * ds, ly * ds), level, (300, 200)).astype(int)
            want = render(float(ds), lx, ly, 300, 200).astype(int)
            error = np.abs(got - want)
            assert error.mean() < tolerance and np.percentile(error, 99) < 64, (level, error.mean())
            assert np.abs(got - np.roll(want, 7, axis=1)).mean() > 2 * error.mean()  # not just any texture
    with open_slide(path, backend="openslide", fallback=False) as reader:
        region = reader.read_region((0, 0), 2, (256, 192))
    assert 0.2 < (region.min(axis=2) < 200).mean() < 0.7  # a TCGA-like share of tissue at the lowest level


def test_the_renderer_is_deterministic_and_pure_in_its_coordinates():
    render = SyntheticHE((2048, 1536), seed=5, bank_size=6)
    whole = render(1.0, 0, 0, 768, 512)
    assert np.array_equal(render(1.0, 300, 200, 300, 250), whole[200:450, 300:600])
    assert np.array_equal(render(1.0, 256, 256, 256, 256), whole[256:512, 256:512])
    again = SyntheticHE((2048, 1536), seed=5, bank_size=6)
    assert np.array_equal(again(4.0, 10, 20, 100, 80), render(4.0, 10, 20, 100, 80))
    assert not np.array_equal(SyntheticHE((2048, 1536), seed=6, bank_size=6)(1.0, 0, 0, 768, 512), whole)
    assert 0.35 < render.tissue_fraction < 0.5


def test_write_synthetic_slide_writes_atomically(tmp_path):
    path = write_synthetic_slide(tmp_path / "s.svs", (1024, 768), seed=1, min_level_px=128, progress=False)
    assert path.is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["s.svs"]  # no temporary left
    with open_slide(path) as reader:
        assert reader.info.level_dimensions == ((1024, 768), (256, 192))


def test_the_writers_memory_does_not_grow_with_the_slide(tmp_path):
    noise = np.random.default_rng(0).integers(0, 255, (512, 512, 3), dtype=np.uint8)

    def render(downsample: float, x: int, y: int, w: int, h: int) -> np.ndarray:
        if w <= 256 and h <= 256:
            return noise[y % 256:y % 256 + h, x % 256:x % 256 + w]
        return np.full((h, w, 3), 200, np.uint8)  # the thumbnail

    def peak(size: tuple[int, int]) -> int:
        tracemalloc.start()
        try:
            write_tiled_slide(tmp_path / f"{size[0]}.svs", size, render, workers=2, progress=False)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    peak((1024, 768))  # imports and first-use allocations
    small, large = peak((2048, 1536)), peak((8192, 6144))  # 16x the pixels: 151 MB of level 0
    assert large - small < 1_000_000, (small, large)
    assert large < 8_000_000, large
