"""MICE (multimodal integration via collaborative experts): building and options, forward and backward with
every modality subset (absent modalities synthesised from the cancer type), the cancer-type specialized
expert, the top-k router and its load-balancing loss against a hand computation, frozen encoders, the
pretraining objective on a pan-cancer batch (terms, survival without targets, a decreasing loss) and
inheriting the pretrained weights under another head.

Dims of 12-20 and bags of 10 patches keep the file to a few seconds on two CPU cores."""

from __future__ import annotations

import itertools

import pytest
import torch

from pathmm_pipeline.models import (
    MODALITIES,
    InputDims,
    MissingModalityError,
    ModelConfigError,
    ModelInputError,
    ModelOptionError,
    PatientInput,
    PretrainBatch,
    TaskSpec,
    build_model,
    get_model_class,
    list_models,
    model_options,
)
from pathmm_pipeline.models.mice import MICE  # registers "mice"

DIMS = InputDims(wsi=16, genes=20, report=12, n_cancer_types=3)
SMALL = dict(dim=16, attn_dim=8, expert_hidden=16, fusion_layers=1, fusion_heads=4)

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def patient(n: int = 10, seed: int = 0, cancer_type: int = 0) -> PatientInput:
    g = torch.Generator().manual_seed(seed)
    return PatientInput(wsi=torch.randn(n, DIMS.wsi, generator=g),
                        wsi_coords=torch.randint(0, 10_000, (n, 2), generator=g),
                        genes=torch.randn(DIMS.genes, generator=g),
                        report=torch.randn(DIMS.report, generator=g), cancer_type=cancer_type)


def small(task: TaskSpec = TaskSpec.survival(4), seed: int = 0, dims: InputDims = DIMS, **extra) -> MICE:
    torch.manual_seed(seed)
    model = build_model("mice", dims, task, **{**SMALL, **extra})
    assert isinstance(model, MICE)
    return model


def subsets() -> list[tuple[str, ...]]:
    return [c for r in range(1, 4) for c in itertools.combinations(MODALITIES, r)]


def pan_cancer_batch(bins: list[int] | None = None, events: list[float] | None = None) -> PretrainBatch:
    """Six patients of two cancer types with mixed modality subsets."""
    keep = [("wsi", "genomics", "report"), ("wsi", "genomics"), ("genomics", "report"),
            ("wsi", "genomics", "report"), ("wsi", "report"), ("genomics",)]
    types = [0, 0, 0, 1, 1, 1]
    inputs = [patient(8 + i, seed=10 + i, cancer_type=t).without(*[m for m in MODALITIES if m not in k])
              for i, (k, t) in enumerate(zip(keep, types))]
    return PretrainBatch(inputs, torch.tensor(types),
                         None if bins is None else torch.tensor(bins),
                         None if events is None else torch.tensor(events, dtype=torch.float32))


# ---------------------------------------------------------------------------------------------- building


def test_registry_options_and_build_errors():
    assert "mice" in list_models() and get_model_class("mice") is MICE and MICE.pretrainable
    opts = model_options("mice")
    assert opts["dim"] == 128 and opts["n_overlap"] == 4 and opts["top_k"] == 2 and opts["alpha"] == 2.0
    assert opts["moe_loss_weight"] == 0.01 and opts["w_synthesis"] == 1.0 and opts["pretrain_bins"] == 4
    assert opts["freeze_encoders"] is False
    with pytest.raises(ModelOptionError, match="no option 'n_overlaps'"):
        build_model("mice", DIMS, TaskSpec.binary(), n_overlaps=3)
    with pytest.raises(ModelConfigError, match="top_k <= n_overlap"):
        small(n_overlap=2, top_k=3)
    with pytest.raises(ModelConfigError, match="multiple of fusion_heads"):
        small(dim=18)
    with pytest.raises(ModelConfigError, match="at least one of wsi"):
        build_model("mice", InputDims(n_cancer_types=2), TaskSpec.binary())
    # built modalities follow the dims: no report dims, no report encoder
    model = small(dims=InputDims(wsi=16, genes=20, n_cancer_types=3)).eval()
    assert model.modalities == {"wsi", "genomics"} and set(model.encoders) == {"wsi", "genomics"}
    assert model.embedding_dim == 16 and model.classifier.out_features == 4
    with pytest.raises(MissingModalityError):
        model(patient().without("wsi", "genomics"))
    with pytest.raises(ModelInputError, match="n_cancer_types=3"):
        small().eval()(patient(cancer_type=3))


# ---------------------------------------------------------------------------------------------- forward


def test_every_modality_subset_synthesises_the_absent_ones():
    model = small()
    for keep in subsets():
        absent = [m for m in MODALITIES if m not in keep]
        model.train()
        model.zero_grad()
        out = model(patient(seed=1, cancer_type=1).without(*absent))
        assert out.logits.shape == (1, 4) and out.embedding.shape == (1, 16)
        assert torch.isfinite(out.logits).all() and torch.isfinite(out.extras["aux_loss"])
        assert out.extras["missing"] == absent
        assert out.extras["present"] == {m: m in keep for m in MODALITIES}
        (out.logits.sum() + out.extras["aux_loss"]).backward()
        grads = {n: p.grad for n, p in model.named_parameters()}
        assert all(g is None or torch.isfinite(g).all() for g in grads.values())
        for m in MODALITIES:
            synth = [g for n, g in grads.items() if n.startswith(f"synthesizers.{m}.")]
            # the stand-in of an absent modality is used; a present one is trained by the synthesis MSE
            assert synth and all(g is not None and g.abs().sum() > 0 for g in synth), (keep, m)
            encoder = [g for n, g in grads.items() if n.startswith(f"encoders.{m}.")]
            assert all((g is not None) == (m in keep) for g in encoder), (keep, m)
        assert grads["cancer_embedding.weight"][1].abs().sum() > 0
        assert grads["cancer_embedding.weight"][[0, 2]].abs().sum() == 0
        # in eval, the auxiliary loss is only the weighted load balance
        model.eval()
        with torch.no_grad():
            out = model(patient(seed=1, cancer_type=1).without(*absent))
        assert out.extras["missing"] == absent
        assert torch.isfinite(out.logits).all()


def test_specialized_expert_follows_the_cancer_type():
    model = small().eval()
    x = patient(seed=2)
    with torch.no_grad():
        out0 = model(x).logits
        out1 = model(PatientInput(**{**x.__dict__, "cancer_type": 1})).logits
    assert not torch.allclose(out0, out1)
    # only the patient's own specialized expert learns
    model.train()
    out = model(x)
    (out.logits.sum() + out.extras["aux_loss"]).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.specialized[0].parameters())
    assert all(p.grad is None for t in (1, 2) for p in model.specialized[t].parameters())
    # with type 1's expert made type 0's and a router blind to the type, the types agree (all modalities
    # present: the stand-ins are unused), so the specialized expert is where the type acts
    model.eval()
    width = len(model.order) * model.dim
    with torch.no_grad():
        model.specialized[1].load_state_dict(model.specialized[0].state_dict())
        model.overlapping.router.weight[:, width:] = 0.0
        same0 = model(x).logits
        same1 = model(PatientInput(**{**x.__dict__, "cancer_type": 1})).logits
    torch.testing.assert_close(same0, same1)


def test_router_picks_top_k_and_load_balance_matches_a_hand_computation():
    model = small(n_overlap=4, top_k=2, experts="mlp")
    router = model.overlapping.router
    width = len(model.order) * model.dim
    logits_by_type = {0: torch.tensor([3.0, 1.0, 2.0, 0.0]), 1: torch.tensor([3.0, 0.0, 0.0, 2.0])}
    with torch.no_grad():
        router.weight.zero_()
        model.cancer_embedding.weight.zero_()
        for t, logits in logits_by_type.items():  # type t's embedding is the unit vector e_t of the context
            model.cancer_embedding.weight[t, t] = 1.0
            router.weight[:, width + t] = logits
    probs = {t: torch.softmax(v, 0) for t, v in logits_by_type.items()}

    # one patient of type 0 (eval: no router noise): experts 0 and 2
    model.eval()
    out = model(patient(seed=3, cancer_type=0))
    assert sorted(out.extras["router_indices"][0].tolist()) == [0, 2]
    torch.testing.assert_close(out.extras["router_load"], torch.tensor([0.5, 0.0, 0.5, 0.0]))
    expected = 4 * (0.5 * probs[0][0] + 0.5 * probs[0][2])
    torch.testing.assert_close(out.extras["aux_loss"], model.moe_loss_weight * expected)
    entropy = -(probs[0] * probs[0].log()).sum()
    torch.testing.assert_close(out.extras["router_entropy"], entropy)

    # two patients, types 0 and 1: slots {0, 2} and {0, 3}; gates are the softmax of the chosen logits
    z = torch.randn(2, width)
    types = torch.tensor([0, 1])
    y, stats = model.overlapping(z, model.cancer_embedding(types))
    assert [sorted(r) for r in stats.indices.tolist()] == [[0, 2], [0, 3]]
    fraction = torch.tensor([2.0, 0.0, 1.0, 1.0]) / 4
    mean_p = (probs[0] + probs[1]) / 2
    torch.testing.assert_close(stats.load, fraction)
    torch.testing.assert_close(stats.load_balance, 4 * (fraction * mean_p).sum())
    experts = model.overlapping.experts
    g = torch.softmax(torch.tensor([3.0, 2.0]), 0)  # both types' chosen logits are 3 and 2
    by_hand = torch.stack([g[0] * experts[0](z[0]) + g[1] * experts[2](z[0]),
                           g[0] * experts[0](z[1]) + g[1] * experts[3](z[1])])
    torch.testing.assert_close(y, by_hand)

    # training (noisy routing): still exactly k distinct experts per patient, and only those learn
    model.train()
    model.zero_grad()
    out = model(patient(seed=4, cancer_type=1))
    chosen = out.extras["router_indices"][0].tolist()
    assert len(chosen) == 2 and len(set(chosen)) == 2
    assert out.extras["router_load"].sum() == 1 and (out.extras["router_load"] > 0).sum() == 2
    out.logits.sum().backward()
    for e, expert in enumerate(experts):
        assert all((p.grad is not None) == (e in chosen) for p in expert.parameters()), (e, chosen)


@pytest.mark.parametrize("experts", ["transformer", "mlp"])
def test_freeze_encoders_leaves_encoder_grads_none(experts):
    model = small(freeze_encoders=True, experts=experts).train()
    assert all(not p.requires_grad for p in model.encoders.parameters())
    out = model(patient(seed=5))
    (out.logits.sum() + out.extras["aux_loss"]).backward()
    assert all(p.grad is None for p in model.encoders.parameters())
    consensual = next(model.consensual.parameters())
    assert model.classifier.weight.grad is not None and consensual.grad is not None
    assert all(p.requires_grad for p in small().encoders.parameters())


def test_deterministic_under_manual_seed():
    outs = []
    for _ in range(2):
        model = small(seed=7).train()
        torch.manual_seed(1)
        out = model(patient(seed=6, cancer_type=2).without("report"))
        outs.append((out.logits.detach(), out.extras["aux_loss"].detach(), out.extras["router_indices"]))
    for a, b in zip(*outs):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------- pretraining


def test_pretraining_loss_terms_on_a_pan_cancer_batch():
    model = small().train()
    batch = pan_cancer_batch(bins=[0, 3, -1, 1, 2, 0], events=[1, 0, 1, -1, 1, 0])
    terms = model.pretraining_loss(batch)
    assert set(terms) == {"survival", "contrastive", "synthesis", "moe", "loss"}
    assert all(t.dim() == 0 and torch.isfinite(t) for t in terms.values())
    assert terms["survival"] > 0 and terms["contrastive"] > 0 and terms["synthesis"] > 0 and terms["moe"] > 0
    total = terms["survival"] + terms["contrastive"] + terms["synthesis"] + terms["moe"]
    torch.testing.assert_close(terms["loss"], total)
    terms["loss"].backward()
    assert model.pretrain_head.weight.grad is not None and model.logit_scale.grad is not None
    assert model.classifier.weight.grad is None
    assert all(next(model.specialized[t].parameters()).grad is not None for t in (0, 1))
    assert next(model.specialized[2].parameters()).grad is None
    # no known target: the survival term is zero (unknown bins, unknown events, or none given)
    for bins, events in (([-1] * 6, [1.0] * 6), ([0] * 6, [-1.0] * 6), (None, None)):
        terms = model.pretraining_loss(pan_cancer_batch(bins, events))
        assert float(terms["survival"].detach()) == 0.0 and torch.isfinite(terms["loss"])
    with pytest.raises(ModelInputError, match="pretrain_bins=4"):
        model.pretraining_loss(pan_cancer_batch([4, 0, 0, 0, 0, 0], [1.0] * 6))
    # one modality only: no pair to contrast
    one = small(dims=InputDims(genes=20, n_cancer_types=3)).train()
    terms = one.pretraining_loss(PretrainBatch([patient(seed=i).without("wsi", "report") for i in range(3)],
                                               torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2]),
                                               torch.tensor([1.0, 1.0, 0.0])))
    assert float(terms["contrastive"].detach()) == 0.0 and terms["survival"] > 0


def test_pretraining_loss_decreases_on_a_fixed_batch():
    model = small(dropout=0.0)
    batch = pan_cancer_batch(bins=[0, 3, 2, 1, 2, 0], events=[1, 0, 1, 1, 1, 0])
    model.eval()
    with torch.no_grad():
        before = float(model.pretraining_loss(batch)["loss"])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(30):
        loss = model.pretraining_loss(batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        after = float(model.pretraining_loss(batch)["loss"])
    assert after < 0.7 * before, (before, after)


def test_pretrained_state_loads_into_a_model_with_another_head():
    pretrained = small(seed=1)
    state = pretrained.pretrained_state()
    assert not any(k.startswith("classifier.") for k in state) and "pretrain_head.weight" in state
    fresh = small(TaskSpec.classification(3), seed=2)
    report = fresh.load_pretrained(state)
    assert report["missing"] == ["classifier.bias", "classifier.weight"] and report["skipped"] == []
    assert sorted(report["loaded"]) == sorted(state)
    own = fresh.state_dict()
    assert all(torch.equal(own[k], v) for k, v in state.items())


def test_the_experts_are_transformer_blocks_over_the_modality_tokens():
    from pathmm_pipeline.models.mice import OverlappingTokenExperts, TokenExpert

    model = small().eval()
    assert isinstance(model.consensual, TokenExpert) and isinstance(model.overlapping, OverlappingTokenExperts)
    assert all(isinstance(e, TokenExpert) for e in model.specialized)
    tokens = torch.randn(2, len(model.order), model.dim)
    with torch.no_grad():
        base = model.consensual(tokens)
        # token-level interaction: the output is not a sum of per-token functions (attention mixes the tokens)
        swapped = tokens.clone()
        swapped[0, 1] = tokens[1, 1]
        mixed = model.consensual(swapped)
        alone = model.consensual(tokens[:, :1])
    assert base.shape == (2, model.dim)
    assert not torch.allclose(mixed[0], base[0]) and torch.allclose(mixed[1], base[1])
    assert alone.shape == (2, model.dim)
    out, stats = model.overlapping(tokens, model.cancer_embedding(torch.tensor([0, 1])))
    assert out.shape == (2, model.dim) and stats.indices.shape == (2, model.overlapping.top_k)


@pytest.mark.parametrize("expert_set", ["consensual", "specialized", "routed"])
def test_expert_ablations_feed_the_fusion_only_their_experts(expert_set):
    model = small(expert_set=expert_set).train()
    out = model(patient(seed=3))
    out.logits.sum().backward()
    used = {"consensual": model.consensual, "specialized": model.specialized[int(patient(seed=3).cancer_type)],
            "routed": model.overlapping}
    for name, module in used.items():
        grads = [p.grad for p in module.parameters() if p.requires_grad]
        if name == "routed":
            grads = [p.grad for e in module.experts for p in e.parameters()]
        learns = any(g is not None and g.abs().sum() > 0 for g in grads)
        assert learns == (name == expert_set), (expert_set, name)
    with pytest.raises(ModelConfigError, match="expert_set"):
        small(expert_set="none")


def test_without_synthesis_an_absent_modality_is_a_learned_token_and_nothing_is_synthesised():
    model = small(synthesis=False).train()
    x = patient(seed=4).without("genomics")
    out = model(x)
    assert not any(n.startswith("synthesizers") and p.grad is not None for n, p in model.named_parameters())
    (out.logits.sum() + out.extras["aux_loss"]).backward()
    assert model.missing_tokens.grad is not None and model.missing_tokens.grad.abs().sum() > 0
    assert all(p.grad is None for n, p in model.named_parameters() if n.startswith("synthesizers"))
    terms = model.pretraining_loss(pan_cancer_batch(bins=[0, 3, -1, 1, 2, 0], events=[1, 0, 1, -1, 1, 0]))
    assert float(terms["synthesis"].detach()) == 0.0


def test_the_chunked_selective_scan_equals_the_naive_recurrence():
    from pathmm_pipeline.models.mamba import selective_scan, selective_scan_reference

    g = torch.Generator().manual_seed(0)
    n, e, s = 37, 6, 4
    x, delta = torch.randn(n, e, generator=g), torch.rand(n, e, generator=g) * 2
    a, d = -torch.rand(e, s, generator=g) * 5, torch.randn(e, generator=g)
    b, c = torch.randn(n, s, generator=g), torch.randn(n, s, generator=g)
    reference = selective_scan_reference(x, delta, a, b, c, d)
    for chunk in (1, 8, 16, 64):
        torch.testing.assert_close(selective_scan(x, delta, a, b, c, d, chunk), reference, rtol=1e-4, atol=1e-5)


def test_mice_with_the_mamba_slide_encoder_trains_and_reads_tile_order():
    from pathmm_pipeline.models.mamba import MambaMIL

    model = small(slide_encoder="mamba", mamba_layers=1, dropout=0.0).train()
    assert isinstance(model.encoders["wsi"], MambaMIL)
    x = patient(seed=2)
    out = model(x)
    assert out.logits.shape == (1, 4) and out.extras["attention"].shape == (1, 10)
    (out.logits.sum() + out.extras["aux_loss"]).backward()
    assert model.encoders["wsi"].blocks[0].a_log.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():  # a state-space model reads the tiles as a sequence: their order matters
        flipped = PatientInput(wsi=x.wsi.flip(0), genes=x.genes, report=x.report, cancer_type=x.cancer_type)
        assert not torch.allclose(model(x).embedding, model(flipped).embedding)
    with pytest.raises(ModelConfigError, match="slide_encoder"):
        small(slide_encoder="lstm")
