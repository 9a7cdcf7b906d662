"""MCAT: multimodal co-attention transformer (Chen et al., ICCV 2021).

* WSI: fc (D_wsi -> 256, ReLU, Dropout 0.25) on every patch.
* Genomics: one SNN per gene family (2 blocks of 256) -> 6 genomic tokens.
* Genomic-guided co-attention: single-head attention with the 6 genomic tokens as queries over the patch
  tokens (keys = values), giving 6 WSI tokens (the "genomic-guided" bag of the paper).
* Each branch: a 2-layer transformer encoder (8 heads, feed-forward 512, dropout 0.25, post-norm, ReLU) over its
  6 tokens, gated attention-MIL pooling (256/256) and rho (Linear 256, ReLU, Dropout).
* Fusion: concatenation -> Linear(512, 256) -> ReLU -> Linear(256, 256) -> ReLU (published default), or
  ``fusion="bilinear"``: the gated Kronecker fusion of PORPOISE (scale 8, no skip); then a linear head.

Missing modalities (MCAT as published needs both; here either may be absent, not both):
* genomics absent -> the 6 family tokens are replaced by 6 learned "missing" tokens; they are still the
  co-attention queries over the patches (learned prototypes) and still go through the genomic branch.
* wsi absent -> the pooled WSI vector (after rho) is replaced by a learned "missing" vector.
Both stand-ins only learn when training sees the modality absent (real gaps, or ``modality_dropout`` > 0).
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
