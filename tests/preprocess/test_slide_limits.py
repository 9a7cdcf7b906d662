"""Caps on one slide (``slide.max_*``): a slide larger than them fails with one clear line naming the file, the
cap and what to do, before any pixel is read and without writing any output."""

from __future__ import annotations

import numpy as np
import pytest

from pathmm_pipeline.cli import main
from pathmm_pipeline.core.errors import InputError, SlideTooLargeError
from pathmm_pipeline.preprocess import tiling
from pathmm_pipeline.preprocess.features import ExtractionSettings, extract_features
from pathmm_pipeline.preprocess.segmentation import SegmentationSettings, load_mask, segment_slide
from pathmm_pipeline.preprocess.slides import SlideLimits, SlideReader, open_slide
from pathmm_pipeline.preprocess.tiling import TilingSettings, load_tiles, select_tiles, tile_slide


@pytest.fixture
def reads(monkeypatch) -> list[tuple[int, int]]:
    """Every region size the pipeline decodes (through SlideReader.read_region), recorded."""
    seen: list[tuple[int, int]] = []
    original = SlideReader.read_region

    def recording(self, location, level, size):
        seen.append((int(size[0]), int(size[1])))
        return original(self, location, level, size)

    monkeypatch.setattr(SlideReader, "read_region", recording)
    return seen


@pytest.fixture(scope="module")
def segmented(slide_factory, tmp_path_factory):
    slide = slide_factory("s")
    out = tmp_path_factory.mktemp("limits")
    segment_slide(slide.path, out / "seg.zarr", out / "seg.geojson", out / "seg.png", SegmentationSettings())
    tile_slide(slide.path, out / "seg.zarr", out / "tiles.zarr", TilingSettings())
    return slide.path, out


@pytest.mark.parametrize(("limits", "cap"), [(SlideLimits(max_side_px=3000), "slide.max_side_px = 3,000"),
                                             (SlideLimits(max_megapixels=7), "slide.max_megapixels = 7")])
def test_a_slide_above_a_size_cap_fails_at_segmentation_before_any_pixel(slide_factory, tmp_path, reads, limits,
                                                                         cap):
    slide = slide_factory("s")  # 3072 x 2560 px: 7.9 megapixels
    out = tmp_path / "out"
    with pytest.raises(SlideTooLargeError) as err:
        segment_slide(slide.path, out / "seg.zarr", out / "seg.geojson", out / "seg.png", SegmentationSettings(),
                      limits=limits)
    message = str(err.value)
    assert message.startswith(f"{slide.path}: level 0 is 3,072 x 2,560 px") and cap in message
    assert "raise slide.max_" in message and "no pixel was read" in message and "\n" not in message
    assert reads == [] and not out.exists()


def test_open_slide_checks_only_when_given_limits(slide_factory, reads):
    slide = slide_factory("s")
    with open_slide(slide.path, limits=SlideLimits()) as reader:  # the defaults: far above 3072 x 2560
        assert reader.info.dimensions == (3072, 2560)
    with open_slide(slide.path) as reader:
        assert reader.info.dimensions == (3072, 2560)
    for backend in ("openslide", "tiffslide"):
        with pytest.raises(SlideTooLargeError):
            open_slide(slide.path, backend=backend, fallback=True, limits=SlideLimits(max_side_px=100))
    assert all(size == (1, 1) for size in reads)  # the probes of the two successful opens


def test_the_cli_fails_on_one_line_naming_the_slide_and_the_cap(slide_factory, tmp_path, capsys):
    slide = slide_factory("s")
    code = main(["segment-tissue", str(slide.path), "--store", str(tmp_path / "x.zarr"), "--geojson",
                 str(tmp_path / "x.json"), "--thumbnail", str(tmp_path / "x.png"), "--max-side-px", "1000"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert f"pathmm segment-tissue: error: {slide.path}: level 0 is 3,072 x 2,560 px" in err
    assert "slide.max_side_px = 1,000" in err and list(tmp_path.iterdir()) == []


def test_too_many_tiles_fail_at_tiling_before_the_store_is_written(segmented, tmp_path, reads):
    slide, out = segmented
    n = load_tiles(out / "tiles.zarr").coords.shape[0]
    assert n > 10
    with pytest.raises(SlideTooLargeError) as err:
        tile_slide(slide, out / "seg.zarr", tmp_path / "tiles.zarr", TilingSettings(), limits=SlideLimits(max_tiles=10))
    message = str(err.value)
    assert message.startswith(f"{slide}: {n:,} tiles of 256 px at 0.5 um/px in the tissue")
    assert "slide.max_tiles = 10" in message and "no tile store was written" in message
    assert not (tmp_path / "tiles.zarr").exists() and list(tmp_path.iterdir()) == []
    assert all(size == (1, 1) for size in reads)  # only open_slide's probe: tiling reads no tile
    assert tile_slide(slide, out / "seg.zarr", tmp_path / "ok.zarr", TilingSettings(),
                      limits=SlideLimits(max_tiles=n)) == n  # at the cap: fine


def test_the_grid_scored_in_blocks_gives_the_same_tiles(segmented, monkeypatch):
    slide, out = segmented
    tissue = load_mask(out / "seg.zarr")
    with open_slide(slide) as reader:
        info = reader.info
    settings = TilingSettings(overlap=0.5)
    _, whole, fractions = select_tiles(info, tissue, settings)
    monkeypatch.setattr(tiling, "GRID_BLOCK", 7)  # blocks of one grid row
    _, blocks, block_fractions = select_tiles(info, tissue, settings, SlideLimits())
    assert np.array_equal(whole, blocks) and np.array_equal(fractions, block_fractions)
    with pytest.raises(SlideTooLargeError, match=f"{len(whole):,} tiles"):  # the exact count, blocks or not
        select_tiles(info, tissue, settings, SlideLimits(max_tiles=len(whole) - 1))


def test_extraction_refuses_a_tile_store_above_the_cap_before_loading_the_encoder(segmented, tmp_path, reads,
                                                                                 monkeypatch):
    slide, out = segmented
    n = load_tiles(out / "tiles.zarr").coords.shape[0]

    def no_encoder(*args, **kwargs):
        raise AssertionError("the encoder was loaded")

    monkeypatch.setattr("pathmm_pipeline.preprocess.features.load_encoder", no_encoder)
    with pytest.raises(SlideTooLargeError) as err:
        extract_features(slide, out / "tiles.zarr", tmp_path / "f.zarr", ExtractionSettings("efficientnet_lite0"),
                         limits=SlideLimits(max_tiles=n - 1))
    assert str(err.value).startswith(f"{out / 'tiles.zarr'}: {n:,} tiles in the tile store of {slide}")
    with pytest.raises(SlideTooLargeError, match="slide.max_side_px = 2,000"):
        extract_features(slide, out / "tiles.zarr", tmp_path / "f.zarr", ExtractionSettings("efficientnet_lite0"),
                         limits=SlideLimits(max_side_px=2000))
    assert reads == [] and list(tmp_path.iterdir()) == []
    assert issubclass(SlideTooLargeError, InputError)  # reported by the CLI as every input error
