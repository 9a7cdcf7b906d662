"""Penalised Cox models fitted in closed form (lifelines), and their baseline hazard over discrete time bins.

Used by the models whose head is fitted, not stepped: the ridge Cox genomics baseline and ModalTune's published
probe on frozen features. Conventions (times in months, events 1 = observed, risk higher = earlier event) are
those of :mod:`pathmm_pipeline.stats.conventions`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

#: the L2 penalties (lifelines ``penalizer``) searched on an inner-validation split
COX_PENALTIES = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0)


def standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, scale) of the rows of ``x``; a constant column gets scale 1."""
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    return mean, np.where(scale > 1e-8, scale, 1.0)


def fit_ridge_cox(x: np.ndarray, time: np.ndarray, event: np.ndarray, penalty: float
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Standardise ``x`` on these rows and fit lifelines' ridge Cox: ``(beta, mean, scale)``, the linear
    predictor being ``((x - mean) / scale) @ beta``."""
    from lifelines import CoxPHFitter

    x = np.asarray(x, dtype=np.float64)
    mean, scale = standardise(x)
    z = (x - mean) / scale
    frame = pd.DataFrame(z, columns=[f"p{i}" for i in range(z.shape[1])])
    frame["time"], frame["event"] = np.maximum(np.asarray(time, float), 1e-6), np.asarray(event, int)
    fitter = CoxPHFitter(penalizer=penalty, l1_ratio=0.0).fit(frame, "time", "event")
    return fitter.params_.to_numpy(dtype=np.float64), mean, scale


def binned_baseline_hazard(lp: np.ndarray, time: np.ndarray, event: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Breslow's baseline cumulative hazard ``H0`` of the fitted linear predictor ``lp``, as its increment over
    each time bin ``[edges[j], edges[j+1])`` (the last bin up to the last observed time), floored at 1e-6."""
    lp, time, event = np.asarray(lp, float), np.asarray(time, float), np.asarray(event, int)
    risk = np.exp(lp - lp.max())
    order = np.argsort(time)
    t, e, r = time[order], event[order], risk[order]
    at_risk = np.cumsum(r[::-1])[::-1]
    jumps = np.where(e == 1, 1.0 / at_risk, 0.0) * np.exp(-(lp.max()))  # undo the shift: exp(lp) = r * e^max

    def h0(s: float) -> float:
        return float(jumps[t < s].sum())

    ends = [min(float(b), float(t.max()) + 1e-9) for b in edges[1:]]
    starts = [float(edges[0])] + ends[:-1]
    return np.maximum(np.array([h0(b) - h0(a) for a, b in zip(starts, ends)]), 1e-6)


def fit_cox_probe(x_fit: np.ndarray, t_fit: np.ndarray, e_fit: np.ndarray, penalty: float,
                  x_check: np.ndarray | None = None, t_check: np.ndarray | None = None,
                  e_check: np.ndarray | None = None, grid: tuple[float, ...] = COX_PENALTIES,
                  edges: np.ndarray | None = None) -> tuple[dict[str, np.ndarray | float], list[dict[str, float]]]:
    """A ridge Cox fitted on the ``fit`` rows with ``penalty``; with ``check`` rows (an inner-validation split),
    the penalty of ``grid`` whose fit orders them best (Harrell's C; ties: the larger penalty), refitted on fit
    + check. Returns ``({"beta", "mean", "scale", "penalty"[, "baseline"]}, one row per penalty tried)``;
    ``baseline`` (with ``edges``) is :func:`binned_baseline_hazard` of the final fit."""
    from lifelines.utils import concordance_index

    x_fit, t_fit, e_fit = np.asarray(x_fit, np.float64), np.asarray(t_fit, float), np.asarray(e_fit, int)
    rows: list[dict[str, float]] = []
    if x_check is not None and len(x_check):
        x_chk, t_chk = np.asarray(x_check, np.float64), np.asarray(t_check, float)
        e_chk = np.asarray(e_check, int)
        best = -np.inf
        for p in grid:
            beta, mean, scale = fit_ridge_cox(x_fit, t_fit, e_fit, p)
            risk = ((x_chk - mean) / scale) @ beta
            score = concordance_index(t_chk, -risk, e_chk) if e_chk.sum() else float("nan")
            rows.append({"penalty": p, "inner_val_metric": score})
            if np.isfinite(score) and score >= best:
                best, penalty = score, p
        x_fit, t_fit, e_fit = np.vstack([x_fit, x_chk]), np.concatenate([t_fit, t_chk]), np.concatenate(
            [e_fit, e_chk])
    beta, mean, scale = fit_ridge_cox(x_fit, t_fit, e_fit, penalty)
    fitted: dict[str, np.ndarray | float] = {"beta": beta, "mean": mean, "scale": scale, "penalty": float(penalty)}
    if edges is not None:
        fitted["baseline"] = binned_baseline_hazard(((x_fit - mean) / scale) @ beta, t_fit, e_fit, edges)
    rows.append({"penalty": float(penalty), "chosen": True, "n_fit": len(t_fit)})
    return fitted, rows
