"""Concurrent and faulty runs: two copies of one job (a SLURM requeue, a user running twice) never write into or
delete each other's unfinished output, a dead copy's claim is taken over, and a resume never mixes features
computed by other code or packages."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from pathmm_pipeline.core.locks import WorkLock, owner_tag
from pathmm_pipeline.core.stores import open_store
from pathmm_pipeline.preprocess import features as features_module
from pathmm_pipeline.preprocess.features import ExtractionSettings, extract_features, load_features, partial_path
from pathmm_pipeline.preprocess.segmentation import SegmentationSettings, segment_slide
from pathmm_pipeline.preprocess.tiling import TilingSettings, tile_slide

SETTINGS = dict(encoder="vit_tiny_test", weights=None, batch_size=8, num_workers=0, dtype="float32")


@pytest.fixture(scope="module")
def tiled(slide_factory, tmp_path_factory):
    slide = slide_factory("s").path
    out = tmp_path_factory.mktemp("concurrent")
    segment_slide(slide, out / "seg.zarr", out / "seg.geojson", out / "seg.png", SegmentationSettings())
    tile_slide(slide, out / "seg.zarr", out / "tiles.zarr", TilingSettings())
    reference = out / "reference.zarr"
    extract_features(slide, out / "tiles.zarr", reference, ExtractionSettings(**SETTINGS))
    return slide, out / "tiles.zarr", load_features(reference).features


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_two_concurrent_copies_of_one_extraction_both_finish_with_a_whole_store(tiled, tmp_path):
    slide, tiles, reference = tiled
    target = tmp_path / "features.zarr"
    command = [sys.executable, "-m", "pathmm_pipeline.cli", "extract-features", str(slide), "--tiles", str(tiles),
               "--store", str(target), "--settings", json.dumps(SETTINGS)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    copies = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
              for _ in range(2)]
    logs = [c.communicate(timeout=300)[0] for c in copies]
    assert [c.returncode for c in copies] == [0, 0], logs
    np.testing.assert_array_equal(load_features(target).features, reference)
    open_store(target)  # every chunk as recorded
    assert sorted(p.name for p in tmp_path.iterdir()) == ["features.zarr"]  # no partial, lock or staging left


def test_a_live_copy_keeps_its_partial_and_this_copy_works_beside_it(tiled, tmp_path, caplog):
    slide, tiles, reference = tiled
    target = tmp_path / "features.zarr"
    shared = partial_path(target)
    shared.mkdir()
    (shared / "theirs").write_text("another copy's unfinished work")
    holder = WorkLock(shared)
    assert holder.acquire()
    try:
        with caplog.at_level("WARNING"):
            extract_features(slide, tiles, target, ExtractionSettings(**SETTINGS))
        assert "another copy of this job" in caplog.text and socket.gethostname() in caplog.text
        assert (shared / "theirs").read_text() == "another copy's unfinished work"  # untouched
        assert not shared.with_name(f"{shared.name}-{owner_tag()}").exists()  # this copy's own, moved in place
        np.testing.assert_array_equal(load_features(target).features, reference)
        assert holder.path.exists()  # still the live owner's
    finally:
        holder.release()
    assert not holder.path.exists()


def test_a_dead_copys_lock_is_taken_over_and_its_partial_resumed(tiled, tmp_path, monkeypatch, caplog):
    slide, tiles, reference = tiled
    target = tmp_path / "features.zarr"
    monkeypatch.setattr(features_module, "CHUNK_ROWS", 8)
    original = features_module.FeatureExtractor.__call__
    calls = {"n": 0}

    def dying(self, batch):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("node failure")
        return original(self, batch)

    monkeypatch.setattr(features_module.FeatureExtractor, "__call__", dying)
    with pytest.raises(KeyboardInterrupt):
        extract_features(slide, tiles, target, ExtractionSettings(**SETTINGS))
    lock = WorkLock(partial_path(target))
    lock.path.write_text(json.dumps({"host": socket.gethostname(), "pid": _dead_pid(), "slurm_job_id": "41"}))
    monkeypatch.setattr(features_module.FeatureExtractor, "__call__", original)
    with caplog.at_level("INFO"):
        extract_features(slide, tiles, target, ExtractionSettings(**SETTINGS))
    assert "taking over the lock of a dead owner" in caplog.text and "resuming at tile 16" in caplog.text
    np.testing.assert_array_equal(load_features(target).features, reference)
    assert not lock.path.exists()


def test_a_silent_lock_of_another_node_goes_stale(tmp_path):
    folder = tmp_path / "work"
    lock = WorkLock(folder, stale_after_s=60)
    lock.path.write_text(json.dumps({"host": "node-that-died", "pid": 1, "slurm_job_id": None}))
    assert not lock.acquire() and "node-that-died" in lock.describe_holder()  # heartbeat fresh: alive
    old = lock.path.stat().st_mtime - 120
    os.utime(lock.path, (old, old))
    assert lock.acquire()  # no heartbeat for 2 minutes: the node is gone
    lock.release()


def test_a_resume_across_a_package_or_code_change_starts_again(tiled, tmp_path, monkeypatch, caplog):
    slide, tiles, reference = tiled
    target = tmp_path / "features.zarr"
    monkeypatch.setattr(features_module, "CHUNK_ROWS", 8)
    original = features_module.FeatureExtractor.__call__
    calls = {"n": 0}

    def dying(self, batch):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return original(self, batch)

    monkeypatch.setattr(features_module.FeatureExtractor, "__call__", dying)
    with pytest.raises(KeyboardInterrupt):
        extract_features(slide, tiles, target, ExtractionSettings(**SETTINGS))
    monkeypatch.setattr(features_module.FeatureExtractor, "__call__", original)
    versions = dict(features_module.package_versions())
    monkeypatch.setattr(features_module, "package_versions", lambda: {**versions, "torch": "2.99.0"})
    with caplog.at_level("INFO"):
        extract_features(slide, tiles, target, ExtractionSettings(**SETTINGS))
    assert "restarting" in caplog.text and "resuming" not in caplog.text
    np.testing.assert_array_equal(load_features(target).features, reference)


def test_training_stagings_are_per_copy_and_only_dead_ones_are_removed(tmp_path):
    from pathmm_pipeline.stages.training import remove_dead_stagings, staging_dir

    out = tmp_path / "fold_0"
    mine = staging_dir(out)
    assert mine.name.endswith(owner_tag()) and ".tmp-train-" in mine.name
    host = socket.gethostname().replace(".", "_")
    dead = out.with_name(f"fold_0.tmp-train-{host}-{_dead_pid()}")
    other_node = out.with_name("fold_0.tmp-train-othernode-1")
    for path in (mine, dead, other_node):
        path.mkdir(parents=True)
    assert remove_dead_stagings(out) == [dead]
    assert mine.exists() and other_node.exists() and not dead.exists()
