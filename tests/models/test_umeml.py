"""UMEML (prototypes, registers, unified decoder, modularity loss): the modularity against hand-computed values
on a tiny graph, a true two-community clustering scoring better than random ones, forward and backward with
wsi only, genomics only and both, gradients to the prototypes (from the head and from the modularity alone),
the modularity subsample, the ablation switches and auxiliary heads, option errors, reproducibility, and a
small survival-learning check.

Dims of 16, bags of a dozen patches and four gene-group tokens keep the file to a few seconds on two CPU
cores (most of it the 30 learning steps)."""

from __future__ import annotations

import math

import pytest
import torch

from pathmm_pipeline.models import (
    InputDims,
    MissingModalityError,
    ModelConfigError,
    ModelInputError,
    ModelOptionError,
    PatientInput,
    TaskSpec,
    build_model,
    get_model_class,
    list_models,
    model_options,
)
from pathmm_pipeline.models.losses import nll_survival_loss
from pathmm_pipeline.models.umeml import (
    UMEML,
    modularity,
    modularity_loss,
    patch_graph,
    published_modularity_loss,
    soft_assignment,  # registers "umeml"
)

pytestmark = pytest.mark.usefixtures("torch_one_thread")

DIMS = InputDims(wsi=12, pathway_sizes=(3, 5, 2, 4), family_sizes=(4, 3, 5))
SMALL = dict(dim=16, heads=2, ff_dim=32, decoder_layers=1, omic_layers=1)


def patient(n: int = 12, seed: int = 0) -> PatientInput:
    g = torch.Generator().manual_seed(seed)
    return PatientInput(wsi=torch.randn(n, DIMS.wsi, generator=g),
                        pathways=[torch.randn(s, generator=g) for s in DIMS.pathway_sizes],
                        families=[torch.randn(s, generator=g) for s in DIMS.family_sizes])


def small(task: TaskSpec = TaskSpec.survival(4), dims: InputDims = DIMS, seed: int = 0, **extra) -> UMEML:
    torch.manual_seed(seed)
    model = build_model("umeml", dims, task, **{**SMALL, **extra})
    assert isinstance(model, UMEML)
    return model


# ---------------------------------------------------------------------------------------------- modularity


def test_modularity_matches_a_hand_computation_on_two_pairs():
    e1, e2 = torch.eye(3)[:2]
    patches = torch.stack([e1, 2 * e1, e2, 3 * e2])          # two pairs; cosine ignores the scale
    a = patch_graph(patches)
    torch.testing.assert_close(a, torch.tensor([[0.0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0]]))
    # d = (1, 1, 1, 1), 2m = 4, B = A - 1/4. Pairs {0,1},{2,3}: each block sums to -1/4 + 3/4 + 3/4 - 1/4 = 1,
    # trace(C^T B C) = 2, Q = 2 / 4 = 1/2. Crossed pairs {0,2},{1,3}: each block sums to 4 * (-1/4) = -1, Q = -1/2.
    # One cluster: the sum of B, 2m - (2m)^2 / 2m = 0. Uniform soft assignment: Q = 2 * (1/4) * sum(B) = 0.
    pairs = torch.tensor([[1.0, 0], [1, 0], [0, 1], [0, 1]])
    crossed = torch.tensor([[1.0, 0], [0, 1], [1, 0], [0, 1]])
    torch.testing.assert_close(modularity(pairs, a), torch.tensor(0.5))
    torch.testing.assert_close(modularity(crossed, a), torch.tensor(-0.5))
    torch.testing.assert_close(modularity(torch.ones(4, 1), a), torch.tensor(0.0))
    torch.testing.assert_close(modularity(torch.full((4, 2), 0.5), a), torch.tensor(0.0))
    # the loss: soft assignment to the two directions; at a low temperature it is the hard pairing, -Q = -1/2
    centers = torch.stack([e1, e2])
    torch.testing.assert_close(soft_assignment(patches, centers, 0.01), pairs)
    torch.testing.assert_close(modularity_loss(centers, patches, temperature=0.01), torch.tensor(-0.5))
    # a temperature of 1: assignment softmax(1, 0) = (e/(1+e), 1/(1+e)) per pair; by the same block sums,
    # Q = (p^2 + q^2 - 2pq) * 2 / 4 = (p - q)^2 / 2
    p = math.e / (1 + math.e)
    torch.testing.assert_close(modularity_loss(centers, patches, temperature=1.0),
                               torch.tensor(-((2 * p - 1) ** 2) / 2))
    # negative similarities are cut (relu), the diagonal is zero; a graph without edges has Q = 0
    b = patch_graph(torch.stack([e1, -e1, (e1 + e2) / math.sqrt(2)]))
    torch.testing.assert_close(b, torch.tensor([[0.0, 0, 1 / math.sqrt(2)], [0, 0, 0], [1 / math.sqrt(2), 0, 0]]))
    assert float(modularity(torch.ones(2, 1), patch_graph(torch.stack([e1, -e1])))) == 0.0


def test_a_true_two_community_clustering_beats_random_ones():
    g = torch.Generator().manual_seed(0)
    directions = torch.randn(2, 8, generator=g)
    labels = torch.arange(16) % 2
    patches = directions[labels] + 0.3 * torch.randn(16, 8, generator=g)
    a = patch_graph(patches)
    perfect = modularity(torch.nn.functional.one_hot(labels, 2).float(), a)
    assert perfect > 0.2
    for _ in range(10):
        random_hard = torch.nn.functional.one_hot(torch.randint(0, 2, (16,), generator=g), 2).float()
        random_soft = torch.softmax(torch.randn(16, 2, generator=g), dim=1)
        assert modularity(random_hard, a) < perfect and modularity(random_soft, a) < perfect
    # through the loss: centres at the community means score lower (better) than random centres
    means = torch.stack([patches[labels == k].mean(0) for k in range(2)])
    good = modularity_loss(means, patches)
    assert good < -0.2
    for _ in range(10):
        assert modularity_loss(torch.randn(2, 8, generator=g), patches) > good


# ---------------------------------------------------------------------------------------------- forward


@pytest.mark.parametrize("form", ["published", "newman"])
def test_forward_backward_with_wsi_only_genomics_only_and_both(form):
    model = small(modularity_form=form).train()
    assert model.modalities == {"wsi", "genomics"} and model.genomics_field == "pathways"
    for absent in ((), ("genomics",), ("wsi",)):
        model.zero_grad()
        out = model(patient(seed=1).without(*absent))
        ex = out.extras
        assert out.logits.shape == (1, 4) and out.embedding.shape == (1, 16) and model.embedding_dim == 16
        assert torch.isfinite(out.logits).all() and torch.isfinite(out.embedding).all()
        assert ex["missing"] == list(absent) and ex["present"] == {m: m not in absent for m in ("genomics", "wsi")}
        if "wsi" in absent:  # no patches: no modularity
            assert "aux_loss" not in ex and "modularity" not in ex and "prototype_attention" not in ex
            loss = out.logits.sum()
        else:
            assert ex["prototype_attention"].shape == (1, 5, 12)
            expected = {"prototypes"} if "genomics" in absent else {"prototypes", "genomics"}
            assert set(ex["modularity_terms"]) == expected
            terms = torch.stack(list(ex["modularity_terms"].values()))
            torch.testing.assert_close(ex["modularity"], terms.sum() if form == "published" else terms.mean())
            torch.testing.assert_close(ex["aux_loss"].detach(), 5.0 * ex["modularity"])
            assert abs(float(ex["modularity"])) < 1.0
            loss = out.logits.sum() + ex["aux_loss"]
        loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters()}
        assert all(g is None or torch.isfinite(g).all() for g in grads.values())
        for m in ("wsi", "genomics"):  # the stand-in of an absent modality learns; a present one is unused
            assert (grads[f"missing_{m}.value"] is not None) == (m in absent), (absent, m)
        assert grads["registers"].abs().sum() > 0 and grads["classifier.weight"].abs().sum() > 0
        assert (grads["sig_networks.0.0.0.weight"] is not None) == ("genomics" not in absent)
        assert (grads["path_net.0.weight"] is not None) == ("wsi" not in absent)
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(patient(seed=2)).logits).all()
    with pytest.raises(MissingModalityError, match="model 'umeml'"):
        model(patient().without("wsi", "genomics"))
    with pytest.raises(ModelInputError, match="pathways has 2 vectors"):
        model(PatientInput(wsi=torch.randn(5, 12), pathways=[torch.randn(3), torch.randn(5)]))


def test_models_built_for_one_modality_and_gene_families():
    wsi_only = small(dims=InputDims(wsi=12)).train()
    assert wsi_only.modalities == {"wsi"} and not hasattr(wsi_only, "sig_networks")
    out = wsi_only(patient().without("genomics"))
    assert out.extras["missing"] == [] and set(out.extras["modularity_terms"]) == {"prototypes"}
    assert wsi_only.mm[0].in_features == 16
    omics_only = small(modalities=["genomics"]).train()
    assert omics_only.modalities == {"genomics"} and not hasattr(omics_only, "prototypes")
    out = omics_only(patient())  # the slide is ignored by a model built without wsi
    assert "aux_loss" not in out.extras and out.extras["missing"] == []
    out.logits.sum().backward()
    families = small(gene_groups="families", pooling="mean").train()
    assert families.genomics_field == "families" and len(families.sig_networks) == 3
    out = families(patient())
    assert out.logits.shape == (1, 4) and set(out.extras["modularity_terms"]) == {"prototypes", "genomics"}
    with pytest.raises(ModelInputError, match="reads genomics as `families`"):
        families(PatientInput(wsi=torch.randn(5, 12), pathways=[torch.randn(s) for s in DIMS.pathway_sizes]))


def test_gradient_reaches_the_prototypes_from_the_head_and_from_the_modularity_alone():
    model = small().train()
    out = model(patient(seed=3))
    out.logits.sum().backward()
    assert model.prototypes.grad is not None and model.prototypes.grad.abs().sum() > 0
    model.zero_grad()
    out = model(patient(seed=3))
    out.extras["aux_loss"].backward()
    assert model.prototypes.grad.abs().sum() > 0
    assert model.sig_networks[0][0][0].weight.grad.abs().sum() > 0       # the gene-token variant
    assert model.path_net[0].weight.grad.abs().sum() > 0                 # via the cross-attention, not the graph
    assert model.classifier.weight.grad is None and model.decoder.layers[0].linear1.weight.grad is None
    # a few steps on the modularity alone make the prototype clustering more modular
    opt = torch.optim.Adam([model.prototypes], lr=0.05)
    model.eval()
    x = patient(40, seed=4)
    with torch.no_grad():
        before = float(model(x).extras["modularity_terms"]["prototypes"])
    for _ in range(10):
        opt.zero_grad()
        model(x).extras["aux_loss"].backward()
        opt.step()
    with torch.no_grad():
        after = float(model(x).extras["modularity_terms"]["prototypes"])
    assert after < before, (before, after)


def test_modularity_subsample_of_large_bags():
    model = small(modularity_max_patches=8, modularity_form="newman")
    x = patient(20, seed=5)
    # eval: evenly spaced patches, no random numbers drawn
    model.eval()
    with torch.no_grad():
        state = torch.get_rng_state()
        out = model(x)
        assert torch.equal(state, torch.get_rng_state())
        patches = model.path_net(model.wsi_features(x))
        protos = model.encode_wsi(patches)[0][0, 1:]
        index = torch.tensor([0, 3, 5, 8, 11, 14, 16, 19])
        torch.testing.assert_close(out.extras["modularity_terms"]["prototypes"],
                                   modularity_loss(protos, patches[index], model.temperature))
    # training: a random subset from torch's generator, reproducible under manual_seed
    model.train()
    values = []
    for _ in range(2):
        torch.manual_seed(3)
        values.append(model(x).extras["modularity"])
    assert torch.equal(values[0], values[1])
    # a bag within the limit uses every patch
    big = small(modularity_max_patches=1024, modularity_form="newman").eval()
    x = patient(12, seed=6)
    with torch.no_grad():
        patches = big.path_net(big.wsi_features(x))
        protos = big.encode_wsi(patches)[0][0, 1:]
        torch.testing.assert_close(big(x).extras["modularity_terms"]["prototypes"],
                                   modularity_loss(protos, patches, big.temperature))


def test_ablation_switches_and_auxiliary_heads():
    plain = small(use_registers=False, n_prototypes=3).train()
    assert not hasattr(plain, "registers") and plain.n_registers == 0
    out = plain(patient())
    assert out.extras["prototype_attention"].shape == (1, 3, 12)
    assert small(n_registers=0).n_registers == 0 and small(n_registers=4).registers.shape == (1, 4, 16)
    for switch in (dict(use_modularity=False), dict(gamma=0.0)):
        out = small(**switch).train()(patient())
        assert "aux_loss" not in out.extras and "modularity" not in out.extras
    out = small(gamma=2.0).train()(patient())
    torch.testing.assert_close(out.extras["aux_loss"].detach(), 2.0 * out.extras["modularity"])
    multi = small(TaskSpec.classification(3), aux_tasks={"grade": 3, "subtype": 2, "survival": 4}).train()
    out = multi(patient())
    assert out.logits.shape == (1, 3)
    assert {k: tuple(v.shape) for k, v in out.extras["aux_logits"].items()} == {
        "grade": (1, 3), "subtype": (1, 2), "survival": (1, 4)}
    sum(v.sum() for v in out.extras["aux_logits"].values()).backward()
    assert all(h.weight.grad.abs().sum() > 0 for h in multi.aux_heads)
    assert small()(patient()).extras["aux_logits"] == {}


# ---------------------------------------------------------------------------------------------- building


def test_registry_options_and_build_errors():
    assert "umeml" in list_models() and get_model_class("umeml") is UMEML
    opts = model_options("umeml")
    assert opts["n_prototypes"] == 5 and opts["n_registers"] == 3 and opts["use_registers"] is True
    assert opts["gamma"] == 5.0 and opts["use_modularity"] is True and opts["modularity_max_patches"] == 1024
    assert opts["gene_groups"] == "pathways" and opts["pooling"] == "cls" and opts["aux_tasks"] is None
    assert opts["temperature"] == 0.1 and opts["modalities"] is None
    with pytest.raises(ModelOptionError, match="no option 'n_protos'"):
        build_model("umeml", DIMS, TaskSpec.binary(), n_protos=3)
    bad = [(dict(dim=15), "multiple of heads"), (dict(n_prototypes=0), "n_prototypes must be >= 1"),
           (dict(n_registers=-1), "n_registers must be >= 0"), (dict(decoder_layers=0), "decoder_layers"),
           (dict(pooling="max"), "pooling must be"), (dict(gamma=-1.0), "gamma"),
           (dict(temperature=0.0), "temperature must be > 0"), (dict(snn_hidden=(16, 8)), "snn_hidden must end"),
           (dict(modularity_max_patches=1), "modularity_max_patches"), (dict(dropout=1.0), "dropout"),
           (dict(aux_tasks={"grade": 0}), r"aux_tasks\['grade'\]"), (dict(gene_groups="genes"), "gene_groups"),
           (dict(modalities=["report"]), "reads only wsi and genomics")]
    for options, message in bad:
        with pytest.raises(ModelConfigError, match=message):
            small(**options)
    with pytest.raises(ModelConfigError, match="needs wsi or genomics"):
        build_model("umeml", InputDims(genes=10), TaskSpec.binary())
    with pytest.raises(ModelConfigError, match=r"InputDims.family_sizes is None"):
        build_model("umeml", InputDims(wsi=12, pathway_sizes=(3,)), TaskSpec.binary(), gene_groups="families",
                    modalities=["wsi", "genomics"])
    # the default modalities follow the dims and the gene groups
    assert small(dims=InputDims(wsi=12, pathway_sizes=(3, 4)), gene_groups="families").modalities == {"wsi"}
    # at the published sizes it builds (meta device: no memory)
    with torch.device("meta"):
        model = build_model("umeml", InputDims(wsi=1024, pathway_sizes=(50,) * 331), TaskSpec.survival(4))
    assert model.embedding_dim == 256 and model.prototypes.shape == (1, 5, 256)


def test_deterministic_under_manual_seed():
    outs = []
    for _ in range(2):
        model = small(seed=7, modularity_max_patches=6).train()
        torch.manual_seed(1)
        out = model(patient(15, seed=8))
        outs.append((out.logits.detach(), out.extras["aux_loss"].detach(), out.embedding.detach()))
    for a, b in zip(*outs):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------- learning


def test_survival_nll_decreases_when_risk_follows_a_patch_feature_shift():
    g = torch.Generator().manual_seed(0)
    n_patients, n_bins = 40, 4
    shift = torch.rand(n_patients, generator=g) * 2 - 1                       # risk score in [-1, 1]
    direction = torch.zeros(DIMS.wsi)
    direction[:3] = 1.0
    inputs = [PatientInput(wsi=torch.randn(8, DIMS.wsi, generator=g) + 1.5 * s * direction) for s in shift]
    bins = torch.bucketize(-shift, torch.tensor([-0.5, 0.0, 0.5]))           # high risk -> early bin
    events = (torch.rand(n_patients, generator=g) < 0.8).float()
    model = small(TaskSpec.survival(n_bins), dims=InputDims(wsi=DIMS.wsi), dropout=0.0, attn_dropout=0.0)

    def nll() -> float:
        model.eval()
        with torch.no_grad():
            logits = torch.cat([model(x).logits for x in inputs])
        return float(nll_survival_loss(logits, bins, events))

    before = nll()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    order = torch.randperm(n_patients, generator=g)
    model.train()
    for step in range(30):
        batch = order[(step * 10) % n_patients:(step * 10) % n_patients + 10]
        outs = [model(inputs[i]) for i in batch]
        loss = nll_survival_loss(torch.cat([o.logits for o in outs]), bins[batch], events[batch])
        loss = loss + torch.stack([o.extras["aux_loss"] for o in outs]).mean()   # as the harness adds it
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = nll()
    assert after < 0.85 * before, (before, after)


def _reference_modularity(centers: torch.Tensor, patches: torch.Tensor, temperature: float) -> torch.Tensor:
    """The reference code's formula written out with loops over patches and centres (per-centre cosine)."""
    x = torch.nn.functional.normalize(patches, dim=-1)
    c = torch.nn.functional.normalize(centers, dim=-1)
    n = x.shape[0]
    a = torch.clamp(x @ x.T, min=0) * (1 - torch.eye(n))
    d, two_m = a.sum(1), a.sum()
    assign = torch.clamp(x @ c.T, min=0)
    q = 0.0
    for i in range(n):
        for j in range(n):
            delta = max(torch.tanh(assign[i, k] * assign[j, k] / temperature) for k in range(c.shape[0]))
            q = q + (a[i, j] - d[i] * d[j] / two_m) * delta
    return -q / two_m


def test_the_published_modularity_is_the_reference_codes_formula():
    g = torch.Generator().manual_seed(0)
    patches, centers = torch.randn(9, 6, generator=g), torch.randn(4, 6, generator=g)
    torch.testing.assert_close(published_modularity_loss(centers, patches, 0.1),
                               _reference_modularity(centers, patches, 0.1), rtol=1e-5, atol=1e-6)
    # two clean clusters with a centre on each score lower (more modular) than centres between them
    blobs = torch.cat([torch.randn(10, 6, generator=g) * 0.05 + 1.0, torch.randn(10, 6, generator=g) * 0.05 - 1.0])
    blobs[:, 3:] = torch.randn(20, 3, generator=g) * 0.05
    good = torch.stack([blobs[:10].mean(0), blobs[10:].mean(0)])
    assert published_modularity_loss(good, blobs) < published_modularity_loss(torch.randn(2, 6, generator=g), blobs)
    assert float(published_modularity_loss(centers, torch.zeros(5, 6))) == 0.0  # no edges


def test_the_published_form_uses_the_cross_attended_prototypes_and_the_genomic_cls_and_sums_the_terms():
    model = small().train()
    x = patient(seed=7)
    torch.manual_seed(1)
    out = model(x)
    model.eval()
    with torch.no_grad():
        patches = model.path_net(model.wsi_features(x))
        cross, _ = model.cross_attend(patches)
        genomic = model.encode_genomics(x)[0]
        expected = published_modularity_loss(cross[0], patches, model.temperature)
        expected_g = published_modularity_loss(genomic, patches, model.temperature)
    assert genomic.shape[0] == 1 + model.n_groups  # the CLS is a centre too
    assert out.extras["modularity_terms"].keys() == {"prototypes", "genomics"}
    torch.testing.assert_close(out.extras["aux_loss"].detach(), 5.0 * (out.extras["modularity_terms"]["prototypes"]
                                                                      + out.extras["modularity_terms"]["genomics"]))
    model.eval()
    with torch.no_grad():
        again = model(x).extras["modularity_terms"]
    torch.testing.assert_close(again["prototypes"], expected)
    torch.testing.assert_close(again["genomics"], expected_g)


def test_a_genomics_only_model_with_registers_pools_the_genomic_token():
    dims = InputDims(pathway_sizes=DIMS.pathway_sizes)
    model = small(dims=dims, n_registers=3).eval()
    assert model.modalities == {"genomics"} and model.n_registers == 3
    x = patient(seed=2).without("wsi")
    with torch.no_grad():
        out = model(x)
        sequence = torch.cat([model.registers, model.encode_genomics(x)], dim=1)
        decoded = model.decoder(sequence)[0]
        torch.testing.assert_close(out.embedding, model.mm(decoded[3].unsqueeze(0)))  # the genomic CLS, not a register
        mean = small(dims=dims, n_registers=3, pooling="mean").eval()
        decoded = mean.decoder(torch.cat([mean.registers, mean.encode_genomics(x)], dim=1))[0]
        torch.testing.assert_close(mean(x).embedding, mean.mm(decoded[3:].mean(0, keepdim=True)))
