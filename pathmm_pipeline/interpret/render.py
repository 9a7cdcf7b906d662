"""Heatmap outputs: a PNG over the QC thumbnail (same size, with a colour bar), a GeoJSON of tile squares in
level-0 pixels whose ``measurements`` QuPath reads and whose ``classification`` colours them, and tile crops.

Attention is drawn as its percentile within the slide (CLAM's convention: a slide of 10,000 tiles has
weights near 1e-4, so the raw values say little by eye) on a sequential map; contribution on a diverging map
centred on zero and scaled by the slide's largest absolute value (red pushes the score up, blue down).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from matplotlib import colormaps

from pathmm_pipeline.core.atomic import write_bytes_atomic
from pathmm_pipeline.core.errors import InputError

SEQUENTIAL = "viridis"
DIVERGING = "coolwarm"
ALPHA = 0.55
#: the GeoJSON's classes: attention deciles, each coloured by the sequential map
N_CLASSES = 10


def percentiles(values: np.ndarray) -> np.ndarray:
    """Each value's rank within the slide in [0, 1] (ties share their mean rank)."""
    v = np.asarray(values, np.float64)
    if v.size < 2:
        return np.ones_like(v)
    order = np.argsort(v, kind="stable")
    ranks = np.empty(v.size)
    ranks[order] = np.arange(v.size)
    _, inverse = np.unique(v, return_inverse=True)
    mean_rank = np.bincount(inverse, ranks) / np.bincount(inverse)
    return mean_rank[inverse] / (v.size - 1)


def colours(values: np.ndarray, kind: str) -> tuple[np.ndarray, float, float]:
    """``(RGB uint8 (N, 3), low, high)``: ``sequential`` values as percentiles, ``diverging`` ones around 0."""
    v = np.asarray(values, np.float64)
    if kind == "sequential":
        scaled, low, high = percentiles(v), 0.0, 1.0
        cmap = colormaps[SEQUENTIAL]
    elif kind == "diverging":
        top = float(np.abs(v).max()) if v.size else 0.0
        top = top if top > 0 else 1.0
        scaled, low, high = 0.5 + 0.5 * v / top, -top, top
        cmap = colormaps[DIVERGING]
    else:
        raise ValueError(f"colour kind {kind!r} is not 'sequential' or 'diverging'")
    return (cmap(scaled)[:, :3] * 255).round().astype(np.uint8), low, high


def level0_per_thumbnail_px(mask_shape: Sequence[int], scale_to_level0: Sequence[float],
                            thumbnail_shape: Sequence[int]) -> tuple[float, float]:
    """Level-0 pixels per QC-thumbnail pixel in x and y: the thumbnail is the segmentation image resized from
    the mask's size (``mask_shape`` (h, w), whose pixels are ``scale_to_level0`` level-0 pixels)."""
    (mh, mw), (th, tw) = mask_shape[:2], thumbnail_shape[:2]
    return float(scale_to_level0[0]) * mw / tw, float(scale_to_level0[1]) * mh / th


def overlay(thumbnail: np.ndarray, coords: np.ndarray, tile_size_level0: float, values: np.ndarray,
            scale: tuple[float, float], kind: str, label: str) -> np.ndarray:
    """The RGB thumbnail with every tile's square blended in its colour, and a labelled colour bar."""
    out = thumbnail.astype(np.float32).copy()
    paint = np.zeros_like(out)
    cover = np.zeros(out.shape[:2], np.float32)
    rgb, low, high = colours(values, kind)
    h, w = out.shape[:2]
    for (x, y), colour in zip(np.asarray(coords, np.float64), rgb):
        x0, y0 = int(x / scale[0]), int(y / scale[1])
        x1 = max(x0 + 1, int(round((x + tile_size_level0) / scale[0])))
        y1 = max(y0 + 1, int(round((y + tile_size_level0) / scale[1])))
        x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
        if x1 > x0 and y1 > y0:
            paint[y0:y1, x0:x1] = colour
            cover[y0:y1, x0:x1] = 1.0
    a = (ALPHA * cover)[..., None]
    out = out * (1 - a) + paint * a
    return colour_bar(np.clip(out + 0.5, 0, 255).astype(np.uint8), kind, low, high, label)


def colour_bar(image: np.ndarray, kind: str, low: float, high: float, label: str) -> np.ndarray:
    """A vertical colour bar drawn into the image's right edge, with its end values and ``label``."""
    h, w = image.shape[:2]
    bar_h, bar_w = max(8, int(h * 0.4)), max(4, min(14, w // 20))
    x0, y0 = max(0, w - bar_w - 4), max(0, (h - bar_h) // 2)
    ramp = np.linspace(1.0, 0.0, bar_h)
    cmap = colormaps[SEQUENTIAL if kind == "sequential" else DIVERGING]
    strip = (cmap(ramp)[:, :3] * 255).round().astype(np.uint8)
    image[y0:y0 + bar_h, x0:x0 + bar_w] = strip[:, None, :]
    cv2.rectangle(image, (x0, y0), (x0 + bar_w - 1, y0 + bar_h - 1), (0, 0, 0), 1)
    scale = max(0.3, min(0.5, h / 1200))
    fmt = "{:.0%}" if kind == "sequential" else "{:+.2g}"
    for text, y in ((fmt.format(high), y0 - 4), (fmt.format(low), y0 + bar_h + 12)):
        size = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0]
        cv2.putText(image, text, (max(0, w - size[0] - 2), int(np.clip(y, 10, h - 2))), cv2.FONT_HERSHEY_SIMPLEX,
                    scale, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(image, label, (4, h - 6), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return image


def read_rgb(path: str | os.PathLike[str]) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise InputError(path, "cannot be read as an image", "re-run the segmentation stage for this slide")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def write_png(path: str | os.PathLike[str], rgb: np.ndarray) -> Path:
    ok, png = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError(f"{path}: cannot encode the PNG")
    return write_bytes_atomic(path, png.tobytes())


def tiles_geojson(slide_id: str, coords: np.ndarray, tile_size_level0: float,
                  measurements: Mapping[str, np.ndarray], classify_by: str) -> dict[str, Any]:
    """A FeatureCollection of tile squares (level-0 pixels) that QuPath imports as detections: each with its
    ``measurements`` and a ``classification`` (``<classify_by> decile k``) coloured on the sequential map."""
    size = float(tile_size_level0)
    deciles = np.minimum((percentiles(measurements[classify_by]) * N_CLASSES).astype(int), N_CLASSES - 1)
    palette = (colormaps[SEQUENTIAL]((np.arange(N_CLASSES) + 0.5) / N_CLASSES)[:, :3] * 255).round().astype(int)
    features = []
    for i, (x, y) in enumerate(np.asarray(coords, np.float64)):
        ring = [[x, y], [x + size, y], [x + size, y + size], [x, y + size], [x, y]]
        features.append({
            "type": "Feature", "id": f"{slide_id}-tile-{i}",
            "geometry": {"type": "Polygon", "coordinates": [[[float(a), float(b)] for a, b in ring]]},
            "properties": {"objectType": "detection", "isLocked": True,
                           "classification": {"name": f"{classify_by} decile {deciles[i] + 1}",
                                              "color": [int(c) for c in palette[deciles[i]]]},
                           "measurements": {k: float(v[i]) for k, v in measurements.items()}}})
    return {"type": "FeatureCollection", "features": features,
            "properties": {"slide_id": slide_id, "coordinate_space": "level-0 pixels"}}


def top_bottom(values: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the ``k`` highest (descending) and ``k`` lowest (ascending) values."""
    order = np.argsort(-np.asarray(values, np.float64), kind="stable")
    k = min(int(k), len(order))
    return order[:k], order[::-1][:k]
