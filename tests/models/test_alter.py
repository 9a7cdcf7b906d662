"""ALTER: forward and backward with every subset of modalities in each fusion mode, region and pathway pooling
against hand-computed means, FAVOR+ against exact softmax attention, the "moe_only" ablation's isolation of
the modalities, the pretraining objective (keys, mixed subsets, a decreasing loss, reproducibility), loading
pretrained weights under a new head, the registry and clear build errors.

Dims of 16, bags of a dozen patches and a few tokens per modality keep the file to about ten seconds on two
busy CPU cores (most of it the 30 pretraining steps)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from pathmm_pipeline.models import (
    MODALITIES,
    InputDims,
    ModelConfigError,
    ModelInputError,
    PatientInput,
    PretrainBatch,
    TaskSpec,
    build_model,
    list_models,
    model_options,
)
from pathmm_pipeline.models.alter import ALTER, FUSION_MODES, grid_positions, pathway_pool, region_pool
from pathmm_pipeline.models.objectives import mask_tokens
from pathmm_pipeline.models.performer import favor_attention

pytestmark = pytest.mark.usefixtures("torch_one_thread")

MEMBERS = ((0, 1, 2), (3, 4), (5, 6, 7, 8, 9), (1, 9), (10, 11))
DIMS = InputDims(wsi=12, genes=12, report=8, pathway_members=MEMBERS)
SMALL = dict(dim=16, heads=2, n_experts=3, n_features=16, ff_dim=32)
SUBSETS = [frozenset(c) for r in (1, 2, 3) for c in itertools.combinations(MODALITIES, r)]


def patient(n: int = 12, seed: int = 0, tokens: int = 5) -> PatientInput:
    g = torch.Generator().manual_seed(seed)
    cells = torch.randperm(25, generator=g)[:n]                   # n distinct cells of a 5 x 5 grid
    coords = torch.stack([cells % 5, cells // 5], dim=1) * 256 + 1000
    return PatientInput(wsi=torch.randn(n, 12, generator=g), wsi_coords=coords,
                        genes=torch.randn(12, generator=g), report=torch.randn(8, generator=g),
                        report_tokens=torch.randn(tokens, 8, generator=g))


def small(task: TaskSpec = TaskSpec.survival(4), dims: InputDims = DIMS, **extra) -> ALTER:
    torch.manual_seed(0)
    return build_model("alter", dims, task, **{**SMALL, **extra})  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------- forward / backward


@pytest.mark.parametrize("mode", FUSION_MODES)
def test_forward_backward_every_subset_of_modalities(mode):
    model = small(fusion_mode=mode).train()
    for subset in SUBSETS:
        model.zero_grad()
        out = model(patient(seed=1).without(*(m for m in MODALITIES if m not in subset)))
        assert out.logits.shape == (1, 4) and out.embedding.shape == (1, 16) and model.embedding_dim == 16
        assert torch.isfinite(out.logits).all() and torch.isfinite(out.embedding).all(), (mode, subset)
        ex = out.extras
        assert ex["missing"] == [] and {m for m, p in ex["present"].items() if p} == subset
        assert set(ex["cls"]) == subset and all(c.shape == (1, 16) for c in ex["cls"].values())
        if mode == "shared_only":
            assert ex["aux_loss"] is None and ex["router_entropy"] is None
        else:  # zero-initialised routers: uniform probabilities, so the load-balance loss is exactly 1
            assert ex["aux_loss"].item() == pytest.approx(0.01, rel=1e-5) and ex["router_entropy"] > 0
        loss = out.logits.sum() + (ex["aux_loss"] if ex["aux_loss"] is not None else 0)
        loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters()}
        assert all(g is None or torch.isfinite(g).all() for g in grads.values())
        assert grads["classifier.weight"].abs().sum() > 0
        for m in MODALITIES:
            enc = [g for n, g in grads.items() if n.startswith(f"encoders.{m}.") or n == f"cls_tokens.{m}"]
            if m in subset:
                assert any(g is not None and g.abs().sum() > 0 for g in enc), (mode, subset, m)
            else:
                assert all(g is None for g in enc), (mode, subset, m)
        # pretraining-only parameters take no part in the forward pass
        assert all(grads[n] is None for n in grads if n.startswith("decoders.") or n in ("mask_token", "logit_scale"))


def test_modalities_follow_the_dims_and_report_forms():
    model = small(dims=InputDims(wsi=12, genes=12, pathway_members=MEMBERS)).eval()
    assert model.modalities == {"wsi", "genomics"} and not hasattr(model.encoders, "report")
    out = model(patient())                                   # the patient's report is ignored
    assert set(out.extras["cls"]) == {"wsi", "genomics"}
    full = small().eval()
    x = patient(tokens=5)
    assert full(x).extras["n_tokens"]["report"] == 5        # report_tokens when given
    assert full(PatientInput(report=x.report)).extras["n_tokens"] == {"report": 1}
    assert full(x).extras["n_tokens"]["genomics"] == len(MEMBERS)
    batched = PatientInput(wsi=x.wsi.unsqueeze(0), wsi_coords=x.wsi_coords.unsqueeze(0), genes=x.genes.unsqueeze(0),
                           report_tokens=x.report_tokens.unsqueeze(0))
    with torch.no_grad():
        assert torch.allclose(full(batched).logits, full(x).logits, atol=1e-6)


# ---------------------------------------------------------------------------------------------- pooling


def test_region_pooling_on_a_hand_computed_grid():
    # 8 tiles of 256 px on a 4 (columns) x 2 (rows) grid, given in a shuffled order; token value = row * 4 + col
    order = [5, 0, 7, 2, 4, 1, 6, 3]
    coords = torch.tensor([[(i % 4) * 256 + 512, (i // 4) * 256 + 768] for i in order])
    tokens = torch.tensor([[float(i), 10.0 * i] for i in order])
    cells = grid_positions(coords, 8)
    assert cells.tolist() == [[i // 4, i % 4] for i in order]
    regions, region_of, side = region_pool(tokens, cells, 2)
    # region 0: columns 0-1 = tiles 0, 1, 4, 5; region 1: columns 2-3 = tiles 2, 3, 6, 7
    assert side == 2 and regions.tolist() == [[2.5, 25.0], [4.5, 45.0]]
    assert region_of.tolist() == [0 if i % 4 < 2 else 1 for i in order]
    # region side 1: one region per tile, in raster order
    regions, _, side = region_pool(tokens, cells, 1)
    assert side == 1 and regions[:, 0].tolist() == [float(i) for i in range(8)]
    # 8 regions > max_regions = 3: the side doubles to 2 (2 regions), then stops
    regions, _, side = region_pool(tokens, cells, 1, max_regions=3)
    assert side == 2 and regions.tolist() == [[2.5, 25.0], [4.5, 45.0]]
    # a sparse layout: empty regions give no token, partial regions average what they have
    sparse = grid_positions(torch.tensor([[0, 0], [512, 0], [1536, 512], [1792, 512]]), 4)
    assert sparse.tolist() == [[0, 0], [0, 2], [2, 6], [2, 7]]   # grid step 256: the smallest difference
    regions, _, _ = region_pool(torch.tensor([[1.0], [2.0], [3.0], [5.0]]), sparse, 2)
    assert regions.flatten().tolist() == [1.0, 2.0, 4.0]


def test_grid_without_coordinates_and_bad_coordinates():
    assert grid_positions(None, 5).tolist() == [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1]]  # 3 columns
    assert grid_positions(torch.tensor([[7, 3]]), 1).tolist() == [[0, 0]]
    with pytest.raises(ModelInputError, match=r"wsi_coords has shape \(4, 2\), expected \(5, 2\)"):
        grid_positions(torch.zeros(4, 2), 5)
    model = small(region_size=2).eval()
    x = patient(12)
    # 12 distinct cells of a 5 x 5 grid: as many regions as the 3 x 3 regions of side 2 that hold a tile
    expected = len({(int(c[1]) // 512, int(c[0]) // 512) for c in x.wsi_coords - 1000})
    assert model(x).extras["n_tokens"]["wsi"] == expected and model(x).extras["region_size"] == 2
    no_coords = PatientInput(wsi=x.wsi)                          # a 4-column raster: 3 rows -> 2 x 2 regions
    assert model(no_coords).extras["n_tokens"]["wsi"] == 4
    capped = small(region_size=1, max_regions=3).eval()
    out = capped(no_coords)
    assert out.extras["region_size"] == 4 and out.extras["n_tokens"]["wsi"] == 1
    with pytest.raises(ModelInputError, match="wsi_coords has shape"):
        model(PatientInput(wsi=x.wsi, wsi_coords=x.wsi_coords[:5]))


def test_pathway_pooling_hand_computed_means():
    tokens = torch.tensor([[float(g), -float(g) ** 2] for g in range(12)])
    pooled = pathway_pool(tokens, MEMBERS)
    expected = [[1.0, -(0 + 1 + 4) / 3], [3.5, -(9 + 16) / 2], [7.0, -(25 + 36 + 49 + 64 + 81) / 5],
                [5.0, -(1 + 81) / 2], [10.5, -(100 + 121) / 2]]
    assert torch.allclose(pooled, torch.tensor(expected))
    enc = small().eval().encoders["genomics"]
    with torch.no_grad():
        genes = torch.randn(12)
        h = enc.gene_tokens(genes).unsqueeze(0)
        for layer in enc.layers:
            h = layer(h)
        assert torch.allclose(enc(genes), pathway_pool(enc.norm(h)[0], MEMBERS), atol=1e-6)


# ---------------------------------------------------------------------------------------------- Performer


def test_favor_attention_approximates_softmax_attention():
    from pathmm_pipeline.models.performer import orthogonal_random_features

    g = torch.Generator().manual_seed(0)
    n, d = 16, 8
    q, k = 0.5 * torch.randn(2, n, d, generator=g), 0.5 * torch.randn(2, n, d, generator=g)
    v = torch.randn(2, n, 4, generator=g)
    exact = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1) @ v
    approx = favor_attention(q, k, v, orthogonal_random_features(2048, d, generator=g))
    corr = torch.corrcoef(torch.stack([exact.flatten(), approx.flatten()]))[0, 1]
    assert corr > 0.95 and float((approx - exact).norm() / exact.norm()) < 0.15
    # few features and large logits: still finite (the stabilising shift), rows are convex combinations of v
    big = favor_attention(8 * q, 8 * k, v, orthogonal_random_features(16, d, generator=g))
    assert big.shape == v.shape and torch.isfinite(big).all()
    assert (big <= v.amax(dim=1, keepdim=True) + 1e-4).all() and (big >= v.amin(dim=1, keepdim=True) - 1e-4).all()


# ---------------------------------------------------------------------------------------------- fusion modes


def test_moe_only_has_no_cross_modal_attention():
    x = patient(seed=2)
    y = PatientInput(**{**x.__dict__, "genes": x.genes + 3.0})
    for mode, isolated in (("moe_only", True), ("both", False)):
        model = small(fusion_mode=mode).eval()
        with torch.no_grad():
            a, b = model(x).extras["cls"], model(y).extras["cls"]
        assert not torch.allclose(a["genomics"], b["genomics"])
        for m in ("wsi", "report"):
            assert torch.allclose(a[m], b[m], atol=1e-6) == isolated, (mode, m)
    shared = small(fusion_mode="shared_only")
    assert all(block.moe is None and block.ffn is not None for block in shared.blocks)
    assert all(set(block.moe) == set(MODALITIES) for block in small().blocks)


# ---------------------------------------------------------------------------------------------- pretraining


def mixed_batch() -> PretrainBatch:
    full = [patient(10, seed=s) for s in range(4)]
    inputs = [full[0], full[1].without("report"), full[2].without("genomics"), full[3].without("wsi", "genomics"),
              patient(8, seed=9).without("report"), patient(9, seed=7)]
    return PretrainBatch(inputs, cancer_type=torch.tensor([0, 1, 0, 1, 1, 0]))


@pytest.mark.parametrize("masking", ["inputs", "tokens"])
def test_pretraining_loss_terms_and_reproducibility(masking):
    model = small(dropout=0.0, masking=masking).train()
    batch = mixed_batch()
    torch.manual_seed(3)
    terms = model.pretraining_loss(batch)
    assert set(terms) == {"masked", "contrastive", "triplet", "moe", "loss"}
    assert all(t.dim() == 0 and torch.isfinite(t) for t in terms.values())
    assert all(terms[k].item() > 0 for k in ("masked", "contrastive", "triplet", "moe"))
    total = sum(terms[k] for k in ("masked", "contrastive", "triplet", "moe"))
    assert torch.allclose(terms["loss"], total)
    terms["loss"].backward()
    masking_parameters = (("input_masks.wsi", "input_masks.genomics", "input_masks.report", "input_decoders.wsi.weight",
                           "input_decoders.genomics.weight", "input_decoders.report.weight") if masking == "inputs"
                          else ("mask_token", "decoders.wsi.weight", "decoders.genomics.weight",
                                "decoders.report.weight"))
    for name in (*masking_parameters, "logit_scale", "classifier.weight"):
        p = dict(model.named_parameters())[name]
        assert (p.grad is not None and p.grad.abs().sum() > 0) == (name != "classifier.weight"), name
    torch.manual_seed(3)
    again = model.pretraining_loss(batch)
    assert all(torch.equal(terms[k], again[k]) for k in terms)
    # the weights scale the reported terms; one patient with one modality: no pair, no triplet
    weighted = small(dropout=0.0, w_masked=2.0, w_contrastive=0.5, w_triplet=0.0, moe_loss_weight=0.0,
                     masking=masking).train()
    torch.manual_seed(3)
    w_terms = weighted.pretraining_loss(batch)
    assert torch.allclose(w_terms["masked"], 2 * terms["masked"]) and w_terms["triplet"].item() == 0.0
    assert torch.allclose(w_terms["contrastive"], 0.5 * terms["contrastive"]) and w_terms["moe"].item() == 0.0
    lone = model.pretraining_loss(PretrainBatch([patient(6).without("genomics", "report")], torch.tensor([0])))
    assert lone["contrastive"].item() == 0.0 and lone["triplet"].item() == 0.0 and lone["masked"].item() > 0


def test_pretraining_loss_decreases():
    model = small(dropout=0.0, layers=1, n_experts=2, top_k=1).train()
    batch = mixed_batch()
    batch = PretrainBatch(batch.inputs[:4], batch.cancer_type[:4])     # all three, two pairs, the report alone
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    torch.manual_seed(0)
    losses = []
    for _ in range(30):
        terms = model.pretraining_loss(batch)
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()
        losses.append(terms["loss"].item())
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5, losses


def test_logit_scale_is_clamped_like_clip():
    model = small(dropout=0.0)
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    torch.manual_seed(0)
    model.pretraining_loss(mixed_batch())["loss"].backward()
    assert model.logit_scale.grad.item() == 0.0        # beyond log(100) the clamp passes no gradient


# ---------------------------------------------------------------------------------------------- weights, registry


def test_load_pretrained_into_a_new_task_head():
    pretrained = small(TaskSpec.survival(4))
    state = pretrained.pretrained_state()
    assert not any(k.startswith("classifier.") for k in state)
    assert any(k.endswith("attn.projection") for k in state)  # the FAVOR+ features travel with the weights
    fresh = small(TaskSpec.classification(3))
    torch.manual_seed(1)
    report = fresh.load_pretrained(state)
    assert report["missing"] == ["classifier.bias", "classifier.weight"] and report["skipped"] == []
    assert set(report["loaded"]) == set(fresh.state_dict()) - {"classifier.bias", "classifier.weight"}
    own = fresh.state_dict()
    assert all(torch.equal(own[k], v) for k, v in state.items())


def test_registry_options_and_build_errors():
    assert "alter" in list_models() and ALTER.pretrainable and ALTER.requires == frozenset()
    options = model_options("alter")
    assert options["fusion_mode"] == "both" and options["region_size"] == 4 and options["max_regions"] == 512
    assert options["n_features"] == 64 and options["moe_loss_weight"] == 0.01 and options["mask_ratio"] == 0.25
    assert {"w_masked", "w_contrastive", "w_triplet", "triplet_margin", "n_experts", "top_k", "layers",
            "heads"} <= set(options)
    with pytest.raises(ModelConfigError, match=r"InputDims.pathway_members is None -- the cohort needs a pathway "
                                                r"collection"):
        build_model("alter", InputDims(wsi=12, genes=12), TaskSpec.binary(), **SMALL)
    model = build_model("alter", InputDims(wsi=12, genes=12), TaskSpec.binary(), modalities=["wsi"], **SMALL)
    assert model.modalities == {"wsi"}
    with pytest.raises(ModelConfigError, match=r"fusion_mode 'cross' is not one of both, shared_only, moe_only"):
        build_model("alter", DIMS, TaskSpec.binary(), fusion_mode="cross", **SMALL)
    with pytest.raises(ModelConfigError, match=r"top_k must be in \[1, n_experts=3\], got 4"):
        build_model("alter", DIMS, TaskSpec.binary(), **{**SMALL, "top_k": 4})
    with pytest.raises(ModelConfigError, match="needs at least one of wsi"):
        build_model("alter", InputDims(pathway_sizes=(3,)), TaskSpec.binary())


def test_input_masking_hides_the_inputs_and_reconstructs_the_raw_values():
    """The masked patches and gene values enter the encoders as the mask embedding (so changing a masked raw value
    changes nothing the model sees), and the targets are those raw values."""
    model = small(dropout=0.0).eval()
    x = patient(10, seed=1)
    features, genes = model.wsi_features(x), model.gene_vector(x)[0]
    torch.manual_seed(0)
    mask = mask_tokens(features.shape[0], model.mask_ratio)
    regions, _, states = model.encoders["wsi"].encode(features, x.wsi_coords, mask, model.input_masks["wsi"])
    changed = features.clone()
    changed[mask] += 5.0
    regions2, _, states2 = model.encoders["wsi"].encode(changed, x.wsi_coords, mask, model.input_masks["wsi"])
    assert torch.allclose(regions, regions2) and torch.allclose(states, states2)
    gene_mask = mask_tokens(genes.shape[0], model.mask_ratio)
    tokens, gene_states = model.encoders["genomics"].encode(genes, gene_mask, model.input_masks["genomics"])
    moved = genes.clone()
    moved[gene_mask] -= 3.0
    assert torch.allclose(tokens, model.encoders["genomics"].encode(moved, gene_mask, model.input_masks["genomics"])[0])
    assert gene_states.shape == (genes.shape[0], model.dim)
    # the loss regresses raw inputs: a perfect decoder of the raw values would give 0, the model's own states not
    losses, _ = model.masked_inputs_loss(x, model.check_input(x))
    assert len(losses) == 3 and all(torch.isfinite(v) and v > 0 for v in losses)


def test_input_masking_trains_the_encoders_and_leaves_fine_tuning_as_it_was():
    model = small(dropout=0.0).train()
    terms = model.pretraining_loss(mixed_batch())
    terms["masked"].backward()
    grads = dict(model.named_parameters())
    assert grads["encoders.wsi.fc.0.weight"].grad.abs().sum() > 0          # the WSI encoder learns from it
    assert grads["encoders.genomics.value.weight"].grad.abs().sum() > 0    # and the gene encoder
    # the masking parameters come from their own random stream: the rest starts as without them
    tokens_only = small(dropout=0.0, masking="tokens")
    for name, value in tokens_only.state_dict().items():
        assert torch.equal(value, model.state_dict()[name]), name
