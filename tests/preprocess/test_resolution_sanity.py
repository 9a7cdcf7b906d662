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


def test_cohort_manifest_writes_the_resolution_table_with_every_refusal_flagged(tmp_path):
    """The cohort resolution table, read from the headers at manifest time: one row per slide with mpp x / y,
    source, vendor and the reason a slide job would refuse it; the report shows its summary and the flags."""
    import pandas as pd

    from pathmm_pipeline.evaluation.html import resolution_html
    from pathmm_pipeline.preprocess.resolution import read_resolution_table

    _tiff(tmp_path / "good.tiff", (2e4, 2e4), "CENTIMETER")
    _tiff(tmp_path / "screen.tiff", (72, 72), "INCH")
    _tiff(tmp_path / "skewed.tiff", (2e4, 1.5e4), "CENTIMETER")
    _tiff(tmp_path / "fixed.tiff", (72, 72), "INCH")  # a screen default, overridden in the sheet
    (tmp_path / "notaslide.tiff").write_bytes(b"not a slide")
    (tmp_path / "report.txt").write_text("Invasive carcinoma.")
    rows = [("P1", "good", ""), ("P2", "screen", ""), ("P3", "skewed", ""), ("P4", "fixed", "0.25"),
            ("P5", "notaslide", "")]
    sheet = pd.DataFrame([{"patient_id": p, "slide_id": s, "slide_path": f"{s}.tiff", "mpp": m,
                           "cancer_type": "BRCA"} for p, s, m in rows])
    sheet.loc[len(sheet)] = {"patient_id": "P6", "cancer_type": "BRCA"}  # a patient without slides
    sheet["report_path"] = ["", "", "", "", "", "report.txt"]
    sheet.to_csv(tmp_path / "sheet.csv", index=False)
    out = tmp_path / "results" / "cohort"
    assert main(["cohort-manifest", str(tmp_path / "sheet.csv"), "--out", str(out / "manifest.parquet"),
                 "--settings", '{"cancer_types": ["BRCA"], "labels": []}', "--resolution",
                 str(out / "resolution.csv"), "--threads", "2"]) == 0
    table = read_resolution_table(out / "resolution.csv").set_index("slide_id")
    assert list(table.index) == ["good", "screen", "skewed", "fixed", "notaslide"]  # slide-less patient: no row
    assert table.loc["good", "mpp_x"] == pytest.approx(0.5) and table.loc["good", "flags"] == ""
    assert table.loc["good", "mpp_source"].startswith("metadata:")
    assert table.loc["good", ["width", "height"]].tolist() == [1536, 1024]
    assert "72 dpi" in table.loc["screen", "flags"] and table.loc["screen", "mpp_x"] == pytest.approx(352.78, 1e-3)
    assert "not square" in table.loc["skewed", "flags"]
    assert table.loc["skewed", "mpp_y"] == pytest.approx(2 / 3, 1e-3)
    assert table.loc["fixed", "mpp_source"] == "override" and table.loc["fixed", "flags"] == ""
    assert table.loc["notaslide", "flags"].startswith("unreadable")
    shown = resolution_html(out / "resolution.csv")
    assert "5 slides" in shown and "<b>3 flagged</b>" in shown and "72 dpi" in shown
    # a tighter range from the command line flags the good slide too
    assert main(["cohort-manifest", str(tmp_path / "sheet.csv"), "--out", str(out / "manifest.parquet"),
                 "--settings", '{"cancer_types": ["BRCA"], "labels": []}', "--resolution",
                 str(out / "resolution.csv"), "--mpp-range", "0.1:0.4"]) == 0
    assert "outside slide.min_mpp-max_mpp" in read_resolution_table(out / "resolution.csv")["flags"][0]
