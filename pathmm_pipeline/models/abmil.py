"""ABMIL: gated attention-based multiple-instance learning on patch features (the ``abmil`` model).

Holds :class:`ABMIL`: fc -> gated attention pooling (:class:`~pathmm_pipeline.models.layers.AttentionPool`) ->
linear head, with CLAM's sizes.

Paper: Ilse et al., ICML 2018 (in the form CLAM and the CLAM-lab survival baselines use).
Paper-to-code mapping and deviations: docs/methods/baselines.md
"""

from __future__ import annotations

from torch import nn

from pathmm_pipeline.models.base import InputDims, ModelOutput, PathmmModel, PatientInput, TaskSpec
from pathmm_pipeline.models.layers import AttentionPool
from pathmm_pipeline.models.registry import register_model


@register_model("abmil")
class ABMIL(PathmmModel):
    """Gated attention MIL on the patch features (``wsi`` required). Options: ``hidden_dim`` (512),
    ``attn_dim`` (256), ``dropout`` (0.25). The embedding is the attention-pooled bag vector (hidden_dim);
    ``extras["attention"]`` holds the (1, N) attention weights."""

    uses = frozenset({"wsi"})
    requires = frozenset({"wsi"})

    def __init__(self, dims: InputDims, task: TaskSpec, hidden_dim: int = 512, attn_dim: int = 256,
                 dropout: float = 0.25) -> None:
        super().__init__(dims, task)
        d_in = self.need_dim(dims.wsi, "wsi", "wsi")
        self.fc = nn.Sequential(nn.Linear(d_in, hidden_dim), nn.ReLU(), nn.Dropout(dropout))
        self.pool = AttentionPool(hidden_dim, attn_dim, dropout)
        self.classifier = nn.Linear(hidden_dim, task.n_outputs)
        self.embedding_dim = hidden_dim

    def forward(self, x: PatientInput) -> ModelOutput:
        present = self.check_input(x)
        h = self.fc(self.wsi_features(x))
        z, attention = self.pool(h)
        return ModelOutput(self.classifier(z), z, {"attention": attention, "present": present, "missing": []})
