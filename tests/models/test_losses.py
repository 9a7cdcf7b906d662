"""The training losses against values computed by hand on tiny tensors."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from pathmm_pipeline.models.losses import (
    NLLSurvLoss,
    binary_bce_with_pos_weight,
    class_weights,
    cox_ph_loss,
    discretize,
    hazards_and_survival,
    make_time_bins,
    nll_survival_loss,
    pos_weight_from_labels,
    risk_from_logits,
    weighted_cross_entropy,
)

LN2 = math.log(2.0)


def t64(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


# ---------------------------------------------------------------------------------------------- time bins
def test_time_bins_are_quantiles_of_uncensored_times_only():
    times = [1, 2, 3, 4, 5, 6, 7, 8, 100, 0.5]
    events = [1, 1, 1, 1, 1, 1, 1, 1, 0, 0]  # the censored 100 and 0.5 do not move the quantiles
    edges = make_time_bins(times, events, n_bins=4)
    np.testing.assert_allclose(edges, [0.0, 2.75, 4.5, 6.25, np.inf])  # linear quantiles of 1..8
    # left-closed bins: an edge belongs to the bin it opens
    assert discretize([0, 2.7, 2.75, 4.5, 6.2499, 6.25, 1000], edges).tolist() == [0, 0, 1, 2, 2, 3, 3]


def test_time_bins_match_survpath_qcut_then_cut():
    rng = np.random.default_rng(3)
    times = rng.exponential(20, 200)
    events = rng.integers(0, 2, 200)
    edges = make_time_bins(times, events, 4)
    _, q = pd.qcut(times[events == 1], q=4, retbins=True, labels=False)
    q[0], q[-1] = times.min() - 1e-6, times.max() + 1e-6  # SurvPath widens the outer edges
    expected = pd.cut(times, bins=q, labels=False, right=False, include_lowest=True)
    np.testing.assert_allclose(edges[1:-1], q[1:-1])
    assert (discretize(times, edges) == expected).all()


def test_time_bins_refuse_too_few_events_and_tied_edges():
    with pytest.raises(ValueError, match="uncensored"):
        make_time_bins([1, 2, 3], [1, 0, 0], 4)
    with pytest.raises(ValueError, match="strictly increasing"):
        make_time_bins([5, 5, 5, 5, 5], [1, 1, 1, 1, 1], 4)
    with pytest.raises(ValueError, match=">= 0"):
        make_time_bins([-1, 2], [1, 1], 1)


# ------------------------------------------------------------------------------------- discrete-time NLL
def test_hazards_survival_and_risk_by_hand():
    logits = t64([[0.0, math.log(3.0)]])  # hazards 1/2 and 3/4
    hazards, surv = hazards_and_survival(logits)
    np.testing.assert_allclose(hazards.numpy(), [[0.5, 0.75]])
    np.testing.assert_allclose(surv.numpy(), [[0.5, 0.125]])
    np.testing.assert_allclose(risk_from_logits(logits).numpy(), [-0.625])
    np.testing.assert_allclose(risk_from_logits(torch.zeros(1, 4, dtype=torch.float64)).numpy(), [-0.9375])
    # higher hazards -> higher risk
    assert risk_from_logits(t64([[2.0, 2.0]])) > risk_from_logits(t64([[-2.0, -2.0]]))


def test_nll_by_hand_with_equal_hazards():
    logits = torch.zeros(4, 4, dtype=torch.float64)  # every hazard 1/2, S = 1/2, 1/4, 1/8, 1/16
    bins = torch.tensor([1, 1, 3, 0])
    events = torch.tensor([1, 0, 0, 1])
    # event in bin 1: -(log S_pad[1] + log h_1) = 2 ln2; censored in bin 1: -log S_1 = 2 ln2;
    # censored in bin 3: -log S_3 = 4 ln2; event in bin 0: -(log 1 + log h_0) = ln2
    per = nll_survival_loss(logits, bins, events, reduction="none")
    np.testing.assert_allclose(per.numpy(), [2 * LN2, 2 * LN2, 4 * LN2, LN2])
    assert nll_survival_loss(logits, bins, events).item() == pytest.approx(9 / 4 * LN2)
    assert nll_survival_loss(logits, bins, events, reduction="sum").item() == pytest.approx(9 * LN2)
    # alpha = 0.5: (1 - alpha) * (censored + uncensored) + alpha * uncensored -> censored terms halve
    assert nll_survival_loss(logits, bins, events, alpha=0.5, reduction="sum").item() == pytest.approx(6 * LN2)
    assert NLLSurvLoss(alpha=0.5)(logits, bins, events).item() == pytest.approx(1.5 * LN2)


def test_nll_by_hand_with_unequal_hazards():
    logits = t64([[0.0, math.log(3.0)], [0.0, math.log(3.0)]])  # hazards 1/2, 3/4; S = 1/2, 1/8
    per = nll_survival_loss(logits, torch.tensor([1, 0]), torch.tensor([1, 0]), reduction="none")
    np.testing.assert_allclose(per.numpy(), [-(math.log(0.5) + math.log(0.75)), -math.log(0.5)])


def test_nll_clamps_at_eps():
    logits = t64([[-100.0, 0.0]])  # hazard of bin 0 underflows below eps
    loss = nll_survival_loss(logits, torch.tensor([0]), torch.tensor([1]), eps=1e-7)
    assert loss.item() == pytest.approx(-math.log(1e-7))
    assert torch.isfinite(loss)


def test_nll_gradient_and_bad_inputs():
    logits = torch.zeros(2, 4, requires_grad=True)
    nll_survival_loss(logits, torch.tensor([0, 3]), torch.tensor([1, 0])).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="bin indices"):
        nll_survival_loss(torch.zeros(1, 4), torch.tensor([4]), torch.tensor([1]))
    with pytest.raises(ValueError, match="logit rows"):
        nll_survival_loss(torch.zeros(2, 4), torch.tensor([0]), torch.tensor([1]))


# ---------------------------------------------------------------------------------------------------- Cox
def test_cox_breslow_by_hand():
    risk = t64([0.0, math.log(2.0), 0.0])
    times = t64([1.0, 2.0, 2.0])
    events = torch.tensor([1, 1, 0])
    # t=1: risk set {0,1,2}, sum exp = 1 + 2 + 1 = 4 -> 0 - ln4; t=2: risk set {1,2}, sum = 3 -> ln2 - ln3
    expected_sum = math.log(4) - math.log(2) + math.log(3)
    assert cox_ph_loss(risk, times, events, reduction="sum").item() == pytest.approx(expected_sum)
    assert cox_ph_loss(risk, times, events).item() == pytest.approx(expected_sum / 2)


def test_cox_tied_event_times_share_the_risk_set():
    risk = t64([0.0, 0.0, math.log(2.0)])
    times = t64([2.0, 2.0, 3.0])
    events = torch.tensor([1, 1, 0])
    # Breslow: both tied events see all three patients: 2 * ln(1 + 1 + 2)
    assert cox_ph_loss(risk, times, events, reduction="sum").item() == pytest.approx(2 * math.log(4))


def test_cox_without_events_is_zero_and_differentiable():
    risk = torch.zeros(3, requires_grad=True)
    loss = cox_ph_loss(risk, torch.ones(3), torch.zeros(3))
    loss.backward()
    assert loss.item() == 0.0 and risk.grad is not None


# ---------------------------------------------------------------------------------------- classification
def test_inverse_frequency_class_weights():
    np.testing.assert_allclose(class_weights([0, 0, 0, 1]).numpy(), [4 / 6, 2.0], rtol=1e-6)
    np.testing.assert_allclose(class_weights([0, 1, 2, 0, 1, 2]).numpy(), [1, 1, 1])
    with pytest.raises(ValueError, match="no training example"):
        class_weights([0, 0, 2], n_classes=3)


def test_weighted_cross_entropy_by_hand():
    logits = t64([[0.0, math.log(3.0)], [0.0, math.log(3.0)]])  # p = (1/4, 3/4)
    targets = torch.tensor([0, 1])
    w = class_weights([0, 0, 0, 1]).double()  # (2/3, 2)
    expected = (2 / 3 * math.log(4) + 2 * math.log(4 / 3)) / (2 / 3 + 2)
    assert weighted_cross_entropy(logits, targets, w).item() == pytest.approx(expected)
    assert weighted_cross_entropy(logits, targets).item() == pytest.approx((math.log(4) + math.log(4 / 3)) / 2)


def test_bce_with_pos_weight_by_hand():
    pw = pos_weight_from_labels([1, 0, 0, 0])
    assert pw.item() == pytest.approx(3.0)
    loss = binary_bce_with_pos_weight(t64([0.0, 0.0]), t64([1.0, 0.0]), pw)
    assert loss.item() == pytest.approx((3 * LN2 + LN2) / 2)
    one = binary_bce_with_pos_weight(t64([math.log(3.0)]), t64([1.0]), 3.0, reduction="sum")
    assert one.item() == pytest.approx(-3 * math.log(0.75))
    with pytest.raises(ValueError, match="both classes"):
        pos_weight_from_labels([0, 0])
