"""Downstream tasks of the multimodal methods, per fold, as tables the run report shows.

* :func:`report_generation` (ALTER's downstream task): the fine-tuned model's fused embedding of each patient
  computed **without the report** (WSI and genomics only, so the text to generate is never an input), a
  report decoder (:mod:`pathmm_pipeline.downstream.report_generation`) trained on the fold's training patients' cleaned
  reports, then BLEU-4, METEOR (exact + stem) and ROUGE-L on the held-out patients; the nearest-training-report
  retrieval baseline is scored the same way.
* :func:`data_efficiency` (MICE's curve): fine-tuning on 10/25/50/100 % of the fold's training patients (a seeded
  subsample, stratified by cancer type), from the pretraining checkpoint and from scratch, evaluated on the
  fold's validation patients: pan-cancer, and per cancer type (fine-tuned on that type's training patients,
  evaluated on its validation patients).
* :func:`linear_probe` (ModalTune's published evaluation): frozen general-prompt features -> lifelines Cox
  (C-index) or logistic regression (balanced accuracy).
* :func:`out_of_distribution` (ModalTune's transfer): tuned on one cancer type's training patients, probed on
  another's.
* :func:`zero_and_few_shot` (mSTAR's): zero-shot cancer-type classification in the aligned slide/text space and
  few-shot (k = 1, 2, 4, 8 per class) logistic regression on slide embeddings.

Every function returns a :class:`DownstreamResult`: the table (one ``selection`` column saying the protocol)
and ``fitted``, everything it fitted (decoder weights, probe coefficients, sub-model weights), so that a test
can show that none of it changes when the held-out patients' data or outcomes do. Choices follow the fold's
selection protocol (:mod:`.selection`): under ``last`` the probe penalty and the decoder schedule are fixed;
under ``inner`` the probe penalty is searched on an inner split of the training patients only.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pathmm_pipeline.cohort.dataset import MultimodalCohort
from pathmm_pipeline.cohort.selection import check_selection, inner_split, strata_table
from pathmm_pipeline.cohort.splits import Fold
from pathmm_pipeline.core.atomic import write_text_atomic
from pathmm_pipeline.models import PathmmModel, TaskSpec
from pathmm_pipeline.training.finetune import TrainConfig, model_input, score_metric, train_fold

log = logging.getLogger(__name__)

DEFAULT_FRACTIONS = (0.1, 0.25, 0.5, 1.0)
#: the probes' penalty grids searched under ``selection: inner`` (lifelines L2 penalizer; sklearn's C)
COX_PENALTIES = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0)
LOGISTIC_CS = (0.01, 0.1, 1.0, 10.0)
#: the fixed penalties under ``selection: last`` (ModalTune's protocol: a regularised linear probe)
COX_PENALTY = 0.5
LOGISTIC_C = 1.0


@dataclass
class DownstreamResult:
    """A downstream evaluation of one run on one fold: ``table`` (what the report shows) and ``fitted`` (name ->
    every tensor / array the evaluation fitted on training patients)."""

    table: pd.DataFrame
    fitted: dict[str, Any] = field(default_factory=dict)


def _state(module: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in module.state_dict().items()}


@torch.no_grad()
def patient_embeddings(model: PathmmModel, cohort: MultimodalCohort, patients: Sequence[str],
                       withhold: Sequence[str] = ()) -> tuple[list[str], np.ndarray]:
    """``(kept ids, (n, E) embeddings)`` of ``patients`` with the ``withhold`` modalities removed; patients left
    with none of the model's modalities are skipped."""
    model.eval()
    kept, rows = [], []
    for p in patients:
        x = model_input(cohort, model, p).x.without(*withhold)
        if not any(v for m, v in x.present().items() if m in model.modalities):
            continue
        rows.append(model(x).embedding.reshape(-1).float().cpu().numpy())
        kept.append(p)
    return kept, np.stack(rows) if rows else np.zeros((0, model.embedding_dim), dtype=np.float32)


def report_generation(model: PathmmModel, cohort: MultimodalCohort, fold: Fold, reports_table: str | os.PathLike[str],
                      settings: dict[str, Any] | None = None, out_dir: str | os.PathLike[str] | None = None,
                      label: str | None = None, selection: str = "last") -> DownstreamResult:
    """Generate the held-out patients' reports from the model's report-free embedding (see the module
    docstring). Returns one row per method (``decoder``, ``retrieval``) with the corpus scores; with
    ``out_dir``, also writes ``report_generation_patients.csv`` (every generated text and its scores)."""
    from pathmm_pipeline.downstream.report_generation import GenerationConfig, evaluate_generation, load_report_texts
    from pathmm_pipeline.reports.stage import read_clean_table

    with_report = set(read_clean_table(Path(reports_table), "text")[0])
    train = [p for p in fold.train if p in with_report and p in cohort]
    val = [p for p in fold.val if p in with_report and p in cohort]
    train, train_x = patient_embeddings(model, cohort, train, withhold=("report",))
    val, val_x = patient_embeddings(model, cohort, val, withhold=("report",))
    if len(train) < 2 or not val:
        raise ValueError(f"fold {fold.index}: report generation needs >= 2 training and >= 1 validation patients "
                         f"with a report and another modality (have {len(train)} and {len(val)})")
    config = GenerationConfig(**{"progress": False, **(settings or {})})
    per_patient, scores, decoder = evaluate_generation(
        train_x, load_report_texts(reports_table, train), val_x, load_report_texts(reports_table, val), config,
        test_ids=val, train_ids=train, return_decoder=True)
    name = label or model.name
    rows = [{"model": name, "fold": fold.index, "selection": check_selection(selection), "method": method,
             "n_train": len(train), "n_test": len(val), **values} for method, values in scores.items()]
    if out_dir is not None:
        per_patient.insert(0, "model", name)
        per_patient.insert(1, "fold", fold.index)
        write_text_atomic(Path(out_dir) / "report_generation_patients.csv", per_patient.to_csv(index=False))
    fitted = {f"decoder.{k}": v for k, v in _state(decoder).items()}
    fitted["retrieval.train_embeddings"] = np.asarray(train_x)
    return DownstreamResult(pd.DataFrame(rows), fitted)


def subsample(patients: Sequence[str], cohort: MultimodalCohort, fraction: float, seed: int) -> list[str]:
    """A seeded ``fraction`` of ``patients``, stratified by cancer type (at least 2 per type kept)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    rng = np.random.default_rng([seed, int(round(fraction * 1000))])
    by_type: dict[int, list[str]] = {}
    for p in patients:
        by_type.setdefault(cohort.targets(p).cancer_type, []).append(p)
    chosen: list[str] = []
    for t in sorted(by_type):
        members = by_type[t]
        n = min(len(members), max(2, int(round(fraction * len(members)))))
        chosen += [members[i] for i in sorted(rng.choice(len(members), n, replace=False))]
    return [p for p in patients if p in set(chosen)]


def data_efficiency(model_name: str, task: str, cohort: MultimodalCohort, fold: Fold, config: TrainConfig,
                    pretrained: str | os.PathLike[str] | None = None,
                    fractions: Sequence[float] = DEFAULT_FRACTIONS, per_cancer_type: bool = True,
                    label: str | None = None) -> DownstreamResult:
    """Fine-tune on growing fractions of the fold's training patients (from ``pretrained`` and from scratch);
    one row per (cancer type or ``all``, fraction, initialisation) with the held-out metric. Each fit selects
    its epoch as ``config.selection`` says (under ``inner``, on an inner split of its own subsample)."""
    from pathmm_pipeline.training.finetune import predict_logits

    scopes: list[tuple[str, list[str], list[str]]] = [("all", list(fold.train), list(fold.val))]
    if per_cancer_type and len(cohort.cancer_types) > 1:
        for t, name in enumerate(cohort.cancer_types):
            scopes.append((name, [p for p in fold.train if cohort.targets(p).cancer_type == t],
                           [p for p in fold.val if cohort.targets(p).cancer_type == t]))
    inits = [("pretrained", pretrained), ("scratch", None)] if pretrained is not None else [("scratch", None)]
    rows, fitted = [], {}
    for scope, train, val in scopes:
        for fraction in fractions:
            subset = subsample(train, cohort, fraction, config.seed)
            sub_fold = Fold(fold.index, subset, val)
            for init, path in inits:
                try:
                    result = train_fold(model_name, task, cohort, sub_fold, config, pretrained=path)
                except ValueError as exc:  # too few usable patients at this fraction
                    log.warning("data efficiency %s %s %.0f%% %s: %s", scope, model_name, 100 * fraction, init, exc)
                    continue
                view = cohort.with_scaler(result.scaler) if result.scaler is not None else cohort
                kept, logits, _ = predict_logits(result.model, view, result.val_patients)
                value = score_metric(result.task, logits, view, kept) if kept else float("nan")
                rows.append({"model": label or model_name, "fold": fold.index, "selection": config.selection,
                             "cancer_type": scope, "init": init, "fraction": fraction,
                             "n_train": len(result.train_patients), "n_inner_val": len(result.inner_val_patients),
                             "n_val": len(kept), "metric": result.metric_name, "value": float(value)})
                fitted.update({f"{scope}/{fraction}/{init}/{k}": v for k, v in _state(result.model).items()})
                log.info("data efficiency %s %s %.0f%% (%d patients) %s: %s = %.3f", label or model_name, scope,
                         100 * fraction, len(result.train_patients), init, result.metric_name, value)
    return DownstreamResult(pd.DataFrame(rows), fitted)


@torch.no_grad()
def probe_features(model: PathmmModel, cohort: MultimodalCohort, patients: Sequence[str],
                   prompt: str | None = "general") -> tuple[list[str], np.ndarray]:
    """``(kept ids, features)``: a model's frozen patient features for linear probing: the ``prompt`` task
    embedding of a prompted model (ModalTune's published protocol uses the general prompt), the slide embedding
    of a slide aggregator (mSTAR), else the model's embedding."""
    model.eval()
    kept, rows = [], []
    for p in patients:
        try:
            x = model_input(cohort, model, p).x
            model.check_input(x)
        except ValueError:  # the patient lacks a modality the model requires
            continue
        if prompt is not None and hasattr(model, "task_embedding"):
            z = model.task_embedding(x, prompt)
        elif hasattr(model, "slide_embedding"):
            z = model.slide_embedding(x)
        else:
            z = model(x).embedding
        rows.append(z.reshape(-1).float().cpu().numpy())
        kept.append(p)
    return kept, np.stack(rows) if rows else np.zeros((0, model.embedding_dim), dtype=np.float32)


def _cox_fit(x: np.ndarray, times: np.ndarray, events: np.ndarray, penalizer: float):
    from lifelines import CoxPHFitter

    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(x.shape[1])])
    frame["time"], frame["event"] = times, events
    return CoxPHFitter(penalizer=penalizer).fit(frame, "time", "event")


def _cox_risk(cox, x: np.ndarray) -> np.ndarray:
    return cox.predict_partial_hazard(pd.DataFrame(x, columns=[f"f{i}" for i in range(x.shape[1])])).to_numpy()


def _inner_parts(cohort: MultimodalCohort, patients: list[str], fold_index: int, fraction: float, seed: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks over ``patients``: the inner-training and inner-validation parts (:func:`inner_split`)."""
    rest, val = inner_split(strata_table(cohort.table), patients, fraction, seed, key=fold_index)
    chosen = set(val)
    inner = np.array([p in chosen for p in patients])
    return ~inner, inner


def select_cox_penalty(x: np.ndarray, times: np.ndarray, events: np.ndarray, fit: np.ndarray, check: np.ndarray,
                       grid: Sequence[float] = COX_PENALTIES) -> tuple[float, dict[float, float]]:
    """The L2 penalty of ``grid`` whose Cox model fitted on the ``fit`` rows orders the ``check`` rows best
    (Harrell's C-index; ties: the larger penalty), and every penalty's score."""
    from pathmm_pipeline.stats.metrics import c_index

    scores: dict[float, float] = {}
    for penalizer in grid:
        try:
            model = _cox_fit(x[fit], times[fit], events[fit], penalizer)
            scores[penalizer] = float(c_index(times[check], events[check], _cox_risk(model, x[check])))
        except (ValueError, ArithmeticError, np.linalg.LinAlgError) as exc:  # no comparable pair, no convergence
            log.warning("Cox penalty %g on the inner split: %s", penalizer, exc)
            scores[penalizer] = float("nan")
    finite = {k: v for k, v in scores.items() if np.isfinite(v)}
    if not finite:
        return float(max(grid)), scores
    best = max(finite.values())
    return float(max(k for k, v in finite.items() if v == best)), scores


def select_logistic_c(x: np.ndarray, y: np.ndarray, fit: np.ndarray, check: np.ndarray,
                      grid: Sequence[float] = LOGISTIC_CS) -> tuple[float, dict[float, float]]:
    """The inverse penalty C of ``grid`` with the best balanced accuracy on the ``check`` rows (ties: the
    smaller C, i.e. the stronger penalty)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score

    scores: dict[float, float] = {}
    for c in grid:
        if len(np.unique(y[fit])) < 2 or not check.any():
            scores[c] = float("nan")
            continue
        clf = LogisticRegression(C=c, max_iter=2000, class_weight="balanced").fit(x[fit], y[fit])
        scores[c] = float(balanced_accuracy_score(y[check], clf.predict(x[check])))
    finite = {k: v for k, v in scores.items() if np.isfinite(v)}
    if not finite:
        return LOGISTIC_C, scores
    best = max(finite.values())
    return float(min(k for k, v in finite.items() if v == best)), scores


def linear_probe(model: PathmmModel, cohort: MultimodalCohort, fold: Fold, task: str = "survival",
                 prompt: str | None = "general", penalizer: float = COX_PENALTY, label: str | None = None,
                 selection: str = "last", inner_fraction: float = 0.2, inner_seed: int = 0) -> DownstreamResult:
    """The published evaluation of ModalTune (and of slide foundation models): frozen features of the fold's
    training patients fit a lifelines Cox model (survival: C-index on the held-out patients) or a class-balanced
    logistic regression (classification: balanced accuracy), features standardised on the training patients.

    ``selection="last"``: the penalty is fixed (``penalizer``; ``C`` = 1). ``"inner"``: it is searched
    (:data:`COX_PENALTIES` / :data:`LOGISTIC_CS`) on an inner split of the *training* patients (fit on the
    rest, scored on the inner split), then the probe is refitted on all training patients with it. The held-out
    patients are only scored."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.preprocessing import StandardScaler

    from pathmm_pipeline.stats.metrics import c_index

    check_selection(selection)
    train, x_train = probe_features(model, cohort, fold.train, prompt)
    val, x_val = probe_features(model, cohort, fold.val, prompt)
    scaler = StandardScaler().fit(x_train)
    x_train, x_val = scaler.transform(x_train), scaler.transform(x_val)
    row: dict[str, Any] = {"model": label or model.name, "fold": fold.index, "selection": selection,
                           "features": prompt or "embedding", "n_train": len(train), "n_val": len(val)}
    fitted: dict[str, Any] = {"scaler.mean": scaler.mean_.copy(), "scaler.scale": scaler.scale_.copy()}
    if task in ("survival", "cox"):
        t_train, e_train = cohort.survival(train)
        t_val, e_val = cohort.survival(val)
        ok = np.isfinite(t_train) & (e_train >= 0)
        ids = [p for p, keep in zip(train, ok) if keep]
        x_ok, t_ok, e_ok = x_train[ok], t_train[ok], e_train[ok]
        if selection == "inner":
            fit, check = _inner_parts(cohort, ids, fold.index, inner_fraction, inner_seed)
            penalizer, scores = select_cox_penalty(x_ok, t_ok, e_ok, fit, check)
            row["n_inner_val"] = int(check.sum())
            fitted["inner_scores"] = np.array([scores[k] for k in COX_PENALTIES])
        cox = _cox_fit(x_ok, t_ok, e_ok, penalizer)
        risk = _cox_risk(cox, x_val)
        row.update(probe="cox", penalty=float(penalizer), metric="c_index",
                   value=float(c_index(t_val, e_val, risk)))
        fitted["cox.params"] = cox.params_.to_numpy().copy()
    else:
        y_train, y_val = cohort.labels(train), cohort.labels(val)
        keep_t, keep_v = y_train >= 0, y_val >= 0
        ids = [p for p, keep in zip(train, keep_t) if keep]
        x_ok, y_ok = x_train[keep_t], y_train[keep_t]
        c = LOGISTIC_C
        if selection == "inner":
            fit, check = _inner_parts(cohort, ids, fold.index, inner_fraction, inner_seed)
            c, scores = select_logistic_c(x_ok, y_ok, fit, check)
            row["n_inner_val"] = int(check.sum())
            fitted["inner_scores"] = np.array([scores[k] for k in LOGISTIC_CS])
        clf = LogisticRegression(C=c, max_iter=2000, class_weight="balanced").fit(x_ok, y_ok)
        row.update(probe="logistic", penalty=float(1.0 / c), metric="balanced_accuracy",
                   value=float(balanced_accuracy_score(y_val[keep_v], clf.predict(x_val[keep_v]))))
        fitted.update({"logistic.coef": clf.coef_.copy(), "logistic.intercept": clf.intercept_.copy()})
    return DownstreamResult(pd.DataFrame([row]), fitted)


def out_of_distribution(pretrained: str | os.PathLike[str], cohort: MultimodalCohort, fold: Fold,
                        task: str = "survival", label: str | None = None, selection: str = "last",
                        inner_fraction: float = 0.2, inner_seed: int = 0) -> DownstreamResult:
    """ModalTune's transfer test: the method is tuned (its pretraining objective, with the settings and options
    of the fold's ``pretrained`` checkpoint) on the fold's training patients of **one** cancer type A, then its
    frozen general-prompt features are probed (:func:`linear_probe`, the model's own probe penalty) on another
    type B: fitted on B's training patients, scored on B's held-out patients. Every (A, B) pair is a row, with
    the in-distribution (A = B) and the untuned model (the frozen encoder: ``source`` ``none``) beside them.
    A batch holds at most one type's training patients; a type with fewer than two is not tuned on. Nothing is
    tuned or fitted on held-out patients."""
    from pathmm_pipeline.models import build_model
    from pathmm_pipeline.models.checkpoint import dims_from_record, options_from_record
    from pathmm_pipeline.training.pretrain import PretrainConfig, pretrain, read_pretrained

    payload = read_pretrained(pretrained)
    options = options_from_record(payload["model_options"])
    config = PretrainConfig.from_dict({**payload["config"], "model_options": options, "progress": False})
    names = cohort.cancer_types
    train = {t: [p for p in fold.train if p in cohort and cohort.targets(p).cancer_type == i]
             for i, t in enumerate(names)}
    val = {t: [p for p in fold.val if p in cohort and cohort.targets(p).cancer_type == i] for i, t in enumerate(names)}
    torch.manual_seed(config.seed)
    models: dict[str, PathmmModel] = {"none": build_model(payload["model_name"], dims_from_record(payload["dims"]),
                                                          TaskSpec.survival(config.n_bins), **options).eval()}
    fitted: dict[str, Any] = {}
    for source in names:
        if len(train[source]) < 2:
            log.warning("out of distribution: %d training patient(s) of %s: not tuned on", len(train[source]),
                        source)
            continue
        # one cancer type holds fewer patients than the corpus: a batch is at most the type's patients
        tune = replace(config, batch_size=min(config.batch_size, len(train[source])))
        models[source] = pretrain(payload["model_name"], cohort, train[source], tune).model.eval()
        fitted.update({f"tuned_on_{source}.{k}": v for k, v in _state(models[source]).items()})
    view = cohort.for_fold(fold.train) if cohort.genomics is not None else cohort
    rows = []
    for target in names:
        if len(train[target]) < 2 or not val[target]:
            continue
        for source, net in models.items():
            probe = getattr(net, "probe", None)
            penalizer = probe.penalty if probe is not None else COX_PENALTY
            try:
                out = linear_probe(net, view, Fold(fold.index, tuple(train[target]), tuple(val[target])), task,
                                   penalizer=penalizer, label=label, selection=selection,
                                   inner_fraction=inner_fraction, inner_seed=inner_seed)
            except ValueError as exc:  # too few usable patients of the target type
                log.warning("out of distribution %s -> %s: %s", source, target, exc)
                continue
            transfer = "untuned" if source == "none" else ("in-distribution" if source == target else "transfer")
            rows.append({**out.table.iloc[0].to_dict(), "source": source, "target": target, "transfer": transfer})
            fitted.update({f"{source}->{target}.{k}": v for k, v in out.fitted.items()})
    return DownstreamResult(pd.DataFrame(rows), fitted)


#: zero-shot prompts per cancer type (an ensemble each), embedded by the report text encoder
CLASS_PROMPTS = {
    "BLCA": ["an H&E image of bladder urothelial carcinoma", "urothelial carcinoma of the bladder",
             "invasive high grade urothelial carcinoma, urinary bladder"],
    "STAD": ["an H&E image of stomach adenocarcinoma", "gastric adenocarcinoma",
             "adenocarcinoma of the stomach, intestinal or diffuse type"],
}


def zero_and_few_shot(model: PathmmModel, cohort: MultimodalCohort, fold: Fold, text_encoder: Any = "minilm",
                      ks: Sequence[int] = (1, 2, 4, 8), seeds: int = 5, label: str | None = None,
                      prompts: dict[str, Sequence[str]] | None = None, selection: str = "last") -> DownstreamResult:
    """mSTAR's evaluation of its aligned slide/text space on cancer-type classification: zero-shot (each
    validation slide to the nearest class prompt ensemble, prompts embedded by ``text_encoder``) and few-shot
    (logistic regression on k slides per class of the training patients, ``seeds`` draws). One row per setting
    with balanced accuracy. ``text_encoder``: a text encoder name of :mod:`pathmm_pipeline.encoders.text`
    (the one that embedded the reports) or a callable ``list[str] -> (n, D)``. Zero-shot fits nothing; the
    few-shot classifiers are fitted on training patients only, with a fixed C (no choice to make)."""
    from sklearn.metrics import balanced_accuracy_score

    from pathmm_pipeline.downstream.zero_shot import few_shot_curve, zero_shot_classify
    from pathmm_pipeline.encoders.text import get_text_encoder

    prompts = dict(prompts or CLASS_PROMPTS)
    names = cohort.cancer_types
    missing = [n for n in names if n not in prompts]
    if missing:
        raise ValueError(f"no zero-shot prompts for cancer type(s) {missing}: pass prompts")
    train, x_train = probe_features(model, cohort, fold.train, prompt=None)
    val, x_val = probe_features(model, cohort, fold.val, prompt=None)
    y_train = [names[cohort.targets(p).cancer_type] for p in train]
    y_val = [names[cohort.targets(p).cancer_type] for p in val]
    embed = text_encoder if callable(text_encoder) else get_text_encoder(text_encoder).embed
    result = zero_shot_classify(x_val, {n: prompts[n] for n in names}, embed, model)
    base = {"model": label or model.name, "fold": fold.index, "selection": check_selection(selection),
            "task": "cancer type", "n_val": len(val)}
    rows = [{**base, "setting": "zero-shot", "k": 0,
             "balanced_accuracy": float(balanced_accuracy_score(y_val, result.predicted))}]
    classifiers: list[Any] = []
    curve = few_shot_curve(x_train, y_train, x_val, y_val, ks=ks, seeds=seeds, fitted=classifiers)
    rows += [{**base, "setting": "few-shot", "k": int(r.k), "balanced_accuracy": float(r.balanced_accuracy_mean)}
             for r in curve.itertuples()]
    fitted = {f"few_shot.k{k}.seed{seed}.{name}": value for k, seed, clf in classifiers
              for name, value in (("coef", clf.coef_.copy()), ("intercept", clf.intercept_.copy()))}
    return DownstreamResult(pd.DataFrame(rows), fitted)
