"""Resolution sanity (``slide.min_mpp`` / ``max_mpp`` / ``max_mpp_xy_ratio``): a TIFF whose resolution tags carry a
screen or print default (72 dpi reads as 352.8 um/px), an mpp outside the scanners' range and non-square pixels
are refused at open with one line naming the file, the value, its source and the override; the sample sheet's
mpp overrides them; nothing is segmented."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from pathmm_pipeline.cli import main
from pathmm_pipeline.core.errors import ImplausibleMppError
from pathmm_pipeline.preprocess.segmentation import SegmentationSettings, segment_slide
from pathmm_pipeline.preprocess.slides import SlideLimits, open_slide


def _tiff(path: Path, resolution: tuple[float, float], unit: str) -> Path:
    """A real tiled, pyramidal generic TIFF (no scanner metadata) with the given resolution tags."""
    rng = np.random.default_rng(0)
    image = np.full((1024, 1536, 3), 235, np.uint8)
    image[200:800, 300:1200] = rng.integers(90, 200, (600, 900, 3), dtype=np.uint8)
    with tifffile.TiffWriter(path) as tif:
        tif.write(image, tile=(256, 256), photometric="rgb", compression="deflate", resolution=resolution,
                  resolutionunit=unit, subfiletype=0)
        tif.write(image[::4, ::4].copy(), tile=(256, 256), photometric="rgb", compression="deflate",
                  resolution=(resolution[0] / 4, resolution[1] / 4), resolutionunit=unit, subfiletype=1)
    return path


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
def test_a_72_dpi_tiff_is_refused_naming_the_value_and_its_source(tmp_path, backend):
    path = _tiff(tmp_path / "screen.tiff", (72, 72), "INCH")
    with pytest.raises(ImplausibleMppError) as info:
        open_slide(path, backend=backend, fallback=False, limits=SlideLimits())
    message = str(info.value)
    assert str(path) in message and "72 dpi" in message and "352.8" in message and "'mpp' column" in message
    assert "\n" not in message
    # unchecked without limits (library use), and the sample sheet's mpp overrides the tags
    with open_slide(path, backend=backend, fallback=False) as reader:
        assert reader.info.mpp == pytest.approx(352.78, rel=1e-3)
    with open_slide(path, backend=backend, fallback=False, mpp_override=0.5, limits=SlideLimits()) as reader:
        assert reader.info.mpp == 0.5 and reader.info.mpp_source == "override"


def test_scanner_range_and_square_pixels(tmp_path):
    fine = _tiff(tmp_path / "fine.tiff", (2e5, 2e5), "CENTIMETER")       # 0.05 um/px: finer than any scanner
    with pytest.raises(ImplausibleMppError, match="outside slide.min_mpp-max_mpp = 0.08-20"):
        open_slide(fine, limits=SlideLimits())
    with open_slide(fine, limits=SlideLimits(min_mpp=0.01)) as reader:  # widened: accepted
        assert reader.info.mpp == pytest.approx(0.05)
    skewed = _tiff(tmp_path / "skewed.tiff", (2e4, 1.5e4), "CENTIMETER")  # 0.5 x 0.667 um/px
    with pytest.raises(ImplausibleMppError, match="not square"):
        open_slide(skewed, backend="tiffslide", fallback=False, limits=SlideLimits())
    good = _tiff(tmp_path / "good.tiff", (2e4, 2e4), "CENTIMETER")        # 0.5 um/px, square
    with open_slide(good, limits=SlideLimits()) as reader:
        assert reader.info.mpp == pytest.approx(0.5)


def test_the_segmentation_stage_refuses_it_in_one_line_and_writes_nothing(tmp_path, capsys):
    path = _tiff(tmp_path / "screen.tiff", (96, 96), "INCH")
    with pytest.raises(ImplausibleMppError):
        segment_slide(path, tmp_path / "seg.zarr", tmp_path / "seg.geojson", tmp_path / "seg.png",
                      SegmentationSettings())
    assert not any(tmp_path.glob("seg*"))
    code = main(["segment-tissue", str(path), "--store", str(tmp_path / "s.zarr"), "--geojson",
                 str(tmp_path / "s.geojson"), "--thumbnail", str(tmp_path / "s.png"), "--mpp-range", "0.08:20"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "96 dpi" in err[0] and str(path) in err[0]
    assert not any(tmp_path.glob("s.*"))
