"""Tiles decoded where the encoder runs: the compressed JPEG tiles of a pyramid level are read with tifffile (no
decoding on the CPU), decoded in batches by ``torchvision.io.decode_jpeg`` on the extraction device (nvjpeg on
CUDA, libjpeg-turbo on the CPU), assembled into each read region, and resized there.

Used by :func:`pathmm_pipeline.preprocess.features.extract_slides` under ``features.decode: device`` (or
``auto`` on CUDA). A level that is not tiled 8-bit RGB/YCbCr JPEG, or a read that leaves the level, is decoded on
the CPU as before (:func:`jpeg_level` returns None; :meth:`JpegRegions.region_tiles` returns None).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

#: TIFF compression and photometric codes this path decodes (JPEG; RGB or YCbCr)
_JPEG, _RGB, _YCBCR = 7, 2, 6


@dataclass(frozen=True)
class JpegLevel:
    """Where one pyramid level's compressed tiles lie in the file."""

    path: str
    tile_w: int
    tile_h: int
    width: int
    height: int
    tiles_across: int
    offsets: tuple[int, ...]
    byte_counts: tuple[int, ...]
    tables: bytes | None
    #: the level's JPEG streams hold RGB, not YCbCr (Aperio): told to the decoder by an Adobe marker
    rgb: bool


def jpeg_level(path: str | os.PathLike[str], dimensions: tuple[int, int]) -> JpegLevel | None:
    """The JPEG-tiled page of ``path`` with ``dimensions`` (width, height), or None when no such page exists
    or it cannot be decoded this way (not tiled, not JPEG, not 8-bit 3-sample contiguous RGB/YCbCr)."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            for page in tif.pages:
                if (page.imagewidth, page.imagelength) != tuple(dimensions):
                    continue
                if (not page.is_tiled or page.compression != _JPEG or page.photometric not in (_RGB, _YCBCR)
                        or page.samplesperpixel != 3 or page.bitspersample != 8 or page.planarconfig != 1):
                    return None
                tables = page.jpegtables
                return JpegLevel(str(path), int(page.tilewidth), int(page.tilelength), int(page.imagewidth),
                                 int(page.imagelength), -(-int(page.imagewidth) // int(page.tilewidth)),
                                 tuple(int(o) for o in page.dataoffsets), tuple(int(c) for c in page.databytecounts),
                                 bytes(tables) if tables else None, page.photometric == _RGB)
    except (tifffile.TiffFileError, OSError, ValueError) as exc:
        log.info("%s: no compressed-tile path (%s), decoding on the CPU", path, exc)
    return None


#: an Adobe APP14 segment with transform 0: the decoder keeps the components as RGB
_ADOBE_RGB = bytes.fromhex("ffee000e41646f626500640000000000")


def _stream(tile: bytes, tables: bytes | None, rgb: bool) -> bytes:
    """A complete JPEG stream for one tile: the level's shared tables spliced in, and the RGB marker."""
    body = tile[2:]  # after SOI
    if tables:
        body = tables[2:-2] + body  # the tables without their SOI and EOI
    marked = b"\xff\xee\x00\x0eAdobe" in tile[:512]  # the encoder already said how the components are stored
    return b"\xff\xd8" + (_ADOBE_RGB if rgb and not marked else b"") + body


class JpegRegions:
    """Reads the compressed tiles that cover read regions of one level (in a worker) and decodes and assembles
    them (on the device)."""

    def __init__(self, level: JpegLevel) -> None:
        self.level = level
        self._file: Any = None

    def _read(self, index: int) -> bytes:
        if self._file is None:
            self._file = open(self.level.path, "rb")  # noqa: SIM115 - one handle per worker, kept open
        self._file.seek(self.level.offsets[index])
        return self._file.read(self.level.byte_counts[index])

    def region_tiles(self, lx: int, ly: int, size: int) -> dict[str, Any] | None:
        """The compressed tiles under the ``size`` x ``size`` region at level pixel (lx, ly), with where the
        region starts in their mosaic; None when the region leaves the level (decoded on the CPU)."""
        lv = self.level
        if lx < 0 or ly < 0 or lx + size > lv.width or ly + size > lv.height:
            return None
        tx0, ty0 = lx // lv.tile_w, ly // lv.tile_h
        tx1, ty1 = (lx + size - 1) // lv.tile_w, (ly + size - 1) // lv.tile_h
        streams = [_stream(self._read(ty * lv.tiles_across + tx), lv.tables, lv.rgb)
                   for ty in range(ty0, ty1 + 1) for tx in range(tx0, tx1 + 1)]
        return {"streams": streams, "grid": (ty1 - ty0 + 1, tx1 - tx0 + 1),
                "offset": (ly - ty0 * lv.tile_h, lx - tx0 * lv.tile_w), "size": size}

    def __getstate__(self) -> dict[str, Any]:  # never pickle an open file into a worker
        return {**self.__dict__, "_file": None}


def decode_regions(items: list[dict[str, Any]], tile_h: int, tile_w: int, device: torch.device) -> torch.Tensor:
    """uint8 (N, 3, size, size) regions on ``device`` from :meth:`JpegRegions.region_tiles` items: every
    compressed tile decoded in one batch call, pasted into its region's mosaic and cropped."""
    from torchvision.io import ImageReadMode, decode_jpeg

    data = [torch.frombuffer(bytearray(s), dtype=torch.uint8) for item in items for s in item["streams"]]
    decoded = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    size = items[0]["size"]
    out = torch.empty((len(items), 3, size, size), dtype=torch.uint8, device=device)
    k = 0
    for i, item in enumerate(items):
        rows, cols = item["grid"]
        mosaic = torch.empty((3, rows * tile_h, cols * tile_w), dtype=torch.uint8, device=device)
        for r in range(rows):
            for c in range(cols):
                tile = decoded[k]
                k += 1
                mosaic[:, r * tile_h:r * tile_h + tile.shape[1], c * tile_w:c * tile_w + tile.shape[2]] = tile
        oy, ox = item["offset"]
        out[i] = mosaic[:, oy:oy + size, ox:ox + size]
    return out


def resize_batch(batch: torch.Tensor, size: int, interpolation: str) -> torch.Tensor:
    """uint8 (N, 3, S, S) -> uint8 (N, 3, size, size) on the batch's device, as OpenCV resizes on the CPU path:
    INTER_AREA shrinking by a whole factor is exactly box averaging; by another factor antialiased bilinear is
    its closest torch form (mean difference 0.26 grey levels on a blurred noise image, box averaging 2.2);
    otherwise ``interpolation`` (bilinear / bicubic)."""
    source = batch.shape[-1]
    if source == size:
        return batch
    x = batch.float()
    if source > size and interpolation == "area" and source % size == 0:
        x = F.interpolate(x, size=(size, size), mode="area")
    else:
        mode = "bicubic" if interpolation == "bicubic" else "bilinear"
        x = F.interpolate(x, size=(size, size), mode=mode, antialias=source > size, align_corners=False)
    return x.round_().clamp_(0, 255).to(torch.uint8)


def region_position(x: int, y: int, downsample: float) -> tuple[int, int]:
    """The level pixel of level-0 position (x, y), as :meth:`SlideReader.read_region` computes it."""
    return int(np.floor(x / downsample)), int(np.floor(y / downsample))
