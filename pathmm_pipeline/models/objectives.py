"""Pretraining objectives shared by the multimodal methods (ALTER, MICE, mSTAR, ModalTune).

* :func:`symmetric_info_nce` -- CLIP's loss between two aligned batches of embeddings: cross-entropy of the
  cosine-similarity logits (scaled by ``exp(logit_scale)``) in both directions, averaged.
* :func:`triplet_margin_loss` -- batch-all triplet loss on L2-normalised embeddings: the mean of
  ``relu(d(a, p) - d(a, n) + margin)`` over every valid (anchor, positive, negative) triple, ``d`` the
  Euclidean distance; positives share the anchor's label, negatives do not.
* :func:`masked_token_loss` -- mean squared error over the masked positions only (continuous tokens: report
  hidden states, gene tokens, region tokens).
* :func:`mask_tokens` -- a seeded random mask of a fraction of positions (at least one masked, one kept).
* :func:`kl_softmax` -- ``KL(softmax(target) || softmax(pred))`` per row, averaged (ModalTune's text targets).
* :func:`ema_update_` -- ``teacher = m * teacher + (1 - m) * student`` in place (mSTAR's stage 2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def symmetric_info_nce(a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor | float) -> torch.Tensor:
    """Symmetric InfoNCE between row-aligned ``a`` (B, E) and ``b`` (B, E): row i of ``a`` and of ``b`` are a
    positive pair, every other row a negative. ``logit_scale`` is the log of the inverse temperature (CLIP
    learns it, initialised at log(1/0.07)). Needs B >= 2."""
    if a.shape != b.shape or a.dim() != 2:
        raise ValueError(f"symmetric_info_nce needs two (B, E) tensors of one shape, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    if a.shape[0] < 2:
        raise ValueError("symmetric_info_nce needs at least 2 pairs (one positive and one negative per row)")
    scale = logit_scale.exp() if isinstance(logit_scale, torch.Tensor) else torch.tensor(logit_scale).exp()
    logits = scale * F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T
    target = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def triplet_margin_loss(embeddings: torch.Tensor, labels: torch.Tensor, margin: float = 0.3) -> torch.Tensor:
    """Batch-all triplet loss over L2-normalised ``embeddings`` (B, E) with integer ``labels`` (B,).

    Zero (with a gradient path) when the batch has no valid triplet (fewer than two labels, or no label with
    two members)."""
    z = F.normalize(embeddings, dim=-1)
    d = torch.cdist(z, z)  # (B, B)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    positive = same & ~eye  # (a, p)
    negative = ~same  # (a, n)
    valid = positive[:, :, None] & negative[:, None, :]  # (a, p, n)
    if not bool(valid.any()):
        return embeddings.sum() * 0.0
    losses = torch.relu(d[:, :, None] - d[:, None, :] + margin)
    return losses[valid].mean()


def masked_token_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the masked positions: ``pred``/``target`` (..., T, D), ``mask`` (..., T) bool
    (True = masked, to be reconstructed). The mean is over masked tokens and feature dims."""
    if pred.shape != target.shape or mask.shape != pred.shape[:-1]:
        raise ValueError(f"masked_token_loss: pred {tuple(pred.shape)}, target {tuple(target.shape)} and mask "
                         f"{tuple(mask.shape)} do not fit")
    if not bool(mask.any()):
        return pred.sum() * 0.0
    return F.mse_loss(pred[mask], target[mask])


def mask_tokens(n_tokens: int, ratio: float, generator: torch.Generator | None = None,
                device: torch.device | str | None = None) -> torch.Tensor:
    """A (n_tokens,) bool mask with ``round(ratio * n)`` positions masked, at least one masked and (when
    n >= 2) one kept."""
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"mask ratio must be in (0, 1), got {ratio}")
    k = int(round(ratio * n_tokens))
    k = min(max(k, 1), max(n_tokens - 1, 1))
    order = torch.randperm(n_tokens, generator=generator)
    mask = torch.zeros(n_tokens, dtype=torch.bool)
    mask[order[:k]] = True
    return mask.to(device) if device is not None else mask


def kl_softmax(pred_logits: torch.Tensor, target_logits: torch.Tensor) -> torch.Tensor:
    """``KL(softmax(target) || softmax(pred))`` over the last dim, averaged over the other dims."""
    target = F.log_softmax(target_logits, dim=-1)
    pred = F.log_softmax(pred_logits, dim=-1)
    return (target.exp() * (target - pred)).sum(-1).mean()


@torch.no_grad()
def ema_update_(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``teacher = momentum * teacher + (1 - momentum) * student`` for every parameter (buffers copied)."""
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"EMA momentum must be in [0, 1], got {momentum}")
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        t.mul_(momentum).add_(s.detach(), alpha=1.0 - momentum)
    for t, s in zip(teacher.buffers(), student.buffers(), strict=True):
        t.copy_(s)
