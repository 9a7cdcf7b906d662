"""A MambaMIL-style slide encoder in pure PyTorch: selective state-space (Mamba S6) layers over the tile
sequence, then gated attention pooling -- the slide encoder of MICE's paper (MambaMIL, Yang et al. 2024), as an
option of the ``mice`` model.

The selective scan runs in chunks: inside a chunk of ``chunk`` tiles every state is a sum of decayed inputs
with decay factors ``exp(L_t - L_s) <= 1`` (stable in float32), across chunks the state is carried. It equals the
naive recurrence ``h_t = exp(delta_t A) h_{t-1} + delta_t B_t x_t``, ``y_t = C_t h_t + D x_t``
(:func:`selective_scan_reference`, checked by a test).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pathmm_pipeline.models.layers import AttentionPool


def selective_scan_reference(x: torch.Tensor, delta: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                             c: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """The recurrence tile by tile: x, delta (N, E); a (E, S); b, c (N, S); d (E) -> y (N, E)."""
    h = x.new_zeros(x.shape[1], a.shape[1])
    out = []
    for t in range(x.shape[0]):
        h = torch.exp(delta[t, :, None] * a) * h + delta[t, :, None] * b[t, None, :] * x[t, :, None]
        out.append((h * c[t, None, :]).sum(-1) + d * x[t])
    return torch.stack(out)


def selective_scan(x: torch.Tensor, delta: torch.Tensor, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor,
                   d: torch.Tensor, chunk: int = 16) -> torch.Tensor:
    """The same as :func:`selective_scan_reference`, ``chunk`` tiles at a time."""
    n, e = x.shape
    h = x.new_zeros(e, a.shape[1])
    out = []
    for start in range(0, n, chunk):
        window = slice(start, start + chunk)
        xs, ds, bs, cs = x[window], delta[window], b[window], c[window]
        t = xs.shape[0]
        log_decay = torch.cumsum(ds[:, :, None] * a[None], dim=0)                       # (T, E, S), <= 0
        inputs = ds[:, :, None] * bs[:, None, :] * xs[:, :, None]                        # (T, E, S)
        causal = torch.tril(torch.ones(t, t, dtype=torch.bool, device=x.device))
        pair = (log_decay[:, None] - log_decay[None, :]).masked_fill(~causal[:, :, None, None], -math.inf)
        states = (torch.exp(pair) * inputs[None]).sum(dim=1) + torch.exp(log_decay) * h[None]   # (T, E, S)
        out.append((states * cs[:, None, :]).sum(-1) + d * xs)
        h = states[-1]
    return torch.cat(out) if out else x.new_zeros(0, e)


class SelectiveSSM(nn.Module):
    """One Mamba block: in-projection to (x, z), causal depthwise convolution, the input-dependent ``delta``,
    ``B``, ``C``, the selective scan, gating by ``silu(z)`` and the out-projection: (N, dim) -> (N, dim)."""

    def __init__(self, dim: int, state: int = 16, conv: int = 4, expand: int = 2, chunk: int = 16) -> None:
        super().__init__()
        inner = expand * dim
        self.inner, self.state, self.chunk = inner, state, chunk
        self.in_proj = nn.Linear(dim, 2 * inner, bias=False)
        self.conv = nn.Conv1d(inner, inner, conv, groups=inner, padding=conv - 1)
        self.dt_rank = max(1, math.ceil(dim / 16))
        self.x_proj = nn.Linear(inner, self.dt_rank + 2 * state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, inner)
        self.a_log = nn.Parameter(torch.log(torch.arange(1, state + 1, dtype=torch.float32)).repeat(inner, 1))
        self.d = nn.Parameter(torch.ones(inner))
        self.out_proj = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        u, z = self.in_proj(x).chunk(2, dim=-1)
        u = F.silu(self.conv(u.T.unsqueeze(0))[0, :, :n].T)                                # causal: first n outputs
        dt, b, c = self.x_proj(u).split([self.dt_rank, self.state, self.state], dim=-1)
        delta = F.softplus(self.dt_proj(dt))
        y = selective_scan(u, delta, -torch.exp(self.a_log), b, c, self.d, self.chunk)
        return self.out_proj(y * F.silu(z))


class MambaMIL(nn.Module):
    """Tile features (N, d_in) -> fc -> ``layers`` x (x + SSM(LN x)) -> LN -> gated attention pooling ->
    ((1, dim) slide embedding, (1, N) attention)."""

    def __init__(self, d_in: int, dim: int, attn_dim: int, layers: int = 2, state: int = 16,
                 dropout: float = 0.25) -> None:
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(d_in, dim), nn.ReLU(), nn.Dropout(dropout))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(layers))
        self.blocks = nn.ModuleList(SelectiveSSM(dim, state) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.pool = AttentionPool(dim, attn_dim, dropout)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.fc(features)
        for norm, block in zip(self.norms, self.blocks):
            h = h + block(norm(h))
        return self.pool(self.norm(h))
