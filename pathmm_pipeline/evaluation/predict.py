"""Predicting with a model: the patient as the model reads it, and logits of many patients in eval mode with
chosen modalities withheld (the missing-modality stress test)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from pathmm_pipeline.cohort.dataset import CohortItem, MultimodalCohort
from pathmm_pipeline.models.base import MODALITIES, MissingModalityError, PathmmModel


def model_input(cohort: MultimodalCohort, model: PathmmModel, patient_id: str,
                remove: Sequence[str] = ()) -> CohortItem:
    """The patient as the model reads it: only the modalities it uses, minus ``remove``."""
    item = cohort.get(patient_id, [m for m in model.modalities if m not in remove])
    unused = [m for m in MODALITIES if m not in model.modalities or m in remove]
    item.x = item.x.without(*unused) if unused else item.x
    return item


@torch.no_grad()
def predict_logits(model: PathmmModel, cohort: MultimodalCohort, patients: Sequence[str],
                   device: torch.device | str = "cpu", remove: Sequence[str] = ()
                   ) -> tuple[list[str], np.ndarray, dict[str, str]]:
    """Logits (patients x outputs, float64 on the CPU) of ``patients`` in eval mode, with the modalities in
    ``remove`` withheld. Patients the model cannot take that way (a required modality removed, nothing left)
    are skipped: returns ``(kept ids, logits, {skipped id: reason})``."""
    was_training = model.training
    model.eval()
    kept, rows, skipped = [], [], {}
    try:
        for p in patients:
            item = model_input(cohort, model, p, remove)
            try:
                out = model(item.x.to(device))
            except MissingModalityError as exc:
                skipped[p] = str(exc).split(" -- ")[0]
                continue
            kept.append(p)
            rows.append(out.logits.detach().reshape(-1).to("cpu", torch.float64))
    finally:
        model.train(was_training)
    n_out = model.task.n_outputs
    logits = torch.stack(rows).numpy() if rows else np.zeros((0, n_out))
    return kept, logits, skipped
