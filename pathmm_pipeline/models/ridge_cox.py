"""Ridge Cox on pathway mean scores (the ``ridge_cox`` model): the classic genomics baseline, a penalised Cox
model on the mean z-scored expression of each pathway, fitted in closed form with lifelines
(:meth:`RidgeCox.fit_direct`; the penalty searched over :data:`~pathmm_pipeline.stats.cox.COX_PENALTIES` under
selection ``inner``).

Paper: none cited (the classic baseline).
Paper-to-code mapping and deviations: docs/methods/baselines.md
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from pathmm_pipeline.models.base import InputDims, ModelConfigError, ModelOutput, PathmmModel, PatientInput, TaskSpec
from pathmm_pipeline.models.losses import logits_from_cumulative_hazard
from pathmm_pipeline.models.registry import register_model
from pathmm_pipeline.stats.cox import fit_cox_probe


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
            logits = logits_from_cumulative_hazard(self.baseline * torch.exp(lp))  # (1, n_bins)
        return ModelOutput(logits, z, {"present": present, "missing": []})

    # ------------------------------------------------------------------------------------------ fitting
    def fit_direct(self, fit: Sequence[PatientInput], fit_time: np.ndarray, fit_event: np.ndarray,
                   check: Sequence[PatientInput] = (), check_time: np.ndarray | None = None,
                   check_event: np.ndarray | None = None, edges: np.ndarray | None = None,
                   **_labels: Any) -> list[dict[str, Any]]:
        """Fit on ``fit`` (time, event); with ``check`` patients, choose the penalty of
        :data:`~pathmm_pipeline.stats.cox.COX_PENALTIES` on them and refit on ``fit`` + ``check``. Returns one
        history row per penalty tried. (Class labels, passed to every closed-form model, are not used.)"""
        x_fit = torch.stack([self.scores(x) for x in fit]).numpy()
        x_chk = torch.stack([self.scores(x) for x in check]).numpy() if len(check) else None
        fitted, rows = fit_cox_probe(x_fit, fit_time, fit_event, self.penalty, x_chk, check_time, check_event,
                                     edges=None if self.task.is_cox else edges)
        with torch.no_grad():
            self.linear.weight.copy_(torch.as_tensor(fitted["beta"], dtype=torch.float32).reshape(1, -1))
            self.mean.copy_(torch.as_tensor(fitted["mean"], dtype=torch.float32))
            self.scale.copy_(torch.as_tensor(fitted["scale"], dtype=torch.float32))
            self.chosen_penalty.fill_(float(fitted["penalty"]))
            if "baseline" in fitted:
                self.baseline.copy_(torch.as_tensor(fitted["baseline"], dtype=torch.float32))
        return rows
