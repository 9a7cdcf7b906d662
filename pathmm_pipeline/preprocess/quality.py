"""Quality control that decides: per-tile quality metrics on tissue, rules that include or exclude every tile
and every slide, each decision with its reason.

Metrics (anchored on HistoQC's modules and GrandQC's artefact classes) are measured on each tile read at
``qc.mpp`` (1 um/px by default: a quarter of the pixels of 0.5 um/px tiles):

* ``blur`` -- variance of the Laplacian of the grey image over the tile's tissue pixels divided by the variance
  of the grey image there (HistoQC's BlurDetection, on tissue and made independent of stain contrast):
  out-of-focus tissue keeps its contrast but loses its high frequencies. Measured on the real CMU-1 H&E region
  at 1 um/px: sharp tiles 10-34 (1st-99th percentile), blurred by a Gaussian of 1 / 2 / 3 um 1.6-4.9 /
  0.2-0.8 / 0.05-0.2; the default ``blur_min`` of 1 excludes tiles blurred by ~1.5 um or more;
* ``dark_fraction`` -- share of tissue pixels darker than :data:`DARK_GREY` (folds, thick or crushed tissue:
  HistoQC's DarkTissue, GrandQC's "fold" class);
* ``pen_fraction`` -- share of the tile's pixels in marker ink (the segmentation's blue / green / black pen
  colours; GrandQC's "pen" class);
* ``background_fraction`` -- share of the tile outside the tissue mask (``1 - tissue_fraction`` of tiling).

Rules are ``<metric>_min`` / ``<metric>_max`` keys (``qc.tile_rules``, ``qc.slide_rules``): a tile or slide
failing one is excluded, the first failed rule being its reason. Slide metrics: ``tissue_area_mm2``,
``n_tiles`` (tiles included), ``excluded_tile_fraction``. Metrics are looked up in registries, so a new
metric is one function away. Bubbles (air under the cover slip) have no reliable colour signature at these
resolutions and are not measured.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import pandas as pd

from pathmm_pipeline.core.errors import ConfigError
from pathmm_pipeline.core.registry import Registry
from pathmm_pipeline.core.settings import SettingsMixin
from pathmm_pipeline.preprocess.segmentation import pen_mask

log = logging.getLogger(__name__)

STATUS_QC_EXCLUDED = "qc_excluded"
DARK_GREY = 40  # 0-255: at most 24 % of sharp H&E tissue pixels (CMU-1, dense nuclei) lie below; folds far more
BACKGROUND_GREY = 220  # tile pixels lighter than this (and unsaturated) are glass, not tissue
MIN_TISSUE_PIXELS = 16  # a tile with fewer tissue pixels at qc.mpp has no measurable blur (reported as NaN)
FLAT_VARIANCE = 1.0  # grey variance (0-255 scale) below which tissue shows no detail at all (blur 0)
_EDGE_KERNEL = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (9, 9))
#: an air bubble's rim at 1 um/px: a thin (< 9 px) grey line much darker than its surroundings, unstained
#: (hematoxylin is saturated, a refraction edge is not), long (>= 40 px) and thin along its length (its area over
#: its longer side at most 8 px: a line, not a blob of pigment)
RIM_CONTRAST, RIM_MAX_SATURATION, RIM_MAX_GREY, RIM_MIN_LENGTH_PX, RIM_MAX_WIDTH_PX = 40, 60, 170, 40, 8


@dataclass(frozen=True)
class QCSettings(SettingsMixin):
    """Quality-control rules (``qc:`` in config.yaml)."""

    settings_name = "qc"

    enabled: bool = True
    mpp: float = 1.0
    tile_rules: Mapping[str, float] = field(default_factory=lambda: {
        "pen_fraction_max": 0.1, "dark_fraction_max": 0.5, "blur_min": 1.0, "bubble_rim_fraction_max": 0.02})
    slide_rules: Mapping[str, float] = field(default_factory=lambda: {
        "tissue_area_mm2_min": 0.05, "n_tiles_min": 1, "excluded_tile_fraction_max": 0.8})

    def __post_init__(self) -> None:
        if self.mpp <= 0:
            raise ConfigError(f"qc.mpp must be positive, got {self.mpp}")
        for scope, rules, metrics in (("tile_rules", self.tile_rules, TILE_METRICS),
                                      ("slide_rules", self.slide_rules, SLIDE_METRICS)):
            for key in rules:
                parse_rule(key, metrics, f"qc.{scope}")

    def to_dict(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "mpp": self.mpp, "tile_rules": dict(self.tile_rules),
                "slide_rules": dict(self.slide_rules)}


#: tile metrics: (tile RGB at qc.mpp, its tissue pixels as a bool mask, background share) -> value
TileMetric = Callable[[np.ndarray, np.ndarray, float], float]
TILE_METRICS: Registry[TileMetric] = Registry("tile QC metric")
#: slide metrics: (slide facts: tissue_area_mm2, n_candidates, n_included) -> value
SLIDE_METRICS: Registry[Callable[[Mapping[str, float]], float]] = Registry("slide QC metric")


def _grey(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)


def tissue_pixels(rgb: np.ndarray) -> np.ndarray:
    """Bool mask of the tile's tissue pixels: not glass (light and unsaturated) and not marker ink."""
    hsv = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2HSV)
    glass = (_grey(rgb) > BACKGROUND_GREY) & (hsv[..., 1] < 25)
    return ~glass & (pen_mask(hsv) == 0)


@TILE_METRICS.decorator("blur")
def blur_metric(rgb: np.ndarray, tissue: np.ndarray, background: float) -> float:
    """Variance of the Laplacian over tissue pixels (4 px in from the tissue's edge, which stays sharp) relative to
    their grey variance (NaN: too little tissue to tell; 0: tissue of one flat grey)."""
    inner = cv2.erode(tissue.astype(np.uint8), _EDGE_KERNEL).astype(bool)  # the tissue's edge is sharp anyway
    if int(inner.sum()) < MIN_TISSUE_PIXELS:
        return float("nan")
    grey = _grey(rgb).astype(np.float32)
    spread = float(grey[inner].var())
    if spread < FLAT_VARIANCE:
        return 0.0  # no detail at all: nothing in focus
    laplacian = cv2.Laplacian(grey, cv2.CV_32F, ksize=3)
    return float(laplacian[inner].var() / spread)


@TILE_METRICS.decorator("dark_fraction")
def dark_fraction_metric(rgb: np.ndarray, tissue: np.ndarray, background: float) -> float:
    """Share of tissue pixels darker than :data:`DARK_GREY` (folds, crushed or thick tissue)."""
    n = int(tissue.sum())
    return float((_grey(rgb)[tissue] < DARK_GREY).sum() / n) if n else 0.0


@TILE_METRICS.decorator("pen_fraction")
def pen_fraction_metric(rgb: np.ndarray, tissue: np.ndarray, background: float) -> float:
    """Share of the tile's pixels in marker ink."""
    return float(pen_mask(cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2HSV)).mean())


@TILE_METRICS.decorator("bubble_rim_fraction")
def bubble_rim_fraction_metric(rgb: np.ndarray, tissue: np.ndarray, background: float) -> float:
    """Share of the tile on air-bubble rims (HistoQC's and GrandQC's bubble class, by their look): pixels of thin
    dark unstained curves (black-hat of the grey image, then long thin connected components). Sharp H&E tissue
    scores 0 (every CMU-1 tissue tile); a bubble's rim crossing a 224 um tile about 0.03-0.05."""
    rgb = np.ascontiguousarray(rgb)
    grey = _grey(rgb)
    saturation = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[..., 1]
    contrast = cv2.morphologyEx(grey, cv2.MORPH_BLACKHAT, _EDGE_KERNEL)
    line = ((contrast > RIM_CONTRAST) & (saturation < RIM_MAX_SATURATION) & (grey < RIM_MAX_GREY)).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(line, connectivity=8)
    if n <= 1:
        return 0.0
    width, height, area = stats[:, cv2.CC_STAT_WIDTH], stats[:, cv2.CC_STAT_HEIGHT], stats[:, cv2.CC_STAT_AREA]
    length = np.maximum(width, height)
    rim = (length >= RIM_MIN_LENGTH_PX) & (area <= RIM_MAX_WIDTH_PX * length)
    rim[0] = False
    return float(rim[labels].mean())


@TILE_METRICS.decorator("background_fraction")
def background_fraction_metric(rgb: np.ndarray, tissue: np.ndarray, background: float) -> float:
    """Share of the tile outside the segmentation's tissue mask."""
    return float(background)


SLIDE_METRICS.register("tissue_area_mm2", lambda facts: float(facts["tissue_area_mm2"]))
SLIDE_METRICS.register("n_tiles", lambda facts: float(facts["n_included"]))
SLIDE_METRICS.register("excluded_tile_fraction", lambda facts: (
    1.0 - facts["n_included"] / facts["n_candidates"] if facts["n_candidates"] else 0.0))


def parse_rule(key: str, metrics: Registry[Any], where: str) -> tuple[str, str]:
    """``"blur_min"`` -> ``("blur", "min")``; an unknown metric or a key without _min / _max is refused."""
    metric, _, bound = key.rpartition("_")
    if bound not in ("min", "max") or not metric:
        raise ConfigError(f"{where}: rule {key!r} must be <metric>_min or <metric>_max")
    if metric not in metrics:
        raise ConfigError(f"{where}: rule {key!r} names no known metric ({', '.join(metrics.names())})")
    return metric, bound


def first_failed_rule(values: Mapping[str, float], rules: Mapping[str, float], metrics: Registry[Any]) -> str:
    """The reason of the first rule ``values`` fail ("blur 3.1 < blur_min 8"), "" when all pass. A NaN metric
    (not measurable) fails no rule."""
    for key, threshold in rules.items():
        metric, bound = parse_rule(key, metrics, "qc")
        value = values[metric]
        if np.isnan(value):
            continue
        if (bound == "min" and value < threshold) or (bound == "max" and value > threshold):
            sign = "<" if bound == "min" else ">"
            return f"{metric} {value:.3g} {sign} {key} {threshold:g}"
    return ""


@dataclass(frozen=True)
class TileQC:
    """Every candidate tile's metrics and decision (``table``), and the slide's decision."""

    table: pd.DataFrame
    slide_metrics: dict[str, float]
    slide_reason: str

    @property
    def included(self) -> np.ndarray:
        """Bool per candidate tile: kept (all False when the slide is excluded)."""
        keep = self.table["include"].to_numpy(bool)
        return keep if not self.slide_reason else np.zeros_like(keep)


def assess_tiles(read: Callable[[int, int], np.ndarray], coords: np.ndarray, tissue_fraction: np.ndarray,
                 tissue_area_mm2: float, settings: QCSettings, slide_id: str = "") -> TileQC:
    """Measure every candidate tile (``read(x, y)``: the tile's RGB at ``settings.mpp``), decide each tile by
    ``settings.tile_rules`` and the slide by ``settings.slide_rules``."""
    names = [name for name in TILE_METRICS.names()]
    values = {name: np.empty(len(coords), np.float64) for name in names}
    reasons = []
    for i, (x, y) in enumerate(coords):
        rgb = read(int(x), int(y))
        tissue = tissue_pixels(rgb)
        row = {name: TILE_METRICS.get(name)(rgb, tissue, 1.0 - float(tissue_fraction[i])) for name in names}
        for name, value in row.items():
            values[name][i] = value
        reasons.append(first_failed_rule(row, settings.tile_rules, TILE_METRICS))
        if i and i % 5000 == 0:
            log.info("%s: quality of %d / %d tiles measured", slide_id, i, len(coords))
    table = pd.DataFrame({"x": coords[:, 0].astype(np.int64), "y": coords[:, 1].astype(np.int64),
                          "tissue_fraction": tissue_fraction.astype(np.float32), **values})
    table["include"] = np.array([not reason for reason in reasons], bool)
    table["reason"] = pd.Series(reasons, dtype=object)
    facts = {"tissue_area_mm2": tissue_area_mm2, "n_candidates": len(coords), "n_included": int(table.include.sum())}
    slide_metrics = {name: float(SLIDE_METRICS.get(name)(facts)) for name in SLIDE_METRICS.names()}
    slide_reason = first_failed_rule(slide_metrics, settings.slide_rules, SLIDE_METRICS)
    return TileQC(table, slide_metrics, slide_reason)


def qc_tile_reader(reader: Any, tile_size_level0: float, tile_px: int, qc_mpp: float
                   ) -> Callable[[int, int], np.ndarray]:
    """``read(x, y)``: the tile at level-0 (x, y) as RGB at ``qc_mpp`` (never finer than the tile itself), from
    the coarsest pyramid level that is still fine enough."""
    info = reader.info
    qc_px = max(8, min(tile_px, int(round(tile_size_level0 * info.mpp / qc_mpp))))
    level = reader.best_level_for_downsample(tile_size_level0 / qc_px)
    read_px = max(1, int(round(tile_size_level0 / info.level_downsamples[level])))

    def read(x: int, y: int) -> np.ndarray:
        region = reader.read_region((x, y), level, (read_px, read_px))
        if read_px == qc_px:
            return region
        interpolation = cv2.INTER_AREA if read_px > qc_px else cv2.INTER_LINEAR
        return cv2.resize(region, (qc_px, qc_px), interpolation=interpolation)

    return read


def write_tile_qc(result: TileQC, path: Any, record: Mapping[str, Any]) -> None:
    """Write the per-tile table as Parquet, the slide decision and the provenance in its metadata."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from pathmm_pipeline.core.atomic import atomic_path
    from pathmm_pipeline.core.provenance import PARQUET_KEY

    table = pa.Table.from_pandas(result.table, preserve_index=False)
    decision = {"include": not result.slide_reason, "reason": result.slide_reason, "metrics": result.slide_metrics}
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), PARQUET_KEY: json.dumps(record),
                                           SLIDE_DECISION_KEY.encode(): json.dumps(decision)})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


SLIDE_DECISION_KEY = "pathmm_qc_slide"
