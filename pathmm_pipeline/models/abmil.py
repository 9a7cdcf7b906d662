"""ABMIL: gated attention-based multiple-instance learning on patch features (the ``abmil`` model).

Holds :class:`ABMIL`: fc -> gated attention pooling (:class:`~pathmm_pipeline.models.layers.AttentionPool`) ->
(optional ``rho`` layer, as the SurvPath / MCAT survival ABMILs) -> linear head, with CLAM's sizes by default.

Paper: Ilse et al., ICML 2018 (in the form CLAM and the CLAM-lab survival baselines use).
Paper-to-code mapping and deviations: docs/methods/baselines.md
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pathmm_pipeline.models.base import InputDims, ModelConfigError, ModelOutput, PathmmModel, PatientInput, TaskSpec
from pathmm_pipeline.models.layers import AttentionPool
from pathmm_pipeline.models.registry import register_model


@register_model("abmil")
class ABMIL(PathmmModel):
    """Gated attention MIL on the patch features (``wsi`` required). Options: ``hidden_dim`` (512),
    ``attn_dim`` (256), ``dropout`` (0.25), ``rho_dim`` (None: CLAM's form, the head on the pooled vector; an
    int: the survival ABMILs' ``rho`` = Linear(hidden_dim, rho_dim) -> ReLU -> Dropout after pooling, as in
    mahmoodlab/SurvPath ``models/model_ABMIL.py`` and MCAT's ``MIL_Attention_FC_surv``). The embedding is the
    pooled bag vector after ``rho`` (rho_dim, else hidden_dim); ``extras["attention"]`` holds the (1, N) attention
    weights."""

    uses = frozenset({"wsi"})
    requires = frozenset({"wsi"})
    batched = True

    def __init__(self, dims: InputDims, task: TaskSpec, hidden_dim: int = 512, attn_dim: int = 256,
                 dropout: float = 0.25, rho_dim: int | None = None) -> None:
        super().__init__(dims, task)
        d_in = self.need_dim(dims.wsi, "wsi", "wsi")
        self.fc = nn.Sequential(nn.Linear(d_in, hidden_dim), nn.ReLU(), nn.Dropout(dropout))
        self.pool = AttentionPool(hidden_dim, attn_dim, dropout)
        if rho_dim is not None and rho_dim < 1:
            raise ModelConfigError(f"model '{self.name}': rho_dim must be >= 1 or None, got {rho_dim}")
        self.rho = (nn.Sequential(nn.Linear(hidden_dim, rho_dim), nn.ReLU(), nn.Dropout(dropout))
                    if rho_dim is not None else None)
        width = hidden_dim if rho_dim is None else rho_dim
        self.classifier = nn.Linear(width, task.n_outputs)
        self.embedding_dim = width

    def forward(self, x: PatientInput) -> ModelOutput:
        present = self.check_input(x)
        h = self.fc(self.wsi_features(x))
        z, attention = self.pool(h)
        if self.rho is not None:
            z = self.rho(z)
        return ModelOutput(self.classifier(z), z, {"attention": attention, "present": present, "missing": []})

    def forward_batch(self, xs: Sequence[PatientInput]) -> list[ModelOutput]:
        """Several patients in one pass over their concatenated tiles (attention softmax per patient, no
        padding): each output equals :meth:`forward` on that patient alone, to float rounding."""
        presents = [self.check_input(x) for x in xs]
        bags = [self.wsi_features(x) for x in xs]
        z, weights = self.pool.forward_segments(self.fc(torch.cat(bags)), [b.shape[0] for b in bags])
        if self.rho is not None:
            z = self.rho(z)
        logits = self.classifier(z)
        return [ModelOutput(logits[i:i + 1], z[i:i + 1], {"attention": weights[i], "present": presents[i],
                                                          "missing": []})
                for i in range(len(xs))]
