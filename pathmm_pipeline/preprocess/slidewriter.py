"""Write pyramidal tiled TIFF slides that both OpenSlide and tiffslide read (used by the demo and the tests).

``style="aperio"``: page 0 full resolution (tiled JPEG), page 1 a stripped thumbnail, pages 2.. the reduced
levels, every ImageDescription in Aperio form with ``AppMag`` and ``MPP``: OpenSlide reports vendor aperio.
``style="generic"``: a tiled pyramid with SubIFDs-free reduced pages and TIFF resolution tags: read as
generic-tiff with mpp but no objective power. ``mpp=None`` writes no mpp at all (for bad-input tests).

:func:`write_tiled_slide` writes the same Aperio layout as a BigTIFF of any size, tile by tile, from a callable
that renders any region of any level: no level is ever held in memory (the real-size benchmark's 100,000 x
80,000 px slides; content from :mod:`pathmm_pipeline.preprocess.synthetic`).
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import tifffile
from tqdm import tqdm

from pathmm_pipeline.core.atomic import atomic_path

log = logging.getLogger(__name__)

#: ``render(downsample, x, y, w, h)`` -> (h, w, 3) uint8 RGB: the region of the level with that downsample whose
#: top-left is (x, y) in that level's pixels
TileRenderer = Callable[[float, int, int, int, int], np.ndarray]


def _pyramid(image: np.ndarray, levels: int, factor: int) -> list[np.ndarray]:
    out = [image]
    for _ in range(1, levels):
        prev = out[-1]
        h, w = prev.shape[:2]
        if min(h, w) // factor < 64:
            break
        out.append(cv2.resize(prev, (w // factor, h // factor), interpolation=cv2.INTER_AREA))
    return out


def write_pyramidal_tiff(
    path: str | os.PathLike[str],
    image: np.ndarray,
    mpp: float | None = 0.5,
    app_mag: float | None = 20.0,
    levels: int = 4,
    factor: int = 4,
    tile: int = 256,
    quality: int = 90,
    style: str = "aperio",
    compression: str = "jpeg",
) -> Path:
    """Write RGB ``image`` (h, w, 3 uint8) as a pyramidal tiled TIFF at ``path`` (atomically).

    ``compression="deflate"`` is lossless, so every decoder returns the same pixels (used to test that both
    backends give identical features).
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError("image must be an (h, w, 3) uint8 RGB array")
    if style not in ("aperio", "generic"):
        raise ValueError(f"unknown TIFF style {style!r}")
    if compression not in ("jpeg", "deflate"):
        raise ValueError(f"unknown compression {compression!r}")
    pyramid = _pyramid(image, levels, factor)
    codec = {"compression": compression, "compressionargs": {"level": quality if compression == "jpeg" else 6}}
    h, w = image.shape[:2]
    with atomic_path(path, use_scratch=False) as tmp:
        with tifffile.TiffWriter(tmp, bigtiff=False) as tif:
            if style == "aperio":
                fields = [] if app_mag is None else [f"AppMag = {app_mag:g}"]
                if mpp is not None:
                    fields.append(f"MPP = {mpp:.4f}")
                base = (f"Aperio Image Library v12.0.0\n{w}x{h} [0,0 {w}x{h}] ({tile}x{tile}) "
                        f"{'JPEG/RGB Q=' + str(quality) if compression == 'jpeg' else 'Deflate'}")
                desc = "|".join([base] + fields)
                tif.write(pyramid[0], tile=(tile, tile), **codec,
                          photometric="rgb", description=desc, metadata=None, subfiletype=0)
                th_scale = min(1.0, 768 / max(h, w))
                thumb = cv2.resize(image, (max(1, int(w * th_scale)), max(1, int(h * th_scale))),
                                   interpolation=cv2.INTER_AREA)
                tif.write(thumb, **codec, photometric="rgb",
                          description=desc, metadata=None, subfiletype=0, rowsperstrip=16)
                for level_img in pyramid[1:]:
                    lh, lw = level_img.shape[:2]
                    tif.write(level_img, tile=(tile, tile), **codec,
                              photometric="rgb", description=desc, metadata=None, subfiletype=0)
            else:
                res_kw = {}
                if mpp is not None:
                    res_kw = {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"}
                tif.write(pyramid[0], tile=(tile, tile), **codec,
                          photometric="rgb", metadata=None, subfiletype=0, **res_kw)
                for i, level_img in enumerate(pyramid[1:], start=1):
                    level_res = {}
                    if mpp is not None:
                        d = factor ** i
                        level_res = {"resolution": (1e4 / (mpp * d), 1e4 / (mpp * d)),
                                     "resolutionunit": "CENTIMETER"}
                    tif.write(level_img, tile=(tile, tile), **codec,
                              photometric="rgb", metadata=None, subfiletype=1, **level_res)
    return Path(path)


def pyramid_sizes(size: tuple[int, int], factor: int = 4, min_level_px: int = 512) -> list[tuple[int, int]]:
    """(width, height) of each level: level 0 is ``size``, each next one ``factor`` times smaller (floored),
    down to the last whose shorter side is at least ``min_level_px``."""
    width, height = int(size[0]), int(size[1])
    sizes = [(width, height)]
    while min(sizes[-1]) // factor >= min_level_px:
        d = factor ** len(sizes)
        sizes.append((width // d, height // d))
    return sizes


def _jpeg_tile(tile: np.ndarray, quality: int) -> bytes:
    """A tile encoded exactly as tifffile encodes JPEG RGB tiles (YCbCr, 2x2 chroma subsampling)."""
    import imagecodecs

    return imagecodecs.jpeg_encode(np.ascontiguousarray(tile), level=quality, subsampling=(2, 2), colorspace="RGB",
                                   outcolorspace="YCBCR")


def _encoded_tiles(render: TileRenderer, downsample: float, size: tuple[int, int], tile: int, quality: int,
                   pool: ThreadPoolExecutor, ahead: int, bar: tqdm) -> Iterator[bytes]:
    """The level's JPEG tiles in row-major order, rendered and encoded by ``pool`` at most ``ahead`` in flight."""
    width, height = size

    def make(x: int, y: int) -> bytes:
        region = render(downsample, x, y, tile, tile)
        if region.shape != (tile, tile, 3) or region.dtype != np.uint8:
            raise ValueError(f"render returned {region.shape} {region.dtype} for a {tile} px tile, "
                             f"expected ({tile}, {tile}, 3) uint8")
        return _jpeg_tile(region, quality)

    positions = ((x, y) for y in range(0, height, tile) for x in range(0, width, tile))
    pending: deque[Future[bytes]] = deque()
    for x, y in positions:
        pending.append(pool.submit(make, x, y))
        if len(pending) >= ahead:
            yield pending.popleft().result()
            bar.update(1)
    while pending:
        yield pending.popleft().result()
        bar.update(1)


def write_tiled_slide(path: str | os.PathLike[str], size: tuple[int, int], render: TileRenderer,
                      mpp: float = 0.25, app_mag: float = 40.0, factor: int = 4, min_level_px: int = 512,
                      tile: int = 256, quality: int = 85, thumbnail_px: int = 768, workers: int | None = None,
                      progress: bool = True) -> Path:
    """Write a pyramidal tiled JPEG BigTIFF in the Aperio layout (OpenSlide: vendor aperio, ``AppMag``, ``MPP``)
    of ``size`` = (width, height) level-0 pixels at ``path``, atomically, tile by tile from ``render``.

    Page 0 is level 0, page 1 a stripped thumbnail of at most ``thumbnail_px``, pages 2.. the reduced levels of
    :func:`pyramid_sizes`. Tiles are rendered and encoded by ``workers`` threads (default: the CPUs), a few
    ahead of the writer: memory holds a few tiles, whatever the size of the slide.
    """
    width, height = int(size[0]), int(size[1])
    if width < 1 or height < 1:
        raise ValueError(f"size must be positive, got {size}")
    if tile % 16:
        raise ValueError(f"tile must be a multiple of 16 (JPEG 2x2 subsampling), got {tile}")
    levels = pyramid_sizes((width, height), factor, min_level_px)
    fields = [f"AppMag = {app_mag:g}", f"MPP = {mpp:.4f}"]
    desc = "|".join([f"Aperio Image Library v12.0.0\n{width}x{height} [0,0 {width}x{height}] ({tile}x{tile}) "
                     f"JPEG/RGB Q={quality}"] + fields)
    workers = max(1, workers or os.cpu_count() or 1)
    n_tiles = sum(-(-w // tile) * -(-h // tile) for w, h in levels)
    with atomic_path(path, use_scratch=False) as tmp, \
            ThreadPoolExecutor(max_workers=workers, thread_name_prefix="slidewriter") as pool, \
            tqdm(total=n_tiles, unit="tile", desc=f"writing {Path(path).name}", disable=not progress,
                 mininterval=2.0) as bar, \
            tifffile.TiffWriter(tmp, bigtiff=True) as tif:
        for index, (lw, lh) in enumerate(levels):
            downsample = float(factor ** index)
            log.info("%s: level %d, %d x %d px", path, index, lw, lh)
            tiles = _encoded_tiles(render, downsample, (lw, lh), tile, quality, pool, 4 * workers, bar)
            tif.write(tiles, shape=(lh, lw, 3), dtype=np.uint8, tile=(tile, tile), compression="jpeg",
                      photometric="rgb", description=desc, metadata=None, subfiletype=0)
            if index == 0:
                scale = min(1.0, thumbnail_px / max(width, height))
                tw, th = max(1, int(width * scale)), max(1, int(height * scale))
                thumb = np.ascontiguousarray(render(width / tw, 0, 0, tw, th))
                tif.write(thumb, compression="jpeg", compressionargs={"level": quality}, photometric="rgb",
                          description=desc, metadata=None, subfiletype=0, rowsperstrip=16)
    return Path(path)
