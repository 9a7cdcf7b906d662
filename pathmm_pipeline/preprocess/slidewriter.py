"""Write pyramidal tiled TIFF slides that both OpenSlide and tiffslide read (used by the demo and the tests).

``style="aperio"``: page 0 full resolution (tiled JPEG), page 1 a stripped thumbnail, pages 2.. the reduced
levels, every ImageDescription in Aperio form with ``AppMag`` and ``MPP``: OpenSlide reports vendor aperio.
``style="generic"``: a tiled pyramid with SubIFDs-free reduced pages and TIFF resolution tags: read as
generic-tiff with mpp but no objective power. ``mpp=None`` writes no mpp at all (for bad-input tests).
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import tifffile

from pathmm_pipeline.core.atomic import atomic_path


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
