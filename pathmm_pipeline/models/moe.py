"""Mixture-of-experts feed-forward with (noisy) top-k routing, as used by ALTER's modality-specific FFNs and
MICE's overlapping experts.

* Router: ``logits = W_g x`` (+ ``softplus(W_noise x) * N(0, 1)`` when noisy and training, Shazeer et al. 2017);
  the top-k logits per token are softmaxed into the gate weights, the others are zero.
* Load-balancing loss (Switch Transformer, Fedus et al. 2022, generalised to top-k): with ``f_i`` the fraction
  of routed slots (tokens x k) sent to expert i and ``P_i`` the mean full-softmax router probability of expert
  i, ``loss = n_experts * sum_i f_i * P_i``; 1.0 when the routing is perfectly uniform.
* Router entropy: the mean entropy of the per-token full-softmax router distribution (logged).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class RoutingStats:
    """What one MoE call routed: ``load_balance`` loss, ``entropy`` of the router, ``load`` (n_experts,) the
    fraction of routed slots per expert, ``indices`` (T, k) the chosen experts and ``probs`` (T, E) the full
    router softmax (for :meth:`rows`)."""

    load_balance: torch.Tensor
    entropy: torch.Tensor
    load: torch.Tensor
    indices: torch.Tensor
    probs: torch.Tensor | None = None

    def rows(self, start: int, end: int) -> RoutingStats:
        """The stats the tokens ``start:end`` alone would have given (a patient's rows of a batched call)."""
        if self.probs is None:
            raise ValueError("RoutingStats.rows needs the router probabilities")
        return routing_stats(self.probs[start:end], self.indices[start:end])


def top_k_gates(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(gates (T, k), indices (T, k))``: the softmax over each row's k largest logits, and their positions."""
    if not 1 <= k <= logits.shape[-1]:
        raise ValueError(f"top-k routing needs 1 <= k <= n_experts ({logits.shape[-1]}), got k={k}")
    values, indices = logits.topk(k, dim=-1)
    return torch.softmax(values, dim=-1), indices


def load_balance_loss(router_probs: torch.Tensor, indices: torch.Tensor, n_experts: int) -> torch.Tensor:
    """``n_experts * sum_i f_i * P_i`` (see the module docstring); ``router_probs`` (T, E) full softmax,
    ``indices`` (T, k) the chosen experts."""
    counts = F.one_hot(indices, n_experts).sum(dim=(0, 1)).to(router_probs.dtype)
    fraction = counts / counts.sum()
    return n_experts * (fraction * router_probs.mean(0)).sum()


def router_entropy(router_probs: torch.Tensor) -> torch.Tensor:
    """Mean entropy (nats) of the per-token router distribution."""
    return -(router_probs * router_probs.clamp_min(1e-12).log()).sum(-1).mean()


def routing_stats(probs: torch.Tensor, indices: torch.Tensor) -> RoutingStats:
    """The :class:`RoutingStats` of a routing: ``probs`` (T, E) full softmax, ``indices`` (T, k) the chosen experts."""
    n_experts = probs.shape[-1]
    load = F.one_hot(indices, n_experts).sum(dim=(0, 1)).to(probs.dtype)
    return RoutingStats(load_balance_loss(probs, indices, n_experts), router_entropy(probs), load / load.sum(),
                        indices, probs)


class Expert(nn.Module):
    """One feed-forward expert: Linear -> GELU -> Dropout -> Linear."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MixtureOfExperts(nn.Module):
    """``n_experts`` feed-forward experts with a (noisy) top-k router: (T, D) -> (T, D) and :class:`RoutingStats`.

    ``context_dim`` > 0 lets the router also see a context vector per token (MICE conditions its router on the
    cancer type): ``logits = W_g [x; c]``.
    """

    def __init__(self, dim: int, hidden: int, n_experts: int, top_k: int = 2, noisy: bool = False,
                 dropout: float = 0.1, context_dim: int = 0) -> None:
        super().__init__()
        if not 1 <= top_k <= n_experts:
            raise ValueError(f"MixtureOfExperts: top_k must be in [1, n_experts={n_experts}], got {top_k}")
        self.n_experts, self.top_k, self.noisy = n_experts, top_k, noisy
        self.experts = nn.ModuleList(Expert(dim, hidden, dropout) for _ in range(n_experts))
        self.router = nn.Linear(dim + context_dim, n_experts, bias=False)
        nn.init.zeros_(self.router.weight)  # uniform routing at the start
        self.noise = nn.Linear(dim + context_dim, n_experts, bias=False) if noisy else None

    def route(self, x: torch.Tensor, context: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor,
                                                                                     torch.Tensor]:
        """``(router_probs (T, E), gates (T, k), indices (T, k))``."""
        h = x if context is None else torch.cat([x, context.expand(x.shape[0], -1)], dim=-1)
        logits = self.router(h)
        probs = torch.softmax(logits, dim=-1)
        if self.noise is not None and self.training:
            logits = logits + F.softplus(self.noise(h)) * torch.randn_like(logits)
        gates, indices = top_k_gates(logits, self.top_k)
        return probs, gates, indices

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> tuple[torch.Tensor, RoutingStats]:
        probs, gates, indices = self.route(x, context)
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            token, slot = (indices == e).nonzero(as_tuple=True)
            if token.numel():
                out.index_add_(0, token, gates[token, slot, None] * expert(x[token]))
        return out, routing_stats(probs, indices)
