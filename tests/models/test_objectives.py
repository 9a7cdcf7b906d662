"""The pretraining objectives and the MoE router against values computed by hand on tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pathmm_pipeline.models.moe import MixtureOfExperts, load_balance_loss, router_entropy, top_k_gates
from pathmm_pipeline.models.objectives import (
    ema_update_,
    kl_softmax,
    mask_tokens,
    masked_token_loss,
    symmetric_info_nce,
    triplet_margin_loss,
)


def test_info_nce_matches_hand_computation() -> None:
    # unit vectors: a0 = (1, 0), a1 = (0, 1); b0 = (1, 0), b1 = (0.6, 0.8); temperature 1 (logit_scale 0)
    a = torch.tensor([[2.0, 0.0], [0.0, 3.0]])  # normalised inside
    b = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    # similarity matrix S = [[1, 0.6], [0, 0.8]]
    row0 = -math.log(math.e ** 1 / (math.e ** 1 + math.e ** 0.6))
    row1 = -math.log(math.e ** 0.8 / (math.e ** 0 + math.e ** 0.8))
    col0 = -math.log(math.e ** 1 / (math.e ** 1 + math.e ** 0))
    col1 = -math.log(math.e ** 0.8 / (math.e ** 0.6 + math.e ** 0.8))
    expected = 0.5 * ((row0 + row1) / 2 + (col0 + col1) / 2)
    assert float(symmetric_info_nce(a, b, 0.0)) == pytest.approx(expected, rel=1e-6)
    # a learnable scale is used as exp(logit_scale), and gets a gradient
    scale = torch.tensor(math.log(10.0), requires_grad=True)
    symmetric_info_nce(a, b, scale).backward()
    assert scale.grad is not None and scale.grad != 0


def test_info_nce_refuses_single_pairs_and_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="at least 2 pairs"):
        symmetric_info_nce(torch.ones(1, 4), torch.ones(1, 4), 0.0)
    with pytest.raises(ValueError, match="one shape"):
        symmetric_info_nce(torch.ones(2, 4), torch.ones(2, 3), 0.0)


def test_triplet_loss_matches_hand_computation() -> None:
    # after normalisation: e0 = (1, 0), e1 = (0.6, 0.8) [label 0]; e2 = (0, 1) [label 1]
    e = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 2.0]])
    labels = torch.tensor([0, 0, 1])
    d01 = math.sqrt(0.4 ** 2 + 0.8 ** 2)
    d02 = math.sqrt(2.0)
    d12 = math.sqrt(0.6 ** 2 + 0.2 ** 2)
    margin = 0.5
    # valid triplets: (a=0, p=1, n=2) and (a=1, p=0, n=2)
    expected = (max(d01 - d02 + margin, 0) + max(d01 - d12 + margin, 0)) / 2
    assert float(triplet_margin_loss(e, labels, margin)) == pytest.approx(expected, rel=1e-5)


def test_triplet_loss_without_valid_triplets_is_zero_with_a_gradient_path() -> None:
    e = torch.randn(3, 4, requires_grad=True)
    loss = triplet_margin_loss(e, torch.tensor([0, 1, 2]))
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert e.grad is not None


def test_masked_token_loss_counts_masked_positions_only() -> None:
    pred = torch.tensor([[1.0, 1.0], [5.0, 5.0], [0.0, 2.0]])
    target = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    mask = torch.tensor([True, False, True])
    # masked rows: (1, 1) and (0, 2): squared errors 1, 1, 0, 4 -> mean 1.5 (the unmasked row 5s ignored)
    assert float(masked_token_loss(pred, target, mask)) == pytest.approx(1.5)
    assert float(masked_token_loss(pred, target, torch.zeros(3, dtype=torch.bool))) == 0.0
    with pytest.raises(ValueError, match="do not fit"):
        masked_token_loss(pred, target, torch.ones(2, dtype=torch.bool))


def test_mask_tokens_masks_the_requested_share_and_keeps_one() -> None:
    g = torch.Generator().manual_seed(0)
    assert int(mask_tokens(100, 0.25, g).sum()) == 25
    assert int(mask_tokens(1, 0.5, g).sum()) == 1
    two = mask_tokens(2, 0.99, g)
    assert int(two.sum()) == 1  # one kept
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        mask_tokens(10, 1.0)


def test_kl_softmax_matches_hand_computation() -> None:
    target = torch.log(torch.tensor([[0.5, 0.5]]))
    pred = torch.log(torch.tensor([[0.25, 0.75]]))
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert float(kl_softmax(pred, target)) == pytest.approx(expected, rel=1e-6)
    assert float(kl_softmax(target, target)) == pytest.approx(0.0, abs=1e-7)


def test_ema_update_matches_hand_computation() -> None:
    teacher, student = nn.Linear(2, 1), nn.Linear(2, 1)
    with torch.no_grad():
        teacher.weight.fill_(1.0), teacher.bias.fill_(0.0)
        student.weight.fill_(3.0), student.bias.fill_(2.0)
    ema_update_(teacher, student, 0.9)
    assert torch.allclose(teacher.weight, torch.full((1, 2), 0.9 * 1 + 0.1 * 3))
    assert torch.allclose(teacher.bias, torch.tensor([0.2]))
    with pytest.raises(ValueError, match="momentum"):
        ema_update_(teacher, student, 1.5)


# ------------------------------------------------------------------------------------------------ MoE
def test_top_k_gates_softmax_over_the_k_largest() -> None:
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    gates, idx = top_k_gates(logits, 2)
    assert idx.tolist() == [[1, 2]]
    e = math.exp(1.0)
    assert gates[0].tolist() == pytest.approx([e / (e + 1), 1 / (e + 1)])
    with pytest.raises(ValueError, match="1 <= k"):
        top_k_gates(logits, 5)


def test_load_balance_loss_matches_hand_computation() -> None:
    # 2 tokens, 3 experts, top-1: token 0 -> expert 0, token 1 -> expert 0
    probs = torch.tensor([[0.6, 0.3, 0.1], [0.5, 0.2, 0.3]])
    idx = torch.tensor([[0], [0]])
    # f = (1, 0, 0), P = (0.55, 0.25, 0.2): loss = 3 * 0.55
    assert float(load_balance_loss(probs, idx, 3)) == pytest.approx(1.65)
    # perfectly uniform routing gives 1.0
    uniform = torch.full((4, 4), 0.25)
    assert float(load_balance_loss(uniform, torch.tensor([[0], [1], [2], [3]]), 4)) == pytest.approx(1.0)
    # entropy of a uniform router over 4 experts is log 4
    assert float(router_entropy(uniform)) == pytest.approx(math.log(4))


def test_moe_routes_each_token_to_k_experts_and_combines_their_outputs(torch_one_thread: None) -> None:
    torch.manual_seed(0)
    moe = MixtureOfExperts(dim=4, hidden=8, n_experts=3, top_k=2).eval()
    with torch.no_grad():
        moe.router.weight.copy_(torch.randn(3, 4))
    x = torch.randn(5, 4)
    out, stats = moe(x)
    assert stats.indices.shape == (5, 2) and stats.load.sum() == pytest.approx(1.0)
    probs, gates, idx = moe.route(x)
    expected = torch.stack([sum(gates[t, s] * moe.experts[int(idx[t, s])](x[t:t + 1])[0] for s in range(2))
                            for t in range(5)])
    assert torch.allclose(out, expected, atol=1e-6)
    # a context vector conditions the router
    ctx_moe = MixtureOfExperts(dim=4, hidden=8, n_experts=3, top_k=1, context_dim=2, noisy=True)
    with torch.no_grad():
        ctx_moe.router.weight.copy_(torch.randn(3, 6))
    ctx_moe.eval()
    _, s1 = ctx_moe(x, torch.tensor([[5.0, 0.0]]))
    _, s2 = ctx_moe(x, torch.tensor([[-5.0, 0.0]]))
    assert not torch.equal(s1.indices, s2.indices)
