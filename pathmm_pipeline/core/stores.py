"""Zarr v3 stores: written whole under a temporary path and renamed; provenance is their last attribute.

A store without provenance is, by construction, incomplete; :func:`open_store` refuses it. Every store also
records, beside its provenance, the sha256 of each of its files (chunks and array metadata, attribute
``content_sha256``; Zarr does not write a chunk that holds only the fill value, so none is recorded for it).
:func:`open_store` and ``pathmm audit`` verify them: a deleted chunk that Zarr would silently read back as zeros,
or an altered one, fails with the store, array and chunk named.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from pathmm_pipeline.core.atomic import atomic_path
from pathmm_pipeline.core.errors import InputError
from pathmm_pipeline.core.provenance import hash_file, jsonable

#: the attribute holding ``{relative file path: sha256}`` for every file of the store but its root ``zarr.json``
CONTENT_KEY = "content_sha256"


class StoreContentError(InputError):
    """A store's files no longer match the digests recorded when it was written (a chunk missing or altered)."""


@dataclass(frozen=True)
class ArraySpec:
    """An array to write: data, names of its dimensions, and the chunk shape (None: one chunk)."""

    data: np.ndarray
    dims: tuple[str, ...]
    chunks: tuple[int, ...] | None = None


def _chunks_for(shape: tuple[int, ...], chunks: tuple[int, ...] | None) -> tuple[int, ...]:
    if chunks is not None:
        return tuple(max(1, min(c, s)) if s else max(1, c) for c, s in zip(chunks, shape))
    return tuple(max(1, s) for s in shape)


class StoreWriter:
    """A store being written under its temporary path (:func:`writing_store`): whole arrays (:meth:`write`) or
    arrays created empty and filled a block of rows at a time (:meth:`create`), then :meth:`finish`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.group = zarr.open_group(str(root), mode="w", zarr_format=3)
        self.finished = False

    def create(self, name: str, shape: tuple[int, ...], dtype: Any, dims: tuple[str, ...],
               chunks: tuple[int, ...] | None = None) -> zarr.Array:
        """An empty array (fill value zero) with the chunking :func:`write_store` gives the same shape."""
        if len(dims) != len(shape):
            raise ValueError(f"array {name!r}: {len(shape)} dims but names {dims}")
        return self.group.create_array(name, shape=shape, dtype=dtype, chunks=_chunks_for(tuple(shape), chunks),
                                       dimension_names=dims)

    def write(self, name: str, spec: ArraySpec) -> None:
        """One whole array."""
        array = self.create(name, spec.data.shape, spec.data.dtype, spec.dims, spec.chunks)
        if spec.data.size:
            array[...] = spec.data

    def finish(self, attrs: dict[str, Any], provenance: dict[str, Any]) -> None:
        """One metadata write: attributes, the content digests and the provenance that marks the store complete."""
        self.group.update_attributes({**jsonable(attrs), CONTENT_KEY: content_digests(self.root),
                                      "provenance": jsonable(provenance)})
        self.finished = True


@contextmanager
def writing_store(path: str | os.PathLike[str]) -> Iterator[StoreWriter]:
    """A :class:`StoreWriter` on a temporary sibling of ``path``, renamed to ``path`` once finished; an error, or
    a block that never calls :meth:`StoreWriter.finish`, leaves nothing at ``path``."""
    with atomic_path(path) as tmp:
        writer = StoreWriter(Path(tmp))
        yield writer
        if not writer.finished:
            raise RuntimeError(f"{path}: store written without StoreWriter.finish (no provenance)")


def write_store(path: str | os.PathLike[str], arrays: dict[str, ArraySpec], attrs: dict[str, Any],
                provenance: dict[str, Any]) -> Path:
    """Write a Zarr v3 group at ``path`` atomically: arrays, then ``attrs``, then ``provenance``."""
    with writing_store(path) as store:
        for name, spec in arrays.items():
            store.write(name, spec)
        store.finish(attrs, provenance)
    return Path(path)


def _store_files(root: Path) -> dict[str, Path]:
    """The store's own files (chunks, array metadata) but the root ``zarr.json``, keyed by relative path. Dot
    files are not Zarr v3 content and are left out: Snakemake writes ``.snakemake_timestamp`` into every
    directory output after its job, file systems add ``.nfs*`` / ``.DS_Store``."""
    return {file.relative_to(root).as_posix(): file for file in sorted(root.rglob("*"))
            if file.is_file() and file != root / "zarr.json"
            and not any(part.startswith(".") for part in file.relative_to(root).parts)}


def content_digests(root: str | os.PathLike[str]) -> dict[str, str]:
    """sha256 of every file of the store at ``root`` (chunks, array metadata) but the root ``zarr.json``, which
    carries these digests, keyed by the path relative to ``root``."""
    return {name: hash_file(file) for name, file in _store_files(Path(root)).items()}


def content_problems(path: str | os.PathLike[str], recorded: dict[str, str]) -> list[tuple[str, str]]:
    """``(relative file path, problem)`` for every difference between the store's files and the digests
    ``recorded`` at write time: "missing", "altered", or "not written with the store" (a fill-value chunk or
    a file added since)."""
    now = _store_files(Path(path))
    problems = []
    for name in sorted(set(recorded) | set(now)):
        if name not in now:
            problems.append((name, "missing"))
        elif name not in recorded:
            problems.append((name, "not written with the store"))
        elif hash_file(now[name]) != recorded[name]:
            problems.append((name, "altered (its sha256 differs from the one recorded)"))
    return problems


def recorded_content(path: str | os.PathLike[str]) -> dict[str, str] | None:
    """The digests a store recorded when it was written (None: written before pathmm recorded them)."""
    recorded = zarr.open_group(str(path), mode="r", zarr_format=3).attrs.get(CONTENT_KEY)
    return None if recorded is None else dict(recorded)


def describe_file(name: str) -> str:
    """``features/c/3/0`` -> "array 'features' chunk (3, 0) (features/c/3/0)"."""
    parts = name.split("/")
    if "c" in parts:
        at = parts.index("c")
        return f"array {'/'.join(parts[:at])!r} chunk ({', '.join(parts[at + 1:])}) ({name})"
    if parts[-1] == "zarr.json":
        return f"array {'/'.join(parts[:-1])!r} metadata ({name})"
    return f"file {name}"


def verify_store(path: str | os.PathLike[str]) -> None:
    """Raise :class:`StoreContentError` naming the store and its first damaged chunks when its files no longer
    match its recorded digests. Stores written before digests were recorded pass (nothing to compare)."""
    recorded = recorded_content(path)
    if recorded is None:
        return
    problems = content_problems(path, recorded)
    if problems:
        listed = "; ".join(f"{describe_file(name)} is {problem}" for name, problem in problems[:3])
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise StoreContentError(path, listed + more,
                                "the store is damaged: delete it and re-run the stage that wrote it")


def open_store(path: str | os.PathLike[str], verify: bool = True) -> zarr.Group:
    """Open a complete store read-only; a missing or provenance-less store raises :class:`InputError`, and one
    whose files no longer match their recorded digests :class:`StoreContentError` (``verify``; each file is
    hashed once per process while its size and mtime are unchanged)."""
    path = Path(path)
    if not (path / "zarr.json").is_file():
        raise InputError(path, "no Zarr store here", "run the stage that produces it first")
    group = zarr.open_group(str(path), mode="r", zarr_format=3)
    if "provenance" not in group.attrs:
        raise InputError(path, "store has no provenance: it was not completely written",
                         "delete it and re-run the stage")
    if verify:
        verify_store(path)
    return group
