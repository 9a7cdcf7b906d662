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
