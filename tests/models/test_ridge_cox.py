"""The ridge Cox baseline: a closed-form fit that recovers a planted linear risk, agrees with lifelines, turns
into proper discrete-time hazards, and chooses its penalty only on the patients it is given to choose on."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from pathmm_pipeline.models import InputDims, PatientInput, TaskSpec, build_model

SIZES = (3, 4, 2, 5)


def cohort(n: int, seed: int) -> tuple[list[PatientInput], np.ndarray, np.ndarray, np.ndarray]:
    """Patients whose hazard is exp(1.5 * score_0 - 1.0 * score_2): pathway means carry the risk."""
    rng = np.random.default_rng(seed)
    inputs, lps = [], []
    for _ in range(n):
        tokens = [torch.tensor(rng.normal(rng.normal(), 0.3, size=k), dtype=torch.float32) for k in SIZES]
        inputs.append(PatientInput(pathways=tokens))
        lps.append(1.5 * float(tokens[0].mean()) - 1.0 * float(tokens[2].mean()))
    lp = np.array(lps)
    time = rng.exponential(10.0 / np.exp(lp))
    censor = rng.exponential(15.0, n)
    return inputs, np.minimum(time, censor), (time <= censor).astype(int), lp


def model(task: TaskSpec, **options):
    return build_model("ridge_cox", InputDims(pathway_sizes=SIZES, genes=sum(SIZES)), task, **options)


def test_recovers_the_planted_risk_and_matches_lifelines():
    from lifelines import CoxPHFitter
    from lifelines.utils import concordance_index

    x, t, e, _ = cohort(300, 0)
    m = model(TaskSpec.survival(1), penalty=0.1)
    m.fit_direct(x, t, e)
    scores = torch.stack([m.scores(p) for p in x]).numpy()
    z = (scores - scores.mean(0)) / scores.std(0)
    frame = pd.DataFrame(z, columns=list("abcd")).assign(time=t, event=e)
    reference = CoxPHFitter(penalizer=0.1, l1_ratio=0.0).fit(frame, "time", "event").params_.to_numpy()
    np.testing.assert_allclose(m.linear.weight.detach().numpy().ravel(), reference, rtol=1e-3, atol=1e-4)
    xt, tt, et, _ = cohort(200, 1)
    with torch.no_grad():
        risk = np.array([float(m(p).logits) for p in xt])
    assert concordance_index(tt, -risk, et) > 0.7


def test_survival_logits_are_hazards_ordered_like_the_linear_predictor():
    x, t, e, _ = cohort(200, 2)
    edges = np.array([0.0, 2.0, 6.0, 14.0, np.inf])
    m = model(TaskSpec.survival(4))
    m.fit_direct(x, t, e, edges=edges)
    with torch.no_grad():
        hazards = torch.sigmoid(torch.cat([m(p).logits for p in x[:50]])).numpy()
        lp = np.array([float(m.linear(((m.scores(p) - m.mean) / m.scale).reshape(1, -1))) for p in x[:50]])
    assert ((hazards > 0) & (hazards < 1)).all()
    order = np.argsort(lp)
    assert (np.diff(hazards[order], axis=0) >= -1e-6).all()  # a higher linear predictor: higher hazard each bin
    assert (m.baseline.numpy() > 0).all()


def test_inner_penalty_search_depends_on_the_check_patients_only():
    x, t, e, _ = cohort(120, 3)
    fit, check = slice(0, 90), slice(90, 120)
    a = model(TaskSpec.survival(1))
    rows = a.fit_direct(x[fit], t[fit], e[fit], x[check], t[check], e[check])
    assert len(rows) == 8 and rows[-1]["chosen"] and rows[-1]["n_fit"] == 120
    b = model(TaskSpec.survival(1))
    b.fit_direct(x[fit], t[fit], e[fit], x[check], t[check], e[check])
    assert torch.equal(a.linear.weight, b.linear.weight)  # deterministic
    assert float(a.chosen_penalty) in {r["penalty"] for r in rows[:-1]}


def test_refuses_classification_and_a_negative_penalty():
    from pathmm_pipeline.models import ModelConfigError

    with pytest.raises(ModelConfigError, match="survival model"):
        model(TaskSpec.classification(3))
    with pytest.raises(ModelConfigError, match="penalty"):
        model(TaskSpec.survival(1), penalty=-1.0)
