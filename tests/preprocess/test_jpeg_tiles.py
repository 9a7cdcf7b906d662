"""The compressed-tile path of device decoding, on real JPEG TIFFs: RGB-photometric tiles (as Aperio writes
them), shared JPEG tables (abbreviated tile streams), and regions assembled across tile boundaries."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch

from pathmm_pipeline.preprocess.jpeg_tiles import JpegRegions, _stream, decode_regions, jpeg_level, resize_batch

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def image(he_texture):
    return np.ascontiguousarray(he_texture[:600, :700])


@pytest.mark.parametrize("photometric", ["rgb", "ycbcr"])
def test_regions_across_tile_boundaries_match_the_decoded_page(image, tmp_path, photometric):
    path = tmp_path / f"{photometric}.tiff"
    # "rgb": the JPEG streams hold RGB as Aperio writes them (TIFF photometric RGB), "ycbcr": the usual
    args = {"level": 90, **({"outcolorspace": "rgb"} if photometric == "rgb" else {})}
    tifffile.imwrite(path, image, tile=(128, 128), photometric=photometric, compression="jpeg",
                     compressionargs=args)
    level = jpeg_level(path, (image.shape[1], image.shape[0]))
    assert level is not None and level.rgb == (photometric == "rgb") and level.tile_w == 128
    page = tifffile.imread(path)  # the same tiles decoded by imagecodecs
    regions = JpegRegions(level)
    spots = [(0, 0), (100, 90), (250, 377), (700 - 200, 600 - 200)]
    items = [regions.region_tiles(x, y, 200) for x, y in spots]
    assert [it["grid"] for it in items][:2] == [(2, 2), (3, 3)]
    out = decode_regions(items, 128, 128, torch.device("cpu")).permute(0, 2, 3, 1).numpy().astype(float)
    for (x, y), got in zip(spots, out):
        assert np.abs(got - page[y:y + 200, x:x + 200]).mean() < 1.0
    assert regions.region_tiles(600, 500, 200) is None  # leaves the level: decoded on the CPU


def _as_aperio_writes(stream: bytes) -> bytes:
    """The stream without its Adobe marker and with its components numbered 1, 2, 3 instead of 'R', 'G', 'B', as
    Aperio's RGB tiles are: only the TIFF photometric then says the samples are RGB, and a decoder left alone
    takes them for YCbCr."""
    adobe = b"\xff\xee\x00\x0eAdobe"
    if stream[2:11] == adobe:
        stream = stream[:2] + stream[2 + 2 + 14:]
    out, i = bytearray(stream), 2
    while True:
        marker, length = bytes(out[i:i + 2]), int.from_bytes(out[i + 2:i + 4], "big")
        if marker in (b"\xff\xc0", b"\xff\xc1"):
            for k in range(out[i + 9]):
                out[i + 10 + 3 * k] = k + 1
        if marker == b"\xff\xda":
            for k in range(out[i + 4]):
                out[i + 5 + 2 * k] = k + 1
            return bytes(out)
        i += 2 + length


def test_rgb_tiles_without_component_names_decode_as_rgb(image, tmp_path, monkeypatch):
    path = tmp_path / "aperio.tiff"
    tifffile.imwrite(path, image, tile=(128, 128), photometric="rgb", compression="jpeg",
                     compressionargs={"level": 90, "outcolorspace": "rgb"})
    level = jpeg_level(path, (image.shape[1], image.shape[0]))
    read = JpegRegions._read
    monkeypatch.setattr(JpegRegions, "_read", lambda self, index: _as_aperio_writes(read(self, index)))
    page = tifffile.imread(path)
    for rgb, close in ((True, True), (False, False)):  # without the Adobe marker the colours are wrong
        regions = JpegRegions(level.__class__(**{**level.__dict__, "rgb": rgb}))
        got = decode_regions([regions.region_tiles(10, 20, 200)], 128, 128, torch.device("cpu"))[0]
        error = np.abs(got.permute(1, 2, 0).numpy().astype(float) - page[20:220, 10:210]).mean()
        assert (error < 1.0) == close, (rgb, error)


def _split_tables(stream: bytes) -> tuple[bytes, bytes]:
    """A full JPEG as a tables-only stream (SOI, DQT/DHT, EOI) and the abbreviated stream without them."""
    tables, rest, i = [b"\xff\xd8"], [b"\xff\xd8"], 2
    while True:
        marker = stream[i:i + 2]
        if marker == b"\xff\xda":  # start of scan: the entropy-coded data follows to the end
            rest.append(stream[i:])
            break
        length = int.from_bytes(stream[i + 2:i + 4], "big")
        (tables if marker in (b"\xff\xdb", b"\xff\xc4") else rest).append(stream[i:i + 2 + length])
        i += 2 + length
    return b"".join(tables) + b"\xff\xd9", b"".join(rest)


def test_shared_tables_are_spliced_into_abbreviated_tile_streams(image):
    from torchvision.io import decode_jpeg, encode_jpeg

    full = bytes(encode_jpeg(torch.from_numpy(image[:128, :128]).permute(2, 0, 1).contiguous(), quality=90).numpy())
    tables, abbreviated = _split_tables(full)
    assert b"\xff\xdb" not in abbreviated[:200] and len(tables) > 100
    spliced = _stream(abbreviated, tables, rgb=False)
    a = decode_jpeg(torch.frombuffer(bytearray(full), dtype=torch.uint8))
    b = decode_jpeg(torch.frombuffer(bytearray(spliced), dtype=torch.uint8))
    assert torch.equal(a, b)


def test_resize_follows_opencv():
    import cv2

    rng = np.random.default_rng(0)
    img = cv2.GaussianBlur(rng.integers(0, 255, (256, 256, 3)).astype(np.uint8), (5, 5), 1.5)
    batch = torch.from_numpy(img).permute(2, 0, 1)[None].contiguous()
    for size, interpolation, cv in ((224, "area", cv2.INTER_AREA), (128, "area", cv2.INTER_AREA),
                                    (300, "bilinear", cv2.INTER_LINEAR)):
        ours = resize_batch(batch, size, interpolation)[0].permute(1, 2, 0).numpy().astype(float)
        assert np.abs(ours - cv2.resize(img, (size, size), interpolation=cv)).mean() < 0.6, (size, interpolation)
