"""The training and evaluation stages as the DAG runs them: splits once, one job per model x task x fold
(train, then evaluate on the fold's held-out patients), and one report per run.

Tasks are named in config: ``survival`` (discrete-time NLL), ``cox``, or a classification task on a sample-sheet
label column written ``<kind>:<column>`` (``classification:subtype``, ``binary:msi_status``).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from ..atomic import write_text_atomic
from ..errors import InputError

log = logging.getLogger(__name__)


def parse_task(task: str) -> tuple[str, str | None]:
    """``"classification:subtype"`` -> ("classification", "subtype"); ``"survival"`` -> ("survival", None)."""
    kind, _, column = task.partition(":")
    if kind not in ("survival", "cox", "classification", "binary"):
        raise InputError(task, "unknown task", "use survival, cox, classification:<column> or binary:<column>")
    if kind in ("classification", "binary") and not column:
        raise InputError(task, f"a {kind} task needs a label column", f"write it as {kind}:<column>")
    return kind, column or None


def task_slug(task: str) -> str:
    """A file-name-safe name for a task (``classification:subtype`` -> ``classification-subtype``)."""
    return task.replace(":", "-")


def patients_table(manifest: str | os.PathLike[str]) -> pd.DataFrame:
    """One row per patient from the pipeline's manifest, indexed by patient id, with ``event`` for splitting."""
    slides = pd.read_parquet(manifest)
    patients = slides.drop_duplicates("patient_id").set_index("patient_id")
    patients.index = patients.index.astype(str)
    if "survival_event" in patients:
        patients["event"] = pd.to_numeric(patients["survival_event"], errors="coerce").fillna(0).astype(int)
    return patients


def write_cohort_splits(manifest: str | os.PathLike[str], out_dir: str | os.PathLike[str], k: int = 5,
                        stratify: str | Sequence[str] | None = ("event",), seed: int = 0,
                        published: str | os.PathLike[str] | None = None) -> Path:
    """Write the cohort's patient-level k-fold split files once (or copy-validate published ones)."""
    from .splits import make_splits, read_splits, write_splits

    patients = patients_table(manifest)
    if published:
        split_set, dropped = read_splits(published).restrict(list(patients.index))
        if dropped:
            log.warning("%d patient(s) of the published splits are not in the cohort", len(dropped))
    else:
        columns = stratify if isinstance(stratify, str) else tuple(stratify or ())
        split_set = make_splits(patients, k=k, stratify=columns or None, seed=seed)
    write_splits(split_set, out_dir, overwrite=True)
    return Path(out_dir)


def _cohort(manifest: Path, features_dir: Path | None, genomics: Path | None, reports: Path | None, task: str,
            options: dict[str, Any]):
    from .dataset import MultimodalCohort

    _, label = parse_task(task)
    return MultimodalCohort.from_manifest(manifest, features_dir, genomics, reports, label_column=label,
                                          max_tiles=options.get("max_tiles", 4096), seed=options.get("seed", 0))


def train_and_evaluate(model: str, task: str, fold_index: int, manifest: str | os.PathLike[str],
                       splits_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                       settings: dict[str, Any], features_dir: str | os.PathLike[str] | None = None,
                       genomics: str | os.PathLike[str] | None = None,
                       reports: str | os.PathLike[str] | None = None) -> Path:
    """Train one model for one task on one fold, then evaluate it (with the missing-modality stress test) on the
    fold's held-out patients. Writes ``checkpoint.pt`` (+ provenance), ``log.csv``/``log.json`` and
    ``metrics.csv``/``predictions.csv`` into ``out_dir``."""
    from ..evaluation.run import evaluate_fold
    from .loop import TrainConfig, train_fold
    from .splits import read_splits

    settings = dict(settings)
    cohort_options = {k: settings.pop(k) for k in ("max_tiles",) if k in settings}
    cohort_options["seed"] = settings.get("seed", 0)
    n_boot = int(settings.pop("n_boot", 1000))
    config = TrainConfig.from_dict(settings)
    out = Path(out_dir)
    cohort = _cohort(Path(manifest), Path(features_dir) if features_dir else None,
                     Path(genomics) if genomics else None, Path(reports) if reports else None, task, cohort_options)
    fold = read_splits(splits_dir)[fold_index]
    kind, _ = parse_task(task)
    result = train_fold(model, kind, cohort, fold, config, out_dir=out, split_file=splits_dir)
    evaluation = evaluate_fold(result, cohort, stress=True, n_boot=n_boot, seed=config.seed)
    evaluation.metrics["task"] = task
    evaluation.predictions["task"] = task
    evaluation.save(out)
    log.info("%s %s fold %d: best epoch %d, %s", model, task, fold_index, result.best_epoch,
             evaluation.metrics.query("modalities == 'all'").to_dict("records")[:2])
    return out


def write_run_report(fold_dirs: Sequence[str | os.PathLike[str]], results_dir: str | os.PathLike[str],
                     out_html: str | os.PathLike[str], title: str = "pathmm evaluation report") -> Path:
    """Aggregate every fold of every model and task into the HTML report and its CSV tables."""
    from ..evaluation.report import collect_inputs, write_report
    from ..evaluation.run import aggregate_folds, read_fold_evaluation

    if not fold_dirs:
        raise InputError(results_dir, "no trained folds to report", "list models and tasks under training:")
    evaluations = [read_fold_evaluation(d) for d in fold_dirs]
    checkpoints = [Path(d) / "checkpoint.pt" for d in fold_dirs]
    tables = aggregate_folds(evaluations, training=checkpoints)
    root = Path(results_dir)
    out_html = Path(out_html)
    write_report(tables, out_html, qc=root / "qc" / "slides.parquet", thumbnails=root / "segmentation",
                 benchmarks=root / "benchmarks", provenance=collect_inputs(root), title=title,
                 csv_dir=out_html.parent)
    write_text_atomic(out_html.parent / "summary.json",
                      json.dumps(json.loads(tables.summary.to_json(orient="records")), indent=1))
    return out_html
