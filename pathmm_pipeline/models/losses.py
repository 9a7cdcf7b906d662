"""Training losses: discrete-time survival NLL (as in MCAT / PORPOISE / SurvPath), Cox partial likelihood,
class-weighted cross-entropy and binary cross-entropy with ``pos_weight``, and the survival time bins.

Conventions (times in months, ``events`` 1 = observed, risk higher = earlier event, bins left-closed) are those
of :mod:`pathmm_pipeline.stats.conventions`. Discrete-time NLL: Zadeh & Schmid 2020 (SurvPath's ``nll_loss``).
The NLL formula, the ``alpha`` default (0.0), the time bins (training patients only) and how each differs from
the published code: docs/methods/baselines.md
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pathmm_pipeline.stats.conventions import bin_index, survival_arrays

DEFAULT_EPS = 1e-7


# ---------------------------------------------------------------------------------------------- time bins
def make_time_bins(times: Sequence[float] | np.ndarray, events: Sequence[int] | np.ndarray,
                   n_bins: int = 4) -> np.ndarray:
    """Bin edges (``n_bins + 1`` floats: 0, the interior quantiles, ``inf``) from the quantiles of the
    uncensored times. Give the *training* patients only. Interior edges are ``np.quantile`` (linear) at
    ``k / n_bins``, as ``pd.qcut``; ties that would make two edges equal are an error."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    t, e = survival_arrays(times, events)
    observed = t[e]
    if observed.size < n_bins:
        raise ValueError(f"{observed.size} uncensored time(s) cannot define {n_bins} quantile bins")
    interior = np.quantile(observed, np.arange(1, n_bins) / n_bins) if n_bins > 1 else np.zeros(0)
    edges = np.concatenate([[0.0], interior, [np.inf]])
    if not (np.diff(edges) > 0).all():
        raise ValueError(f"time-bin edges are not strictly increasing ({edges.tolist()}): too many tied "
                         "uncensored times for this many bins; use fewer bins")
    return edges


def discretize(times: Sequence[float] | np.ndarray, edges: Sequence[float] | np.ndarray) -> np.ndarray:
    """The bin index (int64) of each time: ``k`` with ``edges[k] <= t < edges[k + 1]``."""
    t = np.asarray(times, dtype=np.float64)
    if (t < 0).any() or not np.isfinite(t).all():
        raise ValueError("times must be finite and >= 0")
    return bin_index(t, edges)


# ------------------------------------------------------------------------------------ discrete-time model
def hazards_and_survival(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(hazards, S)`` from patients x bins logits: ``sigmoid(logits)`` and ``cumprod(1 - hazards)``."""
    if logits.ndim != 2:
        raise ValueError(f"logits must be patients x bins, got shape {tuple(logits.shape)}")
    hazards = torch.sigmoid(logits)
    return hazards, torch.cumprod(1 - hazards, dim=1)


def logits_from_cumulative_hazard(increments: torch.Tensor) -> torch.Tensor:
    """Discrete-time hazard logits of cumulative-hazard ``increments`` per bin (a Cox model's ``H0 * exp(lp)``):
    ``logit(1 - exp(-a)) = log(expm1(a))``, computed as ``a + log1p(-exp(-a))`` where ``expm1`` overflows."""
    a = increments.clamp_min(1e-12)
    large = a > 20.0
    return torch.where(large, a + torch.log1p(-torch.exp(-a.clamp_min(20.0))),
                       torch.log(torch.expm1(a.clamp_max(20.0))))


def risk_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Risk per patient, higher = earlier event: minus the sum over bins of the survival probabilities."""
    return -hazards_and_survival(logits)[1].sum(dim=1)


def _reduce(values: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    if reduction == "none":
        return values
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def nll_survival_loss(logits: torch.Tensor, bins: torch.Tensor, events: torch.Tensor, alpha: float = 0.0,
                      eps: float = DEFAULT_EPS, reduction: str = "mean") -> torch.Tensor:
    """Discrete-time survival negative log-likelihood (see the module docstring for the formula).

    ``logits``: patients x bins; ``bins``: the bin index of each patient's time (:func:`discretize`);
    ``events``: 1 = event observed, 0 = censored.
    """
    if logits.ndim != 2:
        raise ValueError(f"logits must be patients x bins, got shape {tuple(logits.shape)}")
    n, n_bins = logits.shape
    y = torch.as_tensor(bins, device=logits.device).reshape(-1, 1).long()
    event = torch.as_tensor(events, device=logits.device).reshape(-1, 1).to(logits.dtype)
    if y.shape[0] != n or event.shape[0] != n:
        raise ValueError(f"{n} logit rows but {y.shape[0]} bins and {event.shape[0]} events")
    if n and (int(y.min()) < 0 or int(y.max()) >= n_bins):
        raise ValueError(f"bin indices must lie in [0, {n_bins - 1}], got [{int(y.min())}, {int(y.max())}]")
    censored = 1 - event
    hazards, surv = hazards_and_survival(logits)
    surv_pad = torch.cat([torch.ones_like(event), surv], dim=1)
    s_prev = torch.gather(surv_pad, 1, y).clamp(min=eps)
    h_this = torch.gather(hazards, 1, y).clamp(min=eps)
    s_this = torch.gather(surv_pad, 1, y + 1).clamp(min=eps)
    uncensored_loss = -event * (torch.log(s_prev) + torch.log(h_this))
    censored_loss = -censored * torch.log(s_this)
    loss = (1 - alpha) * (censored_loss + uncensored_loss) + alpha * uncensored_loss
    return _reduce(loss.reshape(-1), reduction)


class NLLSurvLoss(nn.Module):
    """:func:`nll_survival_loss` as a module: ``loss(logits, bins, events)``."""

    def __init__(self, alpha: float = 0.0, eps: float = DEFAULT_EPS, reduction: str = "mean") -> None:
        super().__init__()
        self.alpha, self.eps, self.reduction = float(alpha), float(eps), reduction

    def forward(self, logits: torch.Tensor, bins: torch.Tensor, events: torch.Tensor) -> torch.Tensor:
        return nll_survival_loss(logits, bins, events, self.alpha, self.eps, self.reduction)


# ------------------------------------------------------------------------------------------------- Cox
def cox_ph_loss(risk: torch.Tensor, times: torch.Tensor, events: torch.Tensor,
                reduction: str = "mean") -> torch.Tensor:
    """Negative Cox partial log-likelihood of a batch, Breslow's handling of ties.

    ``-sum_{i: event} [risk_i - log sum_{j: t_j >= t_i} exp(risk_j)]``: every patient still at risk at
    ``t_i`` (tied times included) is in ``i``'s risk set. ``reduction="mean"`` divides by the number of events,
    ``"sum"`` does not. A batch without events gives 0 (still connected to the graph).
    """
    r = risk.reshape(-1)
    t = torch.as_tensor(times, device=r.device).reshape(-1).to(r.dtype)
    e = torch.as_tensor(events, device=r.device).reshape(-1).bool()
    if not (r.shape == t.shape == e.shape):
        raise ValueError(f"risk, times and events differ in length: {r.numel()}, {t.numel()}, {e.numel()}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    if not bool(e.any()):
        return r.sum() * 0.0
    at_risk = t.unsqueeze(0) >= t.unsqueeze(1)  # row i: the patients j with t_j >= t_i
    masked = r.unsqueeze(0).expand(r.numel(), -1).masked_fill(~at_risk, float("-inf"))
    log_denominator = torch.logsumexp(masked, dim=1)
    terms = (r - log_denominator)[e]
    total = -terms.sum()
    return total / terms.numel() if reduction == "mean" else total


# -------------------------------------------------------------------------------------- classification
def class_weights(labels: Sequence[int] | np.ndarray, n_classes: int | None = None) -> torch.Tensor:
    """Inverse-frequency class weights from the *training* labels: ``n / (n_classes * n_c)`` (sklearn's
    ``"balanced"``; equal classes all get 1). A class without a training example is an error."""
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    if y.size == 0:
        raise ValueError("no labels")
    k = int(n_classes) if n_classes is not None else int(y.max()) + 1
    if y.min() < 0 or y.max() >= k:
        raise ValueError(f"labels must lie in [0, {k - 1}], got [{y.min()}, {y.max()}]")
    counts = np.bincount(y, minlength=k)
    absent = np.flatnonzero(counts == 0)
    if absent.size:
        raise ValueError(f"class(es) {absent.tolist()} have no training example; cannot weight them")
    return torch.as_tensor(y.size / (k * counts), dtype=torch.float32)


def weighted_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None,
                           reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy with class weights; with ``"mean"`` the weighted sum is divided by the sum of the
    targets' weights (``torch.nn.functional.cross_entropy``'s definition)."""
    w = None if weights is None else weights.to(device=logits.device, dtype=logits.dtype)
    return F.cross_entropy(logits, targets.long(), weight=w, reduction=reduction)


def pos_weight_from_labels(labels: Sequence[int] | np.ndarray) -> torch.Tensor:
    """``n_negative / n_positive`` of the *training* labels (0/1), BCE's ``pos_weight``."""
    y = np.asarray(labels).reshape(-1)
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError("binary labels must be 0/1")
    n_pos = int((y == 1).sum())
    if n_pos == 0 or n_pos == y.size:
        raise ValueError(f"need both classes in the training labels, got {n_pos} positive of {y.size}")
    return torch.tensor(float(y.size - n_pos) / n_pos, dtype=torch.float32)


def binary_bce_with_pos_weight(logits: torch.Tensor, targets: torch.Tensor,
                               pos_weight: torch.Tensor | float | None = None,
                               reduction: str = "mean") -> torch.Tensor:
    """Binary cross-entropy on logits, positives weighted by ``pos_weight``:
    ``-(pos_weight * y * log sigmoid(x) + (1 - y) * log(1 - sigmoid(x)))``, then mean or sum."""
    pw = None if pos_weight is None else torch.as_tensor(pos_weight, dtype=logits.dtype, device=logits.device)
    return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), pos_weight=pw,
                                              reduction=reduction)
