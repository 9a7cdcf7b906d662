"""Bad inputs get a clear error naming the file, and never damage outputs written before."""

from __future__ import annotations

import shutil

import pytest

from pathmm_pipeline.cli import main
from pathmm_pipeline.core.errors import InputError, SlideReadError
from pathmm_pipeline.core.provenance import hash_file, hash_tree
from pathmm_pipeline.preprocess.segmentation import SegmentationSettings, segment_slide
from pathmm_pipeline.preprocess.tiling import TilingSettings, tile_slide


@pytest.fixture
def good_outputs(slide_factory, tmp_path):
    slide = slide_factory("s")
    local = tmp_path / "slide.svs"
    shutil.copy(slide.path, local)
    out = tmp_path / "out"
    segment_slide(local, out / "seg.zarr", out / "seg.geojson", out / "seg.png", SegmentationSettings())
    tile_slide(local, out / "seg.zarr", out / "tiles.zarr", TilingSettings())
    digests = {p: (hash_tree(p) if p.is_dir() else hash_file(p)) for p in sorted(out.iterdir())}
    return local, out, digests


def unchanged(digests):
    return all((hash_tree(p) if p.is_dir() else hash_file(p)) == d for p, d in digests.items())


@pytest.mark.parametrize("damage", ["truncate", "empty", "text"])
def test_damaged_slide_fails_clearly_and_keeps_earlier_outputs(good_outputs, damage):
    slide, out, digests = good_outputs
    data = slide.read_bytes()
    slide.write_bytes({"truncate": data[: len(data) // 2], "empty": b"", "text": b"not a slide\n" * 50}[damage])
    with pytest.raises(SlideReadError) as err:
        segment_slide(slide, out / "seg.zarr", out / "seg.geojson", out / "seg.png", SegmentationSettings())
    assert str(slide) in str(err.value)
    with pytest.raises(SlideReadError):
        tile_slide(slide, out / "seg.zarr", out / "tiles.zarr", TilingSettings())
    assert unchanged(digests)
    assert sorted(p.name for p in out.iterdir()) == ["seg.geojson", "seg.png", "seg.zarr", "tiles.zarr"]


def test_missing_segmentation_store_is_named(good_outputs, tmp_path):
    slide, out, digests = good_outputs
    with pytest.raises(InputError) as err:
        tile_slide(slide, tmp_path / "nowhere.zarr", out / "tiles.zarr", TilingSettings())
    assert "nowhere.zarr" in str(err.value) and "run the stage" in str(err.value)
    assert unchanged(digests)


def test_cli_reports_errors_without_traceback(good_outputs, capsys, tmp_path):
    slide, out, _ = good_outputs
    slide.write_bytes(b"")
    code = main(["segment", str(slide), "--store", str(tmp_path / "x.zarr"), "--geojson", str(tmp_path / "x.json"),
                 "--thumbnail", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert code == 2 and "pathmm segment: error:" in err and str(slide) in err and "Traceback" not in err
    assert not (tmp_path / "x.zarr").exists()
