"""Building blocks shared by the baselines: SNN blocks, gated attention pooling, learned missing embeddings and
the gated Kronecker (outer-product) fusion of Pathomic Fusion / PORPOISE."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


def snn_block(d_in: int, d_out: int, dropout: float = 0.25) -> nn.Sequential:
    """One self-normalising block (Klambauer et al. 2017): Linear -> SELU -> AlphaDropout.

    (The CLAM-lab code of PORPOISE/MCAT/SurvPath writes ``nn.ELU()`` in this block; SELU is the activation of
    the SNN paper, whose fixed point the LeCun-normal init of :func:`init_snn_` is derived for.)
    """
    return nn.Sequential(nn.Linear(d_in, d_out), nn.SELU(), nn.AlphaDropout(p=dropout))


def snn(d_in: int, hidden: Sequence[int], dropout: float = 0.25) -> nn.Sequential:
    """Stacked :func:`snn_block`\\ s, ``d_in -> hidden[0] -> ... -> hidden[-1]``, LeCun-normal initialised."""
    dims = [d_in, *hidden]
    net = nn.Sequential(*[snn_block(a, b, dropout) for a, b in zip(dims[:-1], dims[1:])])
    init_snn_(net)
    return net


def init_snn_(module: nn.Module) -> None:
    """LeCun normal init (weights ~ N(0, 1/fan_in), biases 0), as in the SNN paper and the CLAM-lab code."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 1.0 / math.sqrt(m.weight.shape[1]))
            nn.init.zeros_(m.bias)


def mlp(d_in: int, hidden: Sequence[int], dropout: float = 0.25) -> nn.Sequential:
    """Linear -> ReLU -> Dropout blocks."""
    dims = [d_in, *hidden]
    layers: list[nn.Module] = []
    for a, b in zip(dims[:-1], dims[1:]):
        layers += [nn.Linear(a, b), nn.ReLU(), nn.Dropout(dropout)]
    return nn.Sequential(*layers)


class GatedAttention(nn.Module):
    """Gated attention scores (Ilse et al. 2018): ``w^T (tanh(V h) * sigmoid(U h))``; (N, L) -> (N,).

    As CLAM's ``Attn_Net_Gated``: both branches have dropout when ``dropout > 0``.
    """

    def __init__(self, dim: int, attn_dim: int, dropout: float = 0.25) -> None:
        super().__init__()
        self.attention_a = nn.Sequential(nn.Linear(dim, attn_dim), nn.Tanh(), nn.Dropout(dropout))
        self.attention_b = nn.Sequential(nn.Linear(dim, attn_dim), nn.Sigmoid(), nn.Dropout(dropout))
        self.attention_c = nn.Linear(attn_dim, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.attention_c(self.attention_a(h) * self.attention_b(h)).squeeze(-1)


class AttentionPool(nn.Module):
    """Gated attention-MIL pooling: (N, L) -> pooled (1, L) and softmax weights (1, N)."""

    def __init__(self, dim: int, attn_dim: int, dropout: float = 0.25) -> None:
        super().__init__()
        self.attention = GatedAttention(dim, attn_dim, dropout)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weights = torch.softmax(self.attention(h), dim=0).unsqueeze(0)  # (1, N)
        return weights @ h, weights

    def forward_segments(self, h: torch.Tensor, sizes: Sequence[int]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Several bags concatenated, (sum N_i, L) with ``sizes`` N_i -> pooled (B, L) and each bag's (1, N_i)
        weights: a softmax per bag over its own rows, so no padding is computed; each bag's what :meth:`forward`
        gives it alone."""
        segment = torch.repeat_interleave(torch.arange(len(sizes), device=h.device),
                                          torch.as_tensor(list(sizes), device=h.device))
        scores = self.attention(h)
        top = scores.new_full((len(sizes),), float("-inf")).scatter_reduce(0, segment, scores, "amax")
        exp = torch.exp(scores - top[segment])
        weights = exp / exp.new_zeros(len(sizes)).index_add(0, segment, exp)[segment]
        pooled = h.new_zeros(len(sizes), h.shape[1]).index_add(0, segment, weights[:, None] * h)
        return pooled, [w[None] for w in torch.split(weights, list(sizes))]


class MissingEmbedding(nn.Module):
    """A learned stand-in for an absent modality's representation (``shape``), N(0, 0.02) initialised."""

    def __init__(self, *shape: int) -> None:
        super().__init__()
        self.value = nn.Parameter(torch.randn(*shape) * 0.02)

    def forward(self) -> torch.Tensor:
        return self.value


class KroneckerFusion(nn.Module):
    """Gated Kronecker-product fusion of k vectors (Pathomic Fusion, Chen et al. 2020; PORPOISE 2022).

    Per modality m with vector v_m (dim d_m): ``h_m = ReLU(W_h v_m)`` (d_m / scale), a gate
    ``z_m = W_z [v_1; ...; v_k]`` (PORPOISE's ``use_bilinear=0`` gate from the concatenation of all modalities),
    ``o_m = Dropout(ReLU(W_o (sigmoid(z_m) * h_m)))``; then ``[o_m; 1]`` for each modality (the appended 1
    keeps every unimodal and lower-order interaction term in the product), their outer product flattened,
    dropout, ``Linear(prod(d_m/scale + 1), hidden) -> ReLU -> Dropout``, optionally the skip connection
    ``[., v_1, ..., v_k]``, and ``Linear(., mmhid) -> ReLU -> Dropout``. For two 256-d vectors with scale 8
    and mmhid 256 this is PORPOISE's ``BilinearFusion`` (33 x 33 = 1089 product terms).
    """

    def __init__(self, dims: Sequence[int], scale: int = 8, mmhid: int = 256, hidden: int | None = None,
                 gate: bool = True, skip: bool = True, dropout: float = 0.25) -> None:
        super().__init__()
        if len(dims) < 1:
            raise ValueError("KroneckerFusion needs at least one modality")
        small = [max(1, d // scale) for d in dims]
        hidden = mmhid if hidden is None else hidden
        self.gate, self.skip = gate, skip
        self.linear_h = nn.ModuleList(nn.Sequential(nn.Linear(d, s), nn.ReLU()) for d, s in zip(dims, small))
        self.linear_z = nn.ModuleList(nn.Linear(sum(dims), s) for s in small) if gate else None
        self.linear_o = nn.ModuleList(nn.Sequential(nn.Linear(s, s), nn.ReLU(), nn.Dropout(dropout)) for s in small)
        self.post_fusion_dropout = nn.Dropout(dropout)
        n_terms = math.prod(s + 1 for s in small)
        self.encoder1 = nn.Sequential(nn.Linear(n_terms, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.encoder2 = nn.Sequential(nn.Linear(hidden + (sum(dims) if skip else 0), mmhid), nn.ReLU(),
                                      nn.Dropout(dropout))
        self.out_dim = mmhid

    def forward(self, vectors: Sequence[torch.Tensor]) -> torch.Tensor:
        """``vectors``: k tensors (B, d_m) -> (B, mmhid)."""
        joint = torch.cat(list(vectors), dim=1)
        product: torch.Tensor | None = None
        for m, v in enumerate(vectors):
            h = self.linear_h[m](v)
            if self.linear_z is not None:
                h = torch.sigmoid(self.linear_z[m](joint)) * h
            o = self.linear_o[m](h)
            o = torch.cat([o, o.new_ones(o.shape[0], 1)], dim=1)
            product = o if product is None else (product.unsqueeze(2) * o.unsqueeze(1)).flatten(start_dim=1)
        assert product is not None
        out = self.encoder1(self.post_fusion_dropout(product))
        if self.skip:
            out = torch.cat([out, joint], dim=1)
        return self.encoder2(out)
