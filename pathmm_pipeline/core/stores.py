"""Zarr v3 stores: written whole under a temporary path and renamed; provenance is their last attribute.

A store without provenance is, by construction, incomplete; :func:`open_store` refuses it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from pathmm_pipeline.core.atomic import atomic_path
from pathmm_pipeline.core.errors import InputError
from pathmm_pipeline.core.provenance import jsonable


@dataclass(frozen=True)
class ArraySpec:
    """An array to write: data, names of its dimensions, and the chunk shape (None: one chunk)."""

    data: np.ndarray
    dims: tuple[str, ...]
    chunks: tuple[int, ...] | None = None


def _chunks_for(spec: ArraySpec) -> tuple[int, ...]:
    if spec.chunks is not None:
        return tuple(max(1, min(c, s)) if s else max(1, c) for c, s in zip(spec.chunks, spec.data.shape))
    return tuple(max(1, s) for s in spec.data.shape)


def write_store(path: str | os.PathLike[str], arrays: dict[str, ArraySpec], attrs: dict[str, Any],
                provenance: dict[str, Any]) -> Path:
    """Write a Zarr v3 group at ``path`` atomically: arrays, then ``attrs``, then ``provenance``."""
    with atomic_path(path) as tmp:
        group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        for name, spec in arrays.items():
            if len(spec.dims) != spec.data.ndim:
                raise ValueError(f"array {name!r}: {spec.data.ndim} dims but names {spec.dims}")
            array = group.create_array(name, shape=spec.data.shape, dtype=spec.data.dtype,
                                       chunks=_chunks_for(spec), dimension_names=spec.dims)
            if spec.data.size:
                array[...] = spec.data
        # one metadata write: attributes and, with them, the provenance that marks the store complete
        group.update_attributes({**jsonable(attrs), "provenance": jsonable(provenance)})
    return Path(path)


def open_store(path: str | os.PathLike[str]) -> zarr.Group:
    """Open a complete store read-only; a missing or provenance-less store raises :class:`InputError`."""
    path = Path(path)
    if not (path / "zarr.json").is_file():
        raise InputError(path, "no Zarr store here", "run the stage that produces it first")
    group = zarr.open_group(str(path), mode="r", zarr_format=3)
    if "provenance" not in group.attrs:
        raise InputError(path, "store has no provenance: it was not completely written",
                         "delete it and re-run the stage")
    return group
