"""The slide stages as the rules run them, one function per rule and named as the rule: ``cohort_manifest``,
``segment_tissue``, ``tile_slide``, ``extract_features`` (and ``extract_features_bucket``, its rules for many
slides per job), ``extract_fold_features``, ``export_features``, ``import_features`` and ``qc_summary``. Each
takes its inputs, its outputs and the rule's settings (a JSON object, refused on an unknown key); the slide
stages also take the caps on one slide (``limits``: :class:`~pathmm_pipeline.preprocess.slides.SlideLimits`,
default its defaults)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pathmm_pipeline.stages.settings import ManifestSettings

if TYPE_CHECKING:
    from pathmm_pipeline.preprocess.slides import SlideLimits

PathLike = str | os.PathLike[str]


def cohort_manifest(samplesheet: PathLike, out: PathLike, settings: dict[str, Any],
                    resolution: PathLike | None = None, backend: str = "openslide", fallback: bool = True,
                    limits: SlideLimits | None = None, threads: int = 4) -> Path:
    """Validate the sample sheet and write the cohort manifest (Parquet, with provenance) and, given
    ``resolution``, the cohort resolution table (CSV: every slide's mpp from its header, and why a slide job would
    refuse it)."""
    from pathmm_pipeline.preprocess.resolution import write_resolution_table
    from pathmm_pipeline.preprocess.samplesheet import write_manifest

    s = ManifestSettings.from_dict(settings)
    manifest = write_manifest(samplesheet, out, s.cancer_types, s.labels)
    if resolution is not None:
        import pandas as pd

        write_resolution_table(pd.read_parquet(manifest), resolution, backend=backend, fallback=fallback,
                               limits=limits, threads=threads)
    return manifest


def segment_tissue(slide: PathLike, store: PathLike, geojson: PathLike, thumbnail: PathLike,
                   settings: dict[str, Any], **slide_options: Any) -> Path:
    """Segment one slide's tissue (mask store, GeoJSON contours, thumbnail)."""
    from pathmm_pipeline.preprocess.segmentation import SegmentationSettings, segment_slide

    return segment_slide(slide, store, geojson, thumbnail, SegmentationSettings.from_dict(settings), **slide_options)


def tile_slide(slide: PathLike, segmentation: PathLike, store: PathLike, settings: dict[str, Any],
               qc: dict[str, Any] | None = None, **slide_options: Any) -> Path:
    """Tile one slide at the target mpp inside its tissue mask (with ``qc``: keeping the tiles and slide the
    quality rules include)."""
    from pathmm_pipeline.preprocess.quality import QCSettings
    from pathmm_pipeline.preprocess.tiling import TilingSettings
    from pathmm_pipeline.preprocess.tiling import tile_slide as tile

    return tile(slide, segmentation, store, TilingSettings.from_dict(settings),
                qc=None if qc is None else QCSettings.from_dict(qc), **slide_options)


def extract_features(slide: PathLike, tiles: PathLike, store: PathLike, settings: dict[str, Any],
                     **slide_options: Any) -> Path:
    """One slide's patch features with one encoder."""
    from pathmm_pipeline.preprocess.features import ExtractionSettings
    from pathmm_pipeline.preprocess.features import extract_features as extract

    return extract(slide, tiles, store, ExtractionSettings.from_dict(settings), **slide_options)


def extract_features_bucket(jobs: list[dict[str, Any]], settings: dict[str, Any], backend: str = "openslide",
                            fallback: bool = True, limits: SlideLimits | None = None) -> dict[str, int]:
    """Several slides' patch features with one encoder, loaded once; one store per slide."""
    from pathmm_pipeline.preprocess.features import ExtractionSettings, SlideJob, extract_slides

    return extract_slides([SlideJob.from_dict(job) for job in jobs], ExtractionSettings.from_dict(settings),
                          backend=backend, fallback=fallback, limits=limits)


def extract_fold_features(manifest: PathLike, tiles: PathLike, out: PathLike, settings: dict[str, Any],
                          backend: str = "openslide", fallback: bool = True,
                          limits: SlideLimits | None = None) -> Path:
    """Every tiled slide of the manifest with one (per-fold mSTAR) encoder, in one job."""
    from pathmm_pipeline.preprocess.features import ExtractionSettings, extract_cohort_features

    return extract_cohort_features(manifest, tiles, out, ExtractionSettings.from_dict(settings), backend=backend,
                                   fallback=fallback, limits=limits)


def export_features(store: PathLike, tiles: PathLike, root: PathLike, formats: list[str], encoder: str,
                    slide_id: str) -> list[Path]:
    """One slide's feature store in the layouts of ``formats`` (TRIDENT, CLAM, STAMP) under ``root``."""
    from pathmm_pipeline.preprocess.interop.export import export_features as export

    return export(store, tiles, root, formats, encoder=encoder, slide_id=slide_id)


def import_features(source: PathLike, slide: PathLike, store: PathLike, encoder: str,
                    **slide_options: Any) -> Path:
    """One slide's TRIDENT / CLAM features file as the feature store of ``encoder``'s folder."""
    from pathmm_pipeline.preprocess.interop.imports import import_features as load

    load(source, slide, store, encoder, **slide_options)
    return Path(store)


def qc_summary(tiles: list[PathLike], segmentation: list[PathLike], out: PathLike) -> Path:
    """One row per slide: statuses, tissue area, tile counts."""
    from pathmm_pipeline.preprocess.qc import write_qc_summary

    return write_qc_summary(tiles, segmentation, out)
