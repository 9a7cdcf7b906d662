"""Compose one demo whole-slide image: glass, irregular tissue pieces with lumen-like holes filled with real
H&E texture, and optional pen and air-bubble artefacts; write it as a pyramidal TIFF with its ground-truth
tissue mask. Everything is drawn from the slide's own seed, so a slide is reproduced pixel for pixel.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from pathmm_pipeline.core.atomic import write_bytes_atomic
from pathmm_pipeline.demo.tissue import TexturePools, fill_texture
from pathmm_pipeline.preprocess.slidewriter import write_pyramidal_tiff

BASE_MPP = 0.5  # composition resolution (um/px)
TRUTH_MPP = 8.0  # ground-truth mask resolution (um/px)
TRUTH_DOWNSAMPLE = int(TRUTH_MPP / BASE_MPP)
PEN_COLOURS = {"blue": (45, 70, 170), "green": (40, 135, 80)}


@dataclass(frozen=True)
class SlideSpec:
    """What to draw: size at 0.5 um/px, planted cellular fraction (None: glass only) and how to write it."""

    slide_id: str
    seed: int
    width: int
    height: int
    cellular_fraction: float | None
    mpp: float = BASE_MPP
    style: str = "aperio"
    pen: str | None = None  # "blue", "green" or None
    bubble: bool = False

    @property
    def suffix(self) -> str:
        return ".svs" if self.style == "aperio" else ".tiff"


@dataclass(frozen=True)
class SlideResult:
    """A written slide: its files and what it holds."""

    slide_id: str
    path: Path
    truth_path: Path
    width: int  # level-0 pixels as written
    height: int
    mpp: float
    style: str
    levels: int
    tissue_fraction: float  # of the slide area, from the truth mask
    cellular_fraction: float | None  # realised cellular share of the tissue area


def _blob(rng: np.random.Generator, aspect: float, angle: float, roughness: float = 0.3) -> np.ndarray:
    """Unit-size closed outline (n, 2) float of a smooth irregular blob: a radius modulated by random
    harmonics, stretched by ``aspect`` and turned by ``angle``."""
    theta = np.linspace(0, 2 * np.pi, 240, endpoint=False)
    r = np.ones_like(theta)
    for k in range(2, 8):
        r += rng.uniform(0, roughness) / k * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    x, y = r * np.cos(theta), aspect * r * np.sin(theta)
    ca, sa = np.cos(angle), np.sin(angle)
    return np.stack([ca * x - sa * y, sa * x + ca * y], axis=1)


def _place(unit: np.ndarray, centre: tuple[float, float], scale: float) -> np.ndarray:
    return np.round(unit * scale + np.asarray(centre)).astype(np.int32)


def tissue_layout(rng: np.random.Generator, width: int, height: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Full-resolution tissue mask (uint8 0/1: 1-3 pieces minus lumen-like holes) and the piece outlines.

    The slide is cut into one band per piece along its long side; each piece is a smooth blob placed in
    its band, as large as the target tissue area asks but never touching the band's edges."""
    mask = np.zeros((height, width), np.uint8)
    n = int(rng.integers(1, 4))
    area = rng.uniform(0.3, 0.45) * width * height
    shares = rng.dirichlet(np.full(n, 4.0))
    horizontal = width >= height
    span, other = (width, height) if horizontal else (height, width)
    cuts = np.concatenate([[0.0], np.cumsum(rng.dirichlet(np.full(n, 6.0)))]) * span
    margin = 0.025 * min(width, height)
    outlines: list[np.ndarray] = []
    for i in range(n):
        along = (cuts[i] + cuts[i + 1]) / 2 + rng.uniform(-0.04, 0.04) * (cuts[i + 1] - cuts[i])
        across = rng.uniform(0.45, 0.55) * other
        aspect = rng.uniform(0.55, 1.0)
        # long axis roughly along the longer side of the band, so the piece can fill it
        band_wide = (cuts[i + 1] - cuts[i]) >= other
        turn = 0.0 if band_wide == horizontal else np.pi / 2
        unit = _blob(rng, aspect, turn + rng.uniform(-0.35, 0.35))
        reach_along = min(along - cuts[i], cuts[i + 1] - along) - margin
        reach_across = min(across, other - across) - margin
        ext = np.abs(unit).max(axis=0)  # half-extent in x, y of the unit blob
        ext_along, ext_across = (ext[0], ext[1]) if horizontal else (ext[1], ext[0])
        polygon_area = cv2.contourArea(unit.astype(np.float32))
        scale = min(np.sqrt(area * shares[i] / polygon_area), reach_along / ext_along, reach_across / ext_across)
        centre = (along, across) if horizontal else (across, along)
        outline = _place(unit, centre, scale)
        cv2.fillPoly(mask, [outline], 1)
        outlines.append(outline)
        for _ in range(int(rng.integers(0, 4))):
            phi, dist = rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.45) * scale * aspect
            hole_centre = (centre[0] + dist * np.cos(phi), centre[1] + dist * np.sin(phi))
            hole = _blob(rng, rng.uniform(0.5, 1.0), rng.uniform(0, np.pi), roughness=0.2)
            cv2.fillPoly(mask, [_place(hole, hole_centre, rng.uniform(0.05, 0.12) * scale)], 0)
    return mask, outlines


def glass(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Near-white glass background: a slight colour tint, gentle uneven illumination and fine noise."""
    tint = np.array([241.0, 239.0, 243.0]) + rng.normal(0, 1.5, 3)
    coarse = (tint + rng.normal(0, 1.5, (6, 6, 1))).astype(np.float32)
    low = cv2.resize(coarse, (max(1, width // 16), max(1, height // 16)), interpolation=cv2.INTER_CUBIC)
    bg = cv2.resize(np.clip(low - 3, 0, 255).astype(np.uint8), (width, height), interpolation=cv2.INTER_LINEAR)
    noise = np.tile(rng.integers(0, 7, (256, 256, 3), dtype=np.uint8), (1, -(-width // 256), 1))[:, :width]
    for y in range(0, height, 256):
        band = bg[y:y + 256]
        cv2.add(band, noise[: band.shape[0]], dst=band)
    return bg


def _stain_jitter(rng: np.random.Generator) -> np.ndarray:
    """A per-channel lookup table scaling optical density by about 1 +- 4 % (slide-to-slide stain variation)."""
    scale = rng.normal(1.0, 0.04, 3)
    levels = (np.arange(256, dtype=np.float64)[:, None] + 1) / 256
    lut = 256 * levels ** scale[None, :] - 1
    return np.clip(np.round(lut), 0, 255).astype(np.uint8).reshape(256, 1, 3)


def _composite(canvas: np.ndarray, texture: np.ndarray, alpha: np.ndarray) -> None:
    """canvas = canvas * (1 - alpha) + texture * alpha in place (alpha uint8 0-255): copy where opaque,
    blend only the soft edge pixels."""
    np.copyto(canvas, texture, where=(alpha == 255)[..., None])
    ys, xs = np.nonzero((alpha > 0) & (alpha < 255))
    a = alpha[ys, xs].astype(np.float32)[:, None] / 255
    canvas[ys, xs] = (texture[ys, xs] * a + canvas[ys, xs] * (1 - a) + 0.5).astype(np.uint8)


def _pen(rng: np.random.Generator, canvas: np.ndarray, colour: tuple[int, int, int],
         outlines: list[np.ndarray]) -> None:
    """A translucent marker stroke: an arc around a tissue piece, or a short scribble on the glass."""
    h, w = canvas.shape[:2]
    scale = min(h, w)
    if outlines and rng.random() < 0.6:
        piece = outlines[int(rng.integers(len(outlines)))]
        (cx, cy), (bw, bh), ang = cv2.minAreaRect(piece)
        start = rng.uniform(0, 360)
        pts = np.asarray(cv2.ellipse2Poly((int(cx), int(cy)), (int(bw * 0.62), int(bh * 0.62)), int(ang),
                                          int(start), int(start + rng.uniform(70, 160)), 4), np.int32)
    else:  # a wandering stroke, moved wholly onto the slide
        heading = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0, 0.15, 40))
        step = rng.uniform(0.25, 0.5) * scale / 40
        path = np.cumsum(np.stack([np.cos(heading), np.sin(heading)], axis=1) * step, axis=0)
        lo, hi = path.min(axis=0), path.max(axis=0)
        room = np.array([w, h]) - (hi - lo) - 0.1 * scale
        pts = np.round(path - lo + 0.05 * scale + rng.uniform(0, 1, 2) * np.maximum(room, 0)).astype(np.int32)
    thickness = max(4, int(rng.uniform(0.006, 0.012) * scale))
    pad = thickness + 4
    x0, y0 = np.maximum(pts.min(axis=0) - pad, 0)
    x1, y1 = np.minimum(pts.max(axis=0) + pad, [w, h])
    if x1 <= x0 or y1 <= y0:
        return
    stroke = np.zeros((y1 - y0, x1 - x0), np.uint8)
    cv2.polylines(stroke, [(pts - [x0, y0]).astype(np.int32).reshape(-1, 1, 2)], False, 255, thickness,
                  cv2.LINE_AA)
    stroke = cv2.GaussianBlur(stroke, (0, 0), 1.0)
    ink = np.asarray(colour, np.float32) / 255.0
    a = stroke.astype(np.float32)[..., None] / 255.0 * rng.uniform(0.75, 0.9)
    region = canvas[y0:y1, x0:x1]
    region[:] = np.clip(region * (1 - a * (1 - ink)), 0, 255).astype(np.uint8)


def _bubble(rng: np.random.Generator, canvas: np.ndarray) -> None:
    """An air bubble under the cover slip: a dark circular rim with a faint bright halo inside."""
    h, w = canvas.shape[:2]
    radius = int(rng.uniform(0.04, 0.1) * min(h, w))
    rim_width = max(3, radius // 40)
    cx, cy = int(rng.uniform(radius, w - radius)), int(rng.uniform(radius, h - radius))
    y0, y1 = max(0, cy - radius - rim_width), min(h, cy + radius + rim_width + 1)
    x0, x1 = max(0, cx - radius - rim_width), min(w, cx + radius + rim_width + 1)
    rim = np.zeros((y1 - y0, x1 - x0), np.uint8)
    halo = np.zeros_like(rim)
    cv2.circle(rim, (cx - x0, cy - y0), radius, 255, rim_width, cv2.LINE_AA)
    cv2.circle(halo, (cx - x0, cy - y0), max(1, radius - 2 * rim_width), 255, rim_width, cv2.LINE_AA)
    region = canvas[y0:y1, x0:x1].astype(np.float32)
    region *= 1 - 0.45 * rim.astype(np.float32)[..., None] / 255
    region += 10 * halo.astype(np.float32)[..., None] / 255
    canvas[y0:y1, x0:x1] = np.clip(region, 0, 255).astype(np.uint8)


def compose_slide(spec: SlideSpec, pools: TexturePools) -> tuple[np.ndarray, np.ndarray, float | None]:
    """RGB image at 0.5 um/px, its 0/1 tissue mask, and the realised cellular share (None without tissue)."""
    rng = np.random.default_rng(spec.seed)
    canvas = glass(rng, spec.width, spec.height)
    outlines: list[np.ndarray] = []
    realised: float | None = None
    if spec.cellular_fraction is None:
        mask = np.zeros((spec.height, spec.width), np.uint8)
    else:
        mask, outlines = tissue_layout(rng, spec.width, spec.height)
        bx, by, bw, bh = cv2.boundingRect(mask)
        y0, y1 = max(0, by - 8), min(spec.height, by + bh + 8)
        x0, x1 = max(0, bx - 8), min(spec.width, bx + bw + 8)
        texture, realised = fill_texture(mask[y0:y1, x0:x1], spec.cellular_fraction, pools, rng)
        texture = cv2.LUT(texture, _stain_jitter(rng))
        alpha = cv2.GaussianBlur(mask[y0:y1, x0:x1] * np.uint8(255), (0, 0), 1.5)
        _composite(canvas[y0:y1, x0:x1], texture, alpha)
    if spec.pen is not None:
        _pen(rng, canvas, PEN_COLOURS[spec.pen], outlines)
    if spec.bubble:
        _bubble(rng, canvas)
    return canvas, mask, realised


def truth_mask(mask: np.ndarray) -> np.ndarray:
    """The tissue mask at 8 um/px (0/255): area-downsampled from 0.5 um/px, tissue where >= half covered."""
    h, w = mask.shape
    small = cv2.resize(mask.astype(np.float32), (w // TRUTH_DOWNSAMPLE, h // TRUTH_DOWNSAMPLE),
                       interpolation=cv2.INTER_AREA)
    return np.where(small >= 0.5, 255, 0).astype(np.uint8)


def write_slide(spec: SlideSpec, pools: TexturePools, slides_dir: Path, truth_dir: Path) -> SlideResult:
    """Compose ``spec`` and write ``slides_dir/<slide_id>.svs|.tiff`` and ``truth_dir/<slide_id>_tissue.png``."""
    image, mask, realised = compose_slide(spec, pools)
    truth = truth_mask(mask)
    ok, png = cv2.imencode(".png", truth)
    if not ok:
        raise RuntimeError(f"cannot encode the truth mask of {spec.slide_id}")
    truth_path = write_bytes_atomic(truth_dir / f"{spec.slide_id}_tissue.png", png.tobytes())
    del mask
    factor = BASE_MPP / spec.mpp
    if factor != 1:
        image = cv2.resize(image, (int(spec.width * factor), int(spec.height * factor)),
                           interpolation=cv2.INTER_CUBIC)
    app_mag = 20.0 * factor
    path = write_pyramidal_tiff(slides_dir / f"{spec.slide_id}{spec.suffix}", image, mpp=spec.mpp,
                                app_mag=app_mag, style=spec.style)
    height, width = image.shape[:2]
    levels = 1
    while levels < 4 and min(height, width) // 4 ** levels >= 64:
        levels += 1
    return SlideResult(slide_id=spec.slide_id, path=path, truth_path=truth_path, width=width, height=height,
                       mpp=spec.mpp, style=spec.style, levels=levels, tissue_fraction=float((truth > 0).mean()),
                       cellular_fraction=realised)
