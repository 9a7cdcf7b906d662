"""TransMIL: a correlated-MIL transformer over patch features (the ``transmil`` model).

Holds :class:`TransLayer` (pre-norm Nystrom self-attention), :class:`PPEG` and :func:`square_pad` (reused by
ALTER and mSTAR), and :class:`TransMIL`.

Paper: Shao et al., NeurIPS 2021.
Paper-to-code mapping and deviations: docs/methods/baselines.md
"""

from __future__ import annotations

import math

import torch
from torch import nn

from pathmm_pipeline.models.base import InputDims, ModelOutput, PathmmModel, PatientInput, TaskSpec
from pathmm_pipeline.models.nystrom import NystromAttention
from pathmm_pipeline.models.registry import register_model


class TransLayer(nn.Module):
    """Pre-norm Nystrom self-attention with a residual connection: ``x + attn(LN(x))``."""

    def __init__(self, dim: int = 512, heads: int = 8, num_landmarks: int | None = None, pinv_iterations: int = 6,
                 dropout: float = 0.1, residual_conv_kernel: int = 33) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = NystromAttention(dim=dim, heads=heads, dim_head=dim // heads,
                                     num_landmarks=num_landmarks or dim // 2, pinv_iterations=pinv_iterations,
                                     residual=True, residual_conv_kernel=residual_conv_kernel, dropout=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.attn(self.norm(x))


class PPEG(nn.Module):
    """Pyramid position encoding generator: CLS kept aside, the other H*W tokens reshaped row-major to an
    H x W grid, ``x + conv7(x) + conv5(x) + conv3(x)`` (depthwise, same padding), flattened back."""

    def __init__(self, dim: int = 512) -> None:
        super().__init__()
        self.proj = nn.Conv2d(dim, dim, 7, 1, 7 // 2, groups=dim)
        self.proj1 = nn.Conv2d(dim, dim, 5, 1, 5 // 2, groups=dim)
        self.proj2 = nn.Conv2d(dim, dim, 3, 1, 3 // 2, groups=dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, c = x.shape
        if n != h * w + 1:
            raise ValueError(f"PPEG: {n} tokens do not fit a CLS token plus a {h} x {w} grid")
        cls_token, feat = x[:, :1], x[:, 1:]
        grid = feat.transpose(1, 2).reshape(b, c, h, w)
        grid = grid + self.proj(grid) + self.proj1(grid) + self.proj2(grid)
        return torch.cat([cls_token, grid.flatten(2).transpose(1, 2)], dim=1)


def square_pad(h: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """(B, N, C) -> (B, S*S, C), S = ceil(sqrt(N)), by appending the sequence's first tokens (cyclically)."""
    n = h.shape[1]
    side = max(1, math.ceil(math.sqrt(n)))
    extra = side * side - n
    if extra:
        h = torch.cat([h, h[:, torch.arange(extra, device=h.device) % n]], dim=1)
    return h, side, side


@register_model("transmil")
class TransMIL(PathmmModel):
    """TransMIL on the patch features (``wsi`` required). Options: ``dim`` (512), ``heads`` (8),
    ``num_landmarks`` (dim // 2), ``pinv_iterations`` (6), ``dropout`` (0.1, in the attention layers),
    ``residual_conv_kernel`` (33). The embedding is the final CLS token (dim)."""

    uses = frozenset({"wsi"})
    requires = frozenset({"wsi"})

    def __init__(self, dims: InputDims, task: TaskSpec, dim: int = 512, heads: int = 8,
                 num_landmarks: int | None = None, pinv_iterations: int = 6, dropout: float = 0.1,
                 residual_conv_kernel: int = 33) -> None:
        super().__init__(dims, task)
        d_in = self.need_dim(dims.wsi, "wsi", "wsi")
        layer = dict(dim=dim, heads=heads, num_landmarks=num_landmarks, pinv_iterations=pinv_iterations,
                     dropout=dropout, residual_conv_kernel=residual_conv_kernel)
        self._fc1 = nn.Sequential(nn.Linear(d_in, dim), nn.ReLU())
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.layer1 = TransLayer(**layer)  # type: ignore[arg-type]
        self.pos_layer = PPEG(dim)
        self.layer2 = TransLayer(**layer)  # type: ignore[arg-type]
        self.norm = nn.LayerNorm(dim)
        self._fc2 = nn.Linear(dim, task.n_outputs)
        self.embedding_dim = dim

    def forward(self, x: PatientInput) -> ModelOutput:
        present = self.check_input(x)
        h = self._fc1(self.wsi_features(x)).unsqueeze(0)        # (1, N, dim)
        n = h.shape[1]
        h, side_h, side_w = square_pad(h)
        h = torch.cat([self.cls_token.expand(h.shape[0], -1, -1), h], dim=1)
        h = self.layer1(h)
        h = self.pos_layer(h, side_h, side_w)
        h = self.layer2(h)
        z = self.norm(h)[:, 0]
        return ModelOutput(self._fc2(z), z, {"present": present, "missing": [], "n_patches": n,
                                             "grid": (side_h, side_w)})
