"""Training utilities: survival and classification losses (:mod:`.losses`) and patient-level k-fold splits
written once as files and reused by every model (:mod:`.splits`)."""

from __future__ import annotations

from .losses import (NLLSurvLoss, binary_bce_with_pos_weight, class_weights, cox_ph_loss, discretize,
                     hazards_and_survival, make_time_bins, nll_survival_loss, pos_weight_from_labels,
                     risk_from_logits, weighted_cross_entropy)
from .splits import Fold, SplitError, SplitSet, make_splits, read_splits, site_of, write_splits

__all__ = [
    "Fold", "NLLSurvLoss", "SplitError", "SplitSet", "binary_bce_with_pos_weight", "class_weights", "cox_ph_loss",
    "discretize", "hazards_and_survival", "make_splits", "make_time_bins", "nll_survival_loss",
    "pos_weight_from_labels", "read_splits", "risk_from_logits", "site_of", "weighted_cross_entropy",
    "write_splits",
]

# the training harness: the multimodal cohort, the fold loop and checkpoints
from .checkpoint import LoadedCheckpoint, load_checkpoint, save_checkpoint, verify_checkpoint  # noqa: E402
from .dataset import CohortItem, MultimodalCohort, Targets  # noqa: E402
from .loop import (FoldResult, Objective, TrainConfig, eligible_patients, predict_logits,  # noqa: E402
                   resolve_task, train_fold)

__all__ += [
    "CohortItem", "FoldResult", "LoadedCheckpoint", "MultimodalCohort", "Objective", "Targets", "TrainConfig",
    "eligible_patients", "load_checkpoint", "predict_logits", "resolve_task", "save_checkpoint", "train_fold",
    "verify_checkpoint",
]
