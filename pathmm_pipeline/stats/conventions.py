"""Units and sign conventions for survival data, stated once for the training and evaluation code.

Every function in :mod:`pathmm_pipeline.training` and :mod:`pathmm_pipeline.evaluation` follows these:

* **Time**: :data:`TIME_UNIT` (months, as ``survival_months*`` in the TCGA tables), a float >= 0.
* **Event**: :data:`EVENT_OBSERVED` = 1 means the event (death; for DSS, death of the disease) was observed,
  0 means the patient was censored at that time. The TCGA tables store the complement, ``censorship_* = 1``
  for censored (as SurvPath and MCAT do); convert once, at the boundary, with :func:`event_from_censorship`.
* **Risk**: a float per patient, **higher = earlier event** (higher hazard). The discrete-time model's risk is
  minus the sum of its survival probabilities (:func:`pathmm_pipeline.models.losses.risk_from_logits`),
  a Cox model's risk is its linear predictor. lifelines' ``concordance_index`` expects the opposite (higher =
  longer survival), so it is given :func:`lifelines_score` ``(risk) = -risk``; scikit-survival expects ours.
* **Discrete time bins** (:func:`pathmm_pipeline.models.losses.make_time_bins`): ``edges`` has
  ``n_bins + 1`` entries, ``edges[0] = 0`` and ``edges[-1] = inf``; bin ``k`` is the left-closed interval
  ``[edges[k], edges[k + 1])`` (``pd.cut(..., right=False)``, as in SurvPath).
* **Discrete-time survival**: ``surv[:, k] = prod_{j <= k} (1 - hazard_j)`` is the probability of surviving
  bin ``k``, i.e. ``P(T >= edges[k + 1])``. As a function of time (:func:`survival_at_times`), a patient's
  ``S(t) = surv[:, k]`` for ``t`` in bin ``k``: a bin's events are counted at its start. SurvPath's evaluation
  (its ``_calculate_metrics``: the column ``k`` at a time in bin ``k``) uses the same mapping.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

TIME_UNIT = "months"
EVENT_OBSERVED = 1
CENSORED = 0
RISK_DIRECTION = "higher risk = earlier event"

ArrayLike = Sequence[float] | np.ndarray


def event_from_censorship(censorship: ArrayLike) -> np.ndarray:
    """The TCGA ``censorship_*`` column (1 = censored) as our event indicator (1 = event observed), int8."""
    c = np.asarray(censorship)
    if c.size and not np.isin(c, (0, 1)).all():
        raise ValueError(f"censorship must be 0/1, got values {sorted(set(np.unique(c).tolist()))[:5]}")
    return (1 - c.astype(np.int64)).astype(np.int8)


def censorship_from_event(events: ArrayLike) -> np.ndarray:
    """Inverse of :func:`event_from_censorship`: 1 = censored (the SurvPath / MCAT loss argument ``c``)."""
    return event_from_censorship(events)


def survival_arrays(times: ArrayLike, events: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Validated ``(times float64, events bool)``: same length, finite times >= 0, events 0/1 or bool."""
    t = np.asarray(times, dtype=np.float64).reshape(-1)
    e_raw = np.asarray(events).reshape(-1)
    if t.shape != e_raw.shape:
        raise ValueError(f"times and events differ in length: {t.size} vs {e_raw.size}")
    if not np.isfinite(t).all():
        raise ValueError(f"{int((~np.isfinite(t)).sum())} time(s) are missing or infinite")
    if (t < 0).any():
        raise ValueError(f"times must be >= 0 ({TIME_UNIT}); smallest is {t.min()}")
    if e_raw.dtype != bool and e_raw.size and not np.isin(e_raw, (0, 1)).all():
        raise ValueError("events must be 0/1 (1 = event observed, 0 = censored)")
    return t, e_raw.astype(bool)


def lifelines_score(risk: ArrayLike) -> np.ndarray:
    """Our risk (higher = earlier event) as lifelines' ``predicted_scores`` (higher = longer survival)."""
    return -np.asarray(risk, dtype=np.float64)


def bin_index(times: ArrayLike, edges: ArrayLike) -> np.ndarray:
    """The bin of each time: ``k`` with ``edges[k] <= t < edges[k + 1]``; times past the last finite edge
    fall in the last bin (``edges[-1]`` is ``inf`` for bins from :func:`make_time_bins`)."""
    e = np.asarray(edges, dtype=np.float64)
    if e.ndim != 1 or e.size < 2 or not (np.diff(e) > 0).all():
        raise ValueError(f"edges must be strictly increasing with >= 2 entries, got {e.tolist()}")
    t = np.asarray(times, dtype=np.float64)
    return np.searchsorted(e[1:-1], t, side="right").astype(np.int64)


def survival_at_times(surv: np.ndarray, edges: ArrayLike, times: ArrayLike) -> np.ndarray:
    """Patients x times survival probabilities ``S(t)`` from a discrete-time curve ``surv`` (patients x bins),
    with ``S(t) = surv[:, k]`` for ``t`` in bin ``k`` (see the module docstring)."""
    s = np.asarray(surv, dtype=np.float64)
    e = np.asarray(edges, dtype=np.float64)
    if s.ndim != 2 or s.shape[1] != e.size - 1:
        raise ValueError(f"surv must be patients x {e.size - 1} bins, got shape {s.shape}")
    return s[:, bin_index(times, e)]
