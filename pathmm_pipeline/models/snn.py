"""SNN: a self-normalising network on the flat gene-expression vector (the ``snn`` model), the genomics
baseline of PORPOISE and MCAT.

Holds :class:`SNN` (PORPOISE's "small" SNN, built from :func:`~pathmm_pipeline.models.layers.snn`).

Paper: Klambauer et al., NeurIPS 2017.
Paper-to-code mapping and deviations: docs/methods/baselines.md
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from pathmm_pipeline.models.base import InputDims, ModelOutput, PathmmModel, PatientInput, TaskSpec
from pathmm_pipeline.models.layers import snn
from pathmm_pipeline.models.registry import register_model


@register_model("snn")
class SNN(PathmmModel):
    """Self-normalising MLP on ``genes`` (genomics required). Options: ``hidden`` ((256, 256); PORPOISE's
    "big" is (1024, 1024, 1024, 256)), ``dropout`` (0.25). The embedding is the last hidden layer."""

    uses = frozenset({"genomics"})
    requires = frozenset({"genomics"})
    genomics_field = "genes"

    def __init__(self, dims: InputDims, task: TaskSpec, hidden: Sequence[int] = (256, 256),
                 dropout: float = 0.25) -> None:
        super().__init__(dims, task)
        g = self.need_dim(dims.genes, "genes", "genomics (flat gene vector)")
        self.fc_omic = snn(g, hidden, dropout)
        self.classifier = nn.Linear(hidden[-1], task.n_outputs)
        self.embedding_dim = hidden[-1]

    def forward(self, x: PatientInput) -> ModelOutput:
        present = self.check_input(x)
        z = self.fc_omic(self.gene_vector(x))
        return ModelOutput(self.classifier(z), z, {"present": present, "missing": []})
