"""Tiling at an exact target mpp: grid positions in level-0 pixels, the pyramid level to read them from, the
resample factor, and each tile's tissue fraction from the segmentation mask.

A tile of ``tile_px`` pixels at ``mpp`` um/px covers ``tile_px * mpp / slide_mpp`` level-0 pixels. It is read
from the coarsest level that is still at least as fine as the target, as ``read_px`` pixels, and resized to
``tile_px``. The tissue fraction is the exact area-weighted share of the tile covered by the mask (bilinear
interpolation of the mask's integral image, which is exact for a piecewise-constant mask).
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pathmm_pipeline.core.errors import InputError
from pathmm_pipeline.core.provenance import build_provenance
from pathmm_pipeline.core.settings import SettingsMixin
from pathmm_pipeline.core.stores import ArraySpec, open_store, write_store
from pathmm_pipeline.preprocess.segmentation import STATUS_OK, TissueMask, load_mask
from pathmm_pipeline.preprocess.slides import SlideInfo, SlideLimits, SlideReader, open_slide

log = logging.getLogger(__name__)

STATUS_SKIPPED = "skipped"
COORD_UNIT = "level-0 pixels, top-left corner, (x, y)"


@dataclass(frozen=True)
class TilingSettings(SettingsMixin):
    """Parameters of tiling (``tiling:`` in config.yaml)."""

    settings_name = "tiling"

    mpp: float = 0.5
    tile_px: int = 256
    overlap: float = 0.0
    min_tissue_fraction: float = 0.5
    max_upsample: float = 1.0



@dataclass(frozen=True)
class TileGeometry:
    """How tiles of a slide are read: stored beside the coordinates in every tile store."""

    tile_px: int
    target_mpp: float
    slide_mpp: float
    level: int
    level_downsample: float
    read_px: int
    tile_size_level0: float
    stride_level0: float

    @property
    def resample_factor(self) -> float:
        """Pixels read at ``level`` per output pixel (> 1: downsampled; < 1: upsampled)."""
        return self.read_px / self.tile_px

    @property
    def achieved_mpp(self) -> float:
        """The mpp a tile really has after reading ``read_px`` level pixels into ``tile_px``."""
        return self.slide_mpp * self.level_downsample * self.read_px / self.tile_px

    def as_attrs(self) -> dict[str, Any]:
        return {**asdict(self), "resample_factor": self.resample_factor, "achieved_mpp": self.achieved_mpp}

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> TileGeometry:
        return cls(**{k: attrs[k] for k in cls.__dataclass_fields__})


def tile_geometry(info: SlideInfo, settings: TilingSettings) -> TileGeometry:
    """Choose the pyramid level and read size for ``settings`` on a slide described by ``info``."""
    downsample = settings.mpp / info.mpp
    if downsample < 1 / settings.max_upsample - 1e-6:
        raise InputError(info.path, f"slide mpp {info.mpp:g} is coarser than the tiling target {settings.mpp:g} "
                         f"um/px by more than max_upsample={settings.max_upsample:g}",
                         "lower the target magnification (raise tiling.mpp) or allow upsampling")
    level = 0
    for i, ds in enumerate(info.level_downsamples):
        if ds <= downsample * (1 + 1e-3):
            level = i
    level_ds = info.level_downsamples[level]
    size0 = settings.tile_px * downsample
    read_px = max(1, int(round(size0 / level_ds)))
    return TileGeometry(tile_px=settings.tile_px, target_mpp=settings.mpp, slide_mpp=info.mpp, level=level,
                        level_downsample=level_ds, read_px=read_px, tile_size_level0=size0,
                        stride_level0=size0 * (1 - settings.overlap))


#: grid positions scored at a time by :func:`select_tiles` (bounds its memory whatever the grid)
GRID_BLOCK = 1 << 20


def grid_axes(dimensions: tuple[int, int], geometry: TileGeometry) -> tuple[np.ndarray, np.ndarray]:
    """The grid's x and y positions (int64, level-0 px) of tiles that lie wholly inside the slide."""
    w0, h0 = dimensions
    size, step = geometry.tile_size_level0, geometry.stride_level0
    nx = max(0, int(np.floor((w0 - size) / step)) + 1) if w0 >= size else 0
    ny = max(0, int(np.floor((h0 - size) / step)) + 1) if h0 >= size else 0
    return np.round(np.arange(nx) * step).astype(np.int64), np.round(np.arange(ny) * step).astype(np.int64)


def _grid(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    gx, gy = np.meshgrid(xs, ys)
    return np.stack([gx.ravel(), gy.ravel()], axis=1)


def grid_positions(dimensions: tuple[int, int], geometry: TileGeometry) -> np.ndarray:
    """All top-left grid positions (int64, level-0 px) whose tile lies wholly inside the slide, row by row."""
    return _grid(*grid_axes(dimensions, geometry))


def integral_image(mask: np.ndarray) -> np.ndarray:
    """(h+1, w+1) float64 summed-area table of a 0/1 mask."""
    return cv2.integral(np.ascontiguousarray(mask, dtype=np.uint8), sdepth=cv2.CV_64F)


def _sample_integral(table: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Continuous integral of the mask over [0, x) x [0, y): bilinear in the summed-area table."""
    h, w = table.shape[0] - 1, table.shape[1] - 1
    x = np.clip(x, 0, w)
    y = np.clip(y, 0, h)
    x0 = np.minimum(np.floor(x).astype(np.int64), w - 1) if w else np.zeros_like(x, np.int64)
    y0 = np.minimum(np.floor(y).astype(np.int64), h - 1) if h else np.zeros_like(y, np.int64)
    fx, fy = x - x0, y - y0
    t00, t10 = table[y0, x0], table[y0, x0 + 1]
    t01, t11 = table[y0 + 1, x0], table[y0 + 1, x0 + 1]
    return t00 * (1 - fx) * (1 - fy) + t10 * fx * (1 - fy) + t01 * (1 - fx) * fy + t11 * fx * fy


def tissue_fractions(coords: np.ndarray, tile_size_level0: float, tissue: TissueMask,
                     table: np.ndarray | None = None) -> np.ndarray:
    """Exact area-weighted tissue fraction of each tile (coords in level-0 px) from the mask (``table``: its
    :func:`integral_image`, when already made)."""
    if len(coords) == 0:
        return np.zeros(0, np.float32)
    if table is None:
        table = integral_image(tissue.mask)
    sx, sy = tissue.scale_to_level0
    x0 = coords[:, 0] / sx
    y0 = coords[:, 1] / sy
    x1 = (coords[:, 0] + tile_size_level0) / sx
    y1 = (coords[:, 1] + tile_size_level0) / sy
    covered = (_sample_integral(table, x1, y1) - _sample_integral(table, x0, y1)
               - _sample_integral(table, x1, y0) + _sample_integral(table, x0, y0))
    area = (x1 - x0) * (y1 - y0)
    return np.clip(covered / area, 0.0, 1.0).astype(np.float32)


def select_tiles(info: SlideInfo, tissue: TissueMask, settings: TilingSettings,
                 limits: SlideLimits | None = None) -> tuple[TileGeometry, np.ndarray, np.ndarray]:
    """(geometry, kept coords (N, 2) int64, their tissue fractions (N,) float32).

    The grid is scored in blocks of rows (memory bounded whatever its size); with ``limits``, more kept tiles
    than ``limits.max_tiles`` raise :class:`~pathmm_pipeline.core.errors.SlideTooLargeError` with their count.
    """
    geometry = tile_geometry(info, settings)
    xs, ys = grid_axes(info.dimensions, geometry)
    table = integral_image(tissue.mask)
    rows = max(1, GRID_BLOCK // max(1, len(xs)))
    kept_coords, kept_fractions, n_kept = [], [], 0
    for start in range(0, len(ys), rows):
        coords = _grid(xs, ys[start:start + rows])
        fractions = tissue_fractions(coords, geometry.tile_size_level0, tissue, table)
        keep = fractions >= settings.min_tissue_fraction if settings.min_tissue_fraction > 0 else fractions > 0
        n_kept += int(keep.sum())
        if limits is None or n_kept <= limits.max_tiles:
            kept_coords.append(coords[keep])
            kept_fractions.append(fractions[keep])
        else:
            kept_coords, kept_fractions = [], []  # only counted from here on, for the message
    if limits is not None:
        limits.check_tiles(info.path, n_kept, f"tiles of {settings.tile_px} px at {settings.mpp:g} um/px in the "
                           f"tissue (of a {len(xs):,} x {len(ys):,} grid)", "no tile store was written")
    if not kept_coords:
        return geometry, np.zeros((0, 2), np.int64), np.zeros(0, np.float32)
    return geometry, np.concatenate(kept_coords), np.concatenate(kept_fractions)


def read_tile(reader: SlideReader, geometry: TileGeometry, x: int, y: int) -> np.ndarray:
    """The RGB tile (tile_px, tile_px, 3) at level-0 position (x, y), resampled to the target mpp."""
    region = reader.read_region((int(x), int(y)), geometry.level, (geometry.read_px, geometry.read_px))
    if geometry.read_px == geometry.tile_px:
        return region
    interpolation = cv2.INTER_AREA if geometry.read_px > geometry.tile_px else cv2.INTER_LINEAR
    return cv2.resize(region, (geometry.tile_px, geometry.tile_px), interpolation=interpolation)


def tile_slide(slide_path: str | os.PathLike[str], segmentation_store: str | os.PathLike[str],
               store_path: str | os.PathLike[str], settings: TilingSettings, slide_id: str | None = None,
               backend: str = "openslide", fallback: bool = True, mpp_override: float | None = None,
               limits: SlideLimits | None = None) -> int:
    """Tile one slide into a coordinate store; returns the number of tiles kept.

    A slide above ``limits`` (default: :class:`SlideLimits`'s) in size or in kept tiles fails before the store
    is written (:class:`~pathmm_pipeline.core.errors.SlideTooLargeError`).
    """
    slide_id = slide_id or Path(slide_path).stem
    limits = limits or SlideLimits()
    tissue = load_mask(segmentation_store)
    with open_slide(slide_path, backend=backend, fallback=fallback, mpp_override=mpp_override,
                    limits=limits) as reader:
        info = reader.info
    if tissue.status != STATUS_OK:
        status, reason = STATUS_SKIPPED, f"segmentation found no tissue: {tissue.reason}"
        geometry, coords, fractions = tile_geometry(info, settings), np.zeros((0, 2), np.int64), np.zeros(0, np.float32)
        log.warning("%s: skipped, %s", slide_id, reason)
    else:
        geometry, coords, fractions = select_tiles(info, tissue, settings, limits)
        status, reason = STATUS_OK, ""
        if len(coords) == 0:
            status, reason = STATUS_SKIPPED, (f"no tile reaches tissue fraction {settings.min_tissue_fraction:g}")
            log.warning("%s: %s", slide_id, reason)
    params = {"settings": asdict(settings), "backend": backend, "fallback": fallback, "mpp_override": mpp_override}
    record = build_provenance("tiling", {"slide": slide_path, "segmentation": segmentation_store}, params)
    attrs = {"slide_id": slide_id, "status": status, "reason": reason, "n_tiles": int(len(coords)),
             "coords_unit": COORD_UNIT, "slide_dimensions": list(info.dimensions), "slide_backend": info.backend,
             "min_tissue_fraction": settings.min_tissue_fraction, "overlap": settings.overlap,
             **geometry.as_attrs()}
    write_store(store_path, {
        "coords": ArraySpec(coords.astype(np.int64), ("tile", "xy"), (65536, 2)),
        "tissue_fraction": ArraySpec(fractions.astype(np.float32), ("tile",), (65536,)),
    }, attrs, record)
    log.info("%s: %d tiles of %d px at %.4f um/px (level %d, read %d px)", slide_id, len(coords),
             geometry.tile_px, geometry.achieved_mpp, geometry.level, geometry.read_px)
    return int(len(coords))


@dataclass(frozen=True)
class TileSet:
    """A tile store as later stages read it."""

    slide_id: str
    coords: np.ndarray
    tissue_fraction: np.ndarray
    geometry: TileGeometry
    status: str
    reason: str


def load_tiles(store_path: str | os.PathLike[str]) -> TileSet:
    """Read a tile store written by :func:`tile_slide`."""
    group = open_store(store_path)
    attrs = dict(group.attrs)
    return TileSet(attrs["slide_id"], np.asarray(group["coords"][...]), np.asarray(group["tissue_fraction"][...]),
                   TileGeometry.from_attrs(attrs), attrs["status"], attrs.get("reason", ""))
