"""Regions of interest for tiling: a per-slide GeoJSON (QuPath's "Export objects as GeoJSON") whose polygons, by
class, restrict the tiles kept.

The file holds a FeatureCollection, a bare list of Features or one Feature. Polygon and MultiPolygon geometries
(also inside a GeometryCollection) count, in level-0 pixel coordinates (x right, y down); interior rings are
holes. A feature's class is ``properties.classification.name`` (QuPath), ``properties.classification`` when it is
a string, else ``properties.name``. QuPath's detections, cells and tiles (``properties.objectType`` other than
``annotation``), points and lines are ignored.

A tile is kept when its overlap with the union of the include polygons is at least ``min_overlap`` and its
overlap with the union of the exclude polygons at most ``max_exclude_overlap`` (fractions of the tile's area).
The include polygons are those of ``include_classes``, or every polygon not of an exclude class when that list
is empty; a file holding only exclude-class polygons then removes those regions and restricts nothing else.

Polygons are never rasterised at level 0: each set is drawn (``cv2.fillPoly``, sub-pixel vertices) over its own
bounding box at :data:`SUBDIVISIONS` raster pixels per tile side, coarser only where that box would exceed
:data:`MAX_RASTER_PIXELS`, and tiles are scored on its summed-area table
(:func:`~pathmm_pipeline.preprocess.coverage.box_fractions`): a tile's overlap is exact to about one raster
pixel's share of the tile side (1/32; OpenCV fills every pixel a boundary touches).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pathmm_pipeline.core.errors import ConfigError, InputError, did_you_mean
from pathmm_pipeline.core.settings import SettingsMixin
from pathmm_pipeline.preprocess.coverage import box_fractions, integral_image

log = logging.getLogger(__name__)

#: raster pixels per tile side (a tile's overlap is exact to about 1/SUBDIVISIONS)
SUBDIVISIONS = 32
#: the most pixels one raster (include or exclude polygons) may have: 16 Mpx, 128 MiB of summed-area table
MAX_RASTER_PIXELS = 1 << 24
#: fixed-point bits of the vertices passed to cv2.fillPoly (1/256 raster pixel)
_SHIFT = 8
#: vertices are clamped this far (raster px) outside the raster, so that fixed point fits in int32
_FAR = float(1 << 20)
_HINT = ("give a QuPath GeoJSON export (File > Export objects as GeoJSON) of this slide's annotations, in level-0 "
         "pixel coordinates, or remove roi_path from the sample sheet")


@dataclass(frozen=True)
class RoiSettings(SettingsMixin):
    """How a slide's ROI file restricts its tiles (``tiling.roi:`` in config.yaml; only slides with a
    ``roi_path`` use it). Overlaps are fractions of a tile's area."""

    settings_name = "tiling.roi"

    include_classes: tuple[str, ...] = ()
    exclude_classes: tuple[str, ...] = ()
    min_overlap: float = 0.5
    max_exclude_overlap: float = 0.0

    def __post_init__(self) -> None:
        for name in ("include_classes", "exclude_classes"):  # JSON gives lists (or null): frozen tuples
            object.__setattr__(self, name, tuple(str(c) for c in getattr(self, name) or ()))
        for name in ("min_overlap", "max_exclude_overlap"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise ConfigError(f"tiling.roi.{name} must lie in [0, 1], got {getattr(self, name)}")
        both = sorted(set(self.include_classes) & set(self.exclude_classes))
        if both:
            raise ConfigError(f"tiling.roi: class(es) {both} are both included and excluded")


@dataclass(frozen=True)
class RoiPolygon:
    """One polygon of an ROI file: its class (None when unclassified), exterior ring and hole rings as (n, 2)
    float64 level-0 px."""

    name: str | None
    exterior: np.ndarray
    holes: tuple[np.ndarray, ...] = ()

    def bounds(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) of the exterior ring."""
        (x0, y0), (x1, y1) = self.exterior.min(axis=0), self.exterior.max(axis=0)
        return float(x0), float(y0), float(x1), float(y1)


# ---------------------------------------------------------------------------------------------- reading
def _as_features(data: Any) -> list[Any] | None:
    """The features of a GeoJSON document (None: not one of the accepted shapes)."""
    if isinstance(data, list):
        return data
    if not isinstance(data, dict):
        return None
    kind = data.get("type")
    if kind == "FeatureCollection":
        return data.get("features") if isinstance(data.get("features"), list) else None
    if kind == "Feature":
        return [data]
    if kind in GEOMETRIES:  # a bare geometry: one unclassified feature
        return [{"type": "Feature", "geometry": data, "properties": {}}]
    return None


def _ring(raw: Any) -> np.ndarray:
    problem = "a ring is not a list of at least 3 finite [x, y] points"
    try:
        ring = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(problem) from None
    if ring.ndim != 2 or ring.shape[0] < 3 or ring.shape[1] < 2 or not np.isfinite(ring[:, :2]).all():
        raise ValueError(problem)
    return ring[:, :2]


def _polygon(coordinates: Any) -> list[tuple[np.ndarray, tuple[np.ndarray, ...]]]:
    if not isinstance(coordinates, list) or not coordinates:
        raise ValueError("a Polygon has no rings")
    rings = [_ring(r) for r in coordinates]
    return [(rings[0], tuple(rings[1:]))]


def _multipolygon(coordinates: Any) -> list[tuple[np.ndarray, tuple[np.ndarray, ...]]]:
    if not isinstance(coordinates, list):
        raise ValueError("a MultiPolygon's coordinates are not a list of polygons")
    return [part for polygon in coordinates for part in _polygon(polygon)]


def _no_area(coordinates: Any) -> list[tuple[np.ndarray, tuple[np.ndarray, ...]]]:
    return []  # points and lines mark no region


#: GeoJSON geometry type -> its polygons as (exterior, holes); GeometryCollection recurses (see _geometry)
GEOMETRIES: dict[str, Callable[[Any], list[tuple[np.ndarray, tuple[np.ndarray, ...]]]]] = {
    "Polygon": _polygon, "MultiPolygon": _multipolygon, "Point": _no_area, "MultiPoint": _no_area,
    "LineString": _no_area, "MultiLineString": _no_area,
}


def _geometry(geometry: Any) -> list[tuple[np.ndarray, tuple[np.ndarray, ...]]]:
    if geometry is None:
        return []
    if not isinstance(geometry, dict):
        raise ValueError("its geometry is not an object")
    kind = geometry.get("type")
    if kind == "GeometryCollection":
        return [p for g in geometry.get("geometries") or [] for p in _geometry(g)]
    if kind not in GEOMETRIES:
        raise ValueError(f"unknown geometry type {kind!r}{did_you_mean(kind, GEOMETRIES)}")
    return GEOMETRIES[kind](geometry.get("coordinates"))


#: where a feature's class may be, tried in order: QuPath's classification object, a bare string, the name
CLASS_FIELDS: tuple[Callable[[dict[str, Any]], Any], ...] = (
    lambda p: p.get("classification", {}).get("name") if isinstance(p.get("classification"), dict) else None,
    lambda p: p.get("classification") if isinstance(p.get("classification"), str) else None,
    lambda p: p.get("name"),
)


def feature_class(properties: dict[str, Any]) -> str | None:
    """A feature's class name (see :data:`CLASS_FIELDS`), None when it has none."""
    for lookup in CLASS_FIELDS:
        value = lookup(properties)
        if isinstance(value, str) and value:
            return value
    return None


def _annotations(features: list[Any]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(index, feature) of the features that are annotations (QuPath's detections, cells and tiles skipped)."""
    skipped = 0
    for i, feature in enumerate(features):
        if not isinstance(feature, dict) or feature.get("type", "Feature") != "Feature":
            raise ValueError(f"feature {i + 1} is not a GeoJSON Feature")
        properties = feature.get("properties") or {}
        if properties.get("objectType", "annotation") != "annotation":
            skipped += 1
            continue
        yield i, feature
    if skipped:
        log.info("ROI: %d detection / cell / tile object(s) ignored", skipped)


def read_roi(path: str | os.PathLike[str]) -> list[RoiPolygon]:
    """The polygons of an ROI GeoJSON file; :class:`InputError` names the file and its problem."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "ROI file not found", _HINT)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(path, f"ROI file is not JSON ({exc.msg} at line {exc.lineno})", _HINT) from None
    except (UnicodeDecodeError, OSError) as exc:
        raise InputError(path, f"ROI file cannot be read as JSON text ({type(exc).__name__})", _HINT) from None
    features = _as_features(data)
    if features is None:
        found = data.get("type") if isinstance(data, dict) else type(data).__name__
        raise InputError(path, f"ROI file is not GeoJSON: expected a FeatureCollection, a list of Features or a "
                         f"Feature, found {found!r}", _HINT)
    polygons = []
    try:
        for i, feature in _annotations(features):
            name = feature_class(feature.get("properties") or {})
            try:
                polygons += [RoiPolygon(name, ext, holes) for ext, holes in _geometry(feature.get("geometry"))]
            except ValueError as exc:
                raise ValueError(f"feature {i + 1}: {exc}") from None
    except ValueError as exc:
        raise InputError(path, f"ROI file is not valid GeoJSON: {exc}", _HINT) from None
    if not polygons:
        raise InputError(path, "ROI file holds no Polygon or MultiPolygon annotation", _HINT)
    return polygons


# ---------------------------------------------------------------------------------------------- choosing
def choose(polygons: list[RoiPolygon], settings: RoiSettings, path: str | os.PathLike[str]
           ) -> tuple[list[RoiPolygon] | None, list[RoiPolygon]]:
    """(include polygons, None when nothing restricts; exclude polygons) by class (see the module's rules)."""
    exclude = [p for p in polygons if p.name in settings.exclude_classes]
    if not settings.include_classes:
        include = [p for p in polygons if p.name not in settings.exclude_classes]
        return include or None, exclude
    include = [p for p in polygons if p.name in settings.include_classes]
    if not include:
        found = sorted({p.name or "<unclassified>" for p in polygons})
        wanted = ", ".join(settings.include_classes)
        raise InputError(path, f"no polygon of an included class ({wanted}); the file's classes: "
                         f"{', '.join(found)}{did_you_mean(settings.include_classes[0], found)}",
                         "set tiling.roi.include_classes to classes the file uses, or to [] for every annotation")
    return include, exclude


def _bounds(polygons: list[RoiPolygon]) -> tuple[float, float, float, float]:
    boxes = np.array([p.bounds() for p in polygons])
    return float(boxes[:, 0].min()), float(boxes[:, 1].min()), float(boxes[:, 2].max()), float(boxes[:, 3].max())


def _check_inside(polygons: list[RoiPolygon], dimensions: tuple[int, int], role: str,
                  path: str | os.PathLike[str]) -> None:
    """Refuse a set of polygons of which none reaches into the slide (another slide's, or scaled coordinates)."""
    w, h = dimensions
    if any(x0 < w and y0 < h and x1 > 0 and y1 > 0 for x0, y0, x1, y1 in (p.bounds() for p in polygons)):
        return
    x0, y0, x1, y1 = _bounds(polygons)
    raise InputError(path, f"every {role} polygon lies outside the {w} x {h} px slide (x {x0:g} to {x1:g}, "
                     f"y {y0:g} to {y1:g})", "ROI coordinates must be this slide's level-0 pixels: export the "
                     "annotations from QuPath with this slide open, unscaled")


# ---------------------------------------------------------------------------------------------- rasters
@dataclass(frozen=True)
class Raster:
    """The union of some polygons as a summed-area table whose pixel (0, 0) starts at level-0 ``origin`` and
    spans ``scale`` level-0 px on each side."""

    table: np.ndarray
    origin: tuple[float, float]
    scale: float

    def coverage(self, coords: np.ndarray, size: float) -> np.ndarray:
        """Share of each tile (top-left ``coords``, side ``size``, level-0 px) inside the polygons."""
        return box_fractions(self.table, coords, size, (self.scale, self.scale), self.origin)


def _fixed_point(ring: np.ndarray, origin: tuple[float, float], scale: float) -> np.ndarray:
    """Level-0 ring -> cv2.fillPoly's fixed-point vertices (pixel centres at integers, hence the half pixel)."""
    px = (ring - np.asarray(origin)) / scale - 0.5
    return np.round(np.clip(px, -_FAR, _FAR) * (1 << _SHIFT)).astype(np.int32)


def rasterise(polygons: list[RoiPolygon], dimensions: tuple[int, int], tile_size_level0: float) -> Raster:
    """The union of ``polygons`` (holes cut from their own polygon only), clipped to the slide, at
    :data:`SUBDIVISIONS` raster px per tile side over the polygons' bounding box."""
    w0, h0 = dimensions
    x0, y0, x1, y1 = _bounds(polygons)
    x0, y0 = max(0.0, math.floor(x0)), max(0.0, math.floor(y0))
    x1, y1 = min(float(w0), math.ceil(x1)), min(float(h0), math.ceil(y1))
    area = max(1.0, (x1 - x0) * (y1 - y0))
    scale = max(1.0, tile_size_level0 / SUBDIVISIONS, math.sqrt(area / MAX_RASTER_PIXELS))
    width, height = max(1, math.ceil((x1 - x0) / scale)), max(1, math.ceil((y1 - y0) / scale))
    mask = np.zeros((height, width), np.uint8)
    for polygon in polygons:
        _fill(mask, polygon, (x0, y0), scale)
    return Raster(integral_image(mask), (x0, y0), scale)


def _fill(mask: np.ndarray, polygon: RoiPolygon, origin: tuple[float, float], scale: float) -> None:
    """OR one polygon (exterior filled, holes cut) into ``mask``, drawn on a crop of its own bounding box."""
    bx0, by0, bx1, by1 = polygon.bounds()
    c0 = max(0, math.floor((bx0 - origin[0]) / scale) - 1)
    r0 = max(0, math.floor((by0 - origin[1]) / scale) - 1)
    c1 = min(mask.shape[1], math.ceil((bx1 - origin[0]) / scale) + 1)
    r1 = min(mask.shape[0], math.ceil((by1 - origin[1]) / scale) + 1)
    if c1 <= c0 or r1 <= r0:
        return  # wholly outside the slide
    crop_origin = (origin[0] + c0 * scale, origin[1] + r0 * scale)
    crop = np.zeros((r1 - r0, c1 - c0), np.uint8)
    cv2.fillPoly(crop, [_fixed_point(polygon.exterior, crop_origin, scale)], 1, cv2.LINE_8, _SHIFT)
    if polygon.holes:
        cv2.fillPoly(crop, [_fixed_point(h, crop_origin, scale) for h in polygon.holes], 0, cv2.LINE_8, _SHIFT)
    np.maximum(mask[r0:r1, c0:c1], crop, out=mask[r0:r1, c0:c1])


# ---------------------------------------------------------------------------------------------- the filter
@dataclass(frozen=True)
class RoiFilter:
    """One slide's ROI, rasterised, and the rule deciding which tiles it keeps."""

    path: str
    settings: RoiSettings
    include: Raster | None
    exclude: Raster | None

    def keep(self, coords: np.ndarray, tile_size_level0: float) -> np.ndarray:
        """Boolean (N,): tiles (top-left ``coords``, level-0 px) the ROI keeps."""
        keep = np.ones(len(coords), bool)
        if self.include is not None:
            keep &= self.include.coverage(coords, tile_size_level0) >= self.settings.min_overlap
        if self.exclude is not None:
            keep &= self.exclude.coverage(coords, tile_size_level0) <= self.settings.max_exclude_overlap
        return keep

    def describe(self) -> str:
        """The rule in words, for log lines and skip reasons."""
        parts = []
        if self.include is not None:
            classes = ", ".join(self.settings.include_classes) or "any class"
            parts.append(f"at least {self.settings.min_overlap:g} inside {classes}")
        if self.exclude is not None:
            parts.append(f"at most {self.settings.max_exclude_overlap:g} inside "
                         f"{', '.join(self.settings.exclude_classes)}")
        return f"ROI {Path(self.path).name}: " + " and ".join(parts)


def load_roi(path: str | os.PathLike[str], dimensions: tuple[int, int], tile_size_level0: float,
             settings: RoiSettings) -> RoiFilter:
    """Read, check and rasterise a slide's ROI file for tiles of ``tile_size_level0`` level-0 px."""
    polygons = read_roi(path)
    include, exclude = choose(polygons, settings, path)
    if include is not None:
        _check_inside(include, dimensions, "included" if settings.include_classes else "ROI", path)
    if exclude:
        _check_inside(exclude, dimensions, "excluded", path)
    return RoiFilter(str(path), settings,
                     None if include is None else rasterise(include, dimensions, tile_size_level0),
                     rasterise(exclude, dimensions, tile_size_level0) if exclude else None)
