"""Area-weighted coverage of boxes by a raster mask: the summed-area table of the mask, sampled bilinearly, which
is exact for a piecewise-constant mask (each raster pixel a uniform square). Tiling scores tiles against the
tissue mask and against ROI polygons (:mod:`pathmm_pipeline.preprocess.roi`) with it."""

from __future__ import annotations

import cv2
import numpy as np


def integral_image(mask: np.ndarray) -> np.ndarray:
    """(h+1, w+1) float64 summed-area table of a 0/1 mask."""
    return cv2.integral(np.ascontiguousarray(mask, dtype=np.uint8), sdepth=cv2.CV_64F)


def sample_integral(table: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
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


def box_fractions(table: np.ndarray, coords: np.ndarray, size: float, scale: tuple[float, float],
                  origin: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """Share (float32, 0-1) of each square box (top-left ``coords`` (N, 2) and side ``size``, level-0 px) covered
    by the mask of ``table``, whose pixel (0, 0) starts at level-0 ``origin`` and spans ``scale`` (x, y) level-0
    px; the mask is 0 outside itself."""
    if len(coords) == 0:
        return np.zeros(0, np.float32)
    sx, sy = scale
    x0 = (coords[:, 0] - origin[0]) / sx
    y0 = (coords[:, 1] - origin[1]) / sy
    x1 = x0 + size / sx
    y1 = y0 + size / sy
    covered = (sample_integral(table, x1, y1) - sample_integral(table, x0, y1)
               - sample_integral(table, x1, y0) + sample_integral(table, x0, y0))
    area = (x1 - x0) * (y1 - y0)
    return np.clip(covered / area, 0.0, 1.0).astype(np.float32)
