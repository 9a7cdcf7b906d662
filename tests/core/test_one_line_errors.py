"""Every stage command turns the failures nobody raised on purpose (out of memory, a full disk, a ValueError deep
in a library) into one line naming the file and the problem, exit status 2, and leaves no partial output."""

from __future__ import annotations

import contextlib
import subprocess
import uuid
from pathlib import Path

import pytest

from pathmm_pipeline.cli import main
from pathmm_pipeline.core.atomic import TMP_MARK, atomic_path


def _segment(slide: Path, out: Path, *extra: str) -> int:
    return main(["segment-tissue", str(slide), "--store", str(out / "seg.zarr"), "--geojson",
                 str(out / "seg.geojson"), "--thumbnail", str(out / "seg.png"), *extra])


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@contextlib.contextmanager
def small_disk(tmp_path: Path, size: str):
    """A real filesystem of ``size`` (tmpfs), so that writing to it fails with ENOSPC like a full disk."""
    mount = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {proc.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_out_of_memory_while_reading_a_slide_says_so_not_corrupt(slide_factory, tmp_path, capsys, monkeypatch):
    import tiffslide

    slide = slide_factory("s").path

    def no_memory(self, *args, **kwargs):
        raise MemoryError("Unable to allocate 38.1 GiB for an array with shape (80000, 170000, 3)")

    monkeypatch.setattr(tiffslide.TiffSlide, "read_region", no_memory)
    code = _segment(slide, tmp_path / "out", "--backend", "tiffslide", "--no-fallback")
    line = _one_line(capsys.readouterr().err)
    assert code == 2 and str(slide) in line and "out of memory" in line and "38.1 GiB" in line
    assert "corrupt" not in line and "truncated" not in line
    assert not (tmp_path / "out" / "seg.zarr").exists()


def test_unexpected_value_error_is_one_line_naming_the_input(slide_factory, tmp_path, capsys, monkeypatch):
    import pathmm_pipeline.stages.preprocess as stages

    slide = slide_factory("s").path

    def broken(*args, **kwargs):
        raise ValueError("operands could not be broadcast together\nwith shapes (3,) (4,)")

    monkeypatch.setattr(stages, "segment_tissue", broken)
    code = _segment(slide, tmp_path / "out")
    line = _one_line(capsys.readouterr().err)
    assert code == 2 and line.startswith(f"pathmm segment-tissue: error: {slide}: ValueError: operands")
    assert "with shapes (3,) (4,)" in line and "--verbose" in line


def test_full_disk_removes_the_partial_output_and_prints_one_line(slide_factory, tmp_path, capsys):
    slide = slide_factory("s").path
    with small_disk(tmp_path, "48k") as disk:
        code = _segment(slide, disk / "out")
        line = _one_line(capsys.readouterr().err)
        assert code == 2 and "No space left on device" in line and "disk is full" in line
        left = [p for p in (disk / "out").rglob("*")] if (disk / "out").exists() else []
        assert not [p for p in left if TMP_MARK in p.name or p.suffix == ".zarr"], left


def test_full_disk_while_copying_back_from_scratch_leaves_no_half_copy(tmp_path, monkeypatch):
    scratch = tmp_path / "scratch"
    monkeypatch.setenv("PATHMM_SCRATCH", str(scratch))
    with small_disk(tmp_path, "64k") as disk:
        final = disk / "store.zarr"
        with pytest.raises(OSError) as err:
            with atomic_path(final) as tmp:
                tmp.mkdir()
                for i in range(8):  # 256 KiB on scratch: fits there, not on the 64 KiB target
                    (tmp / f"chunk{i}").write_bytes(b"\x01" * 32768)
        assert err.value.errno == 28
        assert sorted(p.name for p in disk.iterdir()) == []  # no half copy under a .tmp- name, no store
        assert not [p for p in scratch.iterdir()]  # and the scratch original is gone too
