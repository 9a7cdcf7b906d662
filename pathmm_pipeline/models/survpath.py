"""SurvPath: biological-pathway tokens and patch tokens in one sparse transformer (the ``survpath`` model).

Holds :class:`SparseMultimodalAttention`, :class:`FeedForward` and :class:`SurvPath` (learned stand-ins when a
modality is absent).

Paper: Jaume et al., CVPR 2024.
Paper-to-code mapping and deviations: docs/methods/baselines.md
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pathmm_pipeline.models.base import InputDims, ModelConfigError, ModelOutput, PathmmModel, PatientInput, TaskSpec
from pathmm_pipeline.models.layers import MissingEmbedding, snn
from pathmm_pipeline.models.registry import register_model


class SparseMultimodalAttention(nn.Module):
    """Tokens = [P pathway tokens; N patch tokens]; pathways attend to everything, patches to pathways only.

    (B, P + N, dim) -> (B, P + N, heads * dim_head), after a LayerNorm of the input.
    """

    def __init__(self, dim: int, dim_head: int, heads: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.heads, self.dim_head = heads, dim_head
        self.scale = dim_head ** -0.5
        self.norm = nn.LayerNorm(dim)
        self.to_qkv = nn.Linear(dim, 3 * heads * dim_head, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, tokens: torch.Tensor, n_pathways: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        b, t, _ = tokens.shape
        q, k, v = self.to_qkv(self.norm(tokens)).view(b, t, 3, self.heads, self.dim_head).permute(2, 0, 3, 1, 4)
        q = q * self.scale
        p = n_pathways
        # pathway queries over all keys (pathways then patches)
        attn_pathways = torch.softmax(q[:, :, :p] @ k.transpose(-1, -2), dim=-1)      # (B, h, P, P + N)
        out = [attn_pathways @ v]
        attn_patches = None
        if t > p:  # patch queries over pathway keys only
            attn_patches = torch.softmax(q[:, :, p:] @ k[:, :, :p].transpose(-1, -2), dim=-1)  # (B, h, N, P)
            out.append(attn_patches @ v[:, :, :p])
        merged = torch.cat(out, dim=2).transpose(1, 2).reshape(b, t, self.heads * self.dim_head)
        return self.dropout(merged), attn_patches


class FeedForward(nn.Module):
    """LayerNorm -> Linear(dim, mult * dim) -> GELU -> Dropout -> Linear(mult * dim, dim) (no residual)."""

    def __init__(self, dim: int, mult: int = 1, dropout: float = 0.1) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim * mult), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(dim * mult, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@register_model("survpath")
class SurvPath(PathmmModel):
    """SurvPath on ``wsi`` and genomics as ``pathways`` (either may be absent; see the module docstring).

    Options: ``dim`` (256: token width), ``snn_hidden`` ((256, 256)), ``heads`` (1), ``dim_head`` (dim // 2),
    ``dropout`` (0.1: the feed-forward's), ``snn_dropout`` (0.25), ``ff_mult`` (1: the reference's
    feed-forward width), ``attn_dropout`` (0.0: the reference builds no attention dropout), ``modality_dropout``
    (0.0). The embedding is [mean pathway token; mean patch token] (2 * heads * dim_head = 256);
    ``extras["patch_to_pathway"]`` holds the (1, heads, N, P) patch->pathway attention.
    """

    uses = frozenset({"wsi", "genomics"})
    requires = frozenset()
    genomics_field = "pathways"

    def __init__(self, dims: InputDims, task: TaskSpec, dim: int = 256, snn_hidden: Sequence[int] = (256, 256),
                 heads: int = 1, dim_head: int | None = None, dropout: float = 0.1, snn_dropout: float = 0.25,
                 ff_mult: int = 1, modality_dropout: float = 0.0, attn_dropout: float = 0.0) -> None:
        super().__init__(dims, task, modality_dropout=modality_dropout)
        d_in = self.need_dim(dims.wsi, "wsi", "wsi")
        sizes = self.need_dim(dims.pathway_sizes, "pathway_sizes", "genomics (pathways)")
        if snn_hidden[-1] != dim:
            raise ModelConfigError(f"model 'survpath': snn_hidden must end at dim={dim}, got {tuple(snn_hidden)}")
        dim_head = dim // 2 if dim_head is None else dim_head
        inner = heads * dim_head
        self.n_pathways = len(sizes)
        self.sig_networks = nn.ModuleList(snn(s, snn_hidden, snn_dropout) for s in sizes)
        self.wsi_projection_net = nn.Linear(d_in, dim)
        self.cross_attender = SparseMultimodalAttention(dim, dim_head, heads, attn_dropout)
        self.feed_forward = FeedForward(inner, ff_mult, dropout)
        self.layer_norm = nn.LayerNorm(inner)
        self.to_logits = nn.Sequential(nn.Linear(2 * inner, dim // 4), nn.ReLU(), nn.Linear(dim // 4, task.n_outputs))
        self.missing_pathways = MissingEmbedding(self.n_pathways, dim)
        self.missing_wsi = MissingEmbedding(1, inner)
        self.embedding_dim = 2 * inner

    def forward(self, x: PatientInput) -> ModelOutput:
        present = self.check_input(x)
        extras: dict = {"present": present, "missing": [m for m, p in present.items() if not p]}
        if present["genomics"]:
            assert x.pathways is not None
            pathways = torch.cat([net(self.as_input(v.reshape(1, -1)))
                                  for net, v in zip(self.sig_networks, x.pathways)])
        else:
            pathways = self.missing_pathways()
        tokens = [pathways]
        if present["wsi"]:
            tokens.append(self.wsi_projection_net(self.wsi_features(x)))
        mm, attn_patches = self.cross_attender(torch.cat(tokens).unsqueeze(0), self.n_pathways)
        mm = self.layer_norm(self.feed_forward(mm))
        p = self.n_pathways
        path_embed = mm[:, :p].mean(dim=1)
        wsi_embed = mm[:, p:].mean(dim=1) if present["wsi"] else self.missing_wsi()
        if attn_patches is not None:
            extras["patch_to_pathway"] = attn_patches
        z = torch.cat([path_embed, wsi_embed], dim=1)
        return ModelOutput(self.to_logits(z), z, extras)
