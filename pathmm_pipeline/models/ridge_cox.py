"""Ridge Cox on pathway mean scores (the ``ridge_cox`` model): the classic genomics baseline, a penalised Cox
model on the mean z-scored expression of each pathway, fitted in closed form with lifelines
(:meth:`RidgeCox.fit_direct`; the penalty searched over :data:`PENALTIES` under selection ``inner``).

Paper: none cited (the classic baseline).
Paper-to-code mapping and deviations: docs/methods/baselines.md
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from pathmm_pipeline.models.base import InputDims, ModelConfigError, ModelOutput, PathmmModel, PatientInput, TaskSpec
from pathmm_pipeline.models.registry import register_model

#: the penalties searched on the inner-validation split (selection ``inner``)
PENALTIES = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0)


@register_model("ridge_cox")
class RidgeCox(PathmmModel):
    """Penalised Cox on the mean of each pathway's (scaled) genes. Options: ``penalty`` (0.5, lifelines'
    ``penalizer`` under selection ``last``). Tasks: ``survival`` and ``cox``."""

    uses = frozenset({"genomics"})
    requires = frozenset({"genomics"})
    genomics_field = "pathways"
    direct_fit = True

    def __init__(self, dims: InputDims, task: TaskSpec, penalty: float = 0.5) -> None:
        super().__init__(dims, task)
        if task.kind != "survival":
            raise ModelConfigError(f"model 'ridge_cox' is a survival model; task '{task.kind}' is not supported")
        if penalty < 0:
            raise ModelConfigError(f"model 'ridge_cox': penalty must be >= 0, got {penalty}")
        sizes = self.need_dim(dims.pathway_sizes, "pathway_sizes", "genomics (pathways)")
        k = len(sizes)
        self.penalty = float(penalty)
        self.linear = nn.Linear(k, 1, bias=False)
        nn.init.zeros_(self.linear.weight)
        self.register_buffer("mean", torch.zeros(k))
        self.register_buffer("scale", torch.ones(k))
        n_bins = task.n_outputs
        self.register_buffer("baseline", torch.full((n_bins,), 1e-3))  # dH0 per time bin
        self.register_buffer("chosen_penalty", torch.tensor(float(penalty)))
        self.embedding_dim = k

    @staticmethod
    def scores(x: PatientInput) -> torch.Tensor:
        """(K,) the mean of each pathway's gene values."""
        return torch.stack([t.reshape(-1).float().mean() for t in x.pathways])

    def forward(self, x: PatientInput) -> ModelOutput:
        present = self.check_input(x)
        z = ((self.scores(x) - self.mean) / self.scale).reshape(1, -1)
        lp = self.linear(z)
        if self.task.is_cox:
            logits = lp
        else:
            a = (self.baseline * torch.exp(lp)).clamp_min(1e-12)  # (1, n_bins) cumulative hazard per bin
            logits = torch.log(torch.expm1(a))  # logit of 1 - exp(-a)
        return ModelOutput(logits, z, {"present": present, "missing": []})

    # ------------------------------------------------------------------------------------------ fitting
    def fit_direct(self, fit: Sequence[PatientInput], fit_time: np.ndarray, fit_event: np.ndarray,
                   check: Sequence[PatientInput] = (), check_time: np.ndarray | None = None,
                   check_event: np.ndarray | None = None, edges: np.ndarray | None = None) -> list[dict[str, Any]]:
        """Fit on ``fit`` (time, event); with ``check`` patients, choose the penalty of :data:`PENALTIES` on them
        and refit on ``fit`` + ``check``. Returns one history row per penalty tried."""
        from lifelines.utils import concordance_index

        x_fit = torch.stack([self.scores(x) for x in fit]).numpy().astype(np.float64)
        t_fit, e_fit = np.asarray(fit_time, float), np.asarray(fit_event, int)
        rows: list[dict[str, Any]] = []
        penalty = self.penalty
        if len(check):
            x_chk = torch.stack([self.scores(x) for x in check]).numpy().astype(np.float64)
            t_chk, e_chk = np.asarray(check_time, float), np.asarray(check_event, int)
            best = -np.inf
            for p in PENALTIES:
                beta, mean, scale = _fit(x_fit, t_fit, e_fit, p)
                risk = ((x_chk - mean) / scale) @ beta
                score = concordance_index(t_chk, -risk, e_chk) if e_chk.sum() else float("nan")
                rows.append({"penalty": p, "inner_val_metric": score})
                if np.isfinite(score) and score >= best:  # ties: the larger penalty
                    best, penalty = score, p
            x_fit, t_fit, e_fit = np.vstack([x_fit, x_chk]), np.concatenate([t_fit, t_chk]), np.concatenate(
                [e_fit, e_chk])
        beta, mean, scale = _fit(x_fit, t_fit, e_fit, penalty)
        lp = ((x_fit - mean) / scale) @ beta
        with torch.no_grad():
            self.linear.weight.copy_(torch.as_tensor(beta, dtype=torch.float32).reshape(1, -1))
            self.mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
            self.scale.copy_(torch.as_tensor(scale, dtype=torch.float32))
            self.chosen_penalty.fill_(float(penalty))
            if not self.task.is_cox and edges is not None:
                self.baseline.copy_(torch.as_tensor(_bin_baseline(lp, t_fit, e_fit, edges), dtype=torch.float32))
        rows.append({"penalty": penalty, "chosen": True, "n_fit": len(t_fit)})
        return rows


def _fit(x: np.ndarray, time: np.ndarray, event: np.ndarray, penalty: float
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Standardise ``x`` on these rows and fit lifelines' ridge Cox: (beta, mean, scale)."""
    from lifelines import CoxPHFitter

    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale = np.where(scale > 1e-8, scale, 1.0)
    z = (x - mean) / scale
    frame = pd.DataFrame(z, columns=[f"p{i}" for i in range(z.shape[1])])
    frame["time"], frame["event"] = np.maximum(time, 1e-6), event
    fitter = CoxPHFitter(penalizer=penalty, l1_ratio=0.0).fit(frame, "time", "event")
    return fitter.params_.to_numpy(dtype=np.float64), mean, scale


def _bin_baseline(lp: np.ndarray, time: np.ndarray, event: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Breslow's baseline cumulative hazard ``H0`` of the fitted linear predictor, as its increment over each
    time bin ``[edges[j], edges[j+1])`` (the last bin up to the last observed time)."""
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
