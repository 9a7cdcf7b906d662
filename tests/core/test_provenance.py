"""Provenance records, atomic writes and the audit command on real Zarr stores."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import zarr

from pathmm_pipeline.cli import main
from pathmm_pipeline.core.atomic import atomic_path, stale_temporaries
from pathmm_pipeline.core.audit import audit, lineage
from pathmm_pipeline.core.errors import InputError, ProvenanceError
from pathmm_pipeline.core.provenance import build_provenance, hash_file, hash_tree, read_provenance, verify_provenance
from pathmm_pipeline.core.stores import ArraySpec, open_store, write_store


def make_store(tmp_path, name="a.zarr", data=None, inputs=None):
    src = tmp_path / "input.txt"
    if not src.exists():
        src.write_text("raw input\n")
    record = build_provenance("unit", inputs or {"raw": src}, {"alpha": np.float32(0.5), "n": np.int64(3)})
    data = np.arange(12, dtype=np.float32).reshape(3, 4) if data is None else data
    return write_store(tmp_path / name, {"x": ArraySpec(data, ("row", "col"), (2, 4))}, {"note": "hi"}, record)


def test_record_has_everything_an_auditor_needs(tmp_path):
    path = make_store(tmp_path)
    record = read_provenance(path)
    assert record["stage"] == "unit"
    assert record["params"] == {"alpha": 0.5, "n": 3}  # numpy scalars became JSON numbers
    entry = record["inputs"]["raw"]
    assert entry["sha256"] == hash_file(tmp_path / "input.txt") and entry["size"] == 10
    for key in ("pathmm", "source_sha256"):
        assert record["code"][key]
    assert record["packages"]["zarr"] == zarr.__version__ and record["packages"]["numpy"] == np.__version__
    assert record["host"]["hostname"] and record["created_utc"].endswith("+00:00")
    group = open_store(path)
    assert group["x"].metadata.dimension_names == ("row", "col")
    np.testing.assert_array_equal(group["x"][...], np.arange(12).reshape(3, 4))


def test_verify_detects_changed_and_missing_inputs(tmp_path):
    path = make_store(tmp_path)
    assert verify_provenance(path) == []
    (tmp_path / "input.txt").write_text("raw input, edited\n")
    assert [(f.role, f.problem) for f in verify_provenance(path)] == [("raw", "changed")]
    (tmp_path / "input.txt").unlink()
    assert [(f.role, f.problem) for f in verify_provenance(path)] == [("raw", "missing")]


def test_hash_tree_depends_on_content_and_names(tmp_path):
    a = tmp_path / "a"
    a.mkdir()
    (a / "f").write_text("1")
    h1 = hash_tree(a)
    (a / "f").write_text("2")
    h2 = hash_tree(a)
    (a / "f").rename(a / "g")
    assert len({h1, h2, hash_tree(a)}) == 3


def test_failed_write_leaves_previous_store_untouched(tmp_path):
    path = make_store(tmp_path)
    before = hash_tree(path)
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.mkdir()
            (tmp / "zarr.json").write_text("{}")
            raise RuntimeError("killed half-way")
    assert hash_tree(path) == before
    assert stale_temporaries(tmp_path) == []


def test_store_without_provenance_is_refused(tmp_path):
    group = zarr.open_group(str(tmp_path / "half.zarr"), mode="w", zarr_format=3)
    group.create_array("x", shape=(2,), dtype="f4")
    with pytest.raises(InputError, match="not completely written"):
        open_store(tmp_path / "half.zarr")
    with pytest.raises(ProvenanceError):
        read_provenance(tmp_path / "half.zarr")


def test_sigkill_mid_write_leaves_no_complete_looking_store(tmp_path):
    """A writer killed with SIGKILL while writing chunks leaves only a temporary sibling."""
    script = textwrap.dedent(f"""
        import numpy as np, os, sys
        from pathmm_pipeline.core import stores
        orig = stores.zarr.Array.__setitem__
        def slow(self, key, value):
            print("writing", flush=True)
            import time; time.sleep(30)
        stores.zarr.Array.__setitem__ = slow
        from pathmm_pipeline.core.provenance import build_provenance
        stores.write_store({str(tmp_path / 'k.zarr')!r}, {{"x": stores.ArraySpec(np.zeros((4, 4)), ("a", "b"))}},
                           {{}}, build_provenance("unit", {{}}, {{}}))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "k.zarr").exists()
    assert len(stale_temporaries(tmp_path)) == 1
    results, stale = audit(tmp_path)
    assert results == [] and len(stale) == 1


def test_audit_cli_exit_status_json_and_lineage(tmp_path, capsys):
    first = make_store(tmp_path, "first.zarr")
    make_store(tmp_path, "second.zarr", inputs={"upstream": first})
    assert main(["audit", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "2 of 2 store(s) verified" in out
    assert main(["audit", str(tmp_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and {s["stage"] for s in report["stores"]} == {"unit"}
    chain = lineage(tmp_path / "second.zarr")
    assert chain[0].startswith("unit:") and any("first.zarr" in line for line in chain)
    assert any(line.strip().startswith("raw:") and "input.txt" in line for line in chain)
    assert main(["audit", str(tmp_path / "second.zarr"), "--json", "--lineage"]) == 0
    tree = json.loads(capsys.readouterr().out)["stores"][0]["lineage"]
    upstream = tree["inputs"]["upstream"]
    assert tree["stage"] == "unit" and upstream["path"].endswith("first.zarr") and upstream["stage"] == "unit"
    assert any(node["stage"] is None and node["path"].endswith("input.txt") for node in upstream["inputs"].values())
    assert main(["audit", str(tmp_path / "second.zarr"), "--details"]) == 0
    out = capsys.readouterr().out
    assert "params: {" in out and "input upstream:" in out and "[same]" in out and "pathmm=" in out
    assert report["stores"][0]["input_sha256"]
    (tmp_path / "input.txt").write_text("changed")
    assert main(["audit", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "is changed" in out and "FAIL" in out
    assert main(["audit", str(tmp_path / "first.zarr"), "--details", "--json"]) == 1
    assert not json.loads(capsys.readouterr().out)["ok"]
    assert main(["audit", str(tmp_path / "first.zarr"), "--details"]) == 1
    assert "[changed]" in capsys.readouterr().out


def test_upstream_hashes_are_reused_only_when_file_unchanged(tmp_path, monkeypatch):
    import pathmm_pipeline.core.provenance as prov

    first = make_store(tmp_path, "first.zarr")
    prov._hash_cache.clear()
    calls = []
    real = prov.hashlib.sha256
    monkeypatch.setattr(prov.hashlib, "sha256", lambda *a: calls.append(1) or real(*a))
    assert prov.prime_hash_cache(first) == 1
    before = len(calls)
    prov.hash_file(tmp_path / "input.txt")
    assert len(calls) == before  # served from the upstream record, not re-read
    (tmp_path / "input.txt").write_text("a different input\n")
    prov._hash_cache.clear()
    assert prov.prime_hash_cache(first) == 0  # size/mtime changed: not trusted
    monkeypatch.undo()
    assert [f.problem for f in verify_provenance(first)] == ["changed"]


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_replacing_a_store_swaps_it_whole(tmp_path, monkeypatch, exchange):
    """An existing store is replaced by one atomic swap where the kernel offers renameat2 (the target never
    absent), else by two renames; either way only the new store remains and no temporary is left."""
    import pathmm_pipeline.core.atomic as atomic

    swaps: list[bool] = []
    real = atomic._exchange
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: swaps.append(real(a, b) if exchange else False) or swaps[-1])
    final = tmp_path / "s.zarr"
    (final / "old").mkdir(parents=True)
    new = tmp_path / f"s.zarr{atomic.TMP_MARK}new"
    (new / "new").mkdir(parents=True)
    atomic.move_into_place(new, final)
    assert sorted(p.name for p in final.iterdir()) == ["new"]
    assert [p.name for p in tmp_path.iterdir()] == ["s.zarr"]
    assert swaps == [exchange and sys.platform == "linux"]
