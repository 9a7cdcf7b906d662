"""Every registered attention extractor on a real small model, briefly trained; the contribution's sign."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pathmm_pipeline.interpret.attention import ATTENTION, NoAttentionError, tile_attention
from pathmm_pipeline.interpret.contribution import tile_contribution
from pathmm_pipeline.models import InputDims, ModelOutput, PathmmModel, PatientInput, TaskSpec, build_model
from pathmm_pipeline.models.losses import risk_from_logits

MEMBERS = ((0, 1, 2), (3, 4, 5, 6, 7), (8, 9), (10, 11, 0, 1))
DIMS = InputDims(wsi=12, genes=12, report=8, pathway_sizes=(3, 5, 2, 4), family_sizes=(4, 3, 5),
                 pathway_members=MEMBERS, n_cancer_types=2)
SMALL = {
    "abmil": dict(hidden_dim=16, attn_dim=8),
    "transmil": dict(dim=16, heads=2),
    "mcat": dict(dim=16, snn_hidden=(16, 16), heads=2, ff_dim=32),
    "survpath": dict(dim=16, snn_hidden=(16, 16)),
    "late_fusion_concat": dict(dim=16, attn_dim=8, snn_hidden=(16, 16), report_hidden=(16, 16)),
    "late_fusion_kronecker": dict(dim=16, attn_dim=8, snn_hidden=(16, 16), report_hidden=(16, 16), scale=4),
    "alter": dict(dim=16, heads=2, n_experts=3, n_features=16, ff_dim=32),
    "umeml": dict(dim=16, heads=2, ff_dim=32, decoder_layers=1, omic_layers=1),
    "mice": dict(dim=16, attn_dim=8, expert_hidden=16, fusion_layers=1, fusion_heads=4),
    "mstar": dict(dim=16, heads=2, proj_dim=8, genomics_hidden=(16,), genomics_dropout=0.0, dropout=0.0),
}


def patient(n: int, seed: int) -> PatientInput:
    g = torch.Generator().manual_seed(seed)
    return PatientInput(wsi=torch.randn(n, DIMS.wsi, generator=g),
                        wsi_coords=torch.stack([torch.arange(n) % 7, torch.arange(n) // 7], 1) * 256,
                        pathways=[torch.randn(s, generator=g) for s in DIMS.pathway_sizes],
                        families=[torch.randn(s, generator=g) for s in DIMS.family_sizes],
                        genes=torch.randn(DIMS.genes, generator=g), report=torch.randn(DIMS.report, generator=g))


def trained(name: str, steps: int = 4) -> PathmmModel:
    """The model after a few optimiser steps on random bags (its attention is no longer at initialisation)."""
    torch.manual_seed(0)
    model = build_model(name, DIMS, TaskSpec.survival(4), **SMALL[name])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(steps):
        out = model(patient(15 + step, step))
        loss = out.logits.pow(2).mean() + sum(v for k, v in out.extras.items() if k == "aux_loss" and v is not None)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_every_tile_weighing_model_has_an_extractor():
    assert set(SMALL) == set(ATTENTION.names())


@pytest.mark.parametrize("name", ATTENTION.names())
@pytest.mark.parametrize("n", [1, 23])
def test_attention_is_one_weight_per_tile_summing_to_one(name, n):
    model = trained(name)
    x = patient(n, seed=11)
    before = model(x).logits.detach()
    weights = tile_attention(model, x)
    assert weights.shape == (n,) and np.isfinite(weights).all() and (weights >= 0).all()
    assert weights.sum() == pytest.approx(1.0)
    assert torch.equal(model(x).logits.detach(), before)       # the hooks changed nothing
    if n > 1:
        assert weights.std() > 0                                # a trained model does not weigh all alike
    contribution = tile_contribution(model, x)
    assert contribution.shape == (n,) and np.isfinite(contribution).all()


def test_models_without_tile_weights_are_refused():
    torch.manual_seed(0)
    snn = build_model("snn", DIMS, TaskSpec.survival(4), hidden=(8,))
    with pytest.raises(NoAttentionError, match="contribution"):
        tile_attention(snn, patient(5, 0))


class LinearMean(PathmmModel):
    """risk = w . mean(tiles): each tile's exact share of the risk is w . x_i / N."""

    uses = frozenset({"wsi"})
    requires = frozenset({"wsi"})
    name = "linear_mean"

    def __init__(self, dims: InputDims, task: TaskSpec) -> None:
        super().__init__(dims, task)
        self.head = nn.Linear(dims.wsi, task.n_outputs, bias=True)

    def forward(self, x: PatientInput) -> ModelOutput:
        self.check_input(x)
        z = self.wsi_features(x).mean(0, keepdim=True)
        return ModelOutput(self.head(z), z)


@pytest.mark.parametrize("task", [TaskSpec("survival", 1), TaskSpec.binary(), TaskSpec.survival(4)])
def test_contribution_sign_follows_the_risk(task):
    torch.manual_seed(0)
    model = LinearMean(DIMS, task)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.weight[:, 0] = 1.0          # a higher hazard logit / risk / logit: feature 0 raises the score
    x = patient(9, 3)
    x.wsi[:, 0] = torch.linspace(-2, 2, 9)
    c = tile_contribution(model, x)
    assert np.all(np.sign(c[[0, 1, 2]]) == -1) and np.all(np.sign(c[[6, 7, 8]]) == 1)
    assert np.argmax(c) == 8 and np.argmin(c) == 0
    if task.is_cox:   # linear: the contributions are the tiles' exact shares of the linear predictor
        np.testing.assert_allclose(c, x.wsi[:, 0].numpy() / 9, atol=1e-6)
    else:             # monotone: the sum's sign is that of the risk change from the zero bag
        zero = PatientInput(wsi=torch.zeros_like(x.wsi))
        with torch.no_grad():
            logits, base = model(x).logits, model(zero).logits
            delta = (logits - base)[0, 0] if task.kind == "binary" else (risk_from_logits(logits)
                                                                        - risk_from_logits(base))[0]
        assert np.sign(c.sum()) == np.sign(float(delta))
