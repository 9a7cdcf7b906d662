"""The training and evaluation stages as the DAG runs them, one function per rule and named as the rule:
``make_splits`` once, ``pretrain`` / ``mstar_stage1`` / ``mstar_stage2``, one ``train`` job per model x task x fold
(train, then evaluate on the fold's held-out patients), ``downstream`` and one ``evaluate`` (the report) per run.

Tasks are named in config: ``survival`` (discrete-time NLL), ``cox``, or a classification task on a sample-sheet
label column written ``<kind>:<column>`` (``classification:subtype``, ``binary:msi_status``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from pathmm_pipeline.cohort.selection import strata_table
from pathmm_pipeline.core.atomic import publish_staged, write_text_atomic
from pathmm_pipeline.core.atomic import staging_dir as atomic_staging_dir
from pathmm_pipeline.core.errors import InputError
from pathmm_pipeline.core.locks import dead_local_tag, owner_tag
from pathmm_pipeline.plan.runs import COHORT_KEYS, parse_task
from pathmm_pipeline.stages.settings import CohortSettings, FoldEvaluationSettings

log = logging.getLogger(__name__)


def patients_table(manifest: str | os.PathLike[str]) -> pd.DataFrame:
    """One row per patient from the pipeline's manifest, indexed by patient id, with ``event`` for splitting."""
    slides = pd.read_parquet(manifest)
    patients = slides.drop_duplicates("patient_id").set_index("patient_id")
    patients.index = patients.index.astype(str)
    return strata_table(patients)


def make_splits(manifest: str | os.PathLike[str], out_dir: str | os.PathLike[str], settings: dict[str, Any]) -> Path:
    """The cohort's split files (:func:`write_cohort_splits`) from the rule's settings (:class:`SplitSettings`)."""
    from pathmm_pipeline.stages.settings import SplitSettings

    s = SplitSettings.from_dict(settings)
    return write_cohort_splits(manifest, out_dir, k=s.k, stratify=s.stratify, seed=s.seed, published=s.published,
                               inner_fraction=s.inner_fraction, inner_seed=s.inner_seed)


def mstar_stage1(manifest: str | os.PathLike[str], splits_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                 settings: dict[str, Any], model: str = "mstar", **stores: Any) -> Path:
    """mSTAR stage 1 on every patient, held-out ones included (``training.mstar.mode: transductive`` only): the
    frozen aggregator stage 2 teaches against. ``per_fold`` mode uses the stage-1 run's :func:`pretrain` per fold."""
    return pretrain(model, -1, manifest, splits_dir, out_dir, settings, **stores)


def write_cohort_splits(manifest: str | os.PathLike[str], out_dir: str | os.PathLike[str], k: int = 5,
                        stratify: str | Sequence[str] | None = ("event",), seed: int = 0,
                        published: str | os.PathLike[str] | None = None, inner_fraction: float = 0.2,
                        inner_seed: int = 0) -> Path:
    """Write the cohort's patient-level k-fold split files once (or copy-validate published ones), and beside
    each the inner-validation split of its training patients (``inner_<k>.csv``, :mod:`.selection`)."""
    from pathmm_pipeline.cohort.selection import write_inner_splits
    from pathmm_pipeline.cohort.splits import make_splits, read_splits, write_splits

    patients = patients_table(manifest)
    if published:
        split_set, dropped = read_splits(published).restrict(list(patients.index))
        if dropped:
            log.warning("%d patient(s) of the published splits are not in the cohort", len(dropped))
    else:
        columns = stratify if isinstance(stratify, str) else tuple(stratify or ())
        split_set = make_splits(patients, k=k, stratify=columns or None, seed=seed)
    write_splits(split_set, out_dir, overwrite=True)
    write_inner_splits(split_set, patients, out_dir, inner_fraction, inner_seed)
    return Path(out_dir)


def split_settings(settings: dict[str, Any], keys: tuple[str, ...] = ()) -> tuple[dict[str, Any], dict[str, Any]]:
    """A job's settings JSON split into the cohort's keys (:data:`COHORT_KEYS`) plus ``keys``, and the rest
    (the training / pretraining settings)."""
    rest = dict(settings)
    taken = {k: rest.pop(k) for k in (*COHORT_KEYS, *keys) if k in rest}
    return taken, rest


def _cohort(manifest: Path, features_dir: Path | None, genomics: Path | None, reports: Path | None, task: str,
            options: CohortSettings):
    from pathmm_pipeline.cohort.dataset import MultimodalCohort

    _, label = parse_task(task)
    return MultimodalCohort.from_manifest(manifest, features_dir, genomics, reports, label_column=label,
                                          max_tiles=options.max_tiles, seed=options.seed,
                                          pathway_collection=options.pathway_collection,
                                          family_collection=options.family_collection,
                                          gene_scaling=options.gene_scaling)


def pretrain(model: str, fold_index: int, manifest: str | os.PathLike[str], splits_dir: str | os.PathLike[str],
                  out_dir: str | os.PathLike[str], settings: dict[str, Any],
                  features_dir: str | os.PathLike[str] | None = None, genomics: str | os.PathLike[str] | None = None,
                  reports: str | os.PathLike[str] | None = None,
                  external: str | os.PathLike[str] | None = None,
                  external_genomics: str | os.PathLike[str] | None = None) -> Path:
    """Pretrain ``model`` on fold ``fold_index``'s training patients (plus the external slide-less patients
    when given); writes ``pretrained.pt`` (+ provenance) and ``pretrain_log.csv`` into ``out_dir``."""
    from pathmm_pipeline.cohort.splits import read_splits
    from pathmm_pipeline.training.pretrain import PretrainConfig, external_cohort
    from pathmm_pipeline.training.pretrain import pretrain as pretrain_model

    taken, settings = split_settings(settings)
    config = PretrainConfig.from_dict(settings)
    cohort_options = CohortSettings.from_dict({**taken, "seed": config.seed})
    cohort = _cohort(Path(manifest), Path(features_dir) if features_dir else None,
                     Path(genomics) if genomics else None, Path(reports) if reports else None, "survival",
                     cohort_options)
    if fold_index < 0:  # every patient: a self-supervised stage whose output is shared by all folds
        from pathmm_pipeline.cohort.splits import Fold

        fold = Fold(-1, list(cohort.patient_ids), [])
    else:
        fold = read_splits(splits_dir)[fold_index]
    extra: dict[str, Any] = {}
    ext = None
    if external is not None:
        if external_genomics is None:
            raise InputError(external, "external patients given without their genomics store",
                             "pass --external-genomics (the genomics stage run on the external table)")
        ext = external_cohort(external, external_genomics, cohort, exclude=cohort.patient_ids)
        extra["external_patients"] = external
    split_file = Path(splits_dir) / f"splits_{fold_index}.csv"
    result = pretrain_model(model, cohort, fold.train, config, external=ext, out_dir=out_dir,
                      split_file=split_file if split_file.is_file() else None, extra_inputs=extra)
    last = result.history.iloc[-1].to_dict()
    log.info("pretrained %s fold %d on %d + %d external patients in %.1f s: %s", model, fold_index,
             len(result.patients), len(result.external_patients), result.seconds,
             ", ".join(f"{k}={v:.4f}" for k, v in last.items() if k != "epoch"))
    return Path(out_dir)


def train(model: str, task: str, fold_index: int, manifest: str | os.PathLike[str],
                       splits_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                       settings: dict[str, Any], features_dir: str | os.PathLike[str] | None = None,
                       genomics: str | os.PathLike[str] | None = None,
                       reports: str | os.PathLike[str] | None = None, *, label: str | None = None,
                       pretrained: str | os.PathLike[str] | None = None) -> Path:
    """Train one model for one task on one fold, then evaluate it (with the missing-modality stress test) on the
    fold's held-out patients. Writes ``checkpoint.pt`` (+ provenance), ``log.csv``/``log.json`` and
    ``metrics.csv``/``predictions.csv`` into ``out_dir``. ``label`` names the run in the tables (a variant
    name; default the model's); ``pretrained`` a pretraining checkpoint to start from.

    The run writes into ``<out_dir>.tmp-train-<host>-<pid>`` (its epoch logs are there while it trains; a
    second copy of the job has its own) and its files are moved into ``out_dir`` only once training and
    evaluation are done (:func:`publish_fold`): a killed run leaves no output that looks complete, and an earlier
    run's outputs stay as they were until then."""
    from pathmm_pipeline.cohort.splits import read_splits
    from pathmm_pipeline.evaluation.run import evaluate_fold
    from pathmm_pipeline.training.finetune import train_fold
    from pathmm_pipeline.training.settings import TrainConfig

    taken, settings = split_settings(settings, ("n_boot",))
    config = TrainConfig.from_dict(settings)
    n_boot = FoldEvaluationSettings.from_dict({k: taken.pop(k) for k in ("n_boot",) if k in taken}).n_boot
    cohort_options = CohortSettings.from_dict({**taken, "seed": config.seed})
    out = Path(out_dir)
    cohort = _cohort(Path(manifest), Path(features_dir) if features_dir else None,
                     Path(genomics) if genomics else None, Path(reports) if reports else None, task, cohort_options)
    fold = read_splits(splits_dir)[fold_index]
    inner, inner_file = fold_inner_split(splits_dir, fold, config.selection)
    kind, _ = parse_task(task)
    remove_dead_stagings(out)
    staging = staging_dir(out)
    try:
        result = train_fold(model, kind, cohort, fold, config, out_dir=staging, split_file=splits_dir,
                            pretrained=pretrained, label=label, inner=inner, inner_split_file=inner_file)
        evaluation = evaluate_fold(result, cohort, stress=True, n_boot=n_boot, seed=config.seed)
        evaluation.metrics["task"] = task
        evaluation.predictions["task"] = task
        if label is not None:
            evaluation.metrics["model"] = label
            evaluation.predictions["model"] = label
        evaluation.save(staging)
        publish_fold(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("%s %s fold %d: best epoch %d, %s", model, task, fold_index, result.best_epoch,
             evaluation.metrics.query("modalities == 'all'").to_dict("records")[:2])
    return out


def fold_inner_split(splits_dir: str | os.PathLike[str], fold: Any, selection: str
                     ) -> tuple[tuple[list[str], list[str]] | None, Path | None]:
    """The written inner split of ``fold`` (and its file) when ``selection`` is ``inner``, else ``(None, None)``."""
    from pathmm_pipeline.cohort.selection import inner_split_path, read_inner_split

    if selection != "inner":
        return None, None
    path = inner_split_path(splits_dir, fold.index)
    return read_inner_split(path, fold.index, fold.train), path


def staging_dir(out_dir: str | os.PathLike[str]) -> Path:
    """Where this process's training run writes before its outputs are moved into ``out_dir``:
    ``<out_dir>.tmp-train-<host>-<pid>``, so that two copies of one job never share (or delete) it."""
    return atomic_staging_dir(out_dir, f"{STAGING_LABEL}-{owner_tag()}")


#: the label of training staging folders (``<out_dir>.tmp-train-<host>-<pid>``)
STAGING_LABEL = "train"


def remove_dead_stagings(out_dir: str | os.PathLike[str]) -> list[Path]:
    """Remove the staging folders of ``out_dir`` left by killed runs of this host (their process is gone); a
    live copy's, or another node's, stays (``pathmm audit`` lists those as left-over temporaries)."""
    prefix = atomic_staging_dir(out_dir, f"{STAGING_LABEL}-").name
    removed = []
    for path in Path(atomic_staging_dir(out_dir, STAGING_LABEL)).parent.glob(f"{prefix}*"):
        if dead_local_tag(path.name[len(prefix):]):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def publish_fold(staging: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> Path:
    """Move a finished run's files from ``staging`` into ``out_dir`` (each by an atomic rename), then remove
    ``staging``.

    The logs and predictions go first, then the checkpoint and its provenance sidecar (re-pointed at the
    checkpoint's new path), ``metrics.csv`` last: a kill in between leaves a new checkpoint beside an old
    sidecar, which does not verify, never a mix that does."""
    from pathmm_pipeline.core.provenance import SIDECAR_SUFFIX, write_sidecar

    staging, out = Path(staging), Path(out_dir)
    checkpoint, metrics = "checkpoint.pt", "metrics.csv"
    sidecar = checkpoint + SIDECAR_SUFFIX
    publish_staged(staging, out, sorted(p.name for p in staging.iterdir()
                                        if p.name not in (checkpoint, sidecar, metrics)))
    if (staging / checkpoint).exists():
        record = json.loads((staging / sidecar).read_text())
        publish_staged(staging, out, [checkpoint])
        entry = record["outputs"]["checkpoint"]
        entry.update(path=str((out / checkpoint).resolve()), given_path=str(out / checkpoint))
        write_sidecar(out / checkpoint, record)
    if (staging / metrics).exists():
        publish_staged(staging, out, [metrics])
    shutil.rmtree(staging)
    return out


def downstream(kind: str, model: str, task: str, fold_index: int, manifest: str | os.PathLike[str],
                   splits_dir: str | os.PathLike[str], out_csv: str | os.PathLike[str], settings: dict[str, Any],
                   features_dir: str | os.PathLike[str] | None = None,
                   genomics: str | os.PathLike[str] | None = None, reports: str | os.PathLike[str] | None = None,
                   *, label: str | None = None, checkpoint: str | os.PathLike[str] | None = None,
                   pretrained: str | os.PathLike[str] | None = None,
                   reports_table: str | os.PathLike[str] | None = None):
    """One registered downstream evaluation (:data:`pathmm_pipeline.downstream.registry.DOWNSTREAM`:
    ``report_generation``, ``data_efficiency``, ``linear_probe``, ``out_of_distribution``, ``zero_shot``) of one
    run on one fold, written
    as ``out_csv`` (and, for report generation, the per-patient texts beside it). ``settings`` are the run's
    TrainConfig fields (its ``selection`` protocol governs every choice) plus ``downstream``, the evaluation's
    own options from config. Returns the :class:`~pathmm_pipeline.downstream.kinds.DownstreamResult`."""
    from pathmm_pipeline.cohort.splits import read_splits
    from pathmm_pipeline.downstream.registry import DOWNSTREAM, DownstreamJob
    from pathmm_pipeline.training.settings import TrainConfig

    evaluation = DOWNSTREAM.get(kind)
    taken, settings = split_settings(settings, ("n_boot", "downstream"))
    options = taken.pop("downstream", {})
    taken.pop("n_boot", None)  # a downstream job evaluates no fold
    config = TrainConfig.from_dict({**settings, "progress": False})
    cohort_options = CohortSettings.from_dict({**taken, "seed": config.seed})
    cohort = _cohort(Path(manifest), Path(features_dir) if features_dir else None,
                     Path(genomics) if genomics else None, Path(reports) if reports else None, task, cohort_options)
    fold = read_splits(splits_dir)[fold_index]
    out_csv = Path(out_csv)
    kind_name, _ = parse_task(task)
    job = DownstreamJob(model, label, kind_name, config, cohort, fold, out_csv.parent,
                        None if checkpoint is None else str(checkpoint),
                        None if pretrained is None else str(pretrained),
                        None if reports_table is None else str(reports_table), dict(options))
    result = evaluation.run(job)
    write_text_atomic(out_csv, result.table.to_csv(index=False))
    return result


def mstar_stage2(manifest: str | os.PathLike[str], tiles_dir: str | os.PathLike[str],
                 stage1: str | os.PathLike[str], base_encoder: str, out: str | os.PathLike[str],
                 settings: dict[str, Any], base_weights: str | None = "default",
                 patients: Sequence[str] | None = None) -> Path:
    """mSTAR stage 2: self-teach ``base_encoder`` on the tiles of every tiled slide of the manifest (of
    ``patients`` only, when given: a fold's training patients) against the
    frozen stage-1 aggregator ``stage1`` (a pretraining checkpoint); writes the weights (+ provenance) at
    ``out`` for the registered mSTAR encoder to load (:mod:`pathmm_pipeline.training.self_taught`); the student
    starts from ``base_weights`` (as :func:`~pathmm_pipeline.encoders.load_encoder`)."""
    from pathmm_pipeline.core.stores import open_store
    from pathmm_pipeline.training.self_taught import SelfTaughtConfig, train_patch_encoder

    source = Path(manifest)
    slides = pd.read_parquet(source) if source.suffix == ".parquet" else pd.read_csv(source, dtype=str)
    slides = slides[slides.slide_id.notna() & (slides.slide_id.astype(str) != "")]
    if patients is not None:
        slides = slides[slides.patient_id.astype(str).isin(set(map(str, patients)))]
    entries = []
    for row in slides.itertuples():
        store = Path(tiles_dir) / f"{row.slide_id}.zarr"
        if (store / "zarr.json").is_file() and int(open_store(store).attrs.get("n_tiles", 0)) > 0:
            entries.append((str(row.slide_path), str(store), str(row.patient_id)))
    if not entries:
        raise InputError(tiles_dir, "no tiled slide", "run tiling first; mSTAR stage 2 trains on tiles")
    config = SelfTaughtConfig(**{"progress": False, **settings})
    path = train_patch_encoder(entries, stage1, base_encoder, config, out, aggregator_checkpoint=stage1,
                               base_weights=base_weights)
    log.info("mSTAR stage 2: %s self-taught on %d slides -> %s", base_encoder, len(entries), path)
    return path


def _pretraining_logs(fold_dir: Path, results: Path) -> list[Path]:
    """The pretraining log of the run a fold folder belongs to (``training/<enc>/<model>/<task>/fold_<k>`` ->
    ``pretraining/<enc>/<model>/fold_<k>/pretrain_log.csv``), when there is one."""
    try:
        encoder, model, _task, fold = fold_dir.resolve().relative_to((results / "training").resolve()).parts[:4]
    except ValueError:
        return []
    path = results / "pretraining" / encoder / model / fold / "pretrain_log.csv"
    return [path] if path.is_file() else []


def read_downstream(fold_dirs: Sequence[str | os.PathLike[str]]) -> dict[str, pd.DataFrame]:
    """Downstream-task tables written into fold folders (``downstream_<name>.csv``), concatenated over folds
    and summarised (mean and std of every numeric column per model, task and setting)."""
    frames: dict[str, list[pd.DataFrame]] = {}
    for d in fold_dirs:
        for path in sorted(Path(d).glob("downstream_*.csv")):
            frames.setdefault(path.stem.removeprefix("downstream_"), []).append(pd.read_csv(path))
    out = {}
    for name, parts in frames.items():
        frame = pd.concat(parts, ignore_index=True)
        keys = [c for c in frame.columns if frame[c].dtype == object or c in ("fraction", "k")]
        values = [c for c in frame.select_dtypes("number").columns if c not in (*keys, "fold")]
        summary = frame.groupby(keys, sort=False)[values].agg(["mean", "std"]) if keys and values else frame
        if keys and values:
            summary.columns = [f"{a}_{b}" for a, b in summary.columns]
            summary = summary.reset_index().sort_values(keys, kind="stable").round(4)
        out[name.replace("_", " ")] = summary
    return out


def run_protocol(results_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """What the report states about how the numbers were made, read from the run's own files: the splits
    (method, seed, patients), the inner-validation fraction, and how each pretraining stage was kept apart from
    the held-out patients (per fold, or transductive for an mSTAR encoder trained once on every patient)."""
    root = Path(results_dir)
    protocol: dict[str, Any] = {}
    manifest = root / "splits" / "splits_manifest.json"
    if manifest.is_file():
        info = json.loads(manifest.read_text())
        how = {"file": "published split files used as they are"}.get(str(info.get("method")),
                                                                      f"{info.get('method')} (seed {info.get('seed')})")
        protocol["splits"] = f"{info.get('k')} patient-level folds over {info.get('n_patients')} patients, {how}"
    inner = sorted((root / "splits").glob("inner_*.csv"))
    if inner:
        protocol["inner"] = f"{len(inner)} files splits/inner_<k>.csv, stratified on event and cancer type"
    lines = []
    folds = sorted((root / "pretraining").glob("*/*/fold_*/pretrained.pt"))
    if folds:
        runs = sorted({p.parent.parent.name for p in folds})
        lines.append(f"{', '.join(runs)}: pretrained once per fold on that fold's training patients only (plus "
                     "any external patients outside the cohort), never on its held-out patients")
    for encoder in sorted(p for p in (root / "mstar" / "stage2").glob("*") if p.is_dir()):
        lines.append(f"mSTAR encoder {encoder.name}: stage 1 and stage 2 per fold on that fold's training "
                     "patients and slides; fold k's runs read features extracted with fold k's encoder")
    for weights in sorted((root / "mstar" / "stage2").glob("*.pt")):
        lines.append(f"TRANSDUCTIVE: mSTAR encoder {weights.stem} was trained once on every patient, held-out "
                     f"ones included (training.mstar.mode: transductive); runs @{weights.stem} are transductive")
    protocol["pretraining"] = lines
    return protocol


def report_notes(results_dir: str | os.PathLike[str]) -> list[str]:
    """Warnings the report opens with: reports kept with their identifiers (``reports.deid: false``)."""
    import pandas as pd

    from pathmm_pipeline.reports.stage import DEID_OFF_WARNING

    table = Path(results_dir) / "reports" / "reports.parquet"
    if not table.exists():
        return []
    kept = ~pd.read_parquet(table, columns=["deidentified"])["deidentified"].astype(bool)
    return [f"WARNING: {DEID_OFF_WARNING} ({int(kept.sum())} of {len(kept)} reports)"] if kept.any() else []


def evaluate(fold_dirs: Sequence[str | os.PathLike[str]], results_dir: str | os.PathLike[str],
                     out_html: str | os.PathLike[str], title: str = "pathmm evaluation report",
                     heatmap_dirs: Sequence[str | os.PathLike[str]] | None = None) -> Path:
    """Aggregate every fold of every model and task into the HTML report and its CSV tables; the report's
    heatmap section shows the heatmap jobs' folders ``heatmap_dirs`` (None: every one under ``results_dir``)."""
    from pathmm_pipeline.evaluation.html import (
        collect_inputs,
        read_pretraining_logs,
        write_report,
        write_report_provenance,
    )
    from pathmm_pipeline.evaluation.run import aggregate_folds, read_fold_evaluation
    from pathmm_pipeline.interpret.stage import collect_heatmaps

    if not fold_dirs:
        raise InputError(results_dir, "no trained folds to report", "list models and tasks under training:")
    evaluations = [read_fold_evaluation(d) for d in fold_dirs]
    checkpoints = [Path(d) / "checkpoint.pt" for d in fold_dirs]
    tables = aggregate_folds(evaluations, training=checkpoints)
    root = Path(results_dir)
    out_html = Path(out_html)
    pretrain_logs = sorted(p for d in fold_dirs for p in _pretraining_logs(Path(d), root))
    write_report(tables, out_html, qc=root / "qc" / "slides.parquet", thumbnails=root / "segmentation",
                 benchmarks=root / "benchmarks", provenance=collect_inputs(root), title=title,
                 csv_dir=out_html.parent, pretraining=read_pretraining_logs(sorted(set(pretrain_logs))),
                 downstream=read_downstream(fold_dirs), protocol=run_protocol(root),
                 resolution=root / "cohort" / "resolution.csv", notes=report_notes(root),
                 heatmaps=collect_heatmaps(root, None if heatmap_dirs is None else list(heatmap_dirs)))
    write_text_atomic(out_html.parent / "summary.json",
                      json.dumps(json.loads(tables.summary.to_json(orient="records")), indent=1))
    write_report_provenance(out_html, fold_dirs, root, [out_html.parent / "summary.json",
                                                        out_html.parent / "summary.csv"],
                            {"title": title, "n_folds": len(fold_dirs)})
    return out_html
