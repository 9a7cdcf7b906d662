"""Per-tile contribution to the prediction, for any model that reads the slide: gradient x input.

The prediction score is the task's own (:func:`prediction_score`): the risk for survival (minus the summed
survival probabilities of the discrete-time head, the linear predictor of a Cox head; higher = earlier event),
the logit for a binary task, the chosen class's logit for classification (default: the predicted class). A
tile's contribution is ``sum_d x_nd * d score / d x_nd`` over its feature dimensions: positive where the tile's
features push the score up (towards higher risk / the class). For a model linear in its tiles' features this is
exactly each tile's share of the score above the all-zero bag. No re-extraction: the stored features are the
input. Gradients are taken with ``torch.autograd.grad`` on the input only; the weights are never touched.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from pathmm_pipeline.models.base import PathmmModel, PatientInput, TaskSpec
from pathmm_pipeline.models.losses import risk_from_logits


def prediction_score(task: TaskSpec, logits: torch.Tensor, target_class: int | None = None) -> torch.Tensor:
    """The scalar whose per-tile contribution is shown (see the module docstring)."""
    row = logits.reshape(1, -1)
    if task.kind == "survival":
        return row[0, 0] if task.is_cox else risk_from_logits(row)[0]
    if task.kind == "binary":
        return row[0, 0]
    cls = int(row.argmax(dim=1)) if target_class is None else int(target_class)
    return row[0, cls]


def tile_contribution(model: PathmmModel, x: PatientInput, target_class: int | None = None) -> np.ndarray:
    """(N,) gradient x input of the prediction score w.r.t. each tile's features (eval mode, float64 out)."""
    if x.wsi is None:
        raise ValueError(f"model '{model.name}': this patient has no slide features (wsi is None)")
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            wsi = model.as_input(x.wsi.reshape(-1, x.wsi.shape[-1])).detach().requires_grad_(True)
            out = model(dataclasses.replace(x, wsi=wsi))
            score = prediction_score(model.task, out.logits, target_class)
            (grad,) = torch.autograd.grad(score, wsi)
    finally:
        model.train(was_training)
    return (grad * wsi.detach()).sum(dim=1).to("cpu", torch.float64).numpy()
