"""A TRIDENT or CLAM features h5 file turned into a feature store of the extraction's layout
(:func:`pathmm_pipeline.preprocess.features.load_features` reads it): the tile geometry is mapped from the file's
coords attrs and the slide, and the store's provenance records the file (path, size, sha256) and says it was
imported. A file that disagrees with the slide is refused with one line naming the file and the problem.

The attrs each format must carry on ``coords`` (read from the peers' code, see :mod:`.export`): TRIDENT
``patch_size`` (px at the target magnification), ``patch_size_level0``, ``level0_width``, ``level0_height``;
CLAM ``patch_level`` and ``patch_size`` (px at that level). CLAM's ``extract_features_fp.py`` copies no attrs into
``h5_files/``: copy them from its ``patches/<slide>.h5`` first.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pathmm_pipeline.core.errors import InputError
from pathmm_pipeline.core.provenance import build_provenance, hash_file, jsonable
from pathmm_pipeline.core.stores import ArraySpec, write_store
from pathmm_pipeline.preprocess.features import CHUNK_ROWS
from pathmm_pipeline.preprocess.slides import SlideInfo, slide_info
from pathmm_pipeline.preprocess.tiling import COORD_UNIT, STATUS_OK, STATUS_SKIPPED


@dataclass(frozen=True)
class ImportedGeometry:
    """How the file's tiles map onto the slide: pixels per tile the encoder saw (None where the file does not say:
    CLAM resizes what it reads to its own input size), its level-0 side, the level and pixels read."""

    tile_px: int | None
    tile_size_level0: float
    read_level: int | None
    read_px: int | None


def _need(path: Path, attrs: dict[str, Any], keys: tuple[str, ...], fmt: str) -> list[float]:
    missing = [k for k in keys if k not in attrs]
    if missing:
        raise InputError(path, f"{fmt} coords attrs lack {', '.join(missing)}",
                         f"a {fmt} file carries {', '.join(keys)} on its coords dataset")
    return [float(np.asarray(attrs[k]).reshape(-1)[0]) for k in keys]


def trident_geometry(path: Path, attrs: dict[str, Any], info: SlideInfo) -> ImportedGeometry:
    """TRIDENT (trident/IO.py coords_to_h5): patch_size at the target magnification, patch_size_level0, and the
    slide's level-0 size, which must be this slide's."""
    size, size0, width, height = _need(path, attrs, ("patch_size", "patch_size_level0", "level0_width",
                                                     "level0_height"), "TRIDENT")
    if (int(width), int(height)) != tuple(info.dimensions):
        raise InputError(path, f"made on a slide of {int(width)} x {int(height)} px at level 0, but "
                         f"{info.path} is {info.dimensions[0]} x {info.dimensions[1]}",
                         "import the features of this slide (or fix the sample sheet's slide_path)")
    return ImportedGeometry(int(size), size0, None, None)


def clam_geometry(path: Path, attrs: dict[str, Any], info: SlideInfo) -> ImportedGeometry:
    """CLAM (wsi_core/WholeSlideImage.py, dataset_modules/dataset_h5.py): patch_size px read at patch_level."""
    level, size = (int(v) for v in _need(path, attrs, ("patch_level", "patch_size"), "CLAM"))
    if not 0 <= level < info.level_count:
        raise InputError(path, f"patch_level {level}, but {info.path} has {info.level_count} level(s)",
                         "import the features of this slide")
    return ImportedGeometry(None, size * float(info.level_downsamples[level]), level, size)


#: format name -> (the coords attr that tells it apart, its geometry)
FORMATS: dict[str, tuple[str, Callable[[Path, dict[str, Any], SlideInfo], ImportedGeometry]]] = {
    "trident": ("patch_size_level0", trident_geometry),
    "clam": ("patch_level", clam_geometry),
}


def detect_format(path: Path, attrs: dict[str, Any]) -> str:
    """The format whose distinguishing coords attr the file carries."""
    for name, (key, _) in FORMATS.items():
        if key in attrs:
            return name
    raise InputError(path, "coords carry neither TRIDENT's attrs (patch_size_level0, ...) nor CLAM's "
                     "(patch_level, patch_size)", "CLAM's h5_files have none: copy them from its patches/<slide>.h5")


def plain_attrs(attrs: Any) -> dict[str, Any]:
    """h5 attributes as JSON types (arrays as lists, bytes as text)."""
    out = {}
    for key, value in attrs.items():
        value = value.decode() if isinstance(value, bytes) else value
        out[key] = value.tolist() if hasattr(value, "tolist") else value
    return out


def read_h5(path: Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any], dict[str, Any]]:
    """features, coords, the coords attrs and the features attrs of a features h5 file."""
    import h5py

    try:
        with h5py.File(path, "r") as h5:
            missing = [k for k in ("features", "coords") if not isinstance(h5.get(k), h5py.Dataset)]
            if missing:
                raise InputError(path, f"no {' or '.join(missing)} dataset", "import a TRIDENT or CLAM features h5")
            return (np.asarray(h5["features"][()]), np.asarray(h5["coords"][()]), plain_attrs(h5["coords"].attrs),
                    plain_attrs(h5["features"].attrs))
    except OSError as exc:
        raise InputError(path, f"not a readable h5 file ({exc})", "import a TRIDENT or CLAM features h5") from None


def check_arrays(path: Path, features: np.ndarray, coords: np.ndarray, info: SlideInfo) -> np.ndarray:
    """The level-0 coordinates as int64, once the arrays agree with each other and lie on the slide."""
    if features.ndim != 2 or coords.ndim != 2 or coords.shape[1] != 2:
        raise InputError(path, f"features {features.shape} and coords {coords.shape}: expected [N, D] and [N, 2]")
    if len(features) != len(coords):
        raise InputError(path, f"{len(features)} feature rows but {len(coords)} coords rows",
                         "the file is truncated or was assembled from two runs")
    if not np.issubdtype(features.dtype, np.floating) or not np.isfinite(features).all():
        raise InputError(path, f"features of dtype {features.dtype} are not all finite floats")
    if not np.array_equal(coords, np.round(coords)):
        raise InputError(path, "coords are not whole level-0 pixels")
    xy = coords.astype(np.int64)
    width, height = info.dimensions
    outside = (xy[:, 0] < 0) | (xy[:, 1] < 0) | (xy[:, 0] >= width) | (xy[:, 1] >= height)
    if outside.any():
        x, y = xy[int(np.argmax(outside))]
        raise InputError(path, f"{int(outside.sum())} coords lie outside the slide's {width} x {height} px level 0 "
                         f"(first: {x}, {y})", f"are these features of {info.path}?")
    return xy


def import_features(source: str | os.PathLike[str], slide: str | os.PathLike[str], store: str | os.PathLike[str],
                    encoder: str, slide_id: str | None = None, backend: str = "openslide", fallback: bool = True,
                    mpp_override: float | None = None) -> int:
    """Write the features of the TRIDENT / CLAM file ``source`` for ``slide`` as the feature store ``store`` of
    the feature folder ``encoder``; returns the number of tiles."""
    source = Path(source)
    features, coords, attrs, feature_attrs = read_h5(source)
    fmt = detect_format(source, attrs)
    info = slide_info(slide, backend=backend, fallback=fallback, mpp_override=mpp_override)
    geometry = FORMATS[fmt][1](source, attrs, info)
    xy = check_arrays(source, features, coords, info)
    dtype = features.dtype if features.dtype in (np.float16, np.float32) else np.float32
    n, dim = features.shape
    sha = hash_file(source)
    imported = {"format": fmt, "source": str(source.resolve()), "sha256": sha, "coords_attrs": attrs,
                "encoder": feature_attrs.get("encoder")}
    tile_um = info.mpp * geometry.tile_size_level0
    tile_mpp = None if geometry.tile_px is None else tile_um / geometry.tile_px
    encoder_attrs = {"name": encoder, "version": None, "architecture": None, "embed_dim": int(dim),
                     "weights_source": None, "weights_sha256": None, "precision": None}
    transform = {"input_size": None, "mean": None, "std": None, "interpolation": None,
                 "tile_px": geometry.tile_px, "tile_mpp": tile_mpp, "read_level": geometry.read_level,
                 "read_px": geometry.read_px, "tile_size_level0": geometry.tile_size_level0,
                 "tile_size_um": tile_um}
    status, reason = (STATUS_OK, "") if n else (STATUS_SKIPPED, f"the imported {fmt} file has no tile")
    store_attrs = {"slide_id": slide_id or Path(slide).stem, "status": status,
                   "reason": reason, "n_tiles": int(n), "encoder": encoder_attrs, "transform": transform,
                   "dtype": np.dtype(dtype).name, "coords_unit": COORD_UNIT, "imported": imported}
    record = build_provenance("features", {"slide": slide, "imported": source},
                              {"imported": {"format": fmt, "source": str(source)}, "backend": backend,
                               "fallback": fallback, "mpp_override": mpp_override},
                              extra={"imported": jsonable(imported), "encoder": encoder_attrs})
    write_store(store, {
        "features": ArraySpec(features.astype(dtype, copy=False), ("tile", "feature"), (CHUNK_ROWS, dim)),
        "coords": ArraySpec(xy, ("tile", "xy"), (65536, 2)),
        "tissue_fraction": ArraySpec(np.full(n, np.nan, np.float32), ("tile",), (65536,)),
    }, store_attrs, record)
    return int(n)
