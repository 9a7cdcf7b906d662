"""TransMIL: a correlated-MIL transformer over patch features (the ``transmil`` model).

Holds :class:`TransLayer` (pre-norm Nystrom self-attention), :class:`PPEG` and :func:`square_pad` (reused by
ALTER and mSTAR), :func:`padded_square_tokens` (several bags as one padded batch: each bag squared and
prefixed with its CLS token as alone, then padded), and :class:`TransMIL`.

Paper: Shao et al., NeurIPS 2021.
Paper-to-code mapping and deviations: docs/methods/baselines.md
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from pathmm_pipeline.models.base import InputDims, ModelOutput, PathmmModel, PatientInput, TaskSpec
from pathmm_pipeline.models.nystrom import NystromAttention
from pathmm_pipeline.models.padded import pad_sequences, rowwise
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

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, n, dim); ``mask`` (B, n) True at real tokens for a padded batch."""
        return x + self.attn(self.norm(x), mask=mask)


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

    def forward_padded(self, x: torch.Tensor, sides: Sequence[int]) -> torch.Tensor:
        """A padded batch (B, L, c): row b holds CLS and then ``sides[b]`` ** 2 grid tokens (the rest padding).
        Each grid is laid into the top-left corner of one zero canvas of the largest side, so the zero-padded
        convolutions give its cells what they give the grid alone; padded positions come back as zeros."""
        b, length, c = x.shape
        big = max(sides)
        device = x.device
        into = torch.full((b, big * big), length - 1, dtype=torch.long, device=device)   # canvas <- token
        back = torch.full((b, length - 1), big * big, dtype=torch.long, device=device)   # token <- canvas
        for i, side in enumerate(sides):
            r, col = torch.meshgrid(torch.arange(side, device=device), torch.arange(side, device=device), indexing="ij")
            cell = (r * big + col).reshape(-1)
            into[i, cell] = torch.arange(side * side, device=device)
            back[i, :side * side] = cell
        feat = torch.cat([x[:, 1:], x.new_zeros(b, 1, c)], dim=1)        # the last slot is a zero token
        canvas = feat.gather(1, into[..., None].expand(-1, -1, c)).transpose(1, 2).reshape(b, c, big, big)
        canvas = canvas + self.proj(canvas) + self.proj1(canvas) + self.proj2(canvas)
        flat = torch.cat([canvas.flatten(2).transpose(1, 2), x.new_zeros(b, 1, c)], dim=1)
        return torch.cat([x[:, :1], flat.gather(1, back[..., None].expand(-1, -1, c))], dim=1)


def square_pad(h: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """(B, N, C) -> (B, S*S, C), S = ceil(sqrt(N)), by appending the sequence's first tokens (cyclically)."""
    n = h.shape[1]
    side = max(1, math.ceil(math.sqrt(n)))
    extra = side * side - n
    if extra:
        h = torch.cat([h, h[:, torch.arange(extra, device=h.device) % n]], dim=1)
    return h, side, side


def padded_square_tokens(bags: Sequence[torch.Tensor], cls_token: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Bags (n_i, C) -> ``(padded (B, L, C), mask (B, L), sides)``: each bag squared (:func:`square_pad`) and
    prefixed with ``cls_token`` (1, 1, C) as it is alone, then padded to the longest."""
    rows, sides = [], []
    for bag in bags:
        h, side, _ = square_pad(bag.unsqueeze(0))
        rows.append(torch.cat([cls_token[0].to(h.dtype), h[0]]))
        sides.append(side)
    padded, mask = pad_sequences(rows)
    return padded, mask, sides


@register_model("transmil")
class TransMIL(PathmmModel):
    """TransMIL on the patch features (``wsi`` required). Options: ``dim`` (512), ``heads`` (8),
    ``num_landmarks`` (dim // 2), ``pinv_iterations`` (6), ``dropout`` (0.1, in the attention layers),
    ``residual_conv_kernel`` (33). The embedding is the final CLS token (dim)."""

    uses = frozenset({"wsi"})
    requires = frozenset({"wsi"})
    batched = True

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

    def forward_batch(self, xs: Sequence[PatientInput]) -> list[ModelOutput]:
        """Several patients in one padded pass (masked Nystrom attention, PPEG on one canvas): each output
        equals :meth:`forward` on that patient alone, to float rounding."""
        presents = [self.check_input(x) for x in xs]
        bags = rowwise(self._fc1, [self.wsi_features(x) for x in xs])
        h, mask, sides = padded_square_tokens(bags, self.cls_token)
        h = self.layer2(self.pos_layer.forward_padded(self.layer1(h, mask), sides), mask)
        z = self.norm(h)[:, 0]
        logits = self._fc2(z)
        return [ModelOutput(logits[i:i + 1], z[i:i + 1], {"present": presents[i], "missing": [],
                                                          "n_patches": int(bags[i].shape[0]),
                                                          "grid": (sides[i], sides[i])})
                for i in range(len(xs))]
