"""TCGA-like synthetic H&E content that renders any region of any pyramid level from its coordinates, so that a
slide of any size can be written tile by tile (:func:`pathmm_pipeline.preprocess.slidewriter.write_tiled_slide`)
without any level ever held in memory (the real-size benchmark, ``bench/real_size_slide.py``).

What a slide looks like, deterministic from a seed:

* tissue: a few irregular pieces (elliptic envelopes, low-frequency noise, a hole, small fragments) drawn in a
  low-resolution float field (``mask_px`` pixels along the longer side, whatever the slide's size) and
  thresholded at 0.5 after bilinear upsampling per tile, so edges are smooth at every level; the field is
  offset so that ``tissue_fraction`` of the slide is tissue;
* texture: a bank of H&E-like tiles made once (pink eosin stroma with fibres, purple nuclei, grain noise so
  that JPEG keeps about 2.5 bits per pixel at quality 85, as real scans do) from which every cell of a grid
  takes one, at an offset, both picked by a hash of the cell, the level and the seed;
* background: near-white with a little scanner noise.

The reduced levels take their texture from mosaics of the bank's tiles shrunk by the level's downsample (made
once per level): not an exact downsample of level 0, but at the same scale and with the same colours, so the
segmentation of a reduced level sees what it would on a real scan.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import cv2
import numpy as np

log = logging.getLogger(__name__)

_MASK32 = 0xFFFFFFFF


def _smooth_noise(shape: tuple[int, int], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian-blurred white noise scaled to unit standard deviation (float32)."""
    noise = cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), sigma)
    return noise / (float(noise.std()) + 1e-6)


def tissue_field(size: tuple[int, int], mask_px: int, tissue_fraction: float,
                 rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """(float32 field, level-0 px per field px): tissue where the field exceeds 0.5.

    A few irregular pieces, one with a hole, and small fragments, offset so that ``tissue_fraction`` of the
    field is above 0.5.
    """
    width, height = size
    scale = max(width, height) / mask_px if max(width, height) > mask_px else 1.0
    fw, fh = max(8, int(round(width / scale))), max(8, int(round(height / scale)))
    yy, xx = np.mgrid[0:fh, 0:fw].astype(np.float32)
    field = np.zeros((fh, fw), np.float32)

    def envelope(cx: float, cy: float, ax: float, ay: float, angle: float) -> np.ndarray:
        c, s = np.cos(angle), np.sin(angle)
        dx, dy = xx - cx, yy - cy
        u, v = (dx * c + dy * s) / ax, (-dx * s + dy * c) / ay
        return 1.0 - np.sqrt(u * u + v * v)

    n_pieces = int(rng.integers(2, 5))
    for i in range(n_pieces):
        cx = fw * (i + 0.5 + rng.uniform(-0.15, 0.15)) / n_pieces
        cy = fh * rng.uniform(0.35, 0.65)
        ax = fw * rng.uniform(0.55, 0.8) / n_pieces
        ay = fh * rng.uniform(0.28, 0.42)
        piece = envelope(cx, cy, ax, ay, rng.uniform(-0.5, 0.5))
        if i == 0:  # a hole (a vessel, a tear)
            piece = np.minimum(piece, -envelope(cx + ax * 0.2, cy, ax * 0.15, ay * 0.12, 0.3) * 1.5)
        field = np.maximum(field, piece)
    for _ in range(int(rng.integers(3, 8))):  # small fragments
        r = min(fw, fh) * rng.uniform(0.015, 0.04)
        field = np.maximum(field, envelope(rng.uniform(0, fw), rng.uniform(0, fh), r, r * rng.uniform(0.6, 1.4),
                                           rng.uniform(0, np.pi)))
    field += 0.14 * _smooth_noise((fh, fw), max(1.0, min(fw, fh) / 30), rng)
    field += 0.05 * _smooth_noise((fh, fw), max(1.0, min(fw, fh) / 150), rng)
    field = cv2.GaussianBlur(field, (0, 0), 1.0)
    field += 0.5 - float(np.quantile(field, 1.0 - tissue_fraction))
    return field.astype(np.float32), float(scale)


def texture_tile(side: int, rng: np.random.Generator) -> np.ndarray:
    """One (side, side, 3) uint8 H&E-like tile: eosin stroma with fibres, hematoxylin nuclei, grain."""
    light = np.array([246, 214, 232], np.float32)
    pink = np.array([214, 118, 170], np.float32)
    shade = _smooth_noise((side, side), side / 20, rng)
    shade = (shade - shade.min()) / (float(np.ptp(shade)) + 1e-6)
    image = light + (pink - light) * shade[..., None]
    fibres = cv2.GaussianBlur(rng.standard_normal((side, side)).astype(np.float32), (0, 0), sigmaX=9, sigmaY=1.2)
    turn = cv2.getRotationMatrix2D((side / 2, side / 2), float(rng.uniform(0, 180)), 1.0)
    fibres = cv2.warpAffine(fibres, turn, (side, side), borderMode=cv2.BORDER_REFLECT)
    image += (fibres / (float(fibres.std()) + 1e-6) * 14)[..., None]
    nuclei = np.zeros((side, side), np.uint8)
    density = rng.uniform(0.4, 1.6)  # stroma to dense tumour
    for _ in range(int(density * 90 * (side / 512) ** 2)):
        centre = (int(rng.integers(0, side)), int(rng.integers(0, side)))
        axes = (int(rng.integers(7, 16)), int(rng.integers(5, 12)))
        cv2.ellipse(nuclei, centre, axes, float(rng.uniform(0, 180)), 0, 360, 255, -1)
    weight = cv2.GaussianBlur(nuclei, (0, 0), 1.2).astype(np.float32)[..., None] / 255
    purple = np.array([96, 52, 138], np.float32) + _smooth_noise((side, side), 2, rng)[..., None] * 14
    image = image * (1 - weight) + purple * weight
    image += rng.normal(0, 7, (side, side, 1)).astype(np.float32) + rng.normal(0, 3, (side, side, 3)).astype(
        np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def _hash(*values: int) -> int:
    """A 32-bit integer hash of a few integers (deterministic across runs and processes)."""
    h = 0x811C9DC5
    for v in values:
        h = ((h ^ (v & _MASK32)) * 0x01000193) & _MASK32
        h ^= h >> 15
        h = (h * 0x2C1B3C6D) & _MASK32
        h ^= h >> 12
    return h


class SyntheticHE:
    """TCGA-like H&E content for a slide of ``size`` = (width, height) level-0 pixels.

    Call it as ``render(downsample, x, y, w, h)``: the (h, w, 3) uint8 RGB region whose top-left is (x, y) in the
    pixels of the level with that downsample. Deterministic from ``seed``; pixels beyond the slide are rendered
    too (the edge tiles of a TIFF are whole tiles).
    """

    def __init__(self, size: tuple[int, int], seed: int = 0, tissue_fraction: float = 0.42, cell: int = 256,
                 bank_size: int = 24, mask_px: int = 2048) -> None:
        self.size = (int(size[0]), int(size[1]))
        self.seed = int(seed)
        self.cell = int(cell)
        rng = np.random.default_rng(seed)
        self.field, self.field_scale = tissue_field(self.size, mask_px, tissue_fraction, rng)
        self.bank = np.stack([texture_tile(2 * self.cell, rng) for _ in range(bank_size)])
        self._banks: dict[int, np.ndarray] = {64: self.bank}
        self._lock = threading.Lock()
        base = np.array([241, 240, 243], np.float32)
        self.background = np.clip(base + rng.normal(0, 1.5, (self.cell, self.cell, 3)), 0, 255).astype(np.uint8)

    @property
    def tissue_fraction(self) -> float:
        """The share of the slide that is tissue (of the low-resolution field)."""
        return float((self.field > 0.5).mean())

    def tissue(self, downsample: float, x: int, y: int, w: int, h: int) -> np.ndarray | bool:
        """Tissue (bool (h, w)) of a region, or a plain ``True``/``False`` when the region is all one."""
        s = downsample / self.field_scale
        fh, fw = self.field.shape
        u0, u1 = x * s - 1, (x + w) * s + 1
        v0, v1 = y * s - 1, (y + h) * s + 1
        if u1 < 0 or v1 < 0 or u0 >= fw or v0 >= fh:
            return False
        inside = u0 >= 0 and v0 >= 0 and u1 < fw - 1 and v1 < fh - 1
        patch = self.field[max(0, int(v0)):min(fh, int(v1) + 2), max(0, int(u0)):min(fw, int(u1) + 2)]
        if patch.max() <= 0.5:
            return False
        if inside and patch.min() > 0.5:
            return True
        u = ((x + np.arange(w) + 0.5) * s - 0.5).astype(np.float32)
        v = ((y + np.arange(h) + 0.5) * s - 0.5).astype(np.float32)
        map_x = np.ascontiguousarray(np.broadcast_to(u[None, :], (h, w)))
        map_y = np.ascontiguousarray(np.broadcast_to(v[:, None], (h, w)))
        values = cv2.remap(self.field, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                           borderValue=0.0)
        return values > 0.5

    def texture(self, downsample: float, x: int, y: int, w: int, h: int) -> np.ndarray:
        """The tissue texture of a region (every cell of the grid takes one bank tile at an offset)."""
        c, level_key = self.cell, int(round(downsample * 64))
        if x % c == 0 and y % c == 0 and w == c and h == c:  # one whole cell: a view of the bank
            return self._cell(x // c, y // c, level_key)
        out = np.empty((h, w, 3), np.uint8)
        for cy in range(y // c, (y + h - 1) // c + 1):
            for cx in range(x // c, (x + w - 1) // c + 1):
                x0, y0 = max(x, cx * c), max(y, cy * c)
                x1, y1 = min(x + w, (cx + 1) * c), min(y + h, (cy + 1) * c)
                cell = self._cell(cx, cy, level_key)
                out[y0 - y:y1 - y, x0 - x:x1 - x] = cell[y0 - cy * c:y1 - cy * c, x0 - cx * c:x1 - cx * c]
        return out

    def bank_at(self, downsample: float) -> np.ndarray:
        """The texture bank of a level: the level-0 bank, or mosaics of its tiles shrunk by ``downsample``."""
        key = int(round(downsample * 64))
        bank = self._banks.get(key)
        if bank is not None:
            return bank
        with self._lock:
            if key in self._banks:
                return self._banks[key]
            side, k = self.bank.shape[1], len(self.bank)
            small = max(1, int(round(side / max(1.0, downsample))))
            shrunk = np.stack([cv2.resize(t, (small, small), interpolation=cv2.INTER_AREA) for t in self.bank])
            n = -(-side // small)
            picks = np.random.default_rng([self.seed, key]).integers(0, k, (k, n, n))
            mosaic = shrunk[picks].transpose(0, 1, 3, 2, 4, 5).reshape(k, n * small, n * small, 3)
            bank = np.ascontiguousarray(mosaic[:, :side, :side])
            self._banks[key] = bank
            return bank

    def _cell(self, cx: int, cy: int, level_key: int) -> np.ndarray:
        h = _hash(cx, cy, level_key, self.seed)
        c, bank = self.cell, self.bank_at(level_key / 64)
        k, ox, oy = h % len(bank), (h >> 8) % c, (h >> 18) % c
        return bank[k, oy:oy + c, ox:ox + c]

    def background_region(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Near-white background of a region (one noise tile, repeated)."""
        c = self.cell
        if x % c == 0 and y % c == 0 and w == c and h == c:
            return self.background
        return self.background[np.ix_((y + np.arange(h)) % c, (x + np.arange(w)) % c)]

    def __call__(self, downsample: float, x: int, y: int, w: int, h: int) -> np.ndarray:
        tissue = self.tissue(downsample, x, y, w, h)
        if tissue is False:
            return self.background_region(x, y, w, h)
        texture = self.texture(downsample, x, y, w, h)
        if tissue is True:
            return texture
        return np.where(tissue[..., None], texture, self.background_region(x, y, w, h))


def write_synthetic_slide(path: str | Path, size: tuple[int, int], seed: int = 0, mpp: float = 0.25,
                          app_mag: float = 40.0, quality: int = 85, tissue_fraction: float = 0.42,
                          **writer_options: object) -> Path:
    """A TCGA-like 40x pyramidal JPEG BigTIFF (Aperio layout) of ``size`` level-0 pixels at ``path``, written
    tile by tile (memory does not grow with the size). ``writer_options`` go to
    :func:`~pathmm_pipeline.preprocess.slidewriter.write_tiled_slide`."""
    from pathmm_pipeline.preprocess.slidewriter import write_tiled_slide

    render = SyntheticHE(size, seed=seed, tissue_fraction=tissue_fraction)
    log.info("%s: %d x %d px synthetic H&E, %.0f %% tissue", path, size[0], size[1], 100 * render.tissue_fraction)
    return write_tiled_slide(path, size, render, mpp=mpp, app_mag=app_mag, quality=quality,
                             **writer_options)  # type: ignore[arg-type]
