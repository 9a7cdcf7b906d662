"""Kaplan-Meier curves, overall or per predicted-risk group, as plain arrays ready for plotting.

A curve is a right-continuous step function: ``survival[i]`` holds from ``times[i]`` until the next time;
``times[0] = 0`` with survival 1. ``lower`` / ``upper`` are lifelines' pointwise confidence limits
(exponential Greenwood), ``at_risk[i]`` the patients still at risk just before ``times[i]``.

Risk groups: patients are split at cut-offs of the risk (higher = earlier event, :mod:`.conventions`); by
default at the median of the risk given, better at cut-offs taken from the *training* patients' risk
(:func:`risk_cutoffs`) so that the validation groups are not defined by the validation data. A patient with
risk equal to a cut-off goes to the lower group.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pathmm_pipeline.stats.conventions import ArrayLike, survival_arrays
from pathmm_pipeline.stats.metrics import LogRankResult, logrank


@dataclass(frozen=True)
class KMCurve:
    """One Kaplan-Meier curve (times in months)."""

    label: str
    times: np.ndarray
    survival: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    at_risk: np.ndarray
    n: int
    n_events: int
    median_survival: float  # inf when the curve never falls to 1/2
    level: float

    def to_dict(self) -> dict[str, Any]:
        """Plain lists and numbers (JSON; an infinite median is written as None)."""
        return {"label": self.label, "times": self.times.tolist(), "survival": self.survival.tolist(),
                "lower": self.lower.tolist(), "upper": self.upper.tolist(), "at_risk": self.at_risk.tolist(),
                "n": self.n, "n_events": self.n_events, "level": self.level,
                "median_survival": None if not np.isfinite(self.median_survival) else self.median_survival}


def kaplan_meier(times: ArrayLike, events: ArrayLike, label: str = "all", level: float = 0.95) -> KMCurve:
    """The Kaplan-Meier estimate of one group (lifelines ``KaplanMeierFitter``) with ``level`` pointwise CI."""
    from lifelines import KaplanMeierFitter

    t, e = survival_arrays(times, events)
    if t.size == 0:
        raise ValueError(f"group '{label}' has no patient")
    km = KaplanMeierFitter(alpha=1 - level).fit(t, e, label=label)
    sf = km.survival_function_
    ci = km.confidence_interval_survival_function_
    at_risk = km.event_table["at_risk"].reindex(sf.index).to_numpy()
    return KMCurve(label=label, times=sf.index.to_numpy(dtype=np.float64),
                   survival=sf.iloc[:, 0].to_numpy(dtype=np.float64),
                   lower=ci.iloc[:, 0].to_numpy(dtype=np.float64), upper=ci.iloc[:, 1].to_numpy(dtype=np.float64),
                   at_risk=at_risk.astype(np.int64), n=int(t.size), n_events=int(e.sum()),
                   median_survival=float(km.median_survival_time_), level=level)


def risk_cutoffs(risk: ArrayLike, quantiles: Sequence[float] = (0.5,)) -> np.ndarray:
    """Cut-offs at the given quantiles of ``risk`` (e.g. of the training patients); ``(0.5,)`` = median split."""
    q = np.asarray(quantiles, dtype=np.float64)
    if q.size == 0 or ((q <= 0) | (q >= 1)).any() or not (np.diff(q) > 0).all():
        raise ValueError(f"quantiles must be increasing and inside (0, 1), got {q.tolist()}")
    return np.quantile(np.asarray(risk, dtype=np.float64), q)


def group_names(n_groups: int) -> tuple[str, ...]:
    """``("low risk", "high risk")`` for two groups, else ``("Q1 (lowest risk)", ..., "Qn (highest risk)")``."""
    if n_groups == 2:
        return ("low risk", "high risk")
    return tuple(f"Q{i + 1}" + (" (lowest risk)" if i == 0 else " (highest risk)" if i == n_groups - 1 else "")
                 for i in range(n_groups))


def assign_risk_groups(risk: ArrayLike, cutoffs: ArrayLike) -> np.ndarray:
    """Group index per patient: the number of cut-offs strictly below its risk (0 = lowest risk)."""
    c = np.asarray(cutoffs, dtype=np.float64).reshape(-1)
    return np.searchsorted(c, np.asarray(risk, dtype=np.float64), side="left").astype(np.int64)


@dataclass(frozen=True)
class RiskGroupCurves:
    """Kaplan-Meier curves of the predicted risk groups and their log-rank test."""

    curves: tuple[KMCurve, ...]
    cutoffs: tuple[float, ...]
    groups: np.ndarray  # group index per patient, 0 = lowest risk
    logrank: LogRankResult

    def to_dict(self) -> dict[str, Any]:
        return {"curves": [c.to_dict() for c in self.curves], "cutoffs": list(self.cutoffs),
                "groups": self.groups.tolist(), "logrank": self.logrank.to_dict()}


def km_by_risk_group(times: ArrayLike, events: ArrayLike, risk: ArrayLike, cutoffs: ArrayLike | None = None,
                     quantiles: Sequence[float] = (0.5,), level: float = 0.95) -> RiskGroupCurves:
    """Split patients into risk groups (at ``cutoffs``, or at ``quantiles`` of this ``risk``), one KM curve
    per group, and the log-rank p-value across groups. An empty group is an error."""
    t, e = survival_arrays(times, events)
    r = np.asarray(risk, dtype=np.float64).reshape(-1)
    if r.size != t.size:
        raise ValueError(f"{r.size} risk scores for {t.size} patients")
    cuts = risk_cutoffs(r, quantiles) if cutoffs is None else np.asarray(cutoffs, dtype=np.float64).reshape(-1)
    groups = assign_risk_groups(r, cuts)
    names = group_names(cuts.size + 1)
    empty = [names[i] for i in range(len(names)) if not (groups == i).any()]
    if empty:
        raise ValueError(f"risk group(s) {empty} are empty at cut-offs {cuts.tolist()} (tied risks?)")
    curves = tuple(kaplan_meier(t[groups == i], e[groups == i], names[i], level) for i in range(len(names)))
    test = logrank(t, e, np.array([f"{i:04d}" for i in groups]))
    test = LogRankResult(test.statistic, test.p_value, test.df, tuple(names[int(g)] for g in test.groups),
                         test.n_per_group, test.events_per_group)
    return RiskGroupCurves(curves, tuple(cuts.tolist()), groups, test)
