"""Late-fusion baselines: one encoder per modality (wsi, genomics, report), fused by concatenation
(``late_fusion_concat``) or by a gated Kronecker product (``late_fusion_kronecker``); an absent modality gets a
learned "missing" embedding.

Holds the shared base ``_LateFusion``, :class:`LateFusionConcat` and :class:`LateFusionKronecker`.
Paper: PORPOISE's unimodal encoders and fusion (Chen et al. 2022); Pathomic Fusion's gated Kronecker fusion.
Paper-to-code mapping and deviations: docs/methods/baselines.md
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from pathmm_pipeline.models.base import (
    MODALITIES,
    InputDims,
    ModelConfigError,
    ModelOutput,
    PathmmModel,
    PatientInput,
    TaskSpec,
)
from pathmm_pipeline.models.layers import AttentionPool, KroneckerFusion, MissingEmbedding, mlp, snn
from pathmm_pipeline.models.registry import register_model


class _LateFusion(PathmmModel):
    uses = frozenset(MODALITIES)
    requires = frozenset()
    genomics_field = "genes"

    def __init__(self, dims: InputDims, task: TaskSpec, dim: int = 256, attn_dim: int = 256,
                 snn_hidden: Sequence[int] = (256, 256), report_hidden: Sequence[int] = (256, 256),
                 dropout: float = 0.25, modalities: Iterable[str] | None = None,
                 modality_dropout: float = 0.0) -> None:
        super().__init__(dims, task, modalities=self.modalities_from_dims(dims, modalities),
                         modality_dropout=modality_dropout)
        self.order = [m for m in MODALITIES if m in self.modalities]
        if snn_hidden[-1] != dim or report_hidden[-1] != dim:
            raise ModelConfigError(f"model '{self.name}': snn_hidden and report_hidden must end at dim={dim}")
        self.encoders = nn.ModuleDict()
        if "wsi" in self.modalities:
            d_in = self.need_dim(dims.wsi, "wsi", "wsi")
            self.encoders["wsi"] = nn.ModuleDict({"fc": mlp(d_in, [dim], dropout),
                                                  "pool": AttentionPool(dim, attn_dim, dropout),
                                                  "rho": mlp(dim, [dim], dropout)})
        if "genomics" in self.modalities:
            self.encoders["genomics"] = snn(self.need_dim(dims.genes, "genes", "genomics (flat gene vector)"),
                                            snn_hidden, dropout)
        if "report" in self.modalities:
            self.encoders["report"] = mlp(self.need_dim(dims.report, "report", "report"), report_hidden, dropout)
        self.missing = nn.ModuleDict({m: MissingEmbedding(1, dim) for m in self.order})
        self.dim = dim

    def encode(self, x: PatientInput, present: dict[str, bool]) -> tuple[list[torch.Tensor], dict]:
        vectors, extras = [], {}
        for m in self.order:
            if not present[m]:
                vectors.append(self.missing[m]())
            elif m == "wsi":
                enc = self.encoders["wsi"]
                pooled, attention = enc["pool"](enc["fc"](self.wsi_features(x)))
                vectors.append(enc["rho"](pooled))
                extras["attention"] = attention
            elif m == "genomics":
                vectors.append(self.encoders["genomics"](self.gene_vector(x)))
            else:
                vectors.append(self.encoders["report"](self.report_vector(x)))
        return vectors, extras

    def fuse(self, vectors: list[torch.Tensor]) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: PatientInput) -> ModelOutput:
        present = self.check_input(x)
        vectors, extras = self.encode(x, present)
        h = self.fuse(vectors)
        extras.update(present=present, missing=[m for m in self.order if not present[m]])
        return ModelOutput(self.classifier(h), h, extras)


@register_model("late_fusion_concat")
class LateFusionConcat(_LateFusion):
    """Unimodal encoders fused by concatenation and a 2-layer MLP (see the module docstring).

    Options: ``dim`` (256), ``attn_dim`` (256), ``snn_hidden`` ((256, 256)), ``report_hidden`` ((256, 256)),
    ``dropout`` (0.25), ``modalities`` (default: those the dims give), ``modality_dropout`` (0.0). Any subset of
    the modalities may be absent (learned missing embeddings). The embedding is the fused vector (dim).
    """

    def __init__(self, dims: InputDims, task: TaskSpec, dim: int = 256, attn_dim: int = 256,
                 snn_hidden: Sequence[int] = (256, 256), report_hidden: Sequence[int] = (256, 256),
                 dropout: float = 0.25, modalities: Iterable[str] | None = None,
                 modality_dropout: float = 0.0) -> None:
        super().__init__(dims, task, dim, attn_dim, snn_hidden, report_hidden, dropout, modalities, modality_dropout)
        self.mm = nn.Sequential(nn.Linear(len(self.order) * dim, dim), nn.ReLU(), nn.Linear(dim, dim), nn.ReLU())
        self.classifier = nn.Linear(dim, task.n_outputs)
        self.embedding_dim = dim

    def fuse(self, vectors: list[torch.Tensor]) -> torch.Tensor:
        return self.mm(torch.cat(vectors, dim=1))


@register_model("late_fusion_kronecker")
class LateFusionKronecker(_LateFusion):
    """Unimodal encoders fused by the gated Kronecker product (see the module docstring).

    Options as ``late_fusion_concat``, plus ``scale`` (8: each vector is reduced to dim // scale before the
    product), ``gate`` (True) and ``skip`` (True). The embedding is the fused vector (dim).
    """

    def __init__(self, dims: InputDims, task: TaskSpec, dim: int = 256, attn_dim: int = 256,
                 snn_hidden: Sequence[int] = (256, 256), report_hidden: Sequence[int] = (256, 256),
                 dropout: float = 0.25, modalities: Iterable[str] | None = None, modality_dropout: float = 0.0,
                 scale: int = 8, gate: bool = True, skip: bool = True) -> None:
        super().__init__(dims, task, dim, attn_dim, snn_hidden, report_hidden, dropout, modalities, modality_dropout)
        self.mm = KroneckerFusion([dim] * len(self.order), scale=scale, mmhid=dim, gate=gate, skip=skip,
                                  dropout=dropout)
        self.classifier = nn.Linear(dim, task.n_outputs)
        self.embedding_dim = dim

    def fuse(self, vectors: list[torch.Tensor]) -> torch.Tensor:
        return self.mm(vectors)
