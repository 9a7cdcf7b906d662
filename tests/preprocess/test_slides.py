"""Slide access over OpenSlide and tiffslide: mpp sources, levels, regions, fallbacks and clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from pathmm_pipeline.core.errors import MissingMppError, SlideReadError
from pathmm_pipeline.preprocess.slides import open_slide


@pytest.mark.parametrize("style", ["aperio", "generic"])
@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
def test_reads_mpp_and_levels(slide_factory, style, backend):
    slide = slide_factory("s", style=style)
    with open_slide(slide.path, backend=backend, fallback=False) as reader:
        info = reader.info
        assert info.backend == backend
        assert info.mpp == pytest.approx(0.5, abs=1e-4)
        assert info.mpp_source.startswith("metadata:")
        assert info.level_count >= 3
        assert info.dimensions == (3072, 2560)
        if style == "aperio":
            assert info.objective_power == 20.0
        region = reader.read_region((100, 200), 1, (64, 32))
        assert region.shape == (32, 64, 3) and region.dtype == np.uint8


def test_backends_agree_on_pixels(slide_factory):
    slide = slide_factory("s")
    with open_slide(slide.path, backend="openslide", fallback=False) as a, \
            open_slide(slide.path, backend="tiffslide", fallback=False) as b:
        for level in range(a.info.level_count):
            ra = a.read_region((512, 384), level, (200, 150)).astype(int)
            rb = b.read_region((512, 384), level, (200, 150)).astype(int)
            # both decode the same JPEG tiles; libjpeg implementations differ by a few levels at most
            assert np.abs(ra - rb).mean() < 1.5
            assert np.percentile(np.abs(ra - rb), 99) <= 8


def test_region_outside_slide_is_white(slide_factory):
    slide = slide_factory("s")
    with open_slide(slide.path) as reader:
        w, h = reader.info.dimensions
        region = reader.read_region((w - 10, h - 10), 0, (40, 40))
    assert (region[20:, 20:] == 255).all()


def test_no_mpp_fails_clearly_unless_overridden(slide_factory):
    slide = slide_factory("nompp", mpp=None, style="generic")
    with pytest.raises(MissingMppError) as err:
        open_slide(slide.path)
    assert str(slide.path) in str(err.value) and "mpp" in str(err.value)
    with open_slide(slide.path, mpp_override=0.25) as reader:
        assert reader.info.mpp == 0.25 and reader.info.mpp_source == "override"


def test_missing_empty_truncated_and_foreign_files(tmp_path, slide_factory):
    with pytest.raises(SlideReadError, match="file not found"):
        open_slide(tmp_path / "nope.svs")
    empty = tmp_path / "empty.svs"
    empty.write_bytes(b"")
    with pytest.raises(SlideReadError, match="empty"):
        open_slide(empty)
    data = slide_factory("s").path.read_bytes()
    truncated = tmp_path / "truncated.svs"
    truncated.write_bytes(data[: len(data) // 3])
    with pytest.raises(SlideReadError) as err:
        open_slide(truncated)
    assert str(truncated) in str(err.value)
    text = tmp_path / "notes.svs"
    text.write_text("this is not a slide\n" * 100)
    with pytest.raises(SlideReadError, match="no slide backend"):
        open_slide(text)


def test_read_level_scaled_matches_plain_resize(slide_factory):
    import cv2

    slide = slide_factory("s")
    with open_slide(slide.path) as reader:
        small = reader.read_level_scaled(1, 0.5, band_px=100)  # many bands
        whole = reader.read_region((0, 0), 1, reader.info.level_dimensions[1])
    expected = cv2.resize(whole, (small.shape[1], small.shape[0]), interpolation=cv2.INTER_AREA)
    assert np.abs(small.astype(int) - expected.astype(int)).mean() < 2.0
