"""Performer (FAVOR+, Choromanski et al. 2021): linear-time softmax-attention estimates with orthogonal random
features, and a pre-norm Performer layer; gene-token encoders over thousands of genes use them (ALTER's pathway
gene encoder, mSTAR's RNA encoder)."""

from __future__ import annotations

import math

import torch
from torch import nn

from pathmm_pipeline.models.moe import Expert


def orthogonal_random_features(n_features: int, dim: int, generator: torch.Generator | None = None
                               ) -> torch.Tensor:
    """(n_features, dim) Gaussian random features with orthogonal rows within each block of ``dim`` rows, each
    row rescaled to the norm of a Gaussian vector (Performer's orthogonal random features)."""
    blocks = []
    for _ in range(math.ceil(n_features / dim)):
        q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator))
        blocks.append(q.T)
    w = torch.cat(blocks)[:n_features]
    return w * torch.randn(n_features, dim, generator=generator).norm(dim=1, keepdim=True)


def favor_features(x: torch.Tensor, projection: torch.Tensor, is_query: bool, eps: float = 1e-6) -> torch.Tensor:
    """FAVOR+ positive random features ``exp(w^T x - |x|^2 / 2) / sqrt(m)`` of (..., n, d) ``x`` -> (..., n, m).

    A constant is subtracted in the exponent for stability (per row for queries, over all keys for keys); it
    cancels in the attention's normalisation."""
    wx = x @ projection.T
    half_sq = 0.5 * (x * x).sum(-1, keepdim=True)
    stab = wx.amax(dim=-1, keepdim=True) if is_query else wx.amax(dim=(-2, -1), keepdim=True)
    return (torch.exp(wx - half_sq - stab.detach()) + eps) / math.sqrt(projection.shape[0])


def favor_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, projection: torch.Tensor) -> torch.Tensor:
    """Linear-time estimate of ``softmax(q k^T / sqrt(d)) v`` for (..., n, d) q, k and (..., n, e) v."""
    scale = q.shape[-1] ** -0.25
    qf = favor_features(q * scale, projection, is_query=True)
    kf = favor_features(k * scale, projection, is_query=False)
    numerator = qf @ (kf.transpose(-1, -2) @ v)                  # (..., n, e)
    denominator = qf @ kf.sum(dim=-2).unsqueeze(-1)              # (..., n, 1)
    return numerator / denominator


class PerformerAttention(nn.Module):
    """Multi-head FAVOR+ self-attention (Choromanski et al. 2021): (B, n, dim) -> (B, n, dim), with a fixed
    (n_features, dim / heads) orthogonal random-feature matrix (a buffer, saved with the weights)."""

    def __init__(self, dim: int, heads: int = 4, n_features: int = 64, dropout: float = 0.0) -> None:
        super().__init__()
        self.heads, self.dim_head = heads, dim // heads
        self.to_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(dim, dim), nn.Dropout(dropout))
        self.register_buffer("projection", orthogonal_random_features(n_features, self.dim_head))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.to_qkv(x).view(b, n, 3, self.heads, self.dim_head).permute(2, 0, 3, 1, 4)
        out = favor_attention(q, k, v, self.projection.to(x.dtype))
        return self.to_out(out.transpose(1, 2).reshape(b, n, self.heads * self.dim_head))


class PerformerLayer(nn.Module):
    """``x + FAVOR+(LN x)`` then ``x + FFN(LN x)`` (FFN: Linear -> GELU -> Dropout -> Linear, width 4 dim)."""

    def __init__(self, dim: int, heads: int, n_features: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = PerformerAttention(dim, heads, n_features, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = Expert(dim, 4 * dim, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.drop(self.ffn(self.norm2(x)))
