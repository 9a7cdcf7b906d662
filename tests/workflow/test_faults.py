"""Fault guarantees under a real SIGKILL: real `pathmm` processes (and a real Snakemake run) on real slides and
stores are killed in the middle of their writes, then re-run.

What is checked, each time: after the kill nothing at an output's path looks complete (the output is absent, or
an earlier good output is still there, byte for byte, and verifies); what the killed job left is a ``.tmp-``
temporary that ``pathmm audit`` reports as left over; the same command re-run completes, its outputs verify,
and it leaves no temporary behind. Covered: feature extraction (fresh target and over an earlier store, and
killed inside its finishing steps), training (fresh fold folder and over an earlier run's outputs), a Snakemake
run killed as a process group during extraction, and node-local scratch (``PATHMM_SCRATCH``) on the same and on
another filesystem, with a kill in the middle of the copy from scratch to the target.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO

from pathmm_pipeline.core.atomic import TMP_MARK, stale_temporaries
from pathmm_pipeline.core.audit import audit
from pathmm_pipeline.core.errors import InputError
from pathmm_pipeline.core.provenance import build_provenance, hash_file, hash_tree, read_provenance, verify_provenance
from pathmm_pipeline.core.stores import ArraySpec, open_store, write_store
from pathmm_pipeline.models.checkpoint import load_checkpoint, verify_checkpoint
from pathmm_pipeline.preprocess.features import load_features
from pathmm_pipeline.preprocess.segmentation import SegmentationSettings, segment_slide
from pathmm_pipeline.preprocess.tiling import TilingSettings, load_tiles, tile_slide
from pathmm_pipeline.stages.training import write_cohort_splits

pytestmark = pytest.mark.slow

#: the registry's test encoder (ViT-Ti at 64 px, random init): a real forward pass, a few hundred tiles a second
TINY = {"encoder": "vit_tiny_test", "weights": None, "batch_size": 16, "num_workers": 0, "dtype": "float32",
        "threads": 1, "device": "cpu"}
TILE_PX = 48  # ~800 tiles on the test slide: extraction runs for a few seconds, long enough to be killed in
KILL_DELAY = 0.2  # seconds after the partial store appears: inside the extraction loop


# ------------------------------------------------------------------------------------------- processes
def child_env(**extra: str) -> dict[str, str]:
    """The environment of a `pathmm` child: this venv first on PATH, offline, no scratch unless given."""
    env = {k: v for k, v in os.environ.items() if k != "PATHMM_SCRATCH"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", **extra)
    return env


def pathmm(*args: object) -> list[str]:
    return [sys.executable, "-m", "pathmm_pipeline.cli", *map(str, args)]


def run_ok(cmd: list[str], env: dict[str, str], timeout: int = 300) -> str:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{cmd[2:4]} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout + proc.stderr


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` now (from /proc), children first."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_when(cmd: list[str], ready: Callable[[], bool], env: dict[str, str], log: Path, delay: float = 0.0,
              timeout: float = 300) -> list[int]:
    """Start ``cmd`` as the leader of its own process group; once ``ready()`` (plus ``delay`` seconds), SIGKILL
    the whole group and anything below it. Fails if the command ends on its own first. Returns the pids killed."""
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    killed: list[int] = []
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            if proc.poll() is not None:
                raise AssertionError(f"{cmd[2:4]} ended ({proc.returncode}) before the kill point:\n"
                                     f"{log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{cmd[2:4]}: the kill point was not reached in {timeout} s")
            time.sleep(0.01)
        time.sleep(delay)
        killed = [proc.pid, *descendants(proc.pid)]
        os.killpg(proc.pid, signal.SIGKILL)
        for pid in killed[1:]:  # a child that left the group (none should) is killed by its id too
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    finally:
        if proc.poll() is None and not killed:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, (
        f"{cmd[2:4]} was not killed mid-run (exit {proc.returncode}):\n{log.read_text()[-3000:]}")
    return killed


def alive(pid: int) -> bool:
    """Whether ``pid`` is a running (not zombie) process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def temporaries(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if TMP_MARK in p.name) if folder.is_dir() else []


def partial_stores(folder: Path) -> list[Path]:
    """The temporaries that are partial stores; a killed job also leaves the lock it held beside each one."""
    partials = [p for p in temporaries(folder) if not p.name.endswith(".lock")]
    assert {p.name for p in temporaries(folder)} <= {n for p in partials for n in (p.name, p.name + ".lock")}
    return partials


# ------------------------------------------------------------------------------------------- feature extraction
@pytest.fixture(scope="module")
def tiled(slide_factory, tmp_path_factory) -> tuple[Path, Path, int]:
    """A real tiled slide: (slide, tile store, number of tiles)."""
    slide = slide_factory("s")
    root = tmp_path_factory.mktemp("faults_tiles")
    segment_slide(slide.path, root / "seg.zarr", root / "seg.geojson", root / "seg.png", SegmentationSettings())
    n = tile_slide(slide.path, root / "seg.zarr", root / "tiles.zarr", TilingSettings(tile_px=TILE_PX))
    assert n > 200
    return slide.path, root / "tiles.zarr", n


def extract_cmd(tiled: tuple[Path, Path, int], store: Path, **settings: object) -> list[str]:
    slide, tiles, _ = tiled
    return pathmm("extract", slide, "--slide-id", "S1", "--tiles", tiles, "--store", store,
                  "--settings", json.dumps({**TINY, **settings}))


def assert_nothing_complete(target: Path) -> None:
    """No store at ``target``, whatever a reader tries; the leftovers beside it are recognised as such."""
    assert not target.exists()
    with pytest.raises(InputError, match="no Zarr store"):
        load_features(target)
    results, stale = audit(target.parent)
    assert all(Path(r.path) != target for r in results)
    assert stale == stale_temporaries(target.parent)
    for leftover in temporaries(target.parent):
        if (leftover / "zarr.json").is_file() and "old" not in leftover.name:
            with pytest.raises(InputError, match="not completely written"):
                open_store(leftover)  # even opened by its own name, a partial store does not pass as complete


def assert_store_verifies(target: Path, n_tiles: int, seed: int = 0) -> np.ndarray:
    """The store loads, has every tile, its provenance verifies, and no temporary is left beside it."""
    store = load_features(target)
    assert store.status == "ok" and store.features.shape == (n_tiles, 192) and np.isfinite(store.features).all()
    assert read_provenance(target)["params"]["settings"]["seed"] == seed
    assert verify_provenance(target) == []
    results, stale = audit(target.parent)
    assert [Path(r.path) for r in results] == [target] and results[0].ok
    assert stale == [] and temporaries(target.parent) == []
    return store.features


def test_extraction_killed_mid_write_fresh_and_over_an_earlier_store(tiled, tmp_path):
    _, tiles, n = tiled
    target = tmp_path / "features" / "S1.zarr"
    env = child_env()
    cmd = extract_cmd(tiled, target)

    # 1. a fresh target: killed while the partial store is being written
    kill_when(cmd, lambda: bool(temporaries(target.parent)), env, tmp_path / "kill1.log", delay=KILL_DELAY)
    assert temporaries(target.parent)  # the killed job's partial store
    assert_nothing_complete(target)
    run_ok(cmd, env)  # the same command again
    first = assert_store_verifies(target, n)
    np.testing.assert_array_equal(load_features(target).coords, load_tiles(tiles).coords)

    # 2. over that good store: a new extraction (another seed, so other features) killed mid-write
    before = hash_tree(target)
    again = extract_cmd(tiled, target, seed=1)
    kill_when(again, lambda: bool(temporaries(target.parent)), env, tmp_path / "kill2.log", delay=KILL_DELAY)
    assert hash_tree(target) == before  # the earlier store is untouched...
    np.testing.assert_array_equal(load_features(target).features, first)
    assert verify_provenance(target) == []  # ...and still verifies
    results, stale = audit(target.parent)
    assert [Path(r.path) for r in results] == [target] and results[0].ok and stale
    run_ok(again, env)
    second = assert_store_verifies(target, n, seed=1)
    assert not np.array_equal(second, first)  # the new store replaced the old one only once it was whole


#: run `pathmm` with a SIGKILL planted in zarr at the moment the named array of a store is created
KILL_AT_ARRAY = textwrap.dedent("""
    import os, signal, sys
    import zarr
    create = zarr.Group.create_array
    def dying(self, name, *args, **kwargs):
        if name == sys.argv[1]:
            os.kill(os.getpid(), signal.SIGKILL)
        return create(self, name, *args, **kwargs)
    zarr.Group.create_array = dying
    from pathmm_pipeline.cli import main
    sys.exit(main(sys.argv[2:]))
""")


def test_extraction_killed_while_finishing_the_store(tiled, tmp_path):
    """Killed after every tile is done and the coordinates are written, before the store is marked complete:
    the re-run must finish the store (the partial's coordinates array already exists)."""
    _, _, n = tiled
    target = tmp_path / "S1.zarr"
    env = child_env()
    cmd = extract_cmd(tiled, target)
    proc = subprocess.run([sys.executable, "-c", KILL_AT_ARRAY, "tissue_fraction", *cmd[3:]], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    partial = partial_stores(tmp_path)
    assert len(partial) == 1 and "coords" in {p.name for p in partial[0].iterdir()}
    assert_nothing_complete(target)
    run_ok(cmd, env)
    assert_store_verifies(target, n)


# ------------------------------------------------------------------------------------------- training
D_WSI = 16
N_PATIENTS = 45
TRAIN_SETTINGS = {"epochs": 6, "lr": 1e-3, "grad_accum": 1, "warmup_epochs": 0.5, "patience": None,
                  "progress": False, "threads": 1, "device": "cpu", "seed": 0, "n_boot": 10,
                  "model_options": {"hidden_dim": 16, "attn_dim": 8, "dropout": 0.0}}
FOLD_OUTPUTS = ("checkpoint.pt", "checkpoint.pt.provenance.json", "metrics.csv", "predictions.csv", "log.csv",
                "log.json")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """A small cohort as the pipeline leaves it for training: real feature stores (with provenance), the
    manifest and the split files; survival follows a risk that shifts some tile features."""
    root = tmp_path_factory.mktemp("faults_cohort")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(N_PATIENTS):
        patient, slide = f"P{i:03d}", f"P{i:03d}-S1"
        risk = rng.normal()
        n = int(rng.integers(16, 32))
        features = rng.normal(0, 1, (n, D_WSI))
        features[rng.random(n) < 1 / (1 + np.exp(-2 * risk)), :4] += 2.0
        coords = np.stack([np.arange(n) * 256, np.zeros(n)], axis=1).astype(np.int64)
        write_store(root / "features" / f"{slide}.zarr",
                    {"features": ArraySpec(features.astype(np.float16), ("tile", "feature")),
                     "coords": ArraySpec(coords, ("tile", "xy")),
                     "tissue_fraction": ArraySpec(np.ones(n, np.float32), ("tile",))},
                    {"slide_id": slide, "status": "ok", "reason": "", "n_tiles": n,
                     "encoder": {"name": "toy", "weights_sha256": "0" * 64, "embed_dim": D_WSI, "version": "toy"},
                     "transform": {"tile_px": 256, "input_size": 224, "tile_mpp": 0.5}},
                    build_provenance("features", {}, {"toy": i}))
        t_event, t_censor = rng.exponential(20 * np.exp(-risk)), rng.uniform(5, 60)
        rows.append({"patient_id": patient, "slide_id": slide, "cancer_type": "BLCA",
                     "survival_time": float(min(t_event, t_censor)) + 0.01, "survival_event": int(t_event <= t_censor)})
    pd.DataFrame(rows).to_parquet(root / "manifest.parquet")
    write_cohort_splits(root / "manifest.parquet", root / "splits", k=3, seed=0)
    return root


def train_cmd(cohort: Path, out: Path, **settings: object) -> list[str]:
    return pathmm("train", "--model", "abmil", "--task", "survival", "--fold", 0, "--manifest",
                  cohort / "manifest.parquet", "--splits", cohort / "splits", "--features", cohort / "features",
                  "--out", out, "--settings", json.dumps({**TRAIN_SETTINGS, **settings}))


def training_started(root: Path, since_ns: int) -> Callable[[], bool]:
    """True once the run has finished an epoch: a log.csv under ``root`` (wherever the run keeps it while it
    trains) written after ``since_ns``."""
    def ready() -> bool:
        for log in root.rglob("log.csv"):
            try:
                if log.stat().st_mtime_ns >= since_ns:
                    return True
            except FileNotFoundError:
                pass
        return False
    return ready


def assert_fold_verifies(out: Path, epochs: int) -> dict[str, str]:
    assert verify_checkpoint(out / "checkpoint.pt") == []
    loaded = load_checkpoint(out / "checkpoint.pt", verify=True)
    assert len(loaded.history) == epochs and len(pd.read_csv(out / "log.csv")) == epochs
    assert [e["epoch"] for e in json.loads((out / "log.json").read_text())["epochs"]] == list(range(epochs))
    metrics = pd.read_csv(out / "metrics.csv")
    assert "c_index" in set(metrics.metric) and len(pd.read_csv(out / "predictions.csv")) == len(loaded.fold["val"])
    results, stale = audit(out.parent)
    assert [Path(r.path) for r in results] == [out / "checkpoint.pt"] and results[0].ok
    assert stale == [] and temporaries(out.parent) == [] and temporaries(out) == []
    return {name: hash_file(out / name) for name in FOLD_OUTPUTS}


def test_training_killed_mid_fit_fresh_and_over_an_earlier_run(cohort, tmp_path):
    out = tmp_path / "runs" / "fold_0"
    env = child_env()
    cmd = train_cmd(cohort, out)

    # 1. a fresh fold folder: killed after the first epoch
    kill_when(cmd, training_started(tmp_path / "runs", time.time_ns() - 10**9), env, tmp_path / "kill1.log")
    for name in FOLD_OUTPUTS:
        assert not (out / name).exists(), f"{name} of a killed run looks like an output"
    results, stale = audit(tmp_path / "runs")
    assert results == [] and stale == temporaries(tmp_path / "runs") != []  # the run's working folder only
    run_ok(cmd, env)
    first = assert_fold_verifies(out, TRAIN_SETTINGS["epochs"])

    # 2. over that run's outputs: another run (another seed) killed mid-fit leaves them exactly as they were
    again = train_cmd(cohort, out, seed=1, epochs=8)
    time.sleep(0.01)
    kill_when(again, training_started(tmp_path / "runs", time.time_ns()), env, tmp_path / "kill2.log")
    assert {name: hash_file(out / name) for name in FOLD_OUTPUTS} == first
    results, stale = audit(tmp_path / "runs")
    assert [Path(r.path) for r in results] == [out / "checkpoint.pt"] and results[0].ok and stale
    assert verify_checkpoint(out / "checkpoint.pt") == []
    run_ok(again, env)
    second = assert_fold_verifies(out, 8)
    assert second["checkpoint.pt"] != first["checkpoint.pt"]


# ------------------------------------------------------------------------------------------- Snakemake
def snakemake_cmd(workdir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
            "--configfile", str(workdir / "config.yaml"), "--cores", "2", *args]


def test_snakemake_killed_mid_extraction_then_rerun(slide_factory, tmp_path):
    slide = slide_factory("s")
    pd.DataFrame([{"patient_id": "TCGA-2F-A9KO", "slide_id": "P1-A", "slide_path": str(slide.path),
                   "cancer_type": "BLCA", "survival_time": 10.0, "survival_event": 1}]).to_csv(
        tmp_path / "samplesheet.csv", index=False)
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config.update(samplesheet=str(tmp_path / "samplesheet.csv"), results="results")
    config["tiling"]["tile_px"] = TILE_PX
    config["features"].update(encoders=["vit_tiny_test"], batch_size=16, num_workers=0, dtype="float32", threads=1,
                              device="cpu")
    config["training"].update(models=[], compare_encoders={})
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    results = tmp_path / "results"
    features = results / "features" / "vit_tiny_test"
    target = features / "P1-A.zarr"
    env = child_env()

    killed = kill_when(snakemake_cmd(tmp_path), lambda: bool(temporaries(features)), env, tmp_path / "kill.log",
                       delay=KILL_DELAY)
    assert len(killed) >= 2  # Snakemake and at least its extraction job
    time.sleep(0.2)
    assert not [pid for pid in killed if alive(pid)]  # nothing of the run goes on writing
    assert_nothing_complete(target)
    stores, stale = audit(results)
    assert stores and all(s.ok for s in stores) and stale  # what finished before the kill verifies
    assert (results / "tiles" / "P1-A.zarr").is_dir()

    # the killed run left Snakemake's lock: release it, then re-run what was incomplete
    run_ok(snakemake_cmd(tmp_path, "--unlock"), env)
    log = run_ok(snakemake_cmd(tmp_path, "--rerun-incomplete"), env, timeout=600)
    assert "extract_features" in log
    n = len(load_tiles(results / "tiles" / "P1-A.zarr").coords)
    assert load_features(target).features.shape == (n, 192)
    stores, stale = audit(results)
    assert target in {Path(s.path) for s in stores} and all(s.ok for s in stores), [
        str(f) for s in stores for f in s.findings]
    assert stale == []


# ------------------------------------------------------------------------------------------- node-local scratch
def other_filesystem_dir(here: Path) -> Path | None:
    """A folder on another filesystem than ``here`` (/dev/shm, a tmpfs), if there is one."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and shm.stat().st_dev != here.stat().st_dev:
        return shm
    return None


@pytest.fixture(params=["same-filesystem", "other-filesystem"])
def scratch(request, tmp_path):
    if request.param == "same-filesystem":
        yield tmp_path / "scratch"
        return
    base = other_filesystem_dir(tmp_path)
    if base is None:
        pytest.skip("no second filesystem (/dev/shm) to put scratch on")
    folder = Path(tempfile.mkdtemp(prefix="pathmm-scratch-", dir=base))
    yield folder / "scratch"
    shutil.rmtree(folder, ignore_errors=True)


def test_extraction_temporaries_live_in_scratch(tiled, tmp_path):
    """With PATHMM_SCRATCH (here on another filesystem when there is one, so the store is copied back), the
    partial store lives in scratch, never beside the target; a kill leaves it there; the re-run lands the store
    at its target, verified, and cleans scratch."""
    _, _, n = tiled
    base = other_filesystem_dir(tmp_path)
    folder = Path(tempfile.mkdtemp(prefix="pathmm-scratch-", dir=base)) if base else tmp_path / "scratchbase"
    try:
        scratch = folder / "scratch"
        target = tmp_path / "features" / "S1.zarr"
        env = child_env(PATHMM_SCRATCH=str(scratch))
        cmd = extract_cmd(tiled, target)
        beside: list[Path] = []

        def ready() -> bool:
            beside.extend(temporaries(target.parent))
            return bool(temporaries(scratch))

        kill_when(cmd, ready, env, tmp_path / "kill.log", delay=KILL_DELAY)
        assert beside == [] and temporaries(target.parent) == []
        assert len(partial_stores(scratch)) == 1  # the killed job's partial store, in scratch
        assert not target.exists()
        run_ok(cmd, env)
        assert_store_verifies(target, n)
        assert temporaries(scratch) == []
    finally:
        shutil.rmtree(folder, ignore_errors=True)


#: move a store from scratch into place, with a SIGKILL planted at the N-th file copied (if it copies at all)
KILL_MID_COPY = textwrap.dedent("""
    import os, shutil, signal, sys
    from pathlib import Path
    from pathmm_pipeline.core.atomic import move_into_place
    copyfile, copied = shutil.copyfile, []
    def dying(src, dst, *args, **kwargs):
        copied.append(src)
        if len(copied) == int(sys.argv[3]):
            os.kill(os.getpid(), signal.SIGKILL)
        return copyfile(src, dst, *args, **kwargs)
    shutil.copyfile = dying
    move_into_place(Path(sys.argv[1]), Path(sys.argv[2]))
    print("moved, files copied:", len(copied))
""")


def chunked_store(path: Path, value: float, source: Path) -> Path:
    """A real store of 64 chunk files (so a copy of it takes many steps)."""
    data = np.full((64, 4), value, np.float32)
    return write_store(path, {"x": ArraySpec(data, ("row", "col"), (1, 4))}, {"value": value},
                       build_provenance("unit", {"raw": source}, {"value": value}))


def test_move_from_scratch_killed_mid_copy_leaves_target_whole(scratch, tmp_path):
    """atomic.move_into_place from scratch: on another filesystem it copies next to the target, then renames; a
    kill in the middle of the copy leaves the target as it was (absent, or the earlier store) and the half copy
    under a temporary name. On the same filesystem it is a rename: no copy, nothing to kill in between."""
    source = tmp_path / "raw.txt"
    source.write_text("raw input\n")
    final = tmp_path / "out" / "store.zarr"
    env = child_env()
    other_fs = scratch.parent != tmp_path
    for earlier in (False, True):
        if earlier:
            chunked_store(final, 1.0, source)
        before = hash_tree(final) if earlier else None
        new = chunked_store(scratch / f"store.zarr{TMP_MARK}job{int(earlier)}", 2.0, source)
        inode = (new / "zarr.json").stat().st_ino
        proc = subprocess.run([sys.executable, "-c", KILL_MID_COPY, str(new), str(final), "20"], env=env,
                              capture_output=True, text=True, timeout=120)
        if other_fs:
            assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr[-2000:]
            half = temporaries(final.parent)
            assert len(half) == 1 and sum(f.is_file() for f in half[0].rglob("*")) == 19  # the copy, cut short
            if earlier:
                assert hash_tree(final) == before and verify_provenance(final) == []
            else:
                assert not final.exists()
            results, stale = audit(final.parent)
            assert [Path(r.path) for r in results] == ([final] if earlier else []) and all(r.ok for r in results)
            assert stale == half  # the half copy is a reported left-over, never a store
            assert hash_tree(new)  # scratch still holds the whole store: the move is simply run again
            shutil.rmtree(half[0])
            proc = subprocess.run([sys.executable, "-c", KILL_MID_COPY, str(new), str(final), "0"], env=env,
                                  capture_output=True, text=True, timeout=120)
            assert proc.returncode == 0 and "files copied: 0" not in proc.stdout, proc.stderr[-2000:]
        else:  # a rename: the store's own files, nothing copied
            assert proc.returncode == 0 and "files copied: 0" in proc.stdout, proc.stderr[-2000:]
            assert (final / "zarr.json").stat().st_ino == inode
        assert open_store(final).attrs["value"] == 2.0 and verify_provenance(final) == []
        assert not new.exists() and temporaries(final.parent) == [] and temporaries(scratch) == []
        shutil.rmtree(final)
