"""Features out and in: a real feature store (a real pyramidal TIFF, a real forward pass) exported to the TRIDENT,
CLAM / SurvPath and STAMP layouts and read back the way each tool's own reader reads it; TRIDENT and CLAM exports
imported again reproduce the features and coordinates bit for bit; files that disagree with the slide are refused
in one line naming the file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from conftest import REPO

from pathmm_pipeline.core.errors import InputError
from pathmm_pipeline.core.provenance import hash_file, read_provenance
from pathmm_pipeline.preprocess.features import ExtractionSettings, extract_features, load_features
from pathmm_pipeline.preprocess.interop.export import PROVENANCE_ATTR, WRITERS, export_features
from pathmm_pipeline.preprocess.interop.imports import import_features
from pathmm_pipeline.preprocess.interop.layouts import LAYOUTS, export_paths
from pathmm_pipeline.preprocess.segmentation import SegmentationSettings, segment_slide
from pathmm_pipeline.preprocess.slides import slide_info
from pathmm_pipeline.preprocess.tiling import TilingSettings, load_tiles, tile_slide

FORMATS = LAYOUTS.names()


@pytest.fixture(scope="module")
def exported(slide_factory, tmp_path_factory, torch_one_thread):
    """A real slide, its tile and feature stores (vit_tiny_test, float16 as the default), and every export."""
    slide = slide_factory("interop", size=(2048, 1536)).path
    out = tmp_path_factory.mktemp("interop")
    segment_slide(slide, out / "seg.zarr", out / "seg.geojson", out / "seg.png", SegmentationSettings(),
                  fallback=False)
    tile_slide(slide, out / "seg.zarr", out / "tiles.zarr", TilingSettings(tile_px=224, mpp=1.0), fallback=False)
    settings = ExtractionSettings(encoder="vit_tiny_test", weights=None, batch_size=8, num_workers=0)
    assert extract_features(slide, out / "tiles.zarr", out / "features.zarr", settings, slide_id="S1") > 0
    files = export_features(out / "features.zarr", out / "tiles.zarr", out / "export", FORMATS, encoder="tiny",
                            slide_id="S1")
    return slide, out, files


def _files(out: Path, fmt: str) -> list[Path]:
    return export_paths(out / "export", [fmt], "tiny", "S1")


# ------------------------------------------------------------------ what each tool's reader requires
def check_trident(path: Path, slide: Path) -> tuple[np.ndarray, np.ndarray]:
    """As TRIDENT reads a features file: trident/wsi_objects/WSI.py extract_slide_features (``coords``,
    ``features``, the coords attrs handed to slide encoders, which read ``patch_size_level0``:
    trident/slide_encoder_models/load.py), extract_features / trident/IO.py read_coords (patch_size,
    level0_magnification, target_magnification required), coords_to_h5 (the attrs it writes and
    patch_size_level0 = patch_size * level0_magnification // target_magnification)."""
    assert path.parent.name == "features_tiny" and path.name == "S1.h5"
    with h5py.File(path, "r") as f:
        coords, features, attrs = f["coords"][:], f["features"][:], dict(f["coords"].attrs)
        feature_attrs = dict(f["features"].attrs)
    assert {"patch_size", "patch_size_level0", "level0_magnification", "target_magnification", "overlap", "name",
            "savetodir", "level0_width", "level0_height"} <= set(attrs)
    assert features.ndim == 2 and coords.shape == (len(features), 2) and coords.dtype == np.int64
    assert int(attrs["patch_size"] * attrs["level0_magnification"] // attrs["target_magnification"]) == \
        attrs["patch_size_level0"]
    info = slide_info(slide)
    assert (attrs["level0_width"], attrs["level0_height"]) == info.dimensions
    assert attrs["level0_magnification"] == round(10 / info.mpp) and attrs["name"] == "S1"
    assert feature_attrs["encoder"] == "tiny" and feature_attrs["name"] == "S1"
    assert (coords >= 0).all() and (coords < np.array(info.dimensions)).all()
    return features, coords


def check_clam(h5_path: Path, pt_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """As CLAM / SurvPath read a slide: dataset_modules/dataset_generic.py (``pt_files/<slide>.pt`` through
    torch.load, ``h5_files/<slide>.h5`` ``features`` and ``coords``), extract_features_fp.py (float32 features,
    int32 level-0 coords), dataset_modules/dataset_h5.py (coords attrs patch_level and patch_size, read with
    read_region(coord, patch_level, (patch_size, patch_size)))."""
    import torch

    assert h5_path.parent.name == "h5_files" and pt_path.parent.name == "pt_files"
    assert h5_path.parent.parent == pt_path.parent.parent and h5_path.stem == pt_path.stem == "S1"
    tensor = torch.load(pt_path)
    with h5py.File(h5_path, "r") as f:
        features, coords = f["features"][:], f["coords"][:]
        patch_level, patch_size = int(f["coords"].attrs["patch_level"]), int(f["coords"].attrs["patch_size"])
    assert isinstance(tensor, torch.Tensor) and tensor.dtype == torch.float32 and tensor.shape == features.shape
    assert features.dtype == np.float32 and coords.dtype == np.int32 and coords.shape == (len(features), 2)
    np.testing.assert_array_equal(tensor.numpy(), features)
    assert patch_level >= 0 and patch_size > 0
    return features, coords


def check_stamp(path: Path, slide_mpp: float) -> tuple[np.ndarray, np.ndarray, float, int]:
    """As STAMP reads a features file: src/stamp/modeling/data.py get_coords (``coords`` taken as um when
    ``tile_size_um`` is set; ``tile_size_px``; mpp = tile_size_um / tile_size_px; a ``stamp_version`` newer than
    the reader's is refused), detect_feature_type (feat_type "tile"), the bag loader (``feats`` [N, D]); the
    attrs src/stamp/preprocessing/__init__.py writes (extractor, unit "um", code_hash)."""
    with h5py.File(path, "r") as f:
        feats, coords, attrs = f["feats"][()], f["coords"][:], dict(f.attrs)
    assert "stamp_version" not in attrs
    assert attrs["unit"] == "um" and attrs["feat_type"] == "tile" and attrs["extractor"] == "tiny"
    assert isinstance(attrs["code_hash"], str) and len(attrs["code_hash"]) == 8
    tile_um, tile_px = float(attrs["tile_size_um"]), int(attrs["tile_size_px"])
    assert feats.ndim == 2 and coords.shape == (len(feats), 2) and coords.dtype == np.float32
    assert feats.dtype == np.float16  # as STAMP writes them
    assert tile_um > 0 and tile_px > 0 and slide_mpp > 0
    return feats, coords, tile_um, tile_px


# ------------------------------------------------------------------ export
def test_every_layout_has_a_writer_and_the_schema_lists_them():
    schema = yaml.safe_load((REPO / "pathmm_pipeline" / "schemas" / "config.schema.yaml").read_text())
    features = schema["properties"]["features"]["properties"]
    assert sorted(WRITERS) == FORMATS == sorted(features["export"]["items"]["enum"])
    assert features["export"]["default"] == [] and features["import"]["default"] == {}


def test_trident_export_is_what_trident_reads(exported):
    slide, out, _ = exported
    store, tiles = load_features(out / "features.zarr"), load_tiles(out / "tiles.zarr")
    features, coords = check_trident(*_files(out, "trident"), slide)
    assert features.dtype == store.features.dtype and features.tobytes() == store.features.tobytes()
    np.testing.assert_array_equal(coords, store.coords)
    with h5py.File(_files(out, "trident")[0], "r") as f:
        assert f["coords"].attrs["patch_size_level0"] == round(tiles.geometry.tile_size_level0)
        assert f["coords"].attrs["target_magnification"] == 10  # 1 um / px
        record = json.loads(f.attrs[PROVENANCE_ATTR])
    assert record["stage"] == "export" and set(record["inputs"]) == {"features", "tiles"}


def test_clam_export_is_what_clam_reads(exported):
    slide, out, _ = exported
    store, tiles = load_features(out / "features.zarr"), load_tiles(out / "tiles.zarr")
    features, coords = check_clam(*_files(out, "clam"))
    np.testing.assert_array_equal(features, store.features.astype(np.float32))
    np.testing.assert_array_equal(coords, store.coords)
    with h5py.File(_files(out, "clam")[0], "r") as f:
        level, size = int(f["coords"].attrs["patch_level"]), int(f["coords"].attrs["patch_size"])
    # CLAM reads patch_size px at patch_level: the region our tile was made from
    info = slide_info(slide)
    assert level == tiles.geometry.level and size * info.level_downsamples[level] == pytest.approx(
        tiles.geometry.tile_size_level0, rel=0.01)


def test_stamp_export_is_what_stamp_reads(exported):
    slide, out, _ = exported
    store, tiles = load_features(out / "features.zarr"), load_tiles(out / "tiles.zarr")
    info = slide_info(slide)
    feats, coords_um, tile_um, tile_px = check_stamp(*_files(out, "stamp"), info.mpp)
    assert feats.tobytes() == store.features.tobytes()
    np.testing.assert_allclose(coords_um / info.mpp, store.coords, atol=1e-3)
    assert tile_um == pytest.approx(224 * 1.0) and tile_px == 224
    assert tile_um / tile_px == pytest.approx(tiles.geometry.achieved_mpp, rel=0.01)  # CoordsInfo.mpp


def test_export_writes_only_the_declared_files(exported):
    _, out, files = exported
    written = sorted(p for p in (out / "export").rglob("*") if p.is_file())
    assert written == sorted(files) == sorted(export_paths(out / "export", FORMATS, "tiny", "S1"))


def test_export_command(exported, tmp_path):
    from pathmm_pipeline.cli import main

    _, out, _ = exported
    assert main(["export", "--store", str(out / "features.zarr"), "--tiles", str(out / "tiles.zarr"), "--out",
                 str(tmp_path), "--format", "stamp", "--encoder", "tiny", "--slide-id", "S1"]) == 0
    assert [p.relative_to(tmp_path) for p in tmp_path.rglob("*.h5")] == [Path("stamp/tiny/S1.h5")]


# ------------------------------------------------------------------ import
@pytest.mark.parametrize("fmt", ["trident", "clam"])
def test_import_reproduces_our_features(exported, tmp_path, fmt):
    slide, out, _ = exported
    source = _files(out, fmt)[0]
    original = load_features(out / "features.zarr")
    n = import_features(source, slide, tmp_path / "imported.zarr", "tiny", slide_id="S1")
    imported = load_features(tmp_path / "imported.zarr")
    assert n == len(original.features) and imported.slide_id == "S1" and imported.status == "ok"
    np.testing.assert_array_equal(imported.coords, original.coords)
    assert imported.coords.dtype == original.coords.dtype
    if fmt == "trident":  # the store's dtype travels: bit-equal
        assert imported.features.dtype == original.features.dtype
        assert imported.features.tobytes() == original.features.tobytes()
    else:  # CLAM stores float32: every value exactly, and back to float16 bit-equal
        assert imported.features.astype(original.features.dtype).tobytes() == original.features.tobytes()
    tiles = load_tiles(out / "tiles.zarr")
    # TRIDENT says the pixels per tile; CLAM only what it read (its encoder input size is its own)
    expected_mpp = tiles.geometry.achieved_mpp if fmt == "trident" else None
    assert imported.transform["tile_mpp"] == (pytest.approx(expected_mpp, rel=0.01) if expected_mpp else None)
    assert imported.transform["tile_size_um"] == pytest.approx(224 * 1.0, rel=0.01)
    assert imported.encoder["name"] == "tiny" and imported.encoder["embed_dim"] == original.features.shape[1]
    record = read_provenance(tmp_path / "imported.zarr")
    assert record["stage"] == "features" and record["inputs"]["imported"]["sha256"] == hash_file(source)
    assert record["extra"]["imported"]["format"] == fmt
    assert record["extra"]["imported"]["source"] == str(source.resolve())


def _bad_copy(source: Path, tmp_path: Path, edit) -> Path:
    target = tmp_path / "S1.h5"
    shutil.copy(source, target)
    with h5py.File(target, "r+") as f:
        edit(f)
    return target


def _drop_coords_attrs(f):
    for key in list(f["coords"].attrs):
        del f["coords"].attrs[key]


def _shift_outside(f):
    f["coords"][0] = [10**6, 0]


def _drop_a_feature_row(f):
    features = f["features"][:-1]
    del f["features"]
    f["features"] = features


def _other_slide(f):
    f["coords"].attrs["level0_width"] = 99999


@pytest.mark.parametrize(("fmt", "edit", "problem"), [
    ("clam", _drop_coords_attrs, "neither TRIDENT's attrs"),           # as CLAM's own h5_files are
    ("trident", _shift_outside, "coords lie outside the slide"),
    ("trident", _drop_a_feature_row, "feature rows but"),
    ("trident", _other_slide, "made on a slide of 99999 x"),
])
def test_a_file_that_disagrees_with_the_slide_is_refused(exported, tmp_path, fmt, edit, problem):
    slide, out, _ = exported
    bad = _bad_copy(_files(out, fmt)[0], tmp_path, edit)
    with pytest.raises(InputError, match=problem) as caught:
        import_features(bad, slide, tmp_path / "refused.zarr", "tiny")
    message = str(caught.value)
    assert message.startswith(str(bad)) and "\n" not in message
    assert not (tmp_path / "refused.zarr").exists()


def test_import_command_fails_in_one_line(exported, tmp_path, capsys):
    from pathmm_pipeline.cli import main

    slide, out, _ = exported
    bad = _bad_copy(_files(out, "trident")[0], tmp_path, _other_slide)
    assert main(["import-features", str(bad), "--slide", str(slide), "--store", str(tmp_path / "x.zarr"),
                 "--encoder", "tiny"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pathmm import-features: error: ") and str(bad) in err and "\n" not in err
