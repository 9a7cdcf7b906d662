"""Nystrom self-attention, as TransMIL uses it: :class:`NystromAttention` (segment-mean landmarks,
:func:`segment_means`; the iterative pseudo-inverse, :func:`iterative_pinv`; a depthwise convolution over the
values as a skip path).

Padded batches (``mask``): every sequence gets its own landmarks (segments of its own length, as alone), the
padded landmarks are masked out of both softmaxes over landmarks and stand as identity rows of the landmark
kernel, so its pseudo-inverse is block-diagonal with the sequence's own one (the Razavi scaling is unchanged:
softmax rows sum to 1, and the largest column sum of a row-stochastic square matrix is at least 1); padded
tokens are masked out of the softmax over tokens and their values are zero for the convolution. A padded
batch therefore gives each sequence's real positions what it gets alone, to float rounding.

Paper: Xiong et al., AAAI 2021 (iterative pseudo-inverse: Razavi et al. 2014).
Paper-to-code mapping and deviations (landmarks over the real tokens only): docs/methods/baselines.md
"""

from __future__ import annotations

import torch
from torch import nn


def iterative_pinv(x: torch.Tensor, iters: int = 6) -> torch.Tensor:
    """Moore-Penrose pseudo-inverse of the last two dims by the Razavi et al. iteration (as in Nystromformer).

    ``Z_0 = X^T / (max_j sum_i |x_ij| * max_i sum_j |x_ij|)`` (per matrix), then
    ``Z <- 1/4 Z (13 I - X Z (15 I - X Z (7 I - X Z)))``.
    """
    abs_x = x.abs()
    col = abs_x.sum(dim=-1).amax(dim=-1, keepdim=True)   # max row sum (the inf-norm)
    row = abs_x.sum(dim=-2).amax(dim=-1, keepdim=True)   # max column sum (the 1-norm)
    z = x.transpose(-1, -2) / (col * row).unsqueeze(-1)
    eye = torch.eye(x.shape[-1], device=x.device, dtype=x.dtype)
    for _ in range(iters):
        xz = x @ z
        z = 0.25 * z @ (13 * eye - xz @ (15 * eye - xz @ (7 * eye - xz)))
    return z


def segment_means(t: torch.Tensor, m: int) -> torch.Tensor:
    """(..., n, d) -> (..., min(m, n), d): means of contiguous segments whose lengths differ by at most one."""
    n = t.shape[-2]
    m = min(m, n)
    if n % m == 0:
        return t.unflatten(-2, (m, n // m)).mean(dim=-2)
    group = torch.arange(n, device=t.device) * m // n                     # segment of each position
    counts = torch.bincount(group, minlength=m).to(t.dtype)
    sums = torch.zeros(*t.shape[:-2], m, t.shape[-1], device=t.device, dtype=t.dtype).index_add_(-2, group, t)
    return sums / counts.unsqueeze(-1)


def padded_segment_means(t: torch.Tensor, group: torch.Tensor, m: int) -> torch.Tensor:
    """(B, h, n, d) values and (B, n) segment index in [0, m] (m: a padded position, dropped) -> (B, h, m, d)
    segment means (0 for a segment no position falls in)."""
    b, h, n, d = t.shape
    index = group[:, None, :, None].expand(b, h, n, d)
    sums = t.new_zeros(b, h, m + 1, d).scatter_add_(2, index, t)
    ones = torch.ones_like(group, dtype=t.dtype)
    counts = torch.zeros(b, m + 1, device=t.device, dtype=t.dtype).scatter_add_(1, group, ones)
    return sums[:, :, :m] / counts[:, None, :m, None].clamp(min=1)


class NystromAttention(nn.Module):
    """Multi-head Nystrom self-attention: (B, n, dim) -> (B, n, dim).

    ``dim_head * heads`` inner width; ``num_landmarks`` m; ``pinv_iterations``; ``residual`` adds the
    depthwise conv of the values (kernel ``residual_conv_kernel`` along the sequence, one per head);
    ``dropout`` after the output projection.
    """

    def __init__(self, dim: int, heads: int = 8, dim_head: int = 64, num_landmarks: int = 256,
                 pinv_iterations: int = 6, residual: bool = True, residual_conv_kernel: int = 33,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if num_landmarks < 1:
            raise ValueError(f"num_landmarks must be >= 1, got {num_landmarks}")
        self.heads, self.dim_head = heads, dim_head
        self.num_landmarks, self.pinv_iterations = num_landmarks, pinv_iterations
        self.scale = dim_head ** -0.5
        inner = heads * dim_head
        self.to_qkv = nn.Linear(dim, inner * 3, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout))
        self.res_conv = (nn.Conv2d(heads, heads, (residual_conv_kernel, 1), padding=(residual_conv_kernel // 2, 0),
                                   groups=heads, bias=False) if residual else None)

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, n, _ = x.shape
        q, k, v = self.to_qkv(x).view(b, n, 3, self.heads, self.dim_head).permute(2, 0, 3, 1, 4)
        return q * self.scale, k, v  # each (B, heads, n, dim_head)

    def _merge(self, out: torch.Tensor) -> torch.Tensor:
        b, h, n, d = out.shape
        return self.to_out(out.transpose(1, 2).reshape(b, n, h * d))

    def forward(self, x: torch.Tensor, return_attn: bool = False, mask: torch.Tensor | None = None
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """(B, n, dim) -> (B, n, dim); ``mask`` (B, n) bool, True at real tokens (a padded batch, see the module
        docstring); the outputs at padded positions are meaningless."""
        if mask is not None:
            return self._forward_padded(x, mask)
        q, k, v = self._qkv(x)
        q_land = segment_means(q, self.num_landmarks)
        k_land = segment_means(k, self.num_landmarks)
        attn1 = torch.softmax(q @ k_land.transpose(-1, -2), dim=-1)          # (B, h, n, m)
        attn2 = torch.softmax(q_land @ k_land.transpose(-1, -2), dim=-1)     # (B, h, m, m)
        attn3 = torch.softmax(q_land @ k.transpose(-1, -2), dim=-1)          # (B, h, m, n)
        left = attn1 @ iterative_pinv(attn2, self.pinv_iterations)
        out = left @ (attn3 @ v)
        if self.res_conv is not None:
            out = out + self.res_conv(v)
        merged = self._merge(out)
        if return_attn:  # the (B, h, n, n) approximate attention matrix: for small n only
            return merged, left @ attn3
        return merged

    def _forward_padded(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q, k, v = self._qkv(x)
        keep = mask[:, None, :, None].to(q.dtype)
        q, k, v = q * keep, k * keep, v * keep
        lengths = mask.sum(dim=1)                                            # (B,)
        n_land = lengths.clamp(max=self.num_landmarks)                       # each sequence's landmark count
        m = int(n_land.max())
        position = torch.arange(x.shape[1], device=x.device)
        group = torch.where(mask, position[None] * n_land[:, None] // lengths.clamp(min=1)[:, None], m)
        q_land, k_land = padded_segment_means(q, group, m), padded_segment_means(k, group, m)
        land = torch.arange(m, device=x.device)[None] < n_land[:, None]      # (B, m) real landmarks
        hide_land = ~land[:, None, None, :]
        attn1 = torch.softmax((q @ k_land.transpose(-1, -2)).masked_fill(hide_land, float("-inf")), dim=-1)
        attn2 = torch.softmax((q_land @ k_land.transpose(-1, -2)).masked_fill(hide_land, float("-inf")), dim=-1)
        eye = torch.eye(m, device=x.device, dtype=attn2.dtype)
        attn2 = torch.where(land[:, None, :, None], attn2, eye)             # padded landmarks: identity rows
        scores3 = (q_land @ k.transpose(-1, -2)).masked_fill(~mask[:, None, None, :], float("-inf"))
        out = (attn1 @ iterative_pinv(attn2, self.pinv_iterations)) @ (torch.softmax(scores3, dim=-1) @ v)
        if self.res_conv is not None:
            out = out + self.res_conv(v)
        return self._merge(out)

    def exact(self, x: torch.Tensor) -> torch.Tensor:
        """The same layer with exact softmax attention (same weights, same residual conv): the reference."""
        q, k, v = self._qkv(x)
        out = torch.softmax(q @ k.transpose(-1, -2), dim=-1) @ v
        if self.res_conv is not None:
            out = out + self.res_conv(v)
        return self._merge(out)
