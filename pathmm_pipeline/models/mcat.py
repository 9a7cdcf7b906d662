"""MCAT: multimodal co-attention transformer on ``wsi`` and gene-family tokens (the ``mcat`` model).

Holds :class:`MCAT` (genomic-guided co-attention, per-branch transformers, attention pooling, concat or gated
Kronecker fusion; learned stand-ins when a modality is absent) and its :func:`transformer` helper.

Paper: Chen et al., ICCV 2021.
Paper-to-code mapping and deviations: docs/methods/baselines.md
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pathmm_pipeline.models.base import InputDims, ModelConfigError, ModelOutput, PathmmModel, PatientInput, TaskSpec
from pathmm_pipeline.models.layers import AttentionPool, KroneckerFusion, MissingEmbedding, mlp, snn
from pathmm_pipeline.models.registry import register_model


def transformer(dim: int, heads: int, ff_dim: int, layers: int, dropout: float) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(dim, heads, ff_dim, dropout, activation="relu", batch_first=True)
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


@register_model("mcat")
class MCAT(PathmmModel):
    """MCAT on ``wsi`` and genomics as ``families`` (either may be absent; see the module docstring).

    Options: ``dim`` (256), ``snn_hidden`` ((256, 256)), ``coattn_heads`` (1), ``heads`` (8), ``ff_dim`` (512),
    ``layers`` (2), ``dropout`` (0.25), ``fusion`` ("concat" | "bilinear"), ``modality_dropout`` (0.0: the
    probability, when training, of hiding each present modality, keeping at least one). The embedding is the
    fused vector (dim); extras hold the co-attention (1, n_families, N) and both pooling attentions.
    """

    uses = frozenset({"wsi", "genomics"})
    requires = frozenset()
    genomics_field = "families"

    def __init__(self, dims: InputDims, task: TaskSpec, dim: int = 256, snn_hidden: Sequence[int] = (256, 256),
                 coattn_heads: int = 1, heads: int = 8, ff_dim: int = 512, layers: int = 2, dropout: float = 0.25,
                 fusion: str = "concat", modality_dropout: float = 0.0) -> None:
        super().__init__(dims, task, modality_dropout=modality_dropout)
        d_in = self.need_dim(dims.wsi, "wsi", "wsi")
        sizes = self.need_dim(dims.family_sizes, "family_sizes", "genomics (gene families)")
        if snn_hidden[-1] != dim:
            raise ModelConfigError(f"model 'mcat': snn_hidden must end at dim={dim}, got {tuple(snn_hidden)}")
        if fusion not in ("concat", "bilinear"):
            raise ModelConfigError(f"model 'mcat': fusion must be 'concat' or 'bilinear', got {fusion!r}")
        self.fc = mlp(d_in, [dim], dropout)
        self.sig_networks = nn.ModuleList(snn(s, snn_hidden, dropout) for s in sizes)
        self.coattn = nn.MultiheadAttention(dim, coattn_heads, batch_first=True)
        self.path_transformer = transformer(dim, heads, ff_dim, layers, dropout)
        self.path_pool = AttentionPool(dim, dim, dropout)
        self.path_rho = mlp(dim, [dim], dropout)
        self.omic_transformer = transformer(dim, heads, ff_dim, layers, dropout)
        self.omic_pool = AttentionPool(dim, dim, dropout)
        self.omic_rho = mlp(dim, [dim], dropout)
        self.fusion = fusion
        if fusion == "concat":
            self.mm: nn.Module = nn.Sequential(nn.Linear(2 * dim, dim), nn.ReLU(), nn.Linear(dim, dim), nn.ReLU())
        else:
            self.mm = KroneckerFusion([dim, dim], scale=8, mmhid=dim, gate=True, skip=False,
                                      dropout=dropout)
        self.missing_families = MissingEmbedding(len(sizes), dim)
        self.missing_wsi = MissingEmbedding(1, dim)
        self.classifier = nn.Linear(dim, task.n_outputs)
        self.embedding_dim = dim

    def forward(self, x: PatientInput) -> ModelOutput:
        present = self.check_input(x)
        extras: dict = {"present": present, "missing": [m for m, p in present.items() if not p]}
        if present["genomics"]:
            assert x.families is not None
            omic = torch.cat([net(self.as_input(v.reshape(1, -1))) for net, v in zip(self.sig_networks, x.families)])
        else:
            omic = self.missing_families()
        omic = omic.unsqueeze(0)                                                  # (1, n_families, dim)
        if present["wsi"]:
            patches = self.fc(self.wsi_features(x)).unsqueeze(0)                  # (1, N, dim)
            path_tokens, coattn = self.coattn(omic, patches, patches, need_weights=True)
            path_trans = self.path_transformer(path_tokens).squeeze(0)
            h_path, a_path = self.path_pool(path_trans)
            h_path = self.path_rho(h_path)
            extras.update(coattention=coattn, path_attention=a_path)
        else:
            h_path = self.missing_wsi()
        omic_trans = self.omic_transformer(omic).squeeze(0)
        h_omic, a_omic = self.omic_pool(omic_trans)
        h_omic = self.omic_rho(h_omic)
        extras["omic_attention"] = a_omic
        h = self.mm(torch.cat([h_path, h_omic], dim=1)) if self.fusion == "concat" else self.mm([h_path, h_omic])
        return ModelOutput(self.classifier(h), h, extras)
