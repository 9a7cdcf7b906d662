"""Real H&E texture for the demo slides: cut the CMU source region into patches, sort them into a
"cellular" pool (dense nuclei) and a "stromal" pool (eosin-rich collagen, few nuclei), and fill any region
with a mosaic of both in which the cellular share of the area is a chosen fraction ``p``.

Stains are separated by colour deconvolution with the Ruifrok-Johnston H&E matrix (as in
``skimage.color.rgb2hed``) on optical densities ``-log10((I + 1) / 256)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

_HED_FROM_RGB = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_HED_TO_STAINS = np.linalg.inv(_HED_FROM_RGB / np.linalg.norm(_HED_FROM_RGB, axis=1, keepdims=True)).astype(np.float32)

PATCH = 128
OVERLAP = 32


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """Per-channel optical density (float32) of an RGB uint8 image."""
    return -np.log10((rgb.astype(np.float32) + 1.0) / 256.0)


def stain_densities(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Haematoxylin and eosin optical densities (float32 arrays) of an RGB uint8 image."""
    hed = optical_density(rgb) @ _HED_TO_STAINS
    return hed[..., 0], hed[..., 1]


def tissue_pixels(rgb: np.ndarray, min_od: float = 0.25) -> np.ndarray:
    """Stained (non-glass) pixels: summed optical density above ``min_od``."""
    return optical_density(rgb).sum(axis=-1) > min_od


def mean_haematoxylin(rgb: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean haematoxylin optical density over ``mask`` (or the whole image): the slide-level nuclear stain."""
    h, _ = stain_densities(rgb)
    values = h if mask is None else h[mask.astype(bool)]
    return float(values.mean()) if values.size else float("nan")


def nuclei_mask(rgb: np.ndarray) -> np.ndarray:
    """Nucleus-like pixels: compact, haematoxylin-dark blobs (white top-hat on H, 30-500 px components)."""
    h, _ = stain_densities(rgb)
    tophat = cv2.morphologyEx(h, cv2.MORPH_TOPHAT, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (21, 21)))
    seeds = ((tophat > 0.2) & (h > 0.5)).astype(np.uint8)
    cand = cv2.morphologyEx(seeds, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3)))
    _, labels, stats, _ = cv2.connectedComponentsWithStats(cand, connectivity=8)
    w, hh, area = stats[:, 2], stats[:, 3], stats[:, 4]
    keep = (area >= 30) & (area <= 500) & (np.maximum(w, hh) <= 3 * np.minimum(w, hh) + 2) & (area >= 0.4 * w * hh)
    keep[0] = False
    return keep[labels]


@dataclass(frozen=True)
class TexturePools:
    """Square RGB patches (n, size, size, 3) of the two tissue kinds."""

    cellular: np.ndarray
    stromal: np.ndarray

    @property
    def size(self) -> int:
        return int(self.cellular.shape[1])


def _box_mean(mask: np.ndarray, ys: np.ndarray, xs: np.ndarray, size: int) -> np.ndarray:
    """Mean of ``mask`` over every size x size box with top-left (ys[i], xs[j]); shape (len(ys), len(xs))."""
    integral = cv2.integral(mask.astype(np.uint8))
    y0, x0 = ys[:, None], xs[None, :]
    total = integral[y0 + size, x0 + size] - integral[y0, x0 + size] - integral[y0 + size, x0] + integral[y0, x0]
    return total / float(size * size)


def _greedy_pick(scores: np.ndarray, ys: np.ndarray, xs: np.ndarray, eligible: np.ndarray, n: int,
                 min_dist: int) -> list[tuple[int, int]]:
    """Up to ``n`` best-scoring eligible boxes, no two top-left corners within ``min_dist`` (Chebyshev)."""
    order = np.argsort(-np.where(eligible, scores, -np.inf), axis=None, kind="stable")
    picked: list[tuple[int, int]] = []
    for flat in order:
        i, j = np.unravel_index(flat, scores.shape)
        if not eligible[i, j]:
            break
        y, x = int(ys[i]), int(xs[j])
        if all(max(abs(y - py), abs(x - px)) >= min_dist for py, px in picked):
            picked.append((y, x))
            if len(picked) == n:
                break
    return picked


def extract_pools(he: np.ndarray, size: int = PATCH, stride: int = 32, n_cellular: int = 48,
                  n_stromal: int = 64) -> TexturePools:
    """Cut real H&E ``he`` into patches and keep the most nucleus-dense ones and the most eosin-rich,
    nucleus-poor ones. Patches on the tissue edge, on glass or with green marking dye are left out."""
    tissue = tissue_pixels(he)
    h_od, e_od = stain_densities(he)
    region = cv2.morphologyEx(tissue.astype(np.uint8), cv2.MORPH_CLOSE,
                              cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (31, 31)))
    region = cv2.morphologyEx(region, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (15, 15)))
    rgb16 = he.astype(np.int16)
    dye = tissue & (rgb16[..., 1] > rgb16[..., 0] + 10)
    ys = np.arange(0, he.shape[0] - size + 1, stride)
    xs = np.arange(0, he.shape[1] - size + 1, stride)
    inside = _box_mean(region, ys, xs, size)
    stained = _box_mean(tissue, ys, xs, size)
    nuclei = _box_mean(nuclei_mask(he), ys, xs, size)
    pink = _box_mean(tissue & (e_od > h_od), ys, xs, size) / np.maximum(stained, 1e-6)
    clean = (inside > 0.98) & (_box_mean(dye, ys, xs, size) < 0.002)
    cell_xy = _greedy_pick(nuclei - 0.1 * pink, ys, xs, clean & (stained > 0.85) & (pink < 0.35), n_cellular,
                           size // 2)
    strom_xy = _greedy_pick(pink - 3.0 * nuclei, ys, xs, clean & (stained > 0.6), n_stromal, size // 2)
    if len(cell_xy) < 8 or len(strom_xy) < 8:
        raise ValueError(f"the source H&E yields too few texture patches ({len(cell_xy)} cellular, "
                         f"{len(strom_xy)} stromal)")

    def stack(xy: list[tuple[int, int]]) -> np.ndarray:
        return np.stack([he[y:y + size, x:x + size] for y, x in xy])

    return TexturePools(cellular=stack(cell_xy), stromal=stack(strom_xy))


def _ramp(size: int, overlap: int) -> np.ndarray:
    """1-D blending weights: linear ramps over ``overlap`` px at both ends; shifted by size - overlap they
    sum to exactly 1."""
    w = np.ones(size, np.float32)
    ramp = (np.arange(overlap, dtype=np.float32) + 0.5) / overlap
    w[:overlap] = ramp
    w[size - overlap:] = ramp[::-1]
    return w


def cellular_cells(coverage: np.ndarray, p: float, rng: np.random.Generator, smooth: float = 1.5) -> np.ndarray:
    """Choose which grid cells are cellular: the highest cells of a smooth random field until their
    ``coverage``-weighted share of the total is ``p`` (to within one cell). Returns a boolean grid."""
    noise = rng.standard_normal(coverage.shape).astype(np.float32)
    field = cv2.GaussianBlur(noise, (0, 0), smooth, borderType=cv2.BORDER_REFLECT)
    chosen = np.zeros(coverage.shape, bool)
    total = float(coverage.sum())
    if total <= 0:
        return chosen
    order = np.argsort(-field, axis=None, kind="stable")
    cum = np.cumsum(coverage.ravel()[order])
    n = int(np.searchsorted(cum, p * total, side="left"))
    # take the cell that crosses p*total only if that brings the share closer to p
    if n < order.size and (cum[n] - p * total) < (p * total - (cum[n - 1] if n > 0 else 0.0)):
        n += 1
    chosen.ravel()[order[:n]] = True
    return chosen


def fill_texture(mask: np.ndarray, p: float, pools: TexturePools, rng: np.random.Generator,
                 overlap: int = OVERLAP) -> tuple[np.ndarray, float]:
    """An RGB image the size of ``mask`` whose pixels under ``mask`` are a seamless mosaic of real H&E
    patches (random flips and 90-degree turns, linear seams), with a share ``p`` of the masked area drawn
    from the cellular pool in smooth clusters. Returns (image, realised cellular share of the mask area)."""
    size = pools.size
    step = size - overlap
    h, w = mask.shape
    gh, gw = -(-(h + overlap) // step), -(-(w + overlap) // step)
    # cell (i, j) owns rows [i*step - overlap/2, ...): measure mask coverage on that grid
    pad = np.zeros((gh * step, gw * step), np.uint8)
    off = overlap // 2
    pad[off:off + h, off:off + w] = mask > 0
    coverage = cv2.resize(pad.astype(np.float32), (gw, gh), interpolation=cv2.INTER_AREA)
    touched = cv2.dilate((coverage > 0).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    cellular = cellular_cells(coverage, p, rng)
    realised = float((coverage * cellular).sum() / max(coverage.sum(), 1e-9))

    window = np.outer(_ramp(size, overlap), _ramp(size, overlap))[..., None]
    weighted = {name: pool.astype(np.float32) * window for name, pool in
                (("cellular", pools.cellular), ("stromal", pools.stromal))}
    out = np.zeros((h, w, 3), np.uint8)
    band = np.zeros((size, w + 2 * size, 3), np.float32)
    for i in range(gh):
        y0 = i * step - overlap
        for j in range(gw):
            if not touched[i, j]:
                continue
            bank = weighted["cellular" if cellular[i, j] else "stromal"]
            patch = bank[rng.integers(len(bank))]
            patch = np.rot90(patch, int(rng.integers(4)))
            if rng.integers(2):
                patch = patch[:, ::-1]
            x0 = j * step - overlap + size  # band has a left margin of `size` columns
            band[:, x0:x0 + size] += patch
        # rows [y0, y0 + step) are final once row i is added; keep the overlap for row i + 1
        top, bottom = max(y0, 0), min(y0 + step, h)
        if bottom > top:
            out[top:bottom] = np.clip(band[top - y0:bottom - y0, size:size + w] + 0.5, 0, 255).astype(np.uint8)
        band[:overlap] = band[step:step + overlap]
        band[overlap:] = 0
    return out, realised
