"""Evaluation metrics for survival and classification, returned as plain dataclasses ready for tables.

Conventions (months, events 1 = observed, risk higher = earlier event, discrete-time ``S(t)``) are those of
:mod:`.conventions`.

* :func:`c_index`: Harrell's C through lifelines' ``concordance_index`` (given ``-risk``): over the pairs
  where the patient with the shorter time had the event, the fraction ordered correctly by risk (ties in risk
  count 1/2). :func:`bootstrap_c_index` adds a seeded percentile bootstrap interval over patients.
* :func:`time_dependent_auc` (cumulative/dynamic AUC) and :func:`integrated_brier_score` use scikit-survival
  (IPCW with the censoring distribution of the *training* patients); :func:`discrete_survival_metrics` feeds
  them a discrete-time model's survival curves.
* :func:`logrank` compares the survival of groups (lifelines).
* :func:`classification_metrics`: balanced accuracy and macro one-vs-rest ROC AUC (scikit-learn).
* :func:`fold_summary`: mean and sample standard deviation (ddof = 1) over folds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from pathmm_pipeline.stats.conventions import ArrayLike, lifelines_score, survival_arrays, survival_at_times


def _risk(risk: ArrayLike, n: int) -> np.ndarray:
    r = np.asarray(risk, dtype=np.float64).reshape(-1)
    if r.size != n:
        raise ValueError(f"{r.size} risk scores for {n} patients")
    if not np.isfinite(r).all():
        raise ValueError(f"{int((~np.isfinite(r)).sum())} risk score(s) are NaN or infinite")
    return r


# ------------------------------------------------------------------------------------------------ C-index
def c_index(times: ArrayLike, events: ArrayLike, risk: ArrayLike) -> float:
    """Harrell's concordance index of ``risk`` (higher = earlier event); 0.5 is chance, 1 a perfect order.
    Raises ``ValueError`` when no pair is comparable (no event before another patient's time)."""
    from lifelines.utils import concordance_index

    t, e = survival_arrays(times, events)
    r = _risk(risk, t.size)
    try:
        return float(concordance_index(t, lifelines_score(r), e))
    except ZeroDivisionError as exc:
        raise ValueError("no comparable pair: the C-index is undefined (no event, or all events tied "
                         "at the last time)") from exc


@dataclass(frozen=True)
class CIndexResult:
    """A C-index with its bootstrap percentile interval."""

    c_index: float
    lower: float
    upper: float
    level: float
    n_boot: int
    n_boot_used: int  # resamples with at least one comparable pair
    seed: int
    n: int
    n_events: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def bootstrap_c_index(times: ArrayLike, events: ArrayLike, risk: ArrayLike, n_boot: int = 1000,
                      level: float = 0.95, seed: int = 0) -> CIndexResult:
    """C-index and its percentile bootstrap interval: ``n_boot`` resamples of the patients with replacement
    (``numpy.random.default_rng(seed)``), the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the
    resampled C-indices. Resamples without a comparable pair are skipped (counted in ``n_boot_used``)."""
    from lifelines.utils import concordance_index

    if n_boot < 1 or not 0 < level < 1:
        raise ValueError(f"need n_boot >= 1 and 0 < level < 1, got {n_boot}, {level}")
    t, e = survival_arrays(times, events)
    r = _risk(risk, t.size)
    point = c_index(t, e, r)
    rng = np.random.default_rng(seed)
    score = lifelines_score(r)
    values = []
    for _ in range(n_boot):
        idx = rng.integers(0, t.size, t.size)
        try:
            values.append(concordance_index(t[idx], score[idx], e[idx]))
        except ZeroDivisionError:
            continue
    if not values:
        raise ValueError("no bootstrap resample had a comparable pair")
    lower, upper = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return CIndexResult(point, float(lower), float(upper), level, n_boot, len(values), seed, int(t.size),
                        int(e.sum()))


# ----------------------------------------------------------------------------- time-dependent AUC, Brier
def _surv(times: np.ndarray, events: np.ndarray) -> np.ndarray:
    from sksurv.util import Surv

    return Surv.from_arrays(event=events, time=times)


def default_eval_times(train_times: ArrayLike, test_times: ArrayLike, test_events: ArrayLike,
                       quantiles: Sequence[float] = tuple(np.linspace(0.1, 0.8, 8))) -> np.ndarray:
    """Evaluation times for AUC(t) and the Brier score: the given quantiles of the test patients' event
    times, kept inside the test follow-up ``[min, max)`` and below the last training time (where the
    censoring distribution is still estimated), duplicates removed."""
    t, e = survival_arrays(test_times, test_events)
    train = np.asarray(train_times, dtype=np.float64)
    if e.sum() == 0:
        raise ValueError("no event among the test patients: no evaluation time")
    cand = np.unique(np.quantile(t[e], list(quantiles)))
    keep = (cand >= t.min()) & (cand < t.max()) & (cand < train.max())
    return cand[keep]


@dataclass(frozen=True)
class TimeDependentAUC:
    """Cumulative/dynamic AUC at each time (months) and its mean (scikit-survival's ``mean_auc``, weighted by
    the estimated survival function)."""

    times: tuple[float, ...]
    auc: tuple[float, ...]
    mean_auc: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def time_dependent_auc(train_times: ArrayLike, train_events: ArrayLike, test_times: ArrayLike,
                       test_events: ArrayLike, risk: ArrayLike, eval_times: ArrayLike) -> TimeDependentAUC:
    """AUC(t) of ``risk`` (higher = earlier event): patients (of the test set) with an event by ``t`` against
    those still event-free after ``t``, IPCW-weighted with the training censoring distribution. ``risk`` is one
    score per patient, or patients x eval_times (a risk per time, e.g. ``1 - S(t)``)."""
    from sksurv.metrics import cumulative_dynamic_auc

    tr = _surv(*survival_arrays(train_times, train_events))
    te, ts = survival_arrays(test_times, test_events)
    times = np.asarray(eval_times, dtype=np.float64).reshape(-1)
    r = np.asarray(risk, dtype=np.float64)
    if r.shape[0] != te.size:
        raise ValueError(f"{r.shape[0]} risk rows for {te.size} test patients")
    auc, mean_auc = cumulative_dynamic_auc(tr, _surv(te, ts), r, times)
    return TimeDependentAUC(tuple(times.tolist()), tuple(np.atleast_1d(auc).tolist()), float(mean_auc))


@dataclass(frozen=True)
class BrierResult:
    """IPCW Brier score at each time (months) and the integrated Brier score over those times (trapezoid,
    divided by the time span); lower is better, 0.25 is an uninformative 1/2 prediction."""

    times: tuple[float, ...]
    brier: tuple[float, ...]
    ibs: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def integrated_brier_score(train_times: ArrayLike, train_events: ArrayLike, test_times: ArrayLike,
                           test_events: ArrayLike, survival: ArrayLike, eval_times: ArrayLike) -> BrierResult:
    """Brier scores and their integral from survival probabilities ``survival`` (test patients x eval_times,
    ``S(t)`` at each evaluation time). Needs at least two times."""
    from sksurv.metrics import brier_score
    from sksurv.metrics import integrated_brier_score as _ibs

    tr = _surv(*survival_arrays(train_times, train_events))
    te, ts = survival_arrays(test_times, test_events)
    times = np.asarray(eval_times, dtype=np.float64).reshape(-1)
    s = np.asarray(survival, dtype=np.float64)
    if s.shape != (te.size, times.size):
        raise ValueError(f"survival must be {te.size} patients x {times.size} times, got {s.shape}")
    if times.size < 2:
        raise ValueError("the integrated Brier score needs at least two evaluation times")
    test = _surv(te, ts)
    _, scores = brier_score(tr, test, s, times)
    return BrierResult(tuple(times.tolist()), tuple(np.asarray(scores).tolist()), float(_ibs(tr, test, s, times)))


def discrete_survival_metrics(train_times: ArrayLike, train_events: ArrayLike, test_times: ArrayLike,
                              test_events: ArrayLike, surv_bins: ArrayLike, edges: ArrayLike,
                              eval_times: ArrayLike | None = None) -> dict[str, Any]:
    """AUC(t) and the integrated Brier score of a discrete-time model: ``surv_bins`` (test patients x bins,
    ``cumprod(1 - hazards)``) read as ``S(t)`` at each evaluation time (:func:`.conventions.survival_at_times`),
    risk ``1 - S(t)``. ``eval_times`` default to :func:`default_eval_times`."""
    times = (default_eval_times(train_times, test_times, test_events) if eval_times is None
             else np.asarray(eval_times, dtype=np.float64))
    s_t = survival_at_times(np.asarray(surv_bins), edges, times)
    auc = time_dependent_auc(train_times, train_events, test_times, test_events, 1.0 - s_t, times)
    brier = integrated_brier_score(train_times, train_events, test_times, test_events, s_t, times)
    return {"eval_times": times.tolist(), "auc": auc.to_dict(), "brier": brier.to_dict(),
            "mean_auc": auc.mean_auc, "ibs": brier.ibs}


# ------------------------------------------------------------------------------------------------ log-rank
@dataclass(frozen=True)
class LogRankResult:
    """Log-rank test of equal survival across groups (chi-squared with ``df = groups - 1``)."""

    statistic: float
    p_value: float
    df: int
    groups: tuple[str, ...]
    n_per_group: tuple[int, ...]
    events_per_group: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def logrank(times: ArrayLike, events: ArrayLike, groups: ArrayLike) -> LogRankResult:
    """Log-rank test between the groups (any labels); lifelines ``logrank_test`` for two groups,
    ``multivariate_logrank_test`` for more."""
    from lifelines.statistics import logrank_test, multivariate_logrank_test

    t, e = survival_arrays(times, events)
    g = np.asarray(groups).reshape(-1)
    if g.size != t.size:
        raise ValueError(f"{g.size} group labels for {t.size} patients")
    names = sorted({str(x) for x in g.tolist()})
    labels = np.array([str(x) for x in g.tolist()])
    if len(names) < 2:
        raise ValueError(f"the log-rank test needs at least two non-empty groups, got {names}")
    if len(names) == 2:
        a, b = (labels == names[0]), (labels == names[1])
        res = logrank_test(t[a], t[b], event_observed_A=e[a], event_observed_B=e[b])
    else:
        res = multivariate_logrank_test(t, labels, e)
    return LogRankResult(float(res.test_statistic), float(res.p_value), len(names) - 1, tuple(names),
                         tuple(int((labels == n).sum()) for n in names),
                         tuple(int(e[labels == n].sum()) for n in names))


# ---------------------------------------------------------------------------------------- classification
@dataclass(frozen=True)
class ClassificationResult:
    """Balanced accuracy (mean per-class recall) of the arg-max prediction and macro one-vs-rest ROC AUC."""

    balanced_accuracy: float
    macro_auc: float
    per_class_auc: tuple[float, ...]
    n: int
    n_classes: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def classification_metrics(y_true: ArrayLike, probs: ArrayLike, n_classes: int | None = None
                           ) -> ClassificationResult:
    """Metrics from integer labels ``0..K-1`` and predicted probabilities: patients x K, or for a binary task
    also a vector of P(class 1). Every class must occur in ``y_true`` (else its AUC is undefined)."""
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    y = np.asarray(y_true, dtype=np.int64).reshape(-1)
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim == 1:
        p = np.stack([1.0 - p, p], axis=1)
    k = int(n_classes) if n_classes is not None else p.shape[1]
    if p.shape != (y.size, k):
        raise ValueError(f"probs must be {y.size} x {k}, got {p.shape}")
    if y.size and (y.min() < 0 or y.max() >= k):
        raise ValueError(f"labels must lie in [0, {k - 1}]")
    absent = sorted(set(range(k)) - set(y.tolist()))
    if absent:
        raise ValueError(f"class(es) {absent} do not occur in y_true: their one-vs-rest AUC is undefined")
    per_class = tuple(float(roc_auc_score(y == c, p[:, c])) for c in range(k))
    macro = per_class[1] if k == 2 else float(np.mean(per_class))
    bacc = float(balanced_accuracy_score(y, p.argmax(axis=1)))
    return ClassificationResult(bacc, macro, per_class, int(y.size), k)


# ------------------------------------------------------------------------------------------------ folds
def fold_summary(values: ArrayLike) -> dict[str, float]:
    """``{"mean", "std", "n"}`` over folds; ``std`` is the sample standard deviation (ddof = 1; NaN for 1)."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    return {"mean": float(v.mean()) if v.size else math.nan,
            "std": float(v.std(ddof=1)) if v.size > 1 else math.nan, "n": int(v.size)}
