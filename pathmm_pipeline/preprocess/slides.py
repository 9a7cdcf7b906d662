"""One small interface over OpenSlide and tiffslide: open a slide, know its mpp, read regions at any level.

The microns per pixel come from the file (``openslide.mpp-x``/``tiffslide.mpp-x``, the Aperio ``MPP`` field,
TIFF resolution tags) or from the sample sheet's override. A slide with neither fails: magnification is never
guessed. A slide larger than the configured caps (:class:`SlideLimits`, ``slide:`` in config.yaml) fails from its
header, before any pixel is decoded.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pathmm_pipeline.core.errors import ImplausibleMppError, MissingMppError, SlideReadError, SlideTooLargeError
from pathmm_pipeline.core.settings import SettingsMixin

log = logging.getLogger(__name__)

BACKENDS = ("openslide", "tiffslide")


@dataclass(frozen=True)
class SlideInfo:
    """What the pipeline needs to know about a slide's geometry."""

    path: str
    backend: str
    dimensions: tuple[int, int]  # level-0 (width, height)
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    mpp: float  # level-0 microns per pixel (x)
    mpp_source: str  # "metadata:<key>" or "override"
    objective_power: float | None
    vendor: str | None

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    def level_mpp(self, level: int) -> float:
        """Microns per pixel at ``level``."""
        return self.mpp * self.level_downsamples[level]


@dataclass(frozen=True)
class SlideLimits(SettingsMixin):
    """Caps on one slide (``slide:`` in config.yaml, less ``backend``/``fallback``), checked from the header and
    the tile counts before any pixel is decoded: a corrupt header or a mis-set tiling fails in seconds with a
    clear message instead of exhausting a node's memory or running for days."""

    settings_name = "slide"

    #: longest side of level 0, in pixels
    max_side_px: int = 300_000
    #: level-0 width x height, in millions of pixels
    max_megapixels: int = 40_000
    #: tiles of one slide (tiling counts those in the tissue; extraction refuses a larger tile store)
    max_tiles: int = 1_000_000
    #: the level-0 microns per pixel a slide scanner can give (a 100x oil objective ~0.1, a 1.25x scan ~8)
    min_mpp: float = 0.08
    max_mpp: float = 20.0
    #: largest ratio of mpp-y to mpp-x (or back) when the file gives both
    max_mpp_xy_ratio: float = 1.1

    def check_resolution(self, path: object, info: SlideInfo, properties: dict[str, Any]) -> None:
        """Raise :class:`ImplausibleMppError` when the slide's mpp (``info``; ``properties``: the backend's
        metadata) cannot be a scanner's: a screen / print default dpi in the TIFF tags with no scanner metadata,
        outside ``min_mpp``-``max_mpp``, or x and y further apart than ``max_mpp_xy_ratio``."""
        override = ("set this slide's true mpp in the sample sheet's 'mpp' column (the scanner's value), or widen "
                    "slide.min_mpp / slide.max_mpp in config.yaml if it really is one")
        where = f"mpp {info.mpp:.4g} um/px (from {info.mpp_source})"
        dpi = _tiff_dpi(properties)
        scanner = any(k.startswith(SCANNER_PREFIXES) for k in properties)
        if info.mpp_source != "override" and dpi is not None and not scanner and round(dpi) in DEFAULT_DPI:
            raise ImplausibleMppError(path, f"{where}: the TIFF resolution is {dpi:g} dpi, a screen / print "
                                      f"default, and the file has no scanner metadata", override)
        if not self.min_mpp <= info.mpp <= self.max_mpp:
            raise ImplausibleMppError(path, f"{where}: outside slide.min_mpp-max_mpp = {self.min_mpp:g}-"
                                      f"{self.max_mpp:g} um/px, the range of slide scanners", override)
        mpp_y = info.mpp if info.mpp_source == "override" else _mpp_y(properties)
        if mpp_y is not None and max(mpp_y / info.mpp, info.mpp / mpp_y) > self.max_mpp_xy_ratio:
            raise ImplausibleMppError(path, f"{where} but mpp-y {mpp_y:.4g}: pixels that are not square (ratio above "
                                      f"slide.max_mpp_xy_ratio = {self.max_mpp_xy_ratio:g})",
                                      "check the scanner's export; " + override)

    def check_dimensions(self, path: object, dimensions: tuple[int, int]) -> None:
        """Raise :class:`SlideTooLargeError` when level-0 ``dimensions`` (width, height) exceed a cap."""
        width, height = int(dimensions[0]), int(dimensions[1])
        megapixels = width * height / 1e6
        what = f"level 0 is {width:,} x {height:,} px ({megapixels:,.0f} megapixels)"
        hint = ("check the file (a corrupt or foreign header?) or, if the slide is really this large, raise "
                "{key} in config.yaml (no pixel was read)")
        if max(width, height) > self.max_side_px:
            raise SlideTooLargeError(path, f"{what}: its longer side exceeds slide.max_side_px = "
                                     f"{self.max_side_px:,}", hint.format(key="slide.max_side_px"))
        if megapixels > self.max_megapixels:
            raise SlideTooLargeError(path, f"{what}: above slide.max_megapixels = {self.max_megapixels:,}",
                                     hint.format(key="slide.max_megapixels"))

    def check_tiles(self, path: object, n_tiles: int, what: str = "tiles", done: str = "no tile was read") -> None:
        """Raise :class:`SlideTooLargeError` when ``n_tiles`` (of ``what``) exceeds ``max_tiles``; ``done`` says
        what the refusal spared, at the end of the message."""
        if n_tiles > self.max_tiles:
            raise SlideTooLargeError(path, f"{n_tiles:,} {what}: above slide.max_tiles = {self.max_tiles:,}",
                                     "raise slide.max_tiles in config.yaml, or tile coarser (a larger tiling.mpp, "
                                     f"less tiling.overlap, a higher tiling.min_tissue_fraction) ({done})")


class SlideReader:
    """An open slide. Use :func:`open_slide`; close it (or use ``with``) when done."""

    def __init__(self, handle: Any, path: Path, backend: str, mpp_override: float | None) -> None:
        self._handle = handle
        self.path = path
        self.backend = backend
        props = dict(handle.properties)
        self.properties = props
        mpp, source = _resolve_mpp(props, mpp_override)
        if mpp is None:
            raise MissingMppError(
                path, "no microns-per-pixel in the file metadata (openslide/tiffslide mpp, Aperio MPP or TIFF "
                "resolution) and no mpp override",
                "add the scanner's mpp in the sample sheet's 'mpp' column for this slide")
        power = _first_float(props, ("openslide.objective-power", "tiffslide.objective-power", "aperio.AppMag"))
        self.info = SlideInfo(
            path=str(path), backend=backend,
            dimensions=tuple(int(v) for v in handle.dimensions),
            level_dimensions=tuple(tuple(int(v) for v in d) for d in handle.level_dimensions),
            level_downsamples=tuple(float(d) for d in handle.level_downsamples),
            mpp=float(mpp), mpp_source=source, objective_power=power,
            vendor=props.get("openslide.vendor") or props.get("tiffslide.vendor"),
        )

    def __enter__(self) -> SlideReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the file handle."""
        self._handle.close()

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """RGB uint8 array (h, w, 3) of ``size`` pixels at ``level``, top-left at level-0 ``location``.

        Pixels outside the slide, and transparent ones, are white.
        """
        x, y = (int(location[0]), int(location[1]))
        w, h = (int(size[0]), int(size[1]))
        level = int(level)
        ds = self.info.level_downsamples[level]
        lw, lh = self.info.level_dimensions[level]
        # the part of the request inside the level, in level pixels (backends pad the rest differently)
        lx, ly = int(np.floor(x / ds)), int(np.floor(y / ds))
        cx0, cy0 = max(0, -lx), max(0, -ly)
        cx1, cy1 = min(w, lw - lx), min(h, lh - ly)
        out = np.full((h, w, 3), 255, np.uint8)
        if cx1 <= cx0 or cy1 <= cy0:
            return out
        start = (x + int(round(cx0 * ds)), y + int(round(cy0 * ds)))
        try:
            region = self._handle.read_region(start, level, (cx1 - cx0, cy1 - cy0))
        except MemoryError:
            raise  # out of memory is not a damaged file: the command line says so
        except Exception as exc:  # decoder errors differ per backend
            raise SlideReadError(self.path, f"cannot read region {(x, y, w, h)} at level {level}: {exc}",
                                 "the file may be truncated or corrupt; re-copy it from the scanner") from exc
        arr = np.asarray(region)
        if arr.ndim == 3 and arr.shape[2] == 4 and bool((arr[..., 3] == 255).all()):
            arr = cv2.cvtColor(arr, cv2.COLOR_RGBA2RGB)
        elif arr.ndim == 3 and arr.shape[2] == 4:
            rgb = arr[..., :3].astype(np.uint16)
            alpha = arr[..., 3:4].astype(np.uint16)
            # OpenSlide gives premultiplied RGBA: composite onto white.
            arr = (rgb + (255 - alpha)).clip(0, 255).astype(np.uint8)
        out[cy0:cy1, cx0:cx1] = arr[..., :3]
        return out

    def best_level_for_downsample(self, downsample: float) -> int:
        """The coarsest level whose downsample does not exceed ``downsample`` (1e-3 relative slack)."""
        best = 0
        for level, ds in enumerate(self.info.level_downsamples):
            if ds <= downsample * (1 + 1e-3):
                best = level
        return best

    def read_level_scaled(self, level: int, scale: float, band_px: int = 2048) -> np.ndarray:
        """The whole ``level`` resized by ``scale`` (<= 1), read in horizontal bands to bound memory."""
        import cv2

        width, height = self.info.level_dimensions[level]
        out_w = max(1, int(round(width * scale)))
        out_h = max(1, int(round(height * scale)))
        if scale >= 1 - 1e-6:
            return self.read_region((0, 0), level, (width, height))
        ds = self.info.level_downsamples[level]
        out = np.empty((out_h, out_w, 3), np.uint8)
        # choose band heights in output rows so that bands tile the output exactly
        rows_per_band = max(1, int(band_px * scale))
        for oy in range(0, out_h, rows_per_band):
            oy2 = min(out_h, oy + rows_per_band)
            y0 = int(np.floor(oy / scale))
            y1 = min(height, int(np.ceil(oy2 / scale)))
            band = self.read_region((0, int(round(y0 * ds))), level, (width, y1 - y0))
            out[oy:oy2] = cv2.resize(band, (out_w, oy2 - oy), interpolation=cv2.INTER_AREA)
        return out


def _first_float(props: dict[str, Any], keys: tuple[str, ...]) -> float | None:
    for key in keys:
        value = props.get(key)
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if np.isfinite(number) and number > 0:
            return number
    return None


#: screen and print default resolutions that image software writes when it knows none (dpi)
DEFAULT_DPI = frozenset({72, 96, 150, 200, 300, 600})
#: metadata that only a slide scanner's file has (its presence vouches for the resolution tags)
SCANNER_PREFIXES = ("aperio.", "hamamatsu.", "leica.", "mirax.", "philips.", "sakura.", "ventana.", "dicom.")


def _tiff_dpi(props: dict[str, Any]) -> float | None:
    """The TIFF XResolution in dots per inch, when the tags give one."""
    unit = str(props.get("tiff.ResolutionUnit", "")).lower()
    res = _first_float(props, ("tiff.XResolution",))
    if res is None:
        return None
    if unit in ("centimeter", "cm", "3"):
        return res * 2.54
    return res if unit in ("inch", "2", "") else None


def _mpp_y(props: dict[str, Any]) -> float | None:
    """The slide's own mpp-y (metadata or TIFF YResolution), when given."""
    value = _first_float(props, ("openslide.mpp-y", "tiffslide.mpp-y"))
    if value is not None:
        return value
    unit = str(props.get("tiff.ResolutionUnit", "")).lower()
    res = _first_float(props, ("tiff.YResolution",))
    if res is not None and unit in ("centimeter", "cm", "3"):
        return 1e4 / res
    if res is not None and unit in ("inch", "2"):
        return 25400.0 / res
    return None


def _resolve_mpp(props: dict[str, Any], override: float | None) -> tuple[float | None, str]:
    if override is not None and np.isfinite(override) and override > 0:
        return float(override), "override"
    for key in ("openslide.mpp-x", "tiffslide.mpp-x", "aperio.MPP"):
        value = _first_float(props, (key,))
        if value is not None:
            return value, f"metadata:{key}"
    # TIFF resolution tags, when a backend exposes them without computing mpp
    unit = str(props.get("tiff.ResolutionUnit", "")).lower()
    res = _first_float(props, ("tiff.XResolution",))
    if res is not None and unit in ("centimeter", "cm", "3"):
        return 1e4 / res, "metadata:tiff.XResolution"
    if res is not None and unit in ("inch", "2"):
        return 25400.0 / res, "metadata:tiff.XResolution"
    return None, "none"


def _open_openslide(path: Path) -> Any:
    import openslide

    return openslide.OpenSlide(str(path))


def _open_tiffslide(path: Path) -> Any:
    import tiffslide

    return tiffslide.TiffSlide(str(path))


_OPENERS: dict[str, Callable[[Path], Any]] = {"openslide": _open_openslide, "tiffslide": _open_tiffslide}


def open_slide(path: str | os.PathLike[str], backend: str = "openslide", fallback: bool = True,
               mpp_override: float | None = None, limits: SlideLimits | None = None) -> SlideReader:
    """Open ``path`` with ``backend``; when that backend cannot, try the other one (if ``fallback``).

    Raises :class:`SlideReadError` when no backend can open it, :class:`MissingMppError` when the slide
    has no mpp and, given ``limits``, :class:`SlideTooLargeError` when its header says it is larger than they
    allow (checked before the probe decodes any pixel; ``None``: unchecked).
    """
    path = Path(path)
    if backend not in _OPENERS:
        raise ValueError(f"unknown slide backend {backend!r}; choose one of {BACKENDS}")
    if not path.is_file():
        raise SlideReadError(path, "file not found", "check the slide_path column of the sample sheet")
    if path.stat().st_size == 0:
        raise SlideReadError(path, "file is empty (0 bytes)", "the copy from the scanner failed; copy it again")
    order = [backend] + ([b for b in BACKENDS if b != backend] if fallback else [])
    failures = []
    for name in order:
        try:
            handle = _OPENERS[name](path)
        except MemoryError:
            raise
        except Exception as exc:  # each backend raises its own types
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
            continue
        if name != backend:
            log.warning("%s: %s could not open it, read with %s instead", path, backend, name)
        try:
            reader = SlideReader(handle, path, name, mpp_override)
            if limits is not None:
                limits.check_dimensions(path, reader.info.dimensions)
                limits.check_resolution(path, reader.info, reader.properties)
            _probe(reader)
        except (MissingMppError, SlideTooLargeError, ImplausibleMppError):
            handle.close()
            raise
        except SlideReadError as exc:
            handle.close()
            failures.append(f"{name}: {exc.problem}")
            continue
        return reader
    raise SlideReadError(path, "no slide backend can open it (" + "; ".join(failures) + ")",
                         "check that it is a whole-slide image and not truncated or corrupt")


def _probe(reader: SlideReader) -> None:
    """Decode the last pixel of the first and last levels, so a truncated file fails at open, not mid-stage."""
    for level in (0, reader.info.level_count - 1):
        ds = reader.info.level_downsamples[level]
        w, h = reader.info.level_dimensions[level]
        reader.read_region((int((w - 1) * ds), int((h - 1) * ds)), level, (1, 1))


def slide_info(path: str | os.PathLike[str], **kwargs: Any) -> SlideInfo:
    """Open, describe and close a slide."""
    with open_slide(path, **kwargs) as reader:
        return reader.info


@dataclass(frozen=True)
class ResolutionRecord:
    """One slide's resolution as its header gives it (no pixel decoded): a row of the cohort resolution table.
    ``flags`` is empty for a slide the slide jobs will accept, else why they will refuse it."""

    slide_id: str
    path: str
    mpp_x: float | None
    mpp_y: float | None
    mpp_source: str
    objective_power: float | None
    vendor: str | None
    backend: str | None
    width: int | None
    height: int | None
    flags: str


def read_resolution(path: str | os.PathLike[str], slide_id: str, backend: str = "openslide", fallback: bool = True,
                    mpp_override: float | None = None, limits: SlideLimits | None = None) -> ResolutionRecord:
    """The resolution record of one slide, from its header only; problems go to ``flags`` instead of raising,
    so that one table shows every slide the cohort's slide jobs would refuse, and why."""
    path = Path(path)
    limits = limits or SlideLimits()
    empty = dict(mpp_x=None, mpp_y=None, mpp_source="none", objective_power=None, vendor=None, backend=None,
                 width=None, height=None)
    if not path.is_file():
        return ResolutionRecord(slide_id, str(path), **empty, flags="file not found")
    failures = []
    for name in [backend] + ([b for b in BACKENDS if b != backend] if fallback else []):
        try:
            handle = _OPENERS[name](path)
        except MemoryError:
            raise
        except Exception as exc:  # each backend raises its own types
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
            continue
        try:
            try:
                reader = SlideReader(handle, path, name, mpp_override)
            except MissingMppError as exc:
                width, height = (int(v) for v in handle.dimensions)
                return ResolutionRecord(slide_id, str(path), **{**empty, "backend": name, "width": width,
                                                                "height": height}, flags=exc.problem)
            info = reader.info
            mpp_y = info.mpp if info.mpp_source == "override" else (_mpp_y(reader.properties) or info.mpp)
            flags = []
            checks = ((limits.check_resolution, (path, info, reader.properties)),
                      (limits.check_dimensions, (path, info.dimensions)))
            for check, args in checks:
                try:
                    check(*args)
                except (ImplausibleMppError, SlideTooLargeError) as exc:
                    flags.append(exc.problem)
            return ResolutionRecord(slide_id, str(path), mpp_x=info.mpp, mpp_y=mpp_y, mpp_source=info.mpp_source,
                                    objective_power=info.objective_power, vendor=info.vendor, backend=name,
                                    width=info.dimensions[0], height=info.dimensions[1], flags="; ".join(flags))
        finally:
            handle.close()
    return ResolutionRecord(slide_id, str(path), **empty, flags="unreadable (" + "; ".join(failures) + ")")
