"""Tissue segmentation of one slide at a low-resolution level chosen by a target mpp.

HSV saturation -> median blur -> threshold (Otsu with a floor, or fixed) -> pen marks removed ->
morphological close -> contours with holes, filtered by area in square microns -> mask. Writes the mask as a
Zarr store, the contours as QuPath-importable GeoJSON in level-0 pixels, and a QC thumbnail PNG. A slide
without tissue is recorded with ``status = "no_tissue"`` and a reason; it is not an error.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pathmm_pipeline.core.atomic import write_bytes_atomic, write_text_atomic
from pathmm_pipeline.core.provenance import build_provenance
from pathmm_pipeline.core.settings import SettingsMixin
from pathmm_pipeline.core.stores import ArraySpec, write_store
from pathmm_pipeline.preprocess.slides import SlideLimits, SlideReader, open_slide

log = logging.getLogger(__name__)

STATUS_OK = "ok"
STATUS_NO_TISSUE = "no_tissue"


@dataclass(frozen=True)
class SegmentationSettings(SettingsMixin):
    """Parameters of tissue segmentation (``segmentation:`` in config.yaml)."""

    settings_name = "segmentation"

    mpp: float = 8.0
    threshold: str | int = "otsu"
    min_saturation: int = 20
    median_blur_um: float = 56.0
    close_um: float = 64.0
    min_tissue_area_um2: float = 100_000.0
    min_hole_area_um2: float = 40_000.0
    remove_pen: bool = True
    thumbnail_px: int = 1024



@dataclass
class TissueContour:
    """One tissue piece: exterior ring and hole rings in mask pixels, area in um^2."""

    exterior: np.ndarray  # (n, 2) x, y
    holes: list[np.ndarray]
    area_um2: float


@dataclass
class SegmentationResult:
    """The mask and what was found, at ``mask_mpp`` um/px."""

    mask: np.ndarray  # uint8 0/1
    image: np.ndarray  # the RGB image segmented
    contours: list[TissueContour]
    threshold: float
    mask_mpp: float
    scale_to_level0: tuple[float, float]
    level: int
    pen_fraction: float

    @property
    def status(self) -> str:
        return STATUS_OK if self.contours else STATUS_NO_TISSUE

    @property
    def tissue_area_um2(self) -> float:
        return float(self.mask.sum()) * self.mask_mpp ** 2


def read_low_resolution(reader: SlideReader, target_mpp: float) -> tuple[np.ndarray, int, tuple[float, float]]:
    """The whole slide at about ``target_mpp``: (RGB image, level read, level-0 px per image px in x and y)."""
    info = reader.info
    target_ds = max(1.0, target_mpp / info.mpp)
    level = reader.best_level_for_downsample(target_ds)
    scale = info.level_downsamples[level] / target_ds
    image = reader.read_level_scaled(level, min(1.0, scale))
    w0, h0 = info.dimensions
    return image, level, (w0 / image.shape[1], h0 / image.shape[0])


def pen_mask(hsv: np.ndarray) -> np.ndarray:
    """Pixels of blue, green or black marker ink (OpenCV HSV, hue 0-180)."""
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    blue = (h >= 95) & (h <= 125) & (s > 120) & (v > 90)
    green = (h >= 35) & (h <= 90) & (s > 50) & (v > 30)
    black = (v < 45) & (s < 120)
    return (blue | green | black).astype(np.uint8)


def _odd(n: float) -> int:
    k = int(round(n))
    return max(1, k if k % 2 else k + 1)


def tissue_mask(image: np.ndarray, mask_mpp: float, settings: SegmentationSettings) -> tuple[np.ndarray, float, float]:
    """Binary tissue mask (uint8 0/1) before contour filtering, the threshold used and the pen fraction."""
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    saturation = cv2.medianBlur(hsv[..., 1], _odd(settings.median_blur_um / mask_mpp))
    if settings.threshold == "otsu":
        otsu, _ = cv2.threshold(saturation, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        threshold = max(float(otsu), float(settings.min_saturation))
    else:
        threshold = float(settings.threshold)
    mask = (saturation > threshold).astype(np.uint8)
    pen_fraction = 0.0
    if settings.remove_pen:
        pen = pen_mask(hsv)
        pen = cv2.dilate(pen, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5)))
        pen_fraction = float(pen.mean())
        mask[pen > 0] = 0
    k = _odd(settings.close_um / mask_mpp)
    if k > 1:
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    return mask, threshold, pen_fraction


def filter_contours(mask: np.ndarray, mask_mpp: float,
                    settings: SegmentationSettings) -> tuple[np.ndarray, list[TissueContour]]:
    """Keep tissue pieces and holes above their area thresholds; small holes are filled.

    Returns the filtered mask and the kept contours (largest first).
    """
    px_area = mask_mpp ** 2
    found, hierarchy = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    out = np.zeros_like(mask)
    if hierarchy is None:
        return out, []
    hierarchy = hierarchy[0]
    pieces: list[TissueContour] = []
    for i, contour in enumerate(found):
        if hierarchy[i][3] != -1:
            continue  # a hole: handled with its parent
        area = cv2.contourArea(contour) * px_area
        if area < settings.min_tissue_area_um2:
            continue
        holes = []
        child = hierarchy[i][2]
        while child != -1:
            if cv2.contourArea(found[child]) * px_area >= settings.min_hole_area_um2:
                holes.append(found[child])
            child = hierarchy[child][0]
        hole_area = sum(cv2.contourArea(h) for h in holes) * px_area
        pieces.append(TissueContour(contour[:, 0, :], [h[:, 0, :] for h in holes], area - hole_area))
    pieces.sort(key=lambda p: -cv2.contourArea(p.exterior.reshape(-1, 1, 2)))
    for piece in pieces:  # largest first, so islands inside holes are drawn after the holes they sit in
        cv2.drawContours(out, [piece.exterior.reshape(-1, 1, 2)], -1, 1, thickness=cv2.FILLED)
        if piece.holes:
            cv2.drawContours(out, [h.reshape(-1, 1, 2) for h in piece.holes], -1, 0, thickness=cv2.FILLED)
            # a hole's own outline pixels belong to tissue
            cv2.drawContours(out, [h.reshape(-1, 1, 2) for h in piece.holes], -1, 1, thickness=1)
    return out, pieces


def segment_image(image: np.ndarray, mask_mpp: float,
                  settings: SegmentationSettings) -> tuple[np.ndarray, list[TissueContour], float, float]:
    """Segment an RGB image at ``mask_mpp``: (mask, contours, threshold, pen fraction)."""
    raw, threshold, pen_fraction = tissue_mask(image, mask_mpp, settings)
    mask, contours = filter_contours(raw, mask_mpp, settings)
    return mask, contours, threshold, pen_fraction


def segment_reader(reader: SlideReader, settings: SegmentationSettings) -> SegmentationResult:
    """Segment an open slide."""
    image, level, scale = read_low_resolution(reader, settings.mpp)
    mask_mpp = reader.info.mpp * (scale[0] + scale[1]) / 2
    mask, contours, threshold, pen_fraction = segment_image(image, mask_mpp, settings)
    return SegmentationResult(mask, image, contours, threshold, mask_mpp, scale, level, pen_fraction)


def contours_geojson(result: SegmentationResult, slide_id: str) -> dict[str, Any]:
    """Tissue contours as a GeoJSON FeatureCollection in level-0 pixels (QuPath: File > Import objects)."""
    sx, sy = result.scale_to_level0

    def ring(points: np.ndarray) -> list[list[float]]:
        coords = [[round(float(x) * sx, 1), round(float(y) * sy, 1)] for x, y in points]
        if coords and coords[0] != coords[-1]:
            coords.append(coords[0])
        return coords

    features = []
    for i, piece in enumerate(result.contours):
        if len(piece.exterior) < 3:
            continue
        rings = [ring(piece.exterior)] + [ring(h) for h in piece.holes if len(h) >= 3]
        features.append({
            "type": "Feature",
            "id": f"{slide_id}-tissue-{i}",
            "geometry": {"type": "Polygon", "coordinates": rings},
            "properties": {"objectType": "annotation", "name": f"tissue {i}",
                           "classification": {"name": "Tissue", "color": [0, 160, 0]},
                           "area_um2": round(piece.area_um2, 1), "n_holes": len(rings) - 1},
        })
    return {"type": "FeatureCollection", "features": features,
            "properties": {"slide_id": slide_id, "coordinate_space": "level-0 pixels"}}


def qc_thumbnail(result: SegmentationResult, max_px: int) -> np.ndarray:
    """RGB thumbnail with tissue outlines in green and holes in blue."""
    image = result.image
    h, w = image.shape[:2]
    f = min(1.0, max_px / max(h, w))
    thumb = cv2.resize(image, (max(1, int(w * f)), max(1, int(h * f))), interpolation=cv2.INTER_AREA)
    for piece in result.contours:
        cv2.polylines(thumb, [np.round(piece.exterior * f).astype(np.int32).reshape(-1, 1, 2)], True, (0, 170, 0), 2)
        for hole in piece.holes:
            cv2.polylines(thumb, [np.round(hole * f).astype(np.int32).reshape(-1, 1, 2)], True, (0, 60, 255), 1)
    if not result.contours:
        cv2.putText(thumb, "no tissue", (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (200, 0, 0), 2)
    return thumb


def segment_slide(slide_path: str | os.PathLike[str], store_path: str | os.PathLike[str],
                  geojson_path: str | os.PathLike[str], thumbnail_path: str | os.PathLike[str],
                  settings: SegmentationSettings, slide_id: str | None = None, backend: str = "openslide",
                  fallback: bool = True, mpp_override: float | None = None,
                  limits: SlideLimits | None = None) -> SegmentationResult:
    """Segment one slide and write its mask store, GeoJSON and QC thumbnail (each atomically).

    A slide whose header says it is larger than ``limits`` (default: :class:`SlideLimits`'s) fails before any
    pixel is read (:class:`~pathmm_pipeline.core.errors.SlideTooLargeError`).
    """
    slide_id = slide_id or Path(slide_path).stem
    with open_slide(slide_path, backend=backend, fallback=fallback, mpp_override=mpp_override,
                    limits=limits or SlideLimits()) as reader:
        result = segment_reader(reader, settings)
        info = reader.info
    reason = "" if result.contours else (
        f"no tissue piece of at least {settings.min_tissue_area_um2:g} um^2 above saturation "
        f"{result.threshold:g}")
    if reason:
        log.warning("%s: %s", slide_path, reason)
    write_text_atomic(geojson_path, json.dumps(contours_geojson(result, slide_id)))
    ok, png = cv2.imencode(".png", cv2.cvtColor(qc_thumbnail(result, settings.thumbnail_px), cv2.COLOR_RGB2BGR))
    write_bytes_atomic(thumbnail_path, png.tobytes())
    params = {"settings": asdict(settings), "backend": backend, "fallback": fallback, "mpp_override": mpp_override}
    record = build_provenance("segmentation", {"slide": slide_path}, params,
                              outputs={"geojson": geojson_path, "thumbnail": thumbnail_path})
    attrs = {
        "slide_id": slide_id, "status": result.status, "reason": reason,
        "mask_mpp": result.mask_mpp, "scale_to_level0": list(result.scale_to_level0),
        "level_read": result.level, "threshold": result.threshold, "pen_fraction": result.pen_fraction,
        "tissue_area_um2": result.tissue_area_um2, "n_pieces": len(result.contours),
        "slide": {"backend": info.backend, "mpp": info.mpp, "mpp_source": info.mpp_source,
                  "dimensions": list(info.dimensions), "objective_power": info.objective_power,
                  "vendor": info.vendor},
    }
    write_store(store_path, {"mask": ArraySpec(result.mask, ("y", "x"), (1024, 1024))}, attrs, record)
    log.info("%s: %s, %d piece(s), %.2f mm^2 tissue", slide_id, result.status, len(result.contours),
             result.tissue_area_um2 / 1e6)
    return result


@dataclass(frozen=True)
class TissueMask:
    """A segmentation store's mask with its geometry, as downstream stages read it."""

    mask: np.ndarray
    mask_mpp: float
    scale_to_level0: tuple[float, float]
    status: str
    reason: str


def load_mask(store_path: str | os.PathLike[str]) -> TissueMask:
    """Read a segmentation store written by :func:`segment_slide`."""
    from pathmm_pipeline.core.stores import open_store

    group = open_store(store_path)
    attrs = dict(group.attrs)
    return TissueMask(np.asarray(group["mask"][...]), float(attrs["mask_mpp"]),
                      tuple(float(v) for v in attrs["scale_to_level0"]), attrs["status"], attrs.get("reason", ""))
