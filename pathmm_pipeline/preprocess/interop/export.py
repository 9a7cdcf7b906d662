"""A feature store written in the layouts peer tools read (:mod:`.layouts`), each file written atomically and,
where the format holds attributes (h5), with the provenance JSON as the root attribute ``pathmm_provenance``.

What each layout holds, as read from the peer's own code (cited per writer). Coordinates are the tiles' level-0
top-left corners; magnifications follow the 10 um / px = 1x convention (0.25 um / px = 40x, TRIDENT's bins).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pathmm_pipeline.core.atomic import atomic_path
from pathmm_pipeline.core.errors import InputError
from pathmm_pipeline.core.provenance import build_provenance, code_identity
from pathmm_pipeline.core.stores import open_store
from pathmm_pipeline.preprocess.features import load_features
from pathmm_pipeline.preprocess.interop.layouts import LAYOUTS, export_paths
from pathmm_pipeline.preprocess.tiling import TileGeometry, load_tiles

#: the h5 root attribute holding the provenance record (JSON)
PROVENANCE_ATTR = "pathmm_provenance"


def magnification(mpp: float) -> int | float:
    """Objective magnification of ``mpp`` um / px (10 / mpp), an int where it is one."""
    mag = 10.0 / float(mpp)
    return int(round(mag)) if abs(mag - round(mag)) < 1e-6 else mag


@dataclass(frozen=True)
class ExportView:
    """One slide's features with what the layouts need of its tiling and slide."""

    slide_id: str
    encoder: str
    features: np.ndarray
    coords: np.ndarray
    geometry: TileGeometry
    overlap: float
    slide_dimensions: tuple[int, int]
    provenance: str

    @property
    def tile_size_level0(self) -> int:
        return int(round(self.geometry.tile_size_level0))


def export_view(store: str | os.PathLike[str], tiles: str | os.PathLike[str], encoder: str | None = None,
                formats: tuple[str, ...] = ()) -> ExportView:
    """Read a feature store and the tile store it was extracted from (their coordinates must agree)."""
    features, tile_set = load_features(store), load_tiles(tiles)
    if not np.array_equal(features.coords, tile_set.coords):
        raise InputError(store, f"its {len(features.coords)} coordinates are not those of the tile store {tiles}",
                         "export a feature store with the tile store it was extracted from")
    attrs = dict(open_store(tiles).attrs)
    record = build_provenance("export", {"features": store, "tiles": tiles}, {"formats": list(formats)})
    return ExportView(features.slide_id, encoder or str(features.encoder["name"]), features.features,
                      features.coords.astype(np.int64), tile_set.geometry, float(attrs.get("overlap", 0.0)),
                      tuple(int(v) for v in attrs["slide_dimensions"]), json.dumps(record, sort_keys=True))


def _write_h5(path: Path, datasets: dict[str, np.ndarray], attrs: dict[str, dict[str, Any]],
              root_attrs: dict[str, Any]) -> None:
    """One h5 file, written under a temporary sibling and renamed: datasets, their attrs and the root attrs."""
    import h5py

    with atomic_path(path, use_scratch=False) as tmp, h5py.File(tmp, "w") as h5:
        for name, data in datasets.items():
            dset = h5.create_dataset(name, data=data, chunks=(max(1, min(len(data), 1024)),) + data.shape[1:],
                                     maxshape=(None,) + data.shape[1:])
            for key, value in attrs.get(name, {}).items():
                dset.attrs[key] = value
        for key, value in root_attrs.items():
            h5.attrs[key] = value


#: format name -> its writer: (view, the format's files in LAYOUTS order)
WRITERS: dict[str, Callable[[ExportView, list[Path]], None]] = {}


def writer(name: str) -> Callable[[Callable[[ExportView, list[Path]], None]],
                                  Callable[[ExportView, list[Path]], None]]:
    """Register the writer of layout ``name`` (which must be in :data:`LAYOUTS`)."""
    LAYOUTS.get(name)

    def register(fn: Callable[[ExportView, list[Path]], None]) -> Callable[[ExportView, list[Path]], None]:
        WRITERS[name] = fn
        return fn

    return register


@writer("trident")
def write_trident(view: ExportView, paths: list[Path]) -> None:
    """TRIDENT's features file (trident/wsi_objects/WSI.py extract_features; trident/IO.py coords_to_h5 for the
    coords attrs): ``features`` [N, D] (the encoder's dtype), ``coords`` [N, 2] int64 at level 0 with
    patch_size (at the target magnification), patch_size_level0, level0_magnification, target_magnification,
    overlap (px at the target magnification), name, savetodir, level0_width, level0_height; ``features`` attrs
    name, savetodir, encoder."""
    g, (path,) = view.geometry, paths
    width, height = view.slide_dimensions
    coords_attrs = {"patch_size": int(g.tile_px), "patch_size_level0": view.tile_size_level0,
                    "level0_magnification": magnification(g.slide_mpp),
                    "target_magnification": magnification(g.target_mpp),
                    "overlap": int(round(view.overlap * g.tile_px)), "name": view.slide_id,
                    "savetodir": str(path.parent), "level0_width": width, "level0_height": height}
    _write_h5(path, {"features": view.features, "coords": view.coords},
              {"coords": coords_attrs,
               "features": {"name": view.slide_id, "savetodir": str(path.parent), "encoder": view.encoder}},
              {PROVENANCE_ATTR: view.provenance})


@writer("clam")
def write_clam(view: ExportView, paths: list[Path]) -> None:
    """CLAM / SurvPath (extract_features_fp.py: ``h5_files/<slide>.h5`` with ``features`` float32 [N, D] and
    ``coords`` int32 [N, 2] at level 0, ``pt_files/<slide>.pt`` the features as a torch float32 tensor, read by
    dataset_modules/dataset_generic.py); the coords carry the patch attrs of wsi_core/WholeSlideImage.py
    (patch_level, patch_size at that level, downsample, name) that dataset_modules/dataset_h5.py reads."""
    import torch

    g, (h5_path, pt_path) = view.geometry, paths
    features = np.ascontiguousarray(view.features, dtype=np.float32)
    coords_attrs = {"patch_level": int(g.level), "patch_size": int(g.read_px),
                    "downsample": np.array([g.level_downsample, g.level_downsample], np.float64),
                    "name": view.slide_id}
    _write_h5(h5_path, {"features": features, "coords": view.coords.astype(np.int32)}, {"coords": coords_attrs},
              {PROVENANCE_ATTR: view.provenance})
    with atomic_path(pt_path, use_scratch=False) as tmp:
        torch.save(torch.from_numpy(features), tmp)


@writer("stamp")
def write_stamp(view: ExportView, paths: list[Path]) -> None:
    """STAMP (src/stamp/preprocessing/__init__.py writes, src/stamp/modeling/data.py get_coords reads):
    ``feats`` [N, D] (STAMP writes float16; the store's dtype is kept), ``coords`` float32 [N, 2] in um at level
    0, root attrs extractor, unit="um", tile_size_um, tile_size_px, code_hash, feat_type="tile". No
    ``stamp_version``: STAMP refuses files claiming a newer STAMP than its own."""
    g, (path,) = view.geometry, paths
    coords_um = (view.coords.astype(np.float64) * g.slide_mpp).astype(np.float32)
    _write_h5(path, {"feats": view.features, "coords": coords_um}, {},
              {"extractor": view.encoder, "unit": "um", "tile_size_um": float(g.tile_size_level0 * g.slide_mpp),
               "tile_size_px": int(g.tile_px), "code_hash": str(code_identity()["source_sha256"])[:8],
               "feat_type": "tile", PROVENANCE_ATTR: view.provenance})


def export_features(store: str | os.PathLike[str], tiles: str | os.PathLike[str], root: str | os.PathLike[str],
                    formats: list[str], encoder: str | None = None, slide_id: str | None = None) -> list[Path]:
    """Write ``store`` in each layout of ``formats`` under ``root`` (paths: :func:`.layouts.export_paths`, with
    the encoder's folder name ``encoder`` and ``slide_id``, default the store's); returns the files written."""
    view = export_view(store, tiles, encoder, tuple(formats))
    written = []
    for name in formats:
        paths = export_paths(root, [name], view.encoder, slide_id or view.slide_id)
        WRITERS[name](view, paths)
        written += paths
    return written
