"""Conventions, survival and classification metrics, Kaplan-Meier curves: against lifelines, brute force and
values computed by hand."""

from __future__ import annotations

import numpy as np
import pytest
from lifelines.utils import concordance_index

from pathmm_pipeline.stats import conventions as conv
from pathmm_pipeline.stats.kaplan_meier import assign_risk_groups, kaplan_meier, km_by_risk_group, risk_cutoffs
from pathmm_pipeline.stats.metrics import (
    bootstrap_c_index,
    c_index,
    classification_metrics,
    default_eval_times,
    discrete_survival_metrics,
    fold_summary,
    integrated_brier_score,
    logrank,
    time_dependent_auc,
)


def survival_data(n: int = 60, seed: int = 0):
    rng = np.random.default_rng(seed)
    risk = rng.normal(size=n)
    times = rng.exponential(np.exp(-risk) * 20.0)  # continuous: no tied times
    events = rng.random(n) < 0.7
    return times, events.astype(int), risk


def brute_force_c_index(times, events, risk) -> float:
    """Harrell: pairs where the shorter time is an event; concordant if that patient has the higher risk."""
    good, total = 0.0, 0
    for i in range(len(times)):
        for j in range(len(times)):
            if events[i] and times[i] < times[j]:
                total += 1
                good += 1.0 if risk[i] > risk[j] else 0.5 if risk[i] == risk[j] else 0.0
    return good / total


# ------------------------------------------------------------------------------------------- conventions
def test_conventions():
    assert conv.event_from_censorship([1, 0, 1]).tolist() == [0, 1, 0]  # TCGA censorship=1 -> event 0
    assert conv.censorship_from_event([1, 0]).tolist() == [0, 1]
    np.testing.assert_array_equal(conv.lifelines_score([1.0, -2.0]), [-1.0, 2.0])
    with pytest.raises(ValueError, match="0/1"):
        conv.event_from_censorship([2])
    with pytest.raises(ValueError, match=">= 0"):
        conv.survival_arrays([-1.0], [1])
    # S(t) = surv[:, k] for t in bin k = [edges[k], edges[k+1])
    surv = np.array([[0.9, 0.6, 0.3, 0.1]])
    edges = [0.0, 10.0, 20.0, 30.0, np.inf]
    np.testing.assert_allclose(conv.survival_at_times(surv, edges, [0, 9.9, 10, 25, 30, 99]),
                               [[0.9, 0.9, 0.6, 0.3, 0.1, 0.1]])


# ------------------------------------------------------------------------------------------------ C-index
def test_c_index_equals_lifelines_sksurv_and_brute_force():
    times, events, risk = survival_data()
    risk = np.round(risk, 1)  # some tied risks
    ours = c_index(times, events, risk)
    assert ours == pytest.approx(concordance_index(times, -risk, events))  # the sign convention, once
    assert ours == pytest.approx(brute_force_c_index(times, events, risk))
    sksurv_metrics = pytest.importorskip("sksurv.metrics")
    assert ours == pytest.approx(sksurv_metrics.concordance_index_censored(events.astype(bool), times, risk)[0])
    assert ours > 0.6  # the risk drove the simulated times


def test_c_index_perfect_and_reversed():
    times = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    events = np.array([1, 1, 0, 1, 0])
    assert c_index(times, events, -times) == 1.0  # shorter time, higher risk
    assert c_index(times, events, times) == 0.0
    with pytest.raises(ValueError, match="comparable"):
        c_index(times, np.zeros(5), times)


def test_bootstrap_interval_contains_the_estimate_and_is_seeded():
    times, events, risk = survival_data()
    res = bootstrap_c_index(times, events, risk, seed=7)
    assert res.n_boot == 1000 and res.n_boot_used == 1000
    assert res.lower <= res.c_index <= res.upper and res.upper - res.lower < 0.3
    assert res == bootstrap_c_index(times, events, risk, seed=7)
    assert res.to_dict()["c_index"] == res.c_index


# ----------------------------------------------------------------------------------- AUC(t), Brier score
def test_brier_of_one_half_without_censoring_is_a_quarter():
    pytest.importorskip("sksurv")  # scikit-survival==0.28.0
    times = np.arange(1.0, 21.0)
    events = np.ones(20, dtype=int)
    eval_times = np.array([3.5, 7.5, 12.5])
    res = integrated_brier_score(times, events, times, events, np.full((20, 3), 0.5), eval_times)
    np.testing.assert_allclose(res.brier, [0.25, 0.25, 0.25])
    assert res.ibs == pytest.approx(0.25)


def test_time_dependent_auc_of_a_perfect_order_is_one():
    pytest.importorskip("sksurv")  # scikit-survival==0.28.0
    times = np.arange(1.0, 21.0)
    events = np.ones(20, dtype=int)
    res = time_dependent_auc(times, events, times, events, -times, [5.5, 10.5])
    np.testing.assert_allclose(res.auc, [1.0, 1.0])
    assert res.mean_auc == pytest.approx(1.0)


def test_discrete_survival_metrics_of_an_informative_model():
    pytest.importorskip("sksurv")  # scikit-survival==0.28.0
    times, events, risk = survival_data(120, seed=1)
    edges = np.array([0.0, 5.0, 15.0, 30.0, np.inf])
    hazard = 1 / (1 + np.exp(-(risk[:, None] - 0.5)))  # the same hazard in every bin, higher with risk
    surv = np.cumprod(np.repeat(1 - hazard, 4, axis=1), axis=1)
    train = slice(0, 60)
    test = slice(60, 120)
    out = discrete_survival_metrics(times[train], events[train], times[test], events[test], surv[test], edges)
    assert len(out["eval_times"]) >= 2
    assert 0.6 < out["mean_auc"] <= 1.0
    assert 0.0 < out["ibs"] < 0.25
    times_ = default_eval_times(times[train], times[test], events[test])
    assert (times_ < times[test].max()).all() and (times_ >= times[test].min()).all()


# ---------------------------------------------------------------------------------------------- log-rank
def test_logrank_small_for_separated_groups_large_for_identical():
    rng = np.random.default_rng(0)
    short, long_ = rng.exponential(5.0, 50), rng.exponential(50.0, 50)
    times = np.concatenate([short, long_])
    events = np.ones(100, dtype=int)
    groups = np.array(["a"] * 50 + ["b"] * 50)
    assert logrank(times, events, groups).p_value < 1e-6
    same = np.concatenate([short, short])
    res = logrank(same, events, groups)
    assert res.p_value > 0.99 and res.df == 1 and res.n_per_group == (50, 50)
    three = logrank(np.concatenate([short, long_, short]), np.ones(150), ["a"] * 50 + ["b"] * 50 + ["c"] * 50)
    assert three.df == 2 and three.p_value < 1e-6


# ------------------------------------------------------------------------------------------ Kaplan-Meier
def test_kaplan_meier_by_hand():
    curve = kaplan_meier([1.0, 2.0, 3.0, 3.0], [1, 0, 1, 1])
    np.testing.assert_allclose(curve.times, [0, 1, 2, 3])
    # 4 at risk: one dies at 1 -> 3/4; censored at 2; 2 at risk die at 3 -> 0
    np.testing.assert_allclose(curve.survival, [1.0, 0.75, 0.75, 0.0])
    assert curve.at_risk.tolist() == [4, 4, 3, 2]
    assert (curve.lower <= curve.survival + 1e-12).all() and (curve.upper >= curve.survival - 1e-12).all()
    assert curve.median_survival == 3.0 and curve.to_dict()["n_events"] == 3


def test_km_by_risk_group():
    times, events, risk = survival_data(100, seed=2)
    res = km_by_risk_group(times, events, risk)
    assert [c.label for c in res.curves] == ["low risk", "high risk"]
    assert sum(c.n for c in res.curves) == 100 and res.logrank.p_value < 0.05
    assert res.logrank.groups == ("low risk", "high risk")
    assert res.curves[0].median_survival > res.curves[1].median_survival
    quartiles = km_by_risk_group(times, events, risk, quantiles=(0.25, 0.5, 0.75))
    assert len(quartiles.curves) == 4 and quartiles.logrank.df == 3
    cut = risk_cutoffs(risk[:50])  # cut-offs from "training" patients
    assert assign_risk_groups([cut[0], cut[0] + 1e-9], cut).tolist() == [0, 1]
    with pytest.raises(ValueError, match="empty"):
        km_by_risk_group(times, events, np.zeros(100))


# ---------------------------------------------------------------------------------------- classification
def test_classification_metrics():
    from sklearn.metrics import roc_auc_score

    y = np.array([0, 0, 1, 1, 2, 2])
    probs = np.array([[.8, .1, .1], [.3, .6, .1], [.2, .7, .1], [.1, .8, .1], [.1, .2, .7], [.5, .2, .3]])
    res = classification_metrics(y, probs)
    # predictions 0,1,1,1,2,0: recall 1/2, 1, 1/2 -> balanced accuracy 2/3
    assert res.balanced_accuracy == pytest.approx(2 / 3)
    assert res.macro_auc == pytest.approx(roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    binary = classification_metrics([0, 1, 1, 0], [0.2, 0.9, 0.4, 0.3])
    assert binary.macro_auc == pytest.approx(roc_auc_score([0, 1, 1, 0], [0.2, 0.9, 0.4, 0.3]))
    assert binary.balanced_accuracy == pytest.approx(0.75)
    with pytest.raises(ValueError, match="do not occur"):
        classification_metrics([0, 0, 1], np.full((3, 3), 1 / 3))


def test_fold_summary():
    out = fold_summary([0.5, 0.7])
    assert out["mean"] == pytest.approx(0.6) and out["std"] == pytest.approx(np.std([0.5, 0.7], ddof=1))
