"""Atomic writes: build an output under a temporary sibling path, then rename it into place.

A job killed half-way leaves only a ``.tmp-*`` sibling, never an output that looks complete, and an
earlier good output is replaced only once the new one is whole.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

TMP_MARK = ".tmp-"


def scratch_root() -> Path | None:
    """The node-local scratch folder from ``PATHMM_SCRATCH``, if set (temporary writes go there)."""
    value = os.environ.get("PATHMM_SCRATCH")
    return Path(value) if value else None


def _tmp_sibling(final: Path) -> Path:
    return final.with_name(f"{final.name}{TMP_MARK}{uuid.uuid4().hex[:8]}")


def move_into_place(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` onto ``final``; an existing ``final`` is only removed once ``tmp`` is in place."""
    tmp, final = Path(tmp), Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    if tmp.parent != final.parent:  # built on scratch: bring it next to the target first, then rename
        near = _tmp_sibling(final)
        try:
            os.rename(tmp, near)  # scratch on the target's filesystem: a rename, nothing copied
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            # another filesystem: copy under a temporary name (a kill mid-copy leaves only that), then rename;
            # a failed copy (a full disk) removes its half copy, and the caller removes the scratch original
            try:
                if tmp.is_dir():
                    _copy_tree(tmp, near)
                else:
                    shutil.copy2(tmp, near)
            except BaseException:
                _remove(near)
                raise
            _remove(tmp)
        tmp = near
    flush_to_disk(tmp)
    if final.is_dir() and not final.is_symlink():
        if _exchange(tmp, final):  # one atomic swap: the target is never absent; tmp now holds the old store
            shutil.rmtree(tmp, ignore_errors=True)
            return
        old = final.with_name(f"{final.name}{TMP_MARK}old-{uuid.uuid4().hex[:8]}")
        os.replace(final, old)  # without renameat2: a moment where the old store sits under a .tmp- name
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


def _copy_tree(source: Path, target: Path) -> None:
    """Copy a folder file by file; the first failure (ENOSPC, EIO) is raised as itself, naming its file (where
    ``shutil.copytree`` gathers every file's failure into one ``shutil.Error`` without an errno)."""
    for folder, _dirs, files in os.walk(source):
        out = target / Path(folder).relative_to(source)
        out.mkdir(parents=True, exist_ok=True)
        for name in files:
            shutil.copy2(Path(folder) / name, out / name)


def flush_to_disk(path: str | os.PathLike[str]) -> None:
    """``fsync`` a file, or every file and folder of a directory tree, so that the rename that publishes it
    cannot reach the disk before its content does (a node crash right after a job leaves no empty output)."""
    path = Path(path)
    if path.is_dir():
        for folder, _dirs, files in os.walk(path):
            for name in files:
                _fsync(Path(folder) / name, os.O_RDONLY)
            _fsync(Path(folder), os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    elif path.exists():
        _fsync(path, os.O_RDONLY)


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically with Linux's ``renameat2(RENAME_EXCHANGE)``; False where unsupported."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike[str], use_scratch: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write ``final`` into (file or directory); rename on success.

    On any exception the temporary path is removed and ``final`` is left exactly as it was.
    """
    final = Path(final)
    scratch = scratch_root() if use_scratch else None
    if scratch is not None:
        scratch.mkdir(parents=True, exist_ok=True)
        tmp = scratch / f"{final.name}{TMP_MARK}{uuid.uuid4().hex[:8]}"
    else:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = _tmp_sibling(final)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"{tmp}: the writer produced nothing for {final}")
        move_into_place(tmp, final)
    except BaseException:
        _remove(tmp)
        raise


def write_bytes_atomic(final: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``final`` atomically and return the final path."""
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)
    return Path(final)


def write_text_atomic(final: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` to ``final`` atomically and return the final path."""
    return write_bytes_atomic(final, text.encode("utf-8"))


def stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Left-over temporary siblings under ``folder`` (from killed jobs); safe to delete."""
    return sorted(p for p in Path(folder).rglob(f"*{TMP_MARK}*") if TMP_MARK in p.name)


def staging_dir(final: str | os.PathLike[str], label: str) -> Path:
    """Where a job that writes several files into folder ``final`` builds them first: ``<final>.tmp-<label>``
    beside it (never taken for a finished output; :func:`stale_temporaries` lists what a kill leaves)."""
    out = Path(os.path.abspath(final))
    return out.with_name(f"{out.name}{TMP_MARK}{label}")


def publish_staged(staging: str | os.PathLike[str], final: str | os.PathLike[str], names: list[str]) -> Path:
    """Move the files ``names`` of ``staging`` into folder ``final``, in that order, each by
    :func:`move_into_place` (an atomic rename; an older file of the same name is replaced only then). Put the file
    that marks the output complete last: a kill in between leaves an output Snakemake does not take for done."""
    staging, out = Path(staging), Path(final)
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        move_into_place(staging / name, out / name)
    return out
