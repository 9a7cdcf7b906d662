"""Tiling at an exact target mpp: grid positions in level-0 pixels, the pyramid level to read them from, the
resample factor, and each tile's tissue fraction from the segmentation mask.

A tile of ``tile_px`` pixels at ``mpp`` um/px covers ``tile_px * mpp / slide_mpp`` level-0 pixels. It is read
from the coarsest level that is still at least as fine as the target, as ``read_px`` pixels, and resized to
``tile_px``. The tissue fraction is the exact area-weighted share of the tile covered by the mask (bilinear
interpolation of the mask's integral image, which is exact for a piecewise-constant mask). A slide with an ROI
file (the sample sheet's ``roi_path``) keeps only the tiles its polygons admit (:mod:`pathmm_pipeline.preprocess.roi`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from pathmm_pipeline.core.errors import InputError
from pathmm_pipeline.core.provenance import build_provenance
from pathmm_pipeline.core.settings import SettingsMixin
from pathmm_pipeline.core.stores import ArraySpec, open_store, write_store
from pathmm_pipeline.preprocess.coverage import box_fractions, integral_image
from pathmm_pipeline.preprocess.quality import (
    STATUS_QC_EXCLUDED,
    QCSettings,
    TileQC,
    assess_tiles,
    qc_tile_reader,
    write_tile_qc,
)
from pathmm_pipeline.preprocess.roi import RoiFilter, RoiSettings, load_roi
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
    roi: RoiSettings = field(default_factory=RoiSettings)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TilingSettings:
        """As :class:`SettingsMixin`'s, with ``roi`` given as a mapping."""
        values = dict(values)
        if isinstance(values.get("roi"), Mapping):
            values["roi"] = RoiSettings.from_dict(values["roi"])
        return super().from_dict(values)


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


def tissue_fractions(coords: np.ndarray, tile_size_level0: float, tissue: TissueMask,
                     table: np.ndarray | None = None) -> np.ndarray:
    """Exact area-weighted tissue fraction of each tile (coords in level-0 px) from the mask (``table``: its
    :func:`integral_image`, when already made)."""
    if len(coords) == 0:
        return np.zeros(0, np.float32)
    if table is None:
        table = integral_image(tissue.mask)
    return box_fractions(table, coords, tile_size_level0, tissue.scale_to_level0)


def select_tiles(info: SlideInfo, tissue: TissueMask, settings: TilingSettings,
                 limits: SlideLimits | None = None, roi: RoiFilter | None = None
                 ) -> tuple[TileGeometry, np.ndarray, np.ndarray]:
    """(geometry, kept coords (N, 2) int64, their tissue fractions (N,) float32).

    The grid is scored in blocks of rows (memory bounded whatever its size); with ``roi``, only the tiles it
    admits are kept; with ``limits``, more kept tiles than ``limits.max_tiles`` raise
    :class:`~pathmm_pipeline.core.errors.SlideTooLargeError` with their count.
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
        if roi is not None:
            keep[keep] = roi.keep(coords[keep], geometry.tile_size_level0)
        n_kept += int(keep.sum())
        if limits is None or n_kept <= limits.max_tiles:
            kept_coords.append(coords[keep])
            kept_fractions.append(fractions[keep])
        else:
            kept_coords, kept_fractions = [], []  # only counted from here on, for the message
    if limits is not None:
        where = "tissue and the ROI" if roi else "tissue"
        limits.check_tiles(info.path, n_kept, f"tiles of {settings.tile_px} px at {settings.mpp:g} um/px in the "
                           f"{where} (of a {len(xs):,} x {len(ys):,} grid)", "no tile store was written")
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
               limits: SlideLimits | None = None, qc: QCSettings | None = None,
               qc_table: str | os.PathLike[str] | None = None, roi: str | os.PathLike[str] | None = None) -> int:
    """Tile one slide into a coordinate store; returns the number of tiles kept.

    A slide above ``limits`` (default: :class:`SlideLimits`'s) in size or in kept tiles fails before the store
    is written (:class:`~pathmm_pipeline.core.errors.SlideTooLargeError`). With ``qc`` (enabled), every candidate
    tile is measured and decided by the quality rules: the store keeps the included tiles, a slide the rules
    exclude gets status ``qc_excluded`` and no tile, and ``qc_table`` receives every candidate's metrics,
    decision and reason (:mod:`pathmm_pipeline.preprocess.quality`). With ``roi`` (a GeoJSON file), only the
    tiles its polygons admit by ``settings.roi`` are kept (:mod:`pathmm_pipeline.preprocess.roi`); the file and
    its sha256 join the store's provenance.
    """
    slide_id = slide_id or Path(slide_path).stem
    limits = limits or SlideLimits()
    tissue = load_mask(segmentation_store)
    with open_slide(slide_path, backend=backend, fallback=fallback, mpp_override=mpp_override,
                    limits=limits) as reader:
        info = reader.info
        roi_filter = None if roi is None else load_roi(roi, info.dimensions,
                                                       tile_geometry(info, settings).tile_size_level0, settings.roi)
        if tissue.status != STATUS_OK:
            status, reason = STATUS_SKIPPED, f"segmentation found no tissue: {tissue.reason}"
            geometry = tile_geometry(info, settings)
            coords, fractions = np.zeros((0, 2), np.int64), np.zeros(0, np.float32)
            log.warning("%s: skipped, %s", slide_id, reason)
        else:
            geometry, coords, fractions = select_tiles(info, tissue, settings, limits, roi_filter)
            status, reason = STATUS_OK, ""
            if len(coords) == 0:
                status, reason = STATUS_SKIPPED, f"no tile reaches tissue fraction {settings.min_tissue_fraction:g}"
                reason += f" with {roi_filter.describe()}" if roi_filter else ""
                log.warning("%s: %s", slide_id, reason)
        quality = _assess_quality(reader, geometry, coords, fractions, segmentation_store, qc, slide_id)
    n_candidates = len(coords)
    if quality is not None and qc is not None and qc.enabled:
        keep = quality.included
        coords, fractions = coords[keep], fractions[keep]
        if quality.slide_reason and status == STATUS_OK:
            status, reason = STATUS_QC_EXCLUDED, f"quality control: {quality.slide_reason}"
            log.warning("%s: excluded by %s", slide_id, reason)
    used = {**asdict(settings), "roi": asdict(settings.roi) if roi is not None else None}  # no file: no part played
    params = {"settings": used, "backend": backend, "fallback": fallback, "mpp_override": mpp_override,
              "qc": qc.to_dict() if qc is not None else None}
    inputs = {"slide": slide_path, "segmentation": segmentation_store, **({"roi": roi} if roi is not None else {})}
    record = build_provenance("tiling", inputs, params)
    if qc_table is not None and quality is not None:
        write_tile_qc(quality, qc_table, record)
    attrs = {"slide_id": slide_id, "status": status, "reason": reason, "n_tiles": int(len(coords)),
             "n_qc_candidates": int(n_candidates), "qc_reasons": _reason_counts(quality),
             "coords_unit": COORD_UNIT, "slide_dimensions": list(info.dimensions), "slide_backend": info.backend,
             "min_tissue_fraction": settings.min_tissue_fraction, "overlap": settings.overlap,
             "roi": roi_filter.describe() if roi_filter else None, **geometry.as_attrs()}
    write_store(store_path, {
        "coords": ArraySpec(coords.astype(np.int64), ("tile", "xy"), (65536, 2)),
        "tissue_fraction": ArraySpec(fractions.astype(np.float32), ("tile",), (65536,)),
    }, attrs, record)
    log.info("%s: %d tiles of %d px at %.4f um/px (level %d, read %d px)", slide_id, len(coords),
             geometry.tile_px, geometry.achieved_mpp, geometry.level, geometry.read_px)
    return int(len(coords))


def _assess_quality(reader: SlideReader, geometry: TileGeometry, coords: np.ndarray, fractions: np.ndarray,
                    segmentation_store: str | os.PathLike[str], qc: QCSettings | None, slide_id: str
                    ) -> TileQC | None:
    """The tiles' quality decisions (None without ``qc``; a disabled ``qc`` measures nothing and keeps all)."""
    if qc is None:
        return None
    area_mm2 = float(open_store(segmentation_store).attrs.get("tissue_area_um2") or 0.0) / 1e6
    if not qc.enabled:
        return TileQC(pd.DataFrame({"x": coords[:, 0], "y": coords[:, 1], "tissue_fraction": fractions,
                                    "include": np.ones(len(coords), bool), "reason": [""] * len(coords)}),
                      {"tissue_area_mm2": area_mm2}, "")
    read = qc_tile_reader(reader, geometry.tile_size_level0, geometry.tile_px, qc.mpp)
    return assess_tiles(read, coords, fractions, area_mm2, qc, slide_id)


def _reason_counts(quality: TileQC | None) -> dict[str, int]:
    """Excluded tiles per failed metric ("blur": 12), for the QC summary."""
    if quality is None:
        return {}
    reasons = quality.table["reason"].astype(str)
    if reasons.empty:
        return {}
    return {str(k): int(v) for k, v in reasons[reasons != ""].str.split(" ").str[0].value_counts().items()}


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
