"""The heatmaps of one trained fold: its highest- and lowest-scored held-out patients (or slides named on request),
each slide drawn by :func:`~pathmm_pipeline.interpret.heatmap.slide_heatmap` from the stored features.

:func:`fold_heatmaps` reads the fold's checkpoint and its ``predictions.csv`` (beside it, written by training's
evaluation of the held-out patients), picks the patients (:func:`pick_patients`), rebuilds each patient's other
modalities exactly as evaluation does (the cohort options recorded in the checkpoint, the fold's gene scaler) and
writes, atomically, ``<out_dir>/<slide>/`` per slide plus ``<out_dir>/index.json``: one row per slide (patient,
why it was chosen, its score, order, tiles, seconds) and the provenance (checkpoint, predictions, manifest and every
store read). The model reads one slide's tiles at a time, every tile of it (training capped a patient's bag at
``training.max_tiles``); a patient with several slides gets one heatmap per slide.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pathmm_pipeline.core.atomic import atomic_path
from pathmm_pipeline.core.errors import InputError
from pathmm_pipeline.core.provenance import build_provenance, jsonable
from pathmm_pipeline.interpret.heatmap import SUMMARY, slide_heatmap
from pathmm_pipeline.interpret.settings import HeatmapSettings

STAGE = "heatmaps"
INDEX = "index.json"
ALL = "all"  # the predictions' subset with every modality the model reads (evaluation.run.ALL)


def prediction_scores(predictions: pd.DataFrame) -> tuple[pd.Series, str]:
    """Each held-out patient's score in the fold's ``predictions.csv`` (the ``all`` subset) and what it is:
    the risk (survival; higher = earlier event), P(class 1) (binary) or the predicted class's probability."""
    rows = predictions[predictions["subset"].astype(str) == ALL] if "subset" in predictions else predictions
    rows = rows.drop_duplicates("patient_id").set_index(rows.drop_duplicates("patient_id").patient_id.astype(str))
    if "risk" in rows:
        return rows["risk"].astype(float), "risk"
    probs = [c for c in rows.columns if c.startswith("prob_")]
    if probs == ["prob_1"]:
        return rows["prob_1"].astype(float), "P(class 1)"
    if probs:
        return rows[probs].astype(float).max(axis=1), "predicted class probability"
    raise ValueError("the predictions have no risk and no prob_<k> column")


def pick_patients(predictions: pd.DataFrame, k: int) -> list[tuple[str, str, float]]:
    """``(patient, why, score)`` for the ``k`` highest-scored held-out patients (highest first), then the ``k``
    lowest (lowest first), never one patient twice (a fold of fewer than 2k patients gives each once)."""
    scores, what = prediction_scores(predictions)
    scores = scores[np.isfinite(scores.to_numpy())]
    order = scores.sort_values(ascending=False, kind="stable")
    high = list(order.index[:k])
    low = [p for p in order.index[::-1][:k] if p not in high]
    return ([(p, f"highest {what}", float(scores[p])) for p in high]
            + [(p, f"lowest {what}", float(scores[p])) for p in low])


def _slides(manifest: pd.DataFrame, patient: str) -> list[tuple[str, str]]:
    rows = manifest[manifest.patient_id.astype(str) == patient]
    return [(str(s), str(p)) for s, p in zip(rows.slide_id, rows.slide_path) if isinstance(s, str) and s]


def _read_manifest(path: Path) -> pd.DataFrame:
    frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, dtype=str)
    for column in ("patient_id", "slide_id", "slide_path"):
        if column not in frame:
            raise InputError(path, f"has no '{column}' column", "pass the pipeline's cohort manifest")
    return frame.dropna(subset=["slide_id"])


def _n_tiles(store: Path) -> int:
    from pathmm_pipeline.core.stores import open_store

    return int(open_store(store).attrs.get("n_tiles", 0)) if (store / "zarr.json").is_file() else 0


def fold_heatmaps(checkpoint: str | os.PathLike[str], manifest: str | os.PathLike[str],
                  out_dir: str | os.PathLike[str], *, features_dir: str | os.PathLike[str],
                  tiles_dir: str | os.PathLike[str], segmentation_dir: str | os.PathLike[str],
                  genomics: str | os.PathLike[str] | None = None, reports: str | os.PathLike[str] | None = None,
                  settings: HeatmapSettings | None = None, predictions: str | os.PathLike[str] | None = None,
                  slides: list[str] | None = None, run: str | None = None) -> Path:
    """Write the heatmaps of one trained fold into ``out_dir`` (see the module docstring); returns it.

    ``predictions``: the fold's held-out predictions (default: ``predictions.csv`` beside the checkpoint);
    ``slides``: draw these slides instead of the top / bottom patients' (per slide on request: any slide of the
    manifest, held out or not -- its caption says which); ``run``: the run's name in the captions."""
    from pathmm_pipeline.cohort.dataset import MultimodalCohort
    from pathmm_pipeline.evaluation.predict import model_input
    from pathmm_pipeline.models.checkpoint import load_checkpoint

    s = settings or HeatmapSettings()
    checkpoint = Path(checkpoint)
    ck = load_checkpoint(checkpoint)
    fold = int(ck.fold["index"])
    held_out = {str(p) for p in ck.fold.get("val", [])}
    run = run or str(ck.provenance.get("extra", {}).get("label") or ck.model_name)
    table = _read_manifest(Path(manifest))
    pred_path = Path(predictions) if predictions is not None else checkpoint.parent / "predictions.csv"
    if slides:
        by_slide = dict(zip(table.slide_id.astype(str), table.patient_id.astype(str)))
        unknown = [x for x in slides if x not in by_slide]
        if unknown:
            raise InputError(manifest, f"has no slide {unknown[0]!r}", "name a slide_id of the cohort manifest")
        chosen = [(by_slide[x], "requested" + ("" if by_slide[x] in held_out else ", trained on in this fold"),
                   float("nan"), x) for x in slides]
    else:
        if not pred_path.is_file():
            raise InputError(pred_path, "not found", "train the fold first (its evaluation writes predictions.csv)")
        picked = pick_patients(pd.read_csv(pred_path, dtype={"patient_id": str}), s.top_k_patients)
        chosen = [(p, why, score, sid) for p, why, score in picked for sid, _ in _slides(table, p)]
    paths = dict(zip(table.slide_id.astype(str), table.slide_path.astype(str)))

    info = ck.provenance.get("extra", {}).get("cohort", {})
    cohort = MultimodalCohort.from_manifest(
        table, features_dir, genomics, reports, label_column=info.get("label_column"),
        label_classes=ck.label_classes or None, cancer_types=ck.cancer_types or None,
        pathway_collection=info.get("pathway_collection", "survpath"),
        family_collection=info.get("family_collection", "mcat_families"))
    if cohort.genomics is not None:
        cohort = cohort.with_scaler(ck.scaler)
    model = ck.model.eval()
    features_dir, tiles_dir, seg_dir = Path(features_dir), Path(tiles_dir), Path(segmentation_dir)
    rows: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    out = Path(out_dir)
    with atomic_path(out, use_scratch=False) as tmp:
        tmp.mkdir(parents=True)
        for order, (patient, why, score, slide) in enumerate(chosen):
            store = features_dir / f"{slide}.zarr"
            if _n_tiles(store) == 0:
                skipped[slide] = "no tile in its feature store"
                continue
            # the patient's other modalities as evaluation gives them; the slide's own tiles are the bag
            context = model_input(cohort, model, patient, remove=("wsi",)).x
            start = time.perf_counter()
            slide_heatmap(model, tmp / slide, features_store=store, tiles_store=tiles_dir / f"{slide}.zarr",
                          segmentation_store=seg_dir / f"{slide}.zarr", thumbnail=seg_dir / f"{slide}.qc.png",
                          checkpoint=checkpoint, slide_path=paths.get(slide) if s.top_k_tiles else None,
                          context=context, top_k=s.top_k_tiles, backend=s.backend,
                          caption={"run": run, "patient": patient, "fold": fold, "why": why, "score": score,
                                   "order": order, "held_out": patient in held_out})
            summary = json.loads((tmp / slide / SUMMARY).read_text())
            rows.append({"patient_id": patient, "slide_id": slide, "why": why, "score": score, "order": order,
                         "held_out": patient in held_out, "n_tiles": summary["n_tiles"],
                         "ranked_by": summary["ranked_by"], "seconds": time.perf_counter() - start,
                         "attention_seconds": summary["attention_seconds"],
                         "contribution_seconds": summary["contribution_seconds"]})
        inputs: dict[str, str | os.PathLike[str]] = {"checkpoint": checkpoint, "manifest": manifest}
        if not slides:
            inputs["predictions"] = pred_path
        for row in rows:
            for role, path in (("features", features_dir), ("tiles", tiles_dir), ("segmentation", seg_dir)):
                inputs[f"{role}:{row['slide_id']}"] = path / f"{row['slide_id']}.zarr"
        params = {"run": run, "model": ck.model_name, "task": ck.task_name, "fold": fold, **s.to_dict(),
                  "slides": list(slides or [])}
        index = {"run": run, "model": ck.model_name, "task": ck.task_name, "fold": fold,
                 "requested": bool(slides), "slides": rows,
                 "skipped": skipped, "provenance": build_provenance(STAGE, inputs, params)}
        (tmp / INDEX).write_text(json.dumps(jsonable(index), indent=1))
    return out


def collect_heatmaps(results_dir: str | os.PathLike[str],
                     folders: list[str | os.PathLike[str]] | None = None) -> pd.DataFrame:
    """Every slide heatmap the heatmap stage wrote under ``<results_dir>/heatmaps/`` (each job's ``index.json``;
    ``folders``: only those jobs' folders, as the DAG lists them), slides drawn on request left out,
    one row per slide: run, task, fold, order (highest-scored patients first), patient, slide, why it was chosen,
    score, tiles, seconds and the PNGs (``png``: the attention map where the model has one, else the
    contribution; ``contribution_png``). Empty (with these columns) when there is none: the report builds
    either way."""
    columns = ["run", "task", "fold", "order", "patient_id", "slide_id", "why", "score", "n_tiles", "ranked_by",
               "seconds", "png", "contribution_png"]
    rows = []
    indexes = (sorted(Path(results_dir, "heatmaps").glob(f"**/{INDEX}")) if folders is None
               else [Path(f) / INDEX for f in folders if (Path(f) / INDEX).is_file()])
    for index in indexes:
        data = json.loads(index.read_text())
        if data.get("requested"):
            continue  # slides drawn on request are not the report's
        for row in data.get("slides", []):
            folder = index.parent / str(row["slide_id"])
            attention, contribution = folder / "attention.png", folder / "contribution.png"
            if not contribution.is_file():
                continue
            rows.append({**{k: row.get(k) for k in columns if k in row}, "run": data["run"], "task": data["task"],
                         "fold": int(data["fold"]),
                         "png": str(attention if attention.is_file() else contribution),
                         "contribution_png": str(contribution)})
    frame = pd.DataFrame(rows, columns=columns)
    return frame.sort_values(["run", "task", "fold", "order"], kind="stable").reset_index(drop=True)
