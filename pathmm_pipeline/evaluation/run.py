"""Evaluating trained folds on their validation patients, the missing-modality stress test, and the
aggregation over folds into tidy tables.

:func:`evaluate_fold` takes a fold trained by :func:`~pathmm_pipeline.training.finetune.train_fold` (the
:class:`~pathmm_pipeline.training.finetune.FoldResult`, or its checkpoint) and the cohort, re-applies the fold's
gene scaler (fitted on its training patients) and predicts every validation patient:

* survival: the risk (higher = earlier event), Harrell's C-index with a seeded percentile bootstrap interval,
  the cumulative/dynamic AUC and the integrated Brier score from the discrete-time survival curves (IPCW with
  the training patients' censoring; for a Cox model the AUC from its risk, no Brier score), and Kaplan-Meier
  risk groups cut at the median risk of the *training* patients with the log-rank p-value;
* classification: balanced accuracy and macro one-vs-rest AUC (AUC for a binary task).

**Missing modalities** (``stress=True``) are reported two ways, kept apart:

* ``withheld <m>``: every held-out patient again with modality ``m`` removed at inference
  (:meth:`~pathmm_pipeline.models.PatientInput.without`), one subset per modality the model reads. Patients
  the model then cannot take (a required modality removed, or nothing left) are skipped and counted; when none
  is left the row is kept with NaN values and a note, so the table always has one row per modality and metric.
* ``missing <m>``: the held-out patients who really lack ``m`` in the data, as they are; and ``complete``:
  those who have every modality the model reads. Present only when the fold has such patients.

**Per cancer type** (a cohort of more than one type): the ``all`` subset is also scored on each type's
held-out patients (``cancer_type`` column; ``all`` is the pooled value), C-index with its bootstrap interval,
or balanced accuracy and AUC.

**Left out**: held-out patients the model cannot read at all (a required modality really missing, e.g. a
slide-less patient for a WSI-only model) are not predicted; ``n_left_out`` and the note count them.

:func:`aggregate_folds` stacks the folds' metrics (``folds``), summarises them per model x task x modality
subset x metric (mean and sample standard deviation over folds, ``summary``; ``summary_wide`` for reading),
pools the folds' out-of-fold risk groups into one Kaplan-Meier plot per model and task (each patient grouped
by its own fold's training cut-off), and collects the training curves and costs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pathmm_pipeline.evaluation.predict import predict_logits
from pathmm_pipeline.evaluation.trained import FoldResult
from pathmm_pipeline.models.checkpoint import LoadedCheckpoint, load_checkpoint
from pathmm_pipeline.stats.kaplan_meier import RiskGroupCurves, group_names, km_by_risk_group, risk_cutoffs
from pathmm_pipeline.stats.metrics import (
    bootstrap_c_index,
    classification_metrics,
    default_eval_times,
    discrete_survival_metrics,
    fold_summary,
    time_dependent_auc,
)
from pathmm_pipeline.tasks.kinds import probabilities, risk_scores

ALL = "all"
COMPLETE = "complete"
KEYS = ("model", "task", "selection", "fold", "subset", "removed", "modalities", "cancer_type")
SUMMARY_KEYS = ("model", "task", "selection", "subset", "removed", "modalities", "cancer_type", "metric")
SURVIVAL_METRICS = ("c_index", "td_auc", "ibs", "logrank_p")
CLASSIFICATION_METRICS = ("balanced_accuracy", "macro_auc")


@dataclass
class _Trained:
    model: Any
    model_name: str
    task: Any
    task_name: str
    fold_index: int
    time_bins: np.ndarray | None
    scaler: Any
    train_patients: list[str]
    val_patients: list[str]
    selection: str = "last"
    dropped: dict[str, str] = field(default_factory=dict)


def _as_trained(trained: Any) -> _Trained:
    if isinstance(trained, (str, os.PathLike)):
        trained = load_checkpoint(trained)
    if isinstance(trained, FoldResult):
        return _Trained(trained.model, trained.model_name, trained.task, trained.task_name, trained.fold_index,
                        trained.time_bins, trained.scaler, list(trained.train_patients), list(trained.val_patients),
                        trained.selection, dict(trained.dropped))
    if isinstance(trained, LoadedCheckpoint):
        return _Trained(trained.model, trained.model_name, trained.task, trained.task_name,
                        int(trained.fold["index"]), trained.time_bins, trained.scaler,
                        [str(p) for p in trained.fold["train"]], [str(p) for p in trained.fold["val"]],
                        str(trained.fold.get("selection", "last")), dict(trained.fold.get("dropped", {})))
    raise TypeError(f"expected a FoldResult, a LoadedCheckpoint or a checkpoint path, not {type(trained).__name__}")


@dataclass
class FoldEvaluation:
    """One fold's evaluation: tidy ``metrics`` (one row per subset x metric), per-patient ``predictions``,
    the Kaplan-Meier risk groups per subset (survival) and the patients skipped per subset."""

    model_name: str
    task_name: str
    fold_index: int
    metrics: pd.DataFrame
    predictions: pd.DataFrame
    km: dict[str, RiskGroupCurves] = field(default_factory=dict)
    skipped: dict[str, dict[str, str]] = field(default_factory=dict)
    cutoffs: tuple[float, ...] = ()

    def stress(self) -> pd.DataFrame:
        """The stress-test rows (one per removed modality and metric)."""
        return self.metrics[self.metrics.subset != ALL].reset_index(drop=True)

    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write ``metrics.csv`` and ``predictions.csv`` into ``folder`` (atomically)."""
        from pathmm_pipeline.core.atomic import write_text_atomic

        root = Path(folder)
        write_text_atomic(root / "metrics.csv", self.metrics.to_csv(index=False))
        write_text_atomic(root / "predictions.csv", self.predictions.to_csv(index=False))
        return root


def read_fold_evaluation(folder: str | os.PathLike[str]) -> FoldEvaluation:
    """A :class:`FoldEvaluation` written by :meth:`FoldEvaluation.save` (without the KM objects, which
    :func:`aggregate_folds` recomputes from the predictions)."""
    root = Path(folder)
    metrics = pd.read_csv(root / "metrics.csv", keep_default_na=True)
    predictions = pd.read_csv(root / "predictions.csv", dtype={"patient_id": str})
    for frame in (metrics, predictions):
        frame["removed"] = frame["removed"].fillna("").astype(str)
    first = metrics.iloc[0]
    return FoldEvaluation(str(first.model), str(first.task), int(first.fold), metrics, predictions)


def _modalities(model: Any, removed: Sequence[str]) -> str:
    return "+".join(m for m in ("wsi", "genomics", "report") if m in model.modalities and m not in removed) or "none"


def _row(base: dict[str, Any], metric: str, value: float, lower: float = np.nan, upper: float = np.nan,
         n: int = 0, n_events: int | None = None, note: str = "") -> dict[str, Any]:
    return {**base, "metric": metric, "value": float(value), "lower": float(lower), "upper": float(upper),
            "n_patients": int(n), "n_events": np.nan if n_events is None else int(n_events), "note": note}


def left_out_reasons(dropped: dict[str, str]) -> dict[str, int]:
    """Held-out patients a trained fold could not take, counted by reason (from the fold's ``dropped``)."""
    counts: dict[str, int] = {}
    for reason in dropped.values():
        if reason.startswith("val: "):
            key = reason.removeprefix("val: ")
            counts[key] = counts.get(key, 0) + 1
    return counts


def _c_index_rows(base: dict[str, Any], times: np.ndarray, events: np.ndarray, risk: np.ndarray, n_boot: int,
                  level: float, seed: int, note: str) -> dict[str, Any]:
    n, n_ev = len(times), int(np.sum(events))
    try:
        ci = bootstrap_c_index(times, events, risk, n_boot=n_boot, level=level, seed=seed)
        return _row(base, "c_index", ci.c_index, ci.lower, ci.upper, n, n_ev, note)
    except ValueError as exc:
        return _row(base, "c_index", np.nan, n=n, n_events=n_ev, note=str(exc))


def _classification_rows(base: dict[str, Any], labels: np.ndarray, probs: np.ndarray, k_classes: int,
                         note: str) -> list[dict[str, Any]]:
    try:
        res = classification_metrics(labels, probs, k_classes)
        bacc, macro, cnote = res.balanced_accuracy, res.macro_auc, note
    except ValueError as exc:
        from sklearn.metrics import balanced_accuracy_score

        predicted = (probs > 0.5).astype(int) if probs.ndim == 1 else probs.argmax(axis=1)
        bacc, macro, cnote = float(balanced_accuracy_score(labels, predicted)), np.nan, str(exc)
    return [_row(base, "balanced_accuracy", bacc, n=len(labels), note=note),
            _row(base, "macro_auc", macro, n=len(labels), note=cnote)]


def evaluate_fold(trained: Any, cohort: Any, patients: Sequence[str] | None = None, *, stress: bool = True,
                  n_boot: int = 1000, level: float = 0.95, seed: int = 0, device: str = "cpu",
                  km_quantiles: Sequence[float] = (0.5,)) -> FoldEvaluation:
    """Evaluate a trained fold on its held-out patients (or ``patients``); see the module docstring.

    ``trained``: a FoldResult, a LoadedCheckpoint or a checkpoint path. ``cohort``: the whole cohort (the
    fold's scaler from training is applied here)."""
    from pathmm_pipeline.models.losses import hazards_and_survival

    t = _as_trained(trained)
    model = t.model.to(device).eval()
    view = cohort.with_scaler(t.scaler) if cohort.genomics is not None else cohort
    val = list(t.val_patients if patients is None else patients)
    task = t.task
    survival = task.kind == "survival"
    reads = sorted(model.modalities)
    subsets: list[tuple[str, tuple[str, ...], list[str]]] = [(ALL, (), val)]
    if stress:
        subsets += [(f"withheld {m}", (m,), val) for m in reads]
        presence = {p: view.presence(p) for p in val}
        lacking = {m: [p for p in val if not presence[p][m]] for m in reads}
        complete = [p for p in val if all(presence[p][m] for m in reads)]
        if len(reads) > 1 and 0 < len(complete) < len(val):
            subsets.append((COMPLETE, (), complete))
        subsets += [(f"missing {m}", (), lacking[m]) for m in reads if lacking[m]]
    types = list(getattr(view, "cancer_types", []))
    left_out = left_out_reasons(t.dropped) if patients is None else {}
    n_left_out = sum(left_out.values())
    left_note = "; ".join(f"{n} left out: {r}" for r, n in sorted(left_out.items()))

    train_ids = [p for p in t.train_patients if p in cohort]
    cutoffs: tuple[float, ...] = ()
    train_times = train_events = None
    if survival:
        kept_train, train_logits, _ = predict_logits(model, view, train_ids, device)
        train_times, train_events = view.survival(kept_train)
        if len(kept_train):
            cutoffs = tuple(float(c) for c in risk_cutoffs(risk_scores(task, train_logits), km_quantiles))

    metric_rows: list[dict[str, Any]] = []
    prediction_frames: list[pd.DataFrame] = []
    km: dict[str, RiskGroupCurves] = {}
    skipped_all: dict[str, dict[str, str]] = {}
    names = SURVIVAL_METRICS if survival else CLASSIFICATION_METRICS
    for subset, removed, members in subsets:
        base = {"model": t.model_name, "task": t.task_name, "selection": t.selection, "fold": t.fold_index,
                "subset": subset, "removed": "+".join(removed), "modalities": _modalities(model, removed),
                "cancer_type": ALL}
        kept, logits, skipped = predict_logits(model, view, members, device, remove=removed)
        skipped_all[subset] = skipped
        if not kept:
            reason = next(iter(skipped.values()), "no patient") if skipped else "no patient"
            metric_rows += [_row(base, m, np.nan, note=f"not evaluable: {reason}") for m in names]
            continue
        notes = [f"{len(skipped)} patient(s) skipped"] if skipped else []
        if subset == ALL and left_note:
            notes.append(left_note)
        note = "; ".join(notes)
        pred = pd.DataFrame({"patient_id": kept, **base})
        pred["cancer_type"] = [types[view.targets(p).cancer_type] if types else ALL for p in kept]
        by_type = ([(name, np.array([c == name for c in pred["cancer_type"]])) for name in types]
                   if subset == ALL and len(types) > 1 else [])
        if survival:
            times, events = view.survival(kept)
            risk = risk_scores(task, logits)
            pred["time"], pred["event"], pred["risk"] = times, events, risk
            n, n_ev = len(kept), int(events.sum())
            metric_rows.append(_c_index_rows(base, times, events, risk, n_boot, level, seed, note))
            for name, mask in by_type:
                if mask.any():
                    metric_rows.append(_c_index_rows({**base, "cancer_type": name}, times[mask], events[mask],
                                                     risk[mask], n_boot, level, seed, ""))
            auc = ibs = np.nan
            extra_note = ""
            try:
                if task.is_cox:
                    eval_times = default_eval_times(train_times, times, events)
                    auc = time_dependent_auc(train_times, train_events, times, events, risk, eval_times).mean_auc
                    extra_note = "Cox model: no survival curve, no Brier score"
                else:
                    surv = hazards_and_survival(torch_tensor(logits))[1].numpy()
                    for k in range(surv.shape[1]):
                        pred[f"surv_{k}"] = surv[:, k]
                    res = discrete_survival_metrics(train_times, train_events, times, events, surv, t.time_bins)
                    auc, ibs = res["mean_auc"], res["ibs"]
            except ValueError as exc:
                extra_note = str(exc)
            metric_rows.append(_row(base, "td_auc", auc, n=n, n_events=n_ev, note=extra_note or note))
            metric_rows.append(_row(base, "ibs", ibs, n=n, n_events=n_ev, note=extra_note or note))
            p_value, group_note = np.nan, note
            if cutoffs:
                groups = np.searchsorted(np.asarray(cutoffs), risk, side="left")
                pred["risk_group"] = [group_names(len(cutoffs) + 1)[g] for g in groups]
                try:
                    curves = km_by_risk_group(times, events, risk, cutoffs=cutoffs)
                    km[subset] = curves
                    p_value = curves.logrank.p_value
                except ValueError as exc:
                    group_note = str(exc)
            metric_rows.append(_row(base, "logrank_p", p_value, n=n, n_events=n_ev, note=group_note))
        else:
            labels = view.labels(kept)
            probs = probabilities(task, logits)
            pred["label"] = labels
            if probs.ndim == 1:
                pred["prob_1"] = probs
            else:
                for k in range(probs.shape[1]):
                    pred[f"prob_{k}"] = probs[:, k]
            k_classes = 2 if task.kind == "binary" else task.n_outputs
            metric_rows += _classification_rows(base, labels, probs, k_classes, note)
            for name, mask in by_type:
                if mask.any():
                    metric_rows += _classification_rows({**base, "cancer_type": name}, labels[mask], probs[mask],
                                                        k_classes, "")
        prediction_frames.append(pred)
    metrics = pd.DataFrame(metric_rows)
    metrics["n_left_out"] = np.where((metrics["subset"] == ALL) & (metrics["cancer_type"] == ALL), n_left_out, 0)
    predictions = pd.concat(prediction_frames, ignore_index=True) if prediction_frames else pd.DataFrame()
    return FoldEvaluation(t.model_name, t.task_name, t.fold_index, metrics, predictions, km, skipped_all, cutoffs)


def torch_tensor(values: np.ndarray):
    import torch

    return torch.as_tensor(np.asarray(values, dtype=np.float64))


# ------------------------------------------------------------------------------------------- aggregation
@dataclass
class ResultsTables:
    """Everything the report shows, as tidy tables (and the pooled KM curves)."""

    summary: pd.DataFrame
    folds: pd.DataFrame
    predictions: pd.DataFrame
    km: dict[tuple[str, str], RiskGroupCurves]
    km_curves: pd.DataFrame
    logrank: pd.DataFrame
    history: pd.DataFrame
    training: pd.DataFrame

    def _pooled(self) -> pd.DataFrame:
        return self.summary[self.summary["cancer_type"] == ALL] if "cancer_type" in self.summary else self.summary

    def summary_wide(self, digits: int = 3) -> pd.DataFrame:
        """model x task x modality subset rows (all cancer types pooled), one ``mean ± std`` column per metric,
        with the selection protocol."""
        if self.summary.empty:
            return pd.DataFrame()
        frame = self._pooled().copy()
        index = ["model", "task", "selection", "subset", "modalities"]
        frame["cell"] = [_fmt(m, s, digits) for m, s in zip(frame["mean"], frame["std"])]
        wide = frame.pivot_table(index=index, columns="metric", values="cell", aggfunc="first", sort=False)
        order = [m for m in (*SURVIVAL_METRICS, *CLASSIFICATION_METRICS) if m in wide.columns]
        wide = wide[order + [c for c in wide.columns if c not in order]]
        n = frame.groupby(index, sort=False)["n_folds"].max()
        wide.insert(0, "folds", n)
        wide.columns.name = None
        return wide.reset_index()

    def per_cancer_type(self, digits: int = 3) -> pd.DataFrame:
        """Each run's primary metrics per cancer type beside the pooled value (``all``): ``mean ± std`` over
        folds of the per-fold value, and the per-fold bootstrap intervals' mean bounds. Empty for a cohort of
        one cancer type."""
        folds = self.folds
        if folds.empty or "cancer_type" not in folds or set(folds.cancer_type) <= {ALL}:
            return pd.DataFrame()
        keep = folds[(folds.subset == ALL) & folds.metric.isin(("c_index", "balanced_accuracy", "macro_auc"))]
        rows = []
        for key, group in keep.groupby(["model", "task", "selection", "cancer_type", "metric"], sort=False):
            values = group["value"].to_numpy(dtype=np.float64)
            s = fold_summary(values[np.isfinite(values)])
            rows.append({**dict(zip(("model", "task", "selection", "cancer_type", "metric"), key)),
                         "mean ± std": _fmt(s["mean"], s["std"], digits), "mean": s["mean"], "std": s["std"],
                         "ci_lower_mean": float(np.nanmean(group["lower"])) if group["lower"].notna().any()
                         else np.nan,
                         "ci_upper_mean": float(np.nanmean(group["upper"])) if group["upper"].notna().any()
                         else np.nan,
                         "n_folds": s["n"], "n_patients": int(group["n_patients"].sum()),
                         "n_events": float(group["n_events"].sum()) if group["n_events"].notna().any() else np.nan})
        frame = pd.DataFrame(rows)
        frame["_all"] = frame.cancer_type != ALL
        frame = frame.sort_values(["model", "task", "metric", "_all", "cancer_type"], kind="stable")
        return frame.drop(columns="_all").reset_index(drop=True)

    def patients_table(self) -> pd.DataFrame:
        """Per run: held-out patients evaluated and left out (summed over folds), and patients trained on."""
        folds = self.folds
        if folds.empty:
            return pd.DataFrame()
        primary = folds[(folds.subset == ALL) & (folds.cancer_type == ALL)
                        & folds.metric.isin(("c_index", "balanced_accuracy"))]
        rows = []
        for (model, task, selection), group in primary.groupby(["model", "task", "selection"], sort=False):
            notes = [n for n in group.note.fillna("").astype(str) if "left out" in n]
            rows.append({"model": model, "task": task, "selection": selection,
                         "held_out_evaluated": int(group.n_patients.sum()),
                         "held_out_left_out": int(group["n_left_out"].sum()) if "n_left_out" in group else 0,
                         "why_left_out": " | ".join(sorted(set(notes)))})
        frame = pd.DataFrame(rows)
        if not self.training.empty and "n_train" in self.training:
            trained = self.training.groupby(["model", "task"], sort=False)["n_train"].sum().rename("trained_on")
            frame = frame.merge(trained.reset_index(), on=["model", "task"], how="left")
        return frame

    def stress_table(self, digits: int = 3) -> pd.DataFrame:
        """Missing modalities: model x task rows, one ``mean ± std`` column per subset of the task's primary
        metric (C-index for survival, balanced accuracy for classification): ``all``, ``complete`` (patients
        with every modality the model reads), ``missing <m>`` (held-out patients who really lack ``m``) and
        ``withheld <m>`` (every held-out patient with ``m`` removed at inference)."""
        if self.summary.empty:
            return pd.DataFrame()
        rows = []
        for (model, task), group in self._pooled().groupby(["model", "task"], sort=False):
            metric = next((m for m in ("c_index", "balanced_accuracy", "auc") if m in set(group.metric)), None)
            if metric is None:
                continue
            row: dict[str, Any] = {"model": model, "task": task, "metric": metric}
            for _, r in group[group.metric == metric].iterrows():
                row[r["subset"]] = _fmt(r["mean"], r["std"], digits)
            rows.append(row)
        frame = pd.DataFrame(rows)
        subsets = [c for c in frame.columns if c not in ("model", "task", "metric")]
        rank = {ALL: 0, COMPLETE: 1}
        ordered = sorted(subsets, key=lambda c: (rank.get(c, 2 if c.startswith("missing") else 3), c))
        return frame[["model", "task", "metric", *ordered]]

    def tables(self) -> dict[str, pd.DataFrame]:
        return {"summary": self.summary, "summary_wide": self.summary_wide(), "stress": self.stress_table(),
                "per_cancer_type": self.per_cancer_type(), "patients": self.patients_table(),
                "folds": self.folds,
                "predictions": self.predictions, "km_curves": self.km_curves, "logrank": self.logrank,
                "training_history": self.history, "training": self.training}

    def to_csv(self, folder: str | os.PathLike[str]) -> dict[str, Path]:
        """Write every table as ``<name>.csv`` into ``folder`` (atomically); returns name -> path."""
        from pathmm_pipeline.core.atomic import write_text_atomic

        root = Path(folder)
        return {name: write_text_atomic(root / f"{name}.csv", frame.to_csv(index=False))
                for name, frame in self.tables().items()}


def _fmt(mean: float, std: float, digits: int) -> str:
    if not np.isfinite(mean):
        return "n/a"
    if not np.isfinite(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def summarize(folds: pd.DataFrame) -> pd.DataFrame:
    """Mean, sample std (ddof 1) and number of folds with a value, per model x task x subset x metric."""
    rows = []
    if folds.empty:
        return pd.DataFrame(columns=[*SUMMARY_KEYS, "mean", "std", "n_folds", "n_folds_total"])
    for key, group in folds.groupby(list(SUMMARY_KEYS), sort=False, dropna=False):
        values = group["value"].to_numpy(dtype=np.float64)
        s = fold_summary(values[np.isfinite(values)])
        rows.append({**dict(zip(SUMMARY_KEYS, key)), "mean": s["mean"], "std": s["std"], "n_folds": s["n"],
                     "n_folds_total": int(len(group))})
    return pd.DataFrame(rows)


def _training_rows(results: Iterable[Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    histories, costs = [], []
    for r in results:
        if isinstance(r, (str, os.PathLike)):
            r = load_checkpoint(r)
        if isinstance(r, FoldResult):
            h = r.history.copy()
            meta = {"model": r.model_name, "task": r.task_name, "fold": r.fold_index}
            costs.append({**meta, "selection": r.selection, "best_epoch": r.best_epoch, "epochs_run": len(h),
                          "stopped_early": r.stopped_early,
                          "monitor": r.monitor if r.selection == "inner" else None,
                          "n_train": len(r.train_patients), "n_inner_val": len(r.inner_val_patients),
                          "n_val": len(r.val_patients),
                          "n_dropped": len(r.dropped), "seconds": r.seconds, "peak_rss_mb": r.peak_rss_mb,
                          "peak_gpu_mb": r.peak_gpu_mb, "device": r.device,
                          "checkpoint": None if r.checkpoint is None else str(r.checkpoint)})
        elif isinstance(r, LoadedCheckpoint):
            h = pd.DataFrame(r.history)
            extra = r.provenance.get("extra", {})
            meta = {"model": extra.get("label", r.model_name), "task": r.task_name, "fold": int(r.fold["index"])}
            selection = str(r.fold.get("selection", "last"))
            costs.append({**meta, "selection": selection, "best_epoch": r.best_epoch, "epochs_run": len(h),
                          "stopped_early": extra.get("stopped_early"),
                          "monitor": r.train_config.get("monitor") if selection == "inner" else None,
                          "n_train": len(r.fold["train"]), "n_inner_val": len(r.fold.get("inner_val", [])),
                          "n_val": len(r.fold["val"]),
                          "n_dropped": len(r.fold.get("dropped", {})), "seconds": extra.get("seconds"),
                          "peak_rss_mb": extra.get("peak_rss_mb"), "peak_gpu_mb": extra.get("peak_gpu_mb"),
                          "device": extra.get("device"), "checkpoint": str(r.path)})
        else:
            raise TypeError(f"expected FoldResult, LoadedCheckpoint or a checkpoint path, not {type(r).__name__}")
        for k, v in reversed(list(meta.items())):
            h.insert(0, k, v)
        histories.append(h)
    history = pd.concat(histories, ignore_index=True) if histories else pd.DataFrame()
    return history, pd.DataFrame(costs)


def pooled_km(predictions: pd.DataFrame, subset: str = ALL) -> tuple[dict[tuple[str, str], RiskGroupCurves],
                                                                      pd.DataFrame, pd.DataFrame]:
    """Kaplan-Meier curves of the out-of-fold risk groups pooled over folds, per model and task (each patient in
    the group its own fold's training cut-off gave it), the curves as a tidy table, and the log-rank tests."""
    curves: dict[tuple[str, str], RiskGroupCurves] = {}
    rows, tests = [], []
    if predictions.empty or "risk_group" not in predictions:
        return curves, pd.DataFrame(), pd.DataFrame()
    chosen = predictions[(predictions.subset == subset) & predictions.risk_group.notna()]
    for (model, task), group in chosen.groupby(["model", "task"], sort=False):
        labels = sorted(group.risk_group.unique().tolist(), key=_group_rank)
        names_all = group_names(len(labels)) if len(labels) > 1 else tuple(labels)
        index = {name: i for i, name in enumerate(names_all)}
        if len(labels) < 2 or any(lab not in index for lab in labels):
            continue
        g = group.risk_group.map(index).to_numpy(dtype=np.float64)
        cut = np.arange(len(labels) - 1) + 0.5
        try:
            result = km_by_risk_group(group.time.to_numpy(), group.event.to_numpy(), g, cutoffs=cut)
        except ValueError:
            continue
        curves[(model, task)] = result
        for c in result.curves:
            rows += [{"model": model, "task": task, "group": c.label, "time": tt, "survival": s, "lower": lo,
                      "upper": up, "at_risk": ar} for tt, s, lo, up, ar in
                     zip(c.times, c.survival, c.lower, c.upper, c.at_risk)]
        lr = result.logrank
        tests.append({"model": model, "task": task, "subset": subset, "statistic": lr.statistic,
                      "p_value": lr.p_value, "df": lr.df, "groups": " | ".join(lr.groups),
                      "n_per_group": " | ".join(map(str, lr.n_per_group)),
                      "events_per_group": " | ".join(map(str, lr.events_per_group)), "n_folds": group.fold.nunique()})
    return curves, pd.DataFrame(rows), pd.DataFrame(tests)


def _group_rank(name: str) -> tuple[int, str]:
    order = {"low risk": 0, "high risk": 1}
    if name in order:
        return order[name], name
    digits = "".join(ch for ch in name.split(" ")[0] if ch.isdigit())
    return (int(digits) if digits else 99), name


def aggregate_folds(evaluations: Sequence[FoldEvaluation], training: Iterable[Any] = ()) -> ResultsTables:
    """Stack the folds' evaluations (and, from ``training``, FoldResults / checkpoints: curves and costs) into
    :class:`ResultsTables`."""
    folds = pd.concat([e.metrics for e in evaluations], ignore_index=True) if evaluations else pd.DataFrame()
    predictions = (pd.concat([e.predictions for e in evaluations if not e.predictions.empty], ignore_index=True)
                   if any(not e.predictions.empty for e in evaluations) else pd.DataFrame())
    km, km_curves, logrank = pooled_km(predictions)
    history, training_table = _training_rows(training)
    return ResultsTables(summarize(folds), folds, predictions, km, km_curves, logrank, history, training_table)
