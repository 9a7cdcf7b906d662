"""Stores verify their own content: each records the sha256 of its files at write time, and every loader
(:func:`open_store`) and ``pathmm audit`` compare them, naming the store, the array and the chunk."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pathmm_pipeline.cli import main
from pathmm_pipeline.core.audit import audit
from pathmm_pipeline.core.provenance import build_provenance
from pathmm_pipeline.core.stores import CONTENT_KEY, ArraySpec, StoreContentError, open_store, verify_store, write_store


@pytest.fixture
def store(tmp_path):
    source = tmp_path / "input.txt"
    source.write_text("input\n")
    features = np.arange(40 * 8, dtype="float32").reshape(40, 8) + 1
    zeros = np.zeros((30, 4), "float32")  # every chunk holds only the fill value: Zarr writes none
    return write_store(tmp_path / "features.zarr",
                       {"features": ArraySpec(features, ("tile", "feature"), (10, 8)),
                        "empty": ArraySpec(zeros, ("tile", "feature"), (10, 4))},
                       {"n_tiles": 40}, build_provenance("test", {"input": source}, {}))


def test_every_file_is_recorded_and_a_good_store_opens(store):
    recorded = open_store(store).attrs[CONTENT_KEY]
    assert sorted(recorded) == ["empty/zarr.json", "features/c/0/0", "features/c/1/0", "features/c/2/0",
                                "features/c/3/0", "features/zarr.json"]
    assert np.array_equal(open_store(store)["empty"][...], np.zeros((30, 4)))  # fill-value chunks stay valid
    results, _ = audit(store)
    assert [r.ok for r in results] == [True]


def test_a_deleted_chunk_fails_loading_and_the_audit_naming_array_and_chunk(store, capsys):
    (store / "features" / "c" / "2" / "0").unlink()
    with pytest.raises(StoreContentError) as err:
        open_store(store)
    message = str(err.value)
    assert str(store) in message and "array 'features' chunk (2, 0)" in message and "is missing" in message
    results, _ = audit(store)
    assert not results[0].ok
    assert [(f.kind, f.problem) for f in results[0].findings] == [("content", "missing")]
    assert main(["audit", str(store)]) != 0
    out = capsys.readouterr().out
    assert "FAIL" in out and "features/c/2/0" in out


def test_an_altered_chunk_or_array_metadata_fails(store):
    chunk = store / "features" / "c" / "0" / "0"
    data = bytearray(chunk.read_bytes())
    data[-1] ^= 0xFF
    chunk.write_bytes(bytes(data))
    with pytest.raises(StoreContentError, match=r"chunk \(0, 0\).*altered"):
        open_store(store)
    chunk.write_bytes(bytes(data[:-1]) + bytes([data[-1] ^ 0xFF]))  # restored: opens again
    open_store(store)
    meta = store / "features" / "zarr.json"
    record = json.loads(meta.read_text())
    record["fill_value"] = 1.0  # a deleted chunk would now read back as ones
    meta.write_text(json.dumps(record))
    with pytest.raises(StoreContentError, match=r"array 'features' metadata .*altered"):
        open_store(store)


def test_a_chunk_written_into_a_fill_value_region_is_found(store):
    import zarr

    group = zarr.open_group(str(store), mode="r+", zarr_format=3)
    group["empty"][0, 0] = 5.0  # a chunk file appears where the store had none
    with pytest.raises(StoreContentError, match=r"array 'empty' chunk \(0, 0\).*not written with the store"):
        open_store(store)


def test_a_real_feature_store_records_its_chunks(slide_factory, tmp_path, monkeypatch):
    import pathmm_pipeline.preprocess.features as features
    from pathmm_pipeline.preprocess.features import ExtractionSettings, extract_features
    from pathmm_pipeline.preprocess.segmentation import SegmentationSettings, segment_slide
    from pathmm_pipeline.preprocess.tiling import TilingSettings, tile_slide

    slide = slide_factory("s").path
    segment_slide(slide, tmp_path / "seg.zarr", tmp_path / "seg.geojson", tmp_path / "seg.png",
                  SegmentationSettings())
    tile_slide(slide, tmp_path / "seg.zarr", tmp_path / "tiles.zarr", TilingSettings())
    store = tmp_path / "features.zarr"
    monkeypatch.setattr(features, "CHUNK_ROWS", 4)  # several chunks from a small slide
    extract_features(slide, tmp_path / "tiles.zarr", store, ExtractionSettings(
        encoder="vit_tiny_test", weights=None, batch_size=8, num_workers=0, dtype="float32"))
    recorded = open_store(store).attrs[CONTENT_KEY]
    chunks = [name for name in recorded if name.startswith("features/c/")]
    assert len(chunks) > 1 and "coords/zarr.json" in recorded
    (store / chunks[-1]).unlink()
    with pytest.raises(StoreContentError, match="array 'features' chunk"):
        open_store(store)


def test_files_snakemake_and_file_systems_add_are_not_store_content(tmp_path):
    """Snakemake touches ``.snakemake_timestamp`` inside every directory output after its job; NFS and macOS add
    dot files too. None is Zarr v3 content: the store still verifies."""
    path = write_store(tmp_path / "s.zarr", {"x": ArraySpec(np.arange(12.0).reshape(3, 4), ("a", "b"))},
                       {}, {"stage": "test"})
    (path / ".snakemake_timestamp").touch()
    (path / "x" / ".nfs000123").write_bytes(b"junk")
    verify_store(path)
    open_store(path)
