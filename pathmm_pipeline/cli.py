"""The ``pathmm`` command: one subcommand per Snakemake rule, named as the rule (``segment_tissue`` ->
``pathmm segment-tissue``) and calling the stage function of that name (:mod:`pathmm_pipeline.stages`), plus
validation, audit, the catalogue and the demo cohorts. The names of earlier releases (``manifest``,
``segment``, ``tile``, ``extract``, ``extract-cohort``, ``splits``, ``report``) remain as aliases for one release.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pathmm_pipeline import __version__
from pathmm_pipeline.core.errors import InputError, PathmmError, describe_failure
from pathmm_pipeline.plan.cards import DOWNSTREAM_CARDS
from pathmm_pipeline.plan.lists import expand_items

log = logging.getLogger("pathmm")


def _settings(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"--settings must be JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("--settings must be a JSON object")
    return value


def _json_list(text: str) -> list[Any]:
    """A JSON list given inline or as ``@file.json``."""
    try:
        value = json.loads(Path(text[1:]).read_text() if text.startswith("@") else text)
    except (OSError, json.JSONDecodeError) as exc:
        raise argparse.ArgumentTypeError(f"--jobs must be a JSON list or @file.json: {exc}") from exc
    if not isinstance(value, list):
        raise argparse.ArgumentTypeError("--jobs must be a JSON list")
    return value


#: how a cohort-sized list is given: the rules always pass a file (pathmm_pipeline.plan.lists)
LISTED = "@file: one per line"


def _listed_paths(values: list[str]) -> list[Path]:
    """Paths given inline and / or as ``@file`` lists."""
    return [Path(v) for v in expand_items(values)]


def _optional_float(text: str) -> float | None:
    return None if text in ("", "None", "none", "nan") else float(text)


def _slide_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("slide", type=Path, help="whole-slide image")
    parser.add_argument("--slide-id", default=None, help="identifier recorded in the outputs (default: file stem)")
    parser.add_argument("--backend", default="openslide", choices=["openslide", "tiffslide"])
    parser.add_argument("--no-fallback", action="store_true", help="do not try the other backend")
    parser.add_argument("--mpp", type=_optional_float, default=None, help="override the slide's mpp")
    parser.add_argument("--settings", type=_settings, default={}, help="stage settings as a JSON object")
    _limit_args(parser)


def _limit_args(parser: argparse.ArgumentParser) -> None:
    """The caps on one slide (config.yaml's slide.max_*; the rules pass them from the job's resources)."""
    parser.add_argument("--max-side-px", type=int, default=None, help="refuse a slide whose longer side is larger")
    parser.add_argument("--max-megapixels", type=int, default=None, help="refuse a slide with more megapixels")
    parser.add_argument("--max-tiles", type=int, default=None, help="refuse a slide with more tiles")
    parser.add_argument("--mpp-range", type=_mpp_range, default=None, metavar="MIN:MAX",
                        help="refuse a slide whose level-0 um/px lies outside")
    parser.add_argument("--max-mpp-xy-ratio", type=float, default=None, help="refuse non-square pixels beyond")


def _mpp_range(text: str) -> tuple[float, float]:
    low, sep, high = text.partition(":")
    try:
        if sep:
            return float(low), float(high)
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"--mpp-range takes MIN:MAX in um/px, e.g. 0.08:20, not {text!r}")


def _limits(args: argparse.Namespace) -> Any:
    """The :class:`~pathmm_pipeline.preprocess.slides.SlideLimits` given on the command line (defaults for the
    rest)."""
    from pathmm_pipeline.preprocess.slides import SlideLimits

    low, high = args.mpp_range if args.mpp_range is not None else (None, None)
    given = {"max_side_px": args.max_side_px, "max_megapixels": args.max_megapixels, "max_tiles": args.max_tiles,
             "min_mpp": low, "max_mpp": high, "max_mpp_xy_ratio": args.max_mpp_xy_ratio}
    return SlideLimits(**{k: v for k, v in given.items() if v is not None})


def cmd_demo_cohort(args: argparse.Namespace) -> int:
    from pathmm_pipeline.demo import build_demo_cohort

    sheet = build_demo_cohort(args.out, n_patients=args.patients, seed=args.seed, source_slide=args.source_slide,
                              n_slide_less=args.slide_less)
    print(sheet)
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from pathmm_pipeline.core.config import load_config
    from pathmm_pipeline.preprocess.samplesheet import load_samplesheet

    config = load_config(args.config)
    sheet = args.samplesheet or config["samplesheet"]
    frame = load_samplesheet(sheet, config["cancer_types"], config["labels"])
    print(f"{args.config}: valid; {sheet}: {len(frame)} slide(s) of {frame.patient_id.nunique()} patient(s)")
    return 0


def cmd_cohort_manifest(args: argparse.Namespace) -> int:
    from pathmm_pipeline.stages.preprocess import cohort_manifest

    cohort_manifest(args.samplesheet, args.out, args.settings, resolution=args.resolution, backend=args.backend,
                    fallback=not args.no_fallback, limits=_limits(args), threads=args.threads)
    return 0


def cmd_segment_tissue(args: argparse.Namespace) -> int:
    from pathmm_pipeline.stages.preprocess import segment_tissue

    segment_tissue(args.slide, args.store, args.geojson, args.thumbnail, args.settings,
                   slide_id=args.slide_id, backend=args.backend, fallback=not args.no_fallback, mpp_override=args.mpp,
                   limits=_limits(args))
    return 0


def cmd_tile_slide(args: argparse.Namespace) -> int:
    from pathmm_pipeline.stages.preprocess import tile_slide

    tile_slide(args.slide, args.segmentation, args.store, args.settings,
               slide_id=args.slide_id, backend=args.backend, fallback=not args.no_fallback, mpp_override=args.mpp,
               limits=_limits(args), qc=args.qc, qc_table=args.qc_table, roi=args.roi)
    return 0


def with_throughput(settings: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The extraction settings with the speed arguments given on the command line (the rules pass them from the
    job's resources and threads, so that they never trigger a re-run)."""
    given = {"batch_size": args.batch_size, "threads": args.threads,
             "num_workers": None if args.num_workers is None else ("auto" if args.num_workers < 0 else
                                                                    args.num_workers),
             "channels_last": None if args.channels_last is None else bool(args.channels_last),
             "compile": None if args.compile is None else bool(args.compile)}
    return {**settings, **{k: v for k, v in given.items() if v is not None}}


def _throughput_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-size", type=int, default=None, help="tiles per forward pass (speed only)")
    p.add_argument("--num-workers", type=int, default=None, help="decoding processes; -1: the job's CPUs less one")
    p.add_argument("--channels-last", type=int, choices=(0, 1), default=None)
    p.add_argument("--compile", type=int, choices=(0, 1), default=None)
    p.add_argument("--threads", type=int, default=None, help="the CPUs the job was given")


def cmd_extract_features(args: argparse.Namespace) -> int:
    from pathmm_pipeline.stages.preprocess import extract_features

    extract_features(args.slide, args.tiles, args.store, with_throughput(args.settings, args),
                     slide_id=args.slide_id, backend=args.backend, fallback=not args.no_fallback, mpp_override=args.mpp,
                     limits=_limits(args))
    return 0


def cmd_extract_features_bucket(args: argparse.Namespace) -> int:
    from pathmm_pipeline.stages.preprocess import extract_features_bucket

    extract_features_bucket(args.jobs, with_throughput(args.settings, args), backend=args.backend,
                            fallback=not args.no_fallback, limits=_limits(args))
    return 0


def cmd_extract_fold_features(args: argparse.Namespace) -> int:
    from pathmm_pipeline.stages.preprocess import extract_fold_features

    extract_fold_features(args.manifest, args.tiles, args.out, with_throughput(args.settings, args),
                          backend=args.backend,
                          fallback=not args.no_fallback, limits=_limits(args))
    return 0


def cmd_export_features(args: argparse.Namespace) -> int:
    from pathmm_pipeline.stages.preprocess import export_features

    for path in export_features(args.store, args.tiles, args.out, args.format, args.encoder, args.slide_id):
        print(path)
    return 0


def cmd_import_features(args: argparse.Namespace) -> int:
    from pathmm_pipeline.stages.preprocess import import_features

    import_features(args.source, args.slide, args.store, args.encoder, slide_id=args.slide_id, backend=args.backend,
                    fallback=not args.no_fallback, mpp_override=args.mpp)
    return 0


def cmd_slide_features(args: argparse.Namespace) -> int:
    from pathmm_pipeline.stages.slide_features import slide_features

    settings = {**args.settings, "encoder": args.encoder, **({"weights": str(args.weights)} if args.weights else {})}
    print(slide_features(args.features, args.tiles, args.out, settings))
    return 0


def cmd_slide_encoders(args: argparse.Namespace) -> int:
    from pathmm_pipeline.encoders.slide_zoo import get_slide_zoo_spec, list_slide_zoo

    for name in list_slide_zoo():
        s = get_slide_zoo_spec(name)
        width = f"{s.embed_dim}-d" if s.embed_dim else "D-d"
        params = f"{s.n_params:>11,d}" if s.n_params or s.embed_dim is None else "  width-dep"
        print(f"{name:16s} {width:7s} on {s.patch_encoder or 'any'} ({s.d_in or 'any'}-d)  {params} params"
              f"  {s.architecture}")
    return 0


def cmd_encoders(args: argparse.Namespace) -> int:
    from pathmm_pipeline.encoders import get_encoder_spec, list_encoders

    for name in list_encoders():
        spec = get_encoder_spec(name)
        print(f"{name:20s} {spec.embed_dim:5d}-d  {spec.input_size}px  {spec.precision:8s}  {spec.architecture}"
              f"  [weights: {spec.default_weights or 'random init'}]")
    return 0


def cmd_weights_fetch(args: argparse.Namespace) -> int:
    from pathmm_pipeline.encoders import get_encoder_spec
    from pathmm_pipeline.encoders.weights import fetch_weights

    for item in args.encoders:
        encoder, _, hub_id = item.partition("=")
        hub_id = hub_id or get_encoder_spec(encoder).default_weights  # the registry's hf_hub: weights
        manifest = fetch_weights(encoder, args.out, hub_id=hub_id, revision=args.revision, files=args.files)
        print(manifest)
    return 0


def cmd_weights_verify(args: argparse.Namespace) -> int:
    from pathmm_pipeline.encoders.weights import verify_manifest

    for path in args.manifests:
        manifest = verify_manifest(path)
        print(f"{manifest.path}: ok ({manifest.encoder}, {manifest.hub_id}@{manifest.revision}, "
              f"{len(manifest.files)} file(s))")
    return 0


def cmd_genomics(args: argparse.Namespace) -> int:
    from pathmm_pipeline.stages.modalities import genomics

    settings = dict(args.settings)
    if args.patients is not None:
        settings["patients"] = expand_items(args.patients)
    genomics(_listed_paths(args.expression), args.out, settings)
    return 0


def cmd_clean_report(args: argparse.Namespace) -> int:
    from pathmm_pipeline.stages.modalities import clean_report

    clean_report(args.report, args.patient, args.out, args.settings)
    return 0


def cmd_merge_reports(args: argparse.Namespace) -> int:
    from pathmm_pipeline.stages.modalities import merge_reports

    merge_reports(_listed_paths(args.tables), args.out)
    return 0


def cmd_embed_reports(args: argparse.Namespace) -> int:
    from pathmm_pipeline.stages.modalities import embed_reports

    embed_reports(args.table, args.out, args.settings)
    return 0


def cmd_make_splits(args: argparse.Namespace) -> int:
    from pathmm_pipeline.stages.training import make_splits

    make_splits(args.manifest, args.out, args.settings)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from pathmm_pipeline.stages.training import train

    train(args.model, args.task, args.fold, args.manifest, args.splits, args.out, args.settings,
          features_dir=args.features, genomics=args.genomics, reports=args.reports, label=args.label,
          pretrained=args.pretrained)
    return 0


def cmd_downstream(args: argparse.Namespace) -> int:
    from pathmm_pipeline.stages.training import downstream

    downstream(args.kind, args.model, args.task, args.fold, args.manifest, args.splits, args.out, args.settings,
               features_dir=args.features, genomics=args.genomics, reports=args.reports, label=args.label,
               checkpoint=args.checkpoint, pretrained=args.pretrained, reports_table=args.reports_table)
    return 0


def cmd_tcga_cohort(args: argparse.Namespace) -> int:
    from pathmm_pipeline.demo.tcga_cohort import build_tcga_cohort

    path = build_tcga_cohort(args.source, args.out, results=args.results, cancer_type=args.cancer_type)
    print(f"wrote {path.parent} -- run: snakemake --configfile workflow/config/tcga_genomics.yaml {path}")
    return 0


def cmd_mstar_stage2(args: argparse.Namespace) -> int:
    from pathmm_pipeline.stages.training import mstar_stage2

    patients = None
    if args.fold is not None:
        from pathmm_pipeline.cohort.splits import read_splits

        if args.splits is None:
            raise InputError("--fold", "needs --splits", "pass the folder of splits_<k>.csv")
        patients = read_splits(args.splits)[args.fold].train
    mstar_stage2(args.manifest, args.tiles, args.stage1, args.base_encoder, args.out, args.settings,
                 patients=patients,
                 base_weights=args.base_weights)
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from pathmm_pipeline.stages.training import pretrain

    pretrain(args.model, args.fold, args.manifest, args.splits, args.out, args.settings,
             features_dir=args.features, genomics=args.genomics, reports=args.reports,
             external=args.external, external_genomics=args.external_genomics)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pathmm_pipeline.stages.training import evaluate

    evaluate(args.folds, args.results, args.out, heatmap_dirs=args.heatmaps)
    return 0


def cmd_heatmaps(args: argparse.Namespace) -> int:
    from pathmm_pipeline.stages.heatmaps import heatmaps, run_paths

    paths: dict[str, Any] = {"checkpoint": args.checkpoint, "manifest": args.manifest, "features": args.features,
                             "tiles": args.tiles, "segmentation": args.segmentation, "genomics": args.genomics,
                             "reports": args.reports, "out": args.out}
    if args.run is not None:  # by name, in a results folder's layout; explicit paths win
        found = run_paths(args.results, args.run, args.fold, args.encoder, args.task)
        found["out"] = found["requested_out"] if args.slide else found["out"]
        paths = {k: v if v is not None else found[k] for k, v in paths.items()}
    missing = [k for k in ("checkpoint", "manifest", "features", "tiles", "segmentation", "out") if paths[k] is None]
    if missing:
        raise InputError(f"--{missing[0]}", "not given", "pass --run RUN --fold K (with --results), or every path")
    out = heatmaps(paths["checkpoint"], paths["manifest"], paths["out"], args.settings,
                   features_dir=paths["features"], tiles_dir=paths["tiles"], segmentation_dir=paths["segmentation"],
                   genomics=paths["genomics"], reports=paths["reports"], slides=args.slide or None, run=args.label)
    print(out)
    return 0


def cmd_qc_summary(args: argparse.Namespace) -> int:
    from pathmm_pipeline.stages.preprocess import qc_summary

    qc_summary(_listed_paths(args.tiles), _listed_paths(args.segmentation), args.out)
    return 0


def cmd_catalog(args: argparse.Namespace) -> int:
    from pathmm_pipeline.stages.catalog import write_catalog

    print(write_catalog(check=not args.write))
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from pathmm_pipeline.core.audit import audit, audit_json, format_details, format_table, lineage

    results, stale = audit(args.path)
    if args.json:
        print(audit_json(results, stale, with_lineage=args.lineage))
    else:
        print(format_table(results, stale))
        if args.details:
            print("\n" + "\n\n".join(format_details(r) for r in results))
        if args.lineage:
            for r in results:
                print("\n".join(lineage(r.path)))
    return 0 if results and all(r.ok for r in results) else 1


def cmd_info(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from pathmm_pipeline.preprocess.slides import slide_info

    info = slide_info(args.slide, backend=args.backend, fallback=not args.no_fallback, mpp_override=args.mpp)
    print(json.dumps(asdict(info), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pathmm", description=__doc__)
    parser.add_argument("--version", action="version", version=f"pathmm {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo-cohort", help="build the offline demo cohort from real TCGA data and real H&E")
    p.add_argument("--out", type=Path, default=Path("demo_cohort"))
    p.add_argument("--patients", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--source-slide", type=Path, default=None, help="a local copy of CMU-1-Small-Region.svs")
    p.add_argument("--slide-less", type=int, default=4, help="further patients without any slide (expression, "
                   "a report for every other one)")
    p.set_defaults(func=cmd_demo_cohort)

    p = sub.add_parser("extract-fold-features", aliases=["extract-cohort"],
                       help="extract every tiled slide of a manifest with one encoder into a folder (one process)")
    p.add_argument("--manifest", type=Path, required=True)
    p.add_argument("--tiles", type=Path, required=True, help="folder of the tile stores (<slide_id>.zarr)")
    p.add_argument("--out", type=Path, required=True, help="folder to write <slide_id>.zarr into")
    p.add_argument("--backend", default="openslide", choices=["openslide", "tiffslide"])
    p.add_argument("--no-fallback", action="store_true")
    p.add_argument("--settings", type=_settings, default={}, help="extraction settings as JSON")
    _throughput_args(p)
    _limit_args(p)
    p.set_defaults(func=cmd_extract_fold_features)

    p = sub.add_parser("tcga-cohort", help="a slide-less cohort (sample sheet, expression, published splits, "
                                           "cohort.yaml) from a TCGA folder in SurvPath's layout")
    p.add_argument("source", help="folder with rna_xena.csv, metadata.csv, clinical.csv, splits_5fold/ -- or "
                                  "blca / stad (the cohorts shipped with the package)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--results", default=None, help="results folder cohort.yaml names (default results_tcga_<name>)")
    p.add_argument("--cancer-type", default=None, help="cancer type of every patient (default: the folder's name "
                   "upper-cased, the TCGA project)")
    p.set_defaults(func=cmd_tcga_cohort)

    p = sub.add_parser("validate", help="validate config.yaml and its sample sheet")
    p.add_argument("--config", type=Path, default=Path("config.yaml"))
    p.add_argument("--samplesheet", type=Path, default=None)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("cohort-manifest", aliases=["manifest"],
                       help="validate a sample sheet and write it as a Parquet manifest")
    p.add_argument("samplesheet", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--settings", type=_settings, required=True, help='{"cancer_types": [...], "labels": [...]}')
    p.add_argument("--resolution", type=Path, default=None,
                   help="also write the cohort resolution table (CSV) read from every slide's header")
    p.add_argument("--backend", default="openslide", choices=["openslide", "tiffslide"])
    p.add_argument("--no-fallback", action="store_true", help="do not try the other backend")
    p.add_argument("--threads", type=int, default=4, help="threads reading slide headers")
    _limit_args(p)
    p.set_defaults(func=cmd_cohort_manifest)

    p = sub.add_parser("segment-tissue", aliases=["segment"], help="segment tissue of one slide")
    _slide_args(p)
    p.add_argument("--store", type=Path, required=True)
    p.add_argument("--geojson", type=Path, required=True)
    p.add_argument("--thumbnail", type=Path, required=True)
    p.set_defaults(func=cmd_segment_tissue)

    p = sub.add_parser("tile-slide", aliases=["tile"], help="tile one slide at the target mpp")
    _slide_args(p)
    p.add_argument("--segmentation", type=Path, required=True)
    p.add_argument("--store", type=Path, required=True)
    p.add_argument("--qc", type=_settings, default=None,
                   help="quality-control settings as JSON (qc: of config.yaml); without it no tile is measured")
    p.add_argument("--qc-table", type=Path, default=None, help="Parquet of every candidate tile's QC decision")
    p.add_argument("--roi", type=Path, default=None, metavar="PATH",
                   help="GeoJSON of the slide's regions of interest (QuPath export, level-0 px): only tiles these "
                        "polygons admit (the settings' roi: classes and overlaps) are kept")
    p.set_defaults(func=cmd_tile_slide)

    p = sub.add_parser("extract-features", aliases=["extract"],
                       help="extract patch features of one slide with one encoder")
    _slide_args(p)
    p.add_argument("--tiles", type=Path, required=True, help="the slide's tile store")
    p.add_argument("--store", type=Path, required=True, help="feature store to write")
    _throughput_args(p)
    p.set_defaults(func=cmd_extract_features)

    p = sub.add_parser("extract-features-bucket",
                       help="extract patch features of several slides with one encoder, loaded once (one store each)")
    p.add_argument("--jobs", type=_json_list, required=True,
                   help='JSON list of {"slide", "tiles", "store", "slide_id", "mpp_override"}, or @file.json')
    p.add_argument("--backend", default="openslide", choices=["openslide", "tiffslide"])
    p.add_argument("--no-fallback", action="store_true", help="do not try the other backend")
    p.add_argument("--settings", type=_settings, default={}, help="extraction settings as JSON")
    _throughput_args(p)
    _limit_args(p)
    p.set_defaults(func=cmd_extract_features_bucket)

    from pathmm_pipeline.preprocess.interop.layouts import LAYOUTS

    p = sub.add_parser("export-features", aliases=["export"],
                       help="write one slide's feature store in the layouts TRIDENT, CLAM / SurvPath or STAMP read")
    p.add_argument("--store", type=Path, required=True, help="the feature store")
    p.add_argument("--tiles", type=Path, required=True, help="the tile store it was extracted from")
    p.add_argument("--out", type=Path, required=True, help="export folder (the layouts' files go below it)")
    p.add_argument("--format", action="append", required=True, choices=LAYOUTS.names(), help="repeat for more")
    p.add_argument("--encoder", default=None, help="the feature folder's name (default: the store's encoder)")
    p.add_argument("--slide-id", default=None, help="the file name (default: the store's slide id)")
    p.set_defaults(func=cmd_export_features)

    p = sub.add_parser("import-features",
                       help="turn a TRIDENT / CLAM features h5 of one slide into a feature store")
    p.add_argument("source", type=Path, help="the <slide>.h5 features file")
    p.add_argument("--slide", type=Path, required=True, help="the whole-slide image the file was made from")
    p.add_argument("--store", type=Path, required=True, help="feature store to write")
    p.add_argument("--encoder", required=True, help="the feature folder's name (features.import key)")
    p.add_argument("--slide-id", default=None, help="identifier recorded in the store (default: the slide's stem)")
    p.add_argument("--backend", default="openslide", choices=["openslide", "tiffslide"])
    p.add_argument("--no-fallback", action="store_true", help="do not try the other backend")
    p.add_argument("--mpp", type=_optional_float, default=None, help="override the slide's mpp")
    p.set_defaults(func=cmd_import_features)

    p = sub.add_parser("encoders", help="list the registered patch encoders")
    p.set_defaults(func=cmd_encoders)

    p = sub.add_parser("slide-features", help="one slide's patch features through a frozen slide encoder into "
                       "results/slide_features/<encoder>/<slide>.zarr")
    p.add_argument("--encoder", required=True, help="slide encoder (pathmm slide-encoders lists them)")
    p.add_argument("--features", type=Path, required=True, help="the slide's patch feature store")
    p.add_argument("--tiles", type=Path, required=True, help="its tile store (the tile size at level 0)")
    p.add_argument("--out", type=Path, required=True, help="slide-feature store to write")
    p.add_argument("--weights", type=Path, default=None, help="local checkpoint (default: random init)")
    p.add_argument("--settings", type=_settings, default={}, help="slide_features settings as JSON (device)")
    p.set_defaults(func=cmd_slide_features)

    p = sub.add_parser("slide-encoders", help="list the slide encoders of the slide-features stage")
    p.set_defaults(func=cmd_slide_encoders)

    p = sub.add_parser("weights", help="fetch encoder weights with a manifest for offline machines, or verify one")
    weights = p.add_subparsers(dest="weights_command", required=True)
    q = weights.add_parser("fetch", help="download encoders' weights (HF_ENDPOINT: the hub) into OUT/<encoder>/ "
                                         "with a manifest.json (hub id, commit, each file's sha256 and size)")
    q.add_argument("encoders", nargs="+", metavar="ENCODER[=OWNER/REPO]",
                   help="registered encoder (its hf_hub: default), or any name with the repository to take")
    q.add_argument("--out", type=Path, required=True, help="folder that receives <encoder>/")
    q.add_argument("--revision", default=None, help="branch, tag or commit (default main); the manifest records "
                                                    "the commit it resolved to")
    q.add_argument("--file", dest="files", action="append", default=None,
                   help="a file to take (repeatable; default: model.safetensors, else pytorch_model.bin)")
    q.set_defaults(func=cmd_weights_fetch)
    q = weights.add_parser("verify", help="re-hash the files of weights manifests")
    q.add_argument("manifests", nargs="+", type=Path)
    q.set_defaults(func=cmd_weights_verify)

    p = sub.add_parser("genomics", aliases=["external-genomics"],
                       help="expression -> cohort genomics store (log scale, gene sets, rank scores)")
    p.add_argument("--expression", nargs="+", required=True, help=f"expression files (or {LISTED})")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--settings", type=_settings, required=True,
                   help='genomics settings (+ "patients": [...] unless --patients is given)')
    p.add_argument("--patients", nargs="+", default=None, help=f"the patients to keep (or {LISTED})")
    p.set_defaults(func=cmd_genomics)

    p = sub.add_parser("clean-report", help="clean and de-identify one patient's report into a Parquet table")
    p.add_argument("report", type=Path)
    p.add_argument("--patient", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--settings", type=_settings, default={})
    p.set_defaults(func=cmd_clean_report)

    p = sub.add_parser("merge-reports", help="merge per-patient cleaned reports into the cohort table")
    p.add_argument("tables", nargs="+", help=f"per-patient tables (or {LISTED})")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=cmd_merge_reports)

    p = sub.add_parser("embed-reports", help="embed the cohort's cleaned reports with a text encoder")
    p.add_argument("table", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--settings", type=_settings, default={})
    p.set_defaults(func=cmd_embed_reports)

    p = sub.add_parser("make-splits", aliases=["splits"], help="write the cohort's patient-level k-fold split files")
    p.add_argument("manifest", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--settings", type=_settings, default={}, help='{"k": 5, "stratify": ["event"], "seed": 0}')
    p.set_defaults(func=cmd_make_splits)

    p = sub.add_parser("train", help="train one model for one task on one fold, then evaluate the fold")
    p.add_argument("--model", required=True)
    p.add_argument("--task", required=True, help="survival, cox, classification:<column>, binary:<column>")
    p.add_argument("--fold", type=int, required=True)
    p.add_argument("--manifest", type=Path, required=True)
    p.add_argument("--splits", type=Path, required=True)
    p.add_argument("--features", type=Path, default=None, help="folder of one encoder's feature stores")
    p.add_argument("--genomics", type=Path, default=None)
    p.add_argument("--reports", type=Path, default=None)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--settings", type=_settings, default={}, help="training settings (TrainConfig) as JSON")
    p.add_argument("--label", default=None, help="the run's name in the results (a variant name)")
    p.add_argument("--pretrained", type=Path, default=None, help="a pretraining checkpoint to start from")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("downstream", help="a downstream task of one run on one fold (report generation, data "
                                          "efficiency)")
    p.add_argument("--kind", required=True,
                   choices=DOWNSTREAM_CARDS.names())
    p.add_argument("--model", required=True)
    p.add_argument("--label", default=None)
    p.add_argument("--task", required=True)
    p.add_argument("--fold", type=int, required=True)
    p.add_argument("--manifest", type=Path, required=True)
    p.add_argument("--splits", type=Path, required=True)
    p.add_argument("--features", type=Path, default=None)
    p.add_argument("--genomics", type=Path, default=None)
    p.add_argument("--reports", type=Path, default=None)
    p.add_argument("--checkpoint", type=Path, default=None, help="the fold's fine-tuned checkpoint")
    p.add_argument("--pretrained", type=Path, default=None, help="the fold's pretraining checkpoint")
    p.add_argument("--reports-table", type=Path, default=None, help="cleaned reports (reports.parquet)")
    p.add_argument("--out", type=Path, required=True, help="the CSV to write")
    p.add_argument("--settings", type=_settings, default={})
    p.set_defaults(func=cmd_downstream)

    p = sub.add_parser("mstar-stage2", help="mSTAR stage 2: self-teach a patch encoder against the stage-1 "
                                            "aggregator")
    p.add_argument("--manifest", type=Path, required=True)
    p.add_argument("--tiles", type=Path, required=True, help="folder of the tile stores (<slide_id>.zarr)")
    p.add_argument("--stage1", type=Path, required=True, help="the stage-1 pretraining checkpoint")
    p.add_argument("--base-encoder", required=True, help="registered patch encoder to self-teach")
    p.add_argument("--base-weights", default="default",
                   help="its starting weights: 'default' (the registry's), a local file or a hub id")
    p.add_argument("--out", type=Path, required=True, help="weights file to write (.pt)")
    p.add_argument("--settings", type=_settings, default={}, help="SelfTaughtConfig fields as JSON")
    p.add_argument("--splits", type=Path, default=None, help="folder of splits_<k>.csv (with --fold)")
    p.add_argument("--fold", type=int, default=None,
                   help="self-teach on this fold's training patients' slides only (default: every slide)")
    p.set_defaults(func=cmd_mstar_stage2)

    p = sub.add_parser("pretrain", aliases=["mstar-stage1"],
                       help="pretrain a multimodal model on one fold's training patients")
    p.add_argument("--model", required=True)
    p.add_argument("--fold", type=int, required=True, help="the fold, or -1 for every patient")
    p.add_argument("--manifest", type=Path, required=True)
    p.add_argument("--splits", type=Path, required=True)
    p.add_argument("--features", type=Path, default=None, help="folder of one encoder's feature stores")
    p.add_argument("--genomics", type=Path, default=None)
    p.add_argument("--reports", type=Path, default=None)
    p.add_argument("--external", type=Path, default=None, help="table of slide-less patients to add")
    p.add_argument("--external-genomics", type=Path, default=None, help="their genomics store")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--settings", type=_settings, default={}, help="pretraining settings (PretrainConfig) as JSON")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("evaluate", aliases=["report"], help="aggregate trained folds into the HTML evaluation report")
    p.add_argument("folds", type=Path, nargs="+", help="fold folders written by `pathmm train`")
    p.add_argument("--results", type=Path, required=True)
    p.add_argument("--heatmaps", type=Path, nargs="*", default=None,
                   help="heatmap folders to show (written by `pathmm heatmaps`; default: every one under --results)")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("heatmaps", aliases=["heatmap"],
                       help="attention and contribution heatmaps of a trained fold's highest- and lowest-scored "
                            "held-out patients, or of --slide on request")
    p.add_argument("--run", default=None, help="a trained run (as in training.models; RUN@ENCODER for a compared "
                                               "encoder), found in --results with --fold")
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--results", type=Path, default=Path("results"))
    p.add_argument("--encoder", default=None, help="with --run, when the results hold more than one")
    p.add_argument("--task", default=None, help="with --run (its folder name, e.g. survival), when there are several")
    p.add_argument("--slide", action="append", default=[], help="draw this slide (repeatable) instead of the "
                                                                "top / bottom patients' slides")
    p.add_argument("--checkpoint", type=Path, default=None, help="the fold's checkpoint.pt (instead of --run)")
    p.add_argument("--manifest", type=Path, default=None)
    p.add_argument("--features", type=Path, default=None, help="folder of the encoder's feature stores")
    p.add_argument("--tiles", type=Path, default=None, help="folder of the tile stores")
    p.add_argument("--segmentation", type=Path, default=None, help="folder of the segmentation stores and QC PNGs")
    p.add_argument("--genomics", type=Path, default=None)
    p.add_argument("--reports", type=Path, default=None)
    p.add_argument("--label", default=None, help="the run's name in the captions (default: the checkpoint's)")
    p.add_argument("--out", type=Path, default=None, help="folder to write (default with --run: "
                                                          "results/heatmaps/<encoder>/<run>/<task>/fold_<k>)")
    p.add_argument("--settings", type=_settings, default={},
                   help='{"top_k_patients": 2, "top_k_tiles": 8, "backend": "openslide"}')
    p.set_defaults(func=cmd_heatmaps)

    p = sub.add_parser("qc-summary", help="one row per slide: statuses, tissue area, tile counts")
    p.add_argument("--tiles", nargs="+", required=True, help=f"tile stores (or {LISTED})")
    p.add_argument("--segmentation", nargs="+", required=True, help=f"segmentation stores (or {LISTED})")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=cmd_qc_summary)

    p = sub.add_parser("catalog", help="check (or --write) the torch-free catalogue of models, encoders, tasks and "
                                       "downstream evaluations that planning the DAG reads")
    p.add_argument("--write", action="store_true", help="write it from the registries (after registering one)")
    p.set_defaults(func=cmd_catalog)

    p = sub.add_parser("audit", help="verify the provenance of a store or of every store under a folder")
    p.add_argument("path", type=Path)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--lineage", action="store_true", help="print each store's chain back to its raw inputs")
    p.add_argument("--details", action="store_true",
                   help="print each store's code identity, parameters and input hashes")
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("info", help="describe a slide: levels, mpp and where it came from")
    p.add_argument("slide", type=Path)
    p.add_argument("--backend", default="openslide", choices=["openslide", "tiffslide"])
    p.add_argument("--no-fallback", action="store_true")
    p.add_argument("--mpp", type=_optional_float, default=None)
    p.set_defaults(func=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``pathmm`` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except PathmmError as exc:
        print(f"pathmm {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - every other failure is one line too (--verbose: the traceback)
        if args.verbose:
            log.exception("pathmm %s failed", args.command)
        print(f"pathmm {args.command}: error: {describe_failure(exc, _subject(args))}", file=sys.stderr)
        return 2


def _subject(args: argparse.Namespace) -> str | None:
    """The command's main input, named in an error that carries no file of its own: the first path argument
    that exists on disk (the positional input comes first), else the first path argument."""
    paths = [v for v in vars(args).values() if isinstance(v, Path)]
    existing = [p for p in paths if p.exists()]
    chosen = existing[0] if existing else (paths[0] if paths else None)
    return None if chosen is None else str(chosen)


if __name__ == "__main__":
    sys.exit(main())
