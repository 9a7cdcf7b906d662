"""The model registry and the classic baselines of the training harness (ABMIL, TransMIL, SNN, MCAT, SurvPath,
late fusion by concatenation and by gated Kronecker product): building from InputDims/TaskSpec, forward and
backward with every allowed subset of modalities, clear errors, TransMIL's Nystrom attention against exact
attention, PPEG on non-square bags, and parameter counts at the published dims (meta device, no memory).

Small dims and bags of 10-50 patches keep the file well under a minute on two CPU cores."""

from __future__ import annotations

import itertools

import pytest
import torch

from pathmm_pipeline.core.errors import ConfigError
from pathmm_pipeline.models import (
    MODALITIES,
    DuplicateModelError,
    InputDims,
    MissingModalityError,
    ModelConfigError,
    ModelInputError,
    ModelOptionError,
    ModelOutput,
    PathmmModel,
    PatientInput,
    TaskSpec,
    UnknownModelError,
    build_model,
    get_model_class,
    list_models,
    model_options,
    register_model,
    unregister_model,
)
from pathmm_pipeline.models.nystrom import NystromAttention, iterative_pinv, segment_means
from pathmm_pipeline.models.survpath import SparseMultimodalAttention
from pathmm_pipeline.models.transmil import PPEG, square_pad

BASELINES = ["abmil", "transmil", "snn", "mcat", "survpath", "late_fusion_concat", "late_fusion_kronecker"]

DIMS = InputDims(wsi=24, genes=30, pathway_sizes=(3, 5, 1, 8, 4), family_sizes=(4, 6, 3, 5, 2, 7), report=12)

SMALL = {
    "abmil": dict(hidden_dim=16, attn_dim=8),
    "transmil": dict(dim=16, heads=2),                      # 8 landmarks
    "snn": dict(hidden=(16, 16)),
    "mcat": dict(dim=16, snn_hidden=(16, 16), heads=2, ff_dim=32),
    "survpath": dict(dim=16, snn_hidden=(16, 16)),
    "late_fusion_concat": dict(dim=16, attn_dim=8, snn_hidden=(16, 16), report_hidden=(16, 16)),
    "late_fusion_kronecker": dict(dim=16, attn_dim=8, snn_hidden=(16, 16), report_hidden=(16, 16), scale=4),
}

TASKS = [TaskSpec.survival(4), TaskSpec.classification(3), TaskSpec.binary(), TaskSpec("survival", 1)]


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def patient(n: int = 20, seed: int = 0, dims: InputDims = DIMS) -> PatientInput:
    g = torch.Generator().manual_seed(seed)
    return PatientInput(
        wsi=torch.randn(n, dims.wsi, generator=g),
        wsi_coords=torch.randint(0, 10_000, (n, 2), generator=g),
        pathways=[torch.randn(s, generator=g) for s in dims.pathway_sizes],
        families=[torch.randn(s, generator=g) for s in dims.family_sizes],
        genes=torch.randn(dims.genes, generator=g),
        report=torch.randn(dims.report, generator=g),
        report_tokens=torch.randn(7, dims.report, generator=g),
    )


def small(name: str, task: TaskSpec = TaskSpec.survival(4), **extra) -> PathmmModel:
    torch.manual_seed(0)
    return build_model(name, DIMS, task, **{**SMALL[name], **extra})


def allowed_subsets(model: PathmmModel) -> list[frozenset[str]]:
    mods = sorted(model.modalities)
    return [frozenset(c) for r in range(1, len(mods) + 1) for c in itertools.combinations(mods, r)
            if model.requires <= set(c)]


# ---------------------------------------------------------------------------------------------- registry


def test_registry_lists_the_baselines_and_rejects_unknown_names():
    assert set(BASELINES) <= set(list_models())
    assert list_models() == sorted(list_models())
    with pytest.raises(UnknownModelError) as err:
        get_model_class("transmill")
    message = str(err.value)
    assert "did you mean 'transmil'" in message and all(n in message for n in BASELINES)
    assert isinstance(err.value, ConfigError) and isinstance(err.value, LookupError)
    with pytest.raises(UnknownModelError, match="registered models: abmil"):
        build_model("no_such_model", DIMS, TaskSpec.binary())


def test_build_model_rejects_unknown_options_and_missing_dims():
    with pytest.raises(ModelOptionError, match=r"no option 'hiden_dim'.*hidden_dim=512"):
        build_model("abmil", DIMS, TaskSpec.binary(), hiden_dim=16)
    assert model_options("transmil")["pinv_iterations"] == 6
    with pytest.raises(ModelConfigError, match=r"'mcat' reads genomics.*family_sizes is None"):
        build_model("mcat", InputDims(wsi=24), TaskSpec.binary(), **SMALL["mcat"])
    with pytest.raises(ModelConfigError, match="at least one of wsi"):
        build_model("late_fusion_concat", InputDims(pathway_sizes=(3,)), TaskSpec.binary())


def test_register_model_decorator_duplicates_and_unregister():
    @register_model("toy_mean_pool")
    class Toy(PathmmModel):
        uses = requires = frozenset({"wsi"})

        def __init__(self, dims, task, width: int = 4):
            super().__init__(dims, task)
            self.head = torch.nn.Linear(dims.wsi, task.n_outputs)
            self.embedding_dim = dims.wsi

        def forward(self, x):
            self.check_input(x)
            z = self.wsi_features(x).mean(0, keepdim=True)
            return ModelOutput(self.head(z), z, {})

    try:
        assert Toy.name == "toy_mean_pool" and "toy_mean_pool" in list_models()
        out = build_model("toy_mean_pool", DIMS, TaskSpec.binary())(patient(5))
        assert out.logits.shape == (1, 1)
        with pytest.raises(DuplicateModelError, match="already registered"):
            register_model("toy_mean_pool")(type("Other", (Toy,), {}))
    finally:
        unregister_model("toy_mean_pool")
    assert "toy_mean_pool" not in list_models()
    with pytest.raises(ValueError, match="subset"):
        register_model("bad_model")(type("Bad", (PathmmModel,), {"uses": frozenset({"wsi"}),
                                                                 "requires": frozenset({"report"})}))


def test_task_spec_validation():
    assert TaskSpec.survival(1).is_cox and not TaskSpec.survival(4).is_cox
    with pytest.raises(ModelConfigError, match="exactly one logit"):
        TaskSpec("binary", 2)
    with pytest.raises(ModelConfigError, match=">= 2 classes"):
        TaskSpec("classification", 1)
    with pytest.raises(ModelConfigError, match="not one of"):
        TaskSpec("regression", 1)


def test_patient_input_present_and_without():
    x = patient(10)
    assert x.present() == {"wsi": True, "genomics": True, "report": True}
    y = x.without("genomics", "report")
    assert y.present() == {"wsi": True, "genomics": False, "report": False}
    assert y.pathways is None and y.families is None and y.genes is None and y.report_tokens is None
    assert x.genes is not None  # a copy
    assert InputDims.from_patient(x) == DIMS
    assert x.to(dtype=torch.float64).wsi.dtype == torch.float64
    assert x.to(dtype=torch.float64).wsi_coords.dtype == x.wsi_coords.dtype


# ---------------------------------------------------------------------------------------------- forward / backward


@pytest.mark.parametrize("name", BASELINES)
@pytest.mark.parametrize("task", TASKS, ids=["survival4", "classes3", "binary", "cox"])
def test_forward_backward_all_modalities(name, task):
    model = small(name, task)
    model.train()
    out = model(patient(20))
    assert out.logits.shape == (1, task.n_outputs)
    assert out.embedding.shape == (1, model.embedding_dim)
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.embedding).all()
    (out.logits.sum() + out.embedding.sum()).backward()
    for pname, p in model.named_parameters():
        if "missing" in pname:  # learned stand-ins: unused when every modality is present
            assert p.grad is None, pname
            continue
        assert p.grad is not None, f"{name}: no gradient reaches {pname}"
        assert torch.isfinite(p.grad).all(), pname
    nonzero = sum(bool(p.grad.abs().sum() > 0) for n, p in model.named_parameters() if p.grad is not None)
    assert nonzero >= 0.9 * sum(1 for n, _ in model.named_parameters() if "missing" not in n)


@pytest.mark.parametrize("name", BASELINES)
def test_every_allowed_subset_of_modalities(name):
    model = small(name)
    for subset in allowed_subsets(model):
        absent = [m for m in MODALITIES if m not in subset]
        for mode in ("train", "eval"):
            model.train(mode == "train")
            model.zero_grad()
            out = model(patient(13, seed=1).without(*absent))
            assert out.logits.shape == (1, 4) and out.embedding.shape == (1, model.embedding_dim)
            assert torch.isfinite(out.logits).all() and torch.isfinite(out.embedding).all(), (name, subset)
            assert set(out.extras["missing"]) == set(model.modalities) - subset
            out.logits.sum().backward()
            grads = {n: p.grad for n, p in model.named_parameters()}
            assert all(g is None or torch.isfinite(g).all() for g in grads.values())
            for m in set(model.modalities) - subset:  # the stand-in of each absent modality is trained
                stand_in = [g for n, g in grads.items() if "missing" in n and _modality_of(n) == m]
                assert stand_in and all(g is not None and g.abs().sum() > 0 for g in stand_in), (name, subset, m)
            head = [g for n, g in grads.items() if n.split(".")[0] in ("classifier", "_fc2", "to_logits")]
            assert head and all(g is not None and g.abs().sum() > 0 for g in head)


def _modality_of(param_name: str) -> str:
    if "wsi" in param_name:
        return "wsi"
    if "report" in param_name:
        return "report"
    return "genomics"  # missing_families, missing_pathways, missing.genomics


@pytest.mark.parametrize("name", BASELINES)
def test_required_or_all_modalities_absent_raise_clearly(name):
    model = small(name).eval()
    required = sorted(model.requires)
    if required:
        with pytest.raises(MissingModalityError, match=f"model '{name}' requires {required[0]}"):
            model(patient(10).without(*required))
    with pytest.raises(MissingModalityError, match=f"model '{name}'"):
        model(patient(10).without(*MODALITIES))


def test_shape_and_genomics_form_errors():
    with pytest.raises(ModelInputError, match=r"wsi has shape \(10, 7\), expected \(N >= 1, 24\)"):
        small("abmil")(PatientInput(wsi=torch.randn(10, 7)))
    with pytest.raises(ModelInputError, match=r"reads genomics as `families`.*only as `genes`"):
        small("mcat")(PatientInput(wsi=torch.randn(10, 24), genes=torch.randn(30)))
    with pytest.raises(ModelInputError, match="pathways has 2 vectors"):
        small("survpath")(PatientInput(wsi=torch.randn(10, 24), pathways=[torch.randn(3), torch.randn(5)]))
    # a leading batch dimension of one is accepted
    model = small("abmil").eval()
    x = patient(10)
    batched = PatientInput(wsi=x.wsi.unsqueeze(0))
    assert torch.allclose(model(batched).logits, model(PatientInput(wsi=x.wsi)).logits)


def test_late_fusion_builds_with_the_modalities_the_dims_give():
    dims = InputDims(wsi=24, genes=30)
    model = build_model("late_fusion_kronecker", dims, TaskSpec.binary(), **SMALL["late_fusion_kronecker"])
    assert model.modalities == {"wsi", "genomics"} and type(model).uses == set(MODALITIES)
    assert model.mm.encoder1[0].in_features == (16 // 4 + 1) ** 2
    full = build_model("late_fusion_kronecker", DIMS, TaskSpec.binary(), **SMALL["late_fusion_kronecker"])
    assert full.mm.encoder1[0].in_features == (16 // 4 + 1) ** 3
    out = model.eval()(patient(10))  # a report on the patient is ignored by a model built without one
    assert out.extras["missing"] == []
    only = build_model("late_fusion_concat", DIMS, TaskSpec.binary(), modalities=["report"],
                       **SMALL["late_fusion_concat"])
    with pytest.raises(MissingModalityError, match="has none of them"):
        only(patient(10).without("report"))
    tokens_only = PatientInput(report_tokens=torch.randn(5, 12))  # report embedding = mean of the tokens
    assert torch.isfinite(only.eval()(tokens_only).logits).all()


def test_mcat_bilinear_fusion():
    model = small("mcat", fusion="bilinear")
    assert model.mm.encoder1[0].in_features == (16 // 8 + 1) ** 2
    for absent in ((), ("wsi",), ("genomics",)):
        model.zero_grad()
        out = model(patient(11).without(*absent))
        out.logits.sum().backward()
        assert torch.isfinite(out.logits).all() and model.classifier.weight.grad.abs().sum() > 0
    with torch.device("meta"):
        published = build_model("mcat", InputDims(wsi=1024, family_sizes=(100,) * 6), TaskSpec.survival(4),
                                fusion="bilinear")
    assert published.mm.encoder1[0].in_features == 33 * 33      # PORPOISE/MCAT BilinearFusion: 256 / 8 + 1


def test_modality_dropout_only_when_training():
    model = small("mcat", modality_dropout=0.9)
    x = patient(12)
    torch.manual_seed(1)
    model.train()
    missing = [tuple(model(x).extras["missing"]) for _ in range(12)]
    assert any(missing) and all(len(m) < 2 for m in missing)
    model.eval()
    assert all(model(x).extras["missing"] == [] for _ in range(3))


@pytest.mark.parametrize("name", ["abmil", "mcat", "survpath", "late_fusion_concat"])
def test_patch_order_does_not_matter_for_set_models(name):
    model = small(name).eval()
    x = patient(25, seed=3)
    perm = torch.randperm(25, generator=torch.Generator().manual_seed(0))
    shuffled = PatientInput(**{**x.__dict__, "wsi": x.wsi[perm], "wsi_coords": x.wsi_coords[perm]})
    with torch.no_grad():
        assert torch.allclose(model(x).logits, model(shuffled).logits, atol=1e-5)


def test_survpath_attention_is_dense_attention_without_the_patch_patch_block():
    torch.manual_seed(0)
    p, n, dim = 5, 9, 16
    attn = SparseMultimodalAttention(dim, dim_head=8, heads=2, dropout=0.0)
    tokens = torch.randn(1, p + n, dim)
    with torch.no_grad():
        out, patch_attn = attn(tokens, p)
        q, k, v = attn.to_qkv(attn.norm(tokens)).view(1, p + n, 3, 2, 8).permute(2, 0, 3, 1, 4)
        logits = (q * 8 ** -0.5) @ k.transpose(-1, -2)
        blocked = torch.zeros(p + n, p + n, dtype=torch.bool)
        blocked[p:, p:] = True                                       # no patch <-> patch
        dense = torch.softmax(logits.masked_fill(blocked, float("-inf")), dim=-1) @ v
        dense = dense.transpose(1, 2).reshape(1, p + n, 16)
    assert torch.allclose(out, dense, atol=1e-6)
    assert patch_attn.shape == (1, 2, n, p)


# ---------------------------------------------------------------------------------------------- TransMIL


def _identity_output(att: NystromAttention) -> None:
    with torch.no_grad():
        att.to_out[0].weight.copy_(torch.eye(att.to_out[0].in_features))
        att.to_out[0].bias.zero_()


def test_segment_means():
    t = torch.arange(10.0).view(1, 10, 1)
    assert segment_means(t, 5).flatten().tolist() == [0.5, 2.5, 4.5, 6.5, 8.5]
    uneven = segment_means(t, 4).flatten()               # segments of 3, 2, 3, 2 (lengths differ by <= 1)
    assert torch.allclose(uneven, torch.tensor([1.0, 3.5, 6.0, 8.5]))
    assert segment_means(t, 32).shape == (1, 10, 1)      # fewer tokens than landmarks: every token its own


def test_nystrom_attention_is_exact_attention_up_to_the_pseudo_inverse():
    """With n <= m landmarks every token is a landmark, so the three kernels are the same n x n softmax matrix
    A and the output is A Z A V with Z the iterative pseudo-inverse of A: the error is exactly -(I - A Z) A V.
    Each iteration maps every eigenvalue e of I - A Z to e^3 (3 + e) / 4, so in float32 it is ~1e-4 after 25
    iterations. After the published 6 iterations, the singular directions of A with s^2 >= 1% of
    ||A||_1 ||A||_inf have converged and the rest carry little of A V: 2.4% on this seeded example, bound 8%."""
    torch.manual_seed(0)
    dim, n = 32, 24
    att = NystromAttention(dim, heads=4, dim_head=8, num_landmarks=32, residual=False)
    _identity_output(att)
    x = torch.randn(1, n, dim)
    with torch.no_grad():
        exact = att.exact(x)
        q, k, v = att._qkv(x)
        a = torch.softmax(q @ k.transpose(-1, -2), dim=-1)
        for iters, bound in ((6, 0.08), (25, 1e-3)):
            att.pinv_iterations = iters
            approx = att(x)
            residual = torch.eye(n) - a @ iterative_pinv(a, iters)
            predicted = exact - (residual @ a @ v).transpose(1, 2).reshape(1, n, dim)
            assert torch.allclose(approx, predicted, atol=1e-4, rtol=1e-3)       # the identity above
            assert float((approx - exact).norm() / exact.norm()) < bound


def test_nystrom_attention_approximates_low_rank_attention_with_fewer_landmarks():
    """96 tokens in 8 contiguous groups of 12 near-duplicates, 8 landmarks: the segment means are the group
    centres, and softmax over duplicated keys equals softmax over the centres, so Nystrom is exact up to the
    1e-3 token noise and the pseudo-inverse (measured 6e-6 with 25 iterations, 1.2% with 6)."""
    torch.manual_seed(0)
    dim = 32
    att = NystromAttention(dim, heads=4, dim_head=8, num_landmarks=8, residual=False)
    centres = torch.randn(8, dim)
    x = (centres.repeat_interleave(12, dim=0) + 1e-3 * torch.randn(96, dim)).unsqueeze(0)
    with torch.no_grad():
        exact = att.exact(x)
        for iters, bound in ((6, 0.05), (25, 1e-3)):
            att.pinv_iterations = iters
            assert float((att(x) - exact).norm() / exact.norm()) < bound


def test_ppeg_on_non_square_grids_and_bags():
    torch.manual_seed(0)
    ppeg = PPEG(8)
    x = torch.randn(1, 1 + 3 * 5, 8)
    y = ppeg(x, 3, 5)
    assert y.shape == x.shape and torch.equal(y[:, 0], x[:, 0])          # CLS untouched
    bumped = x.clone()
    bumped[:, 1] += 1.0                                                   # grid cell (0, 0)
    delta = (ppeg(bumped, 3, 5) - y).abs().sum(-1)[0, 1:].view(3, 5)
    assert delta[1, 0] > 0 and delta[2, 3] > 0                            # within the 7x7 reach on the grid
    assert delta[0, 4] == 0 and delta[2, 4] == 0                          # 4 columns away: out of reach
    with pytest.raises(ValueError, match="3 x 4 grid"):
        ppeg(x, 3, 4)
    for n, side in ((1, 1), (2, 2), (10, 4), (17, 5), (49, 7)):
        padded, h, w = square_pad(torch.arange(float(n)).view(1, n, 1))
        assert (h, w) == (side, side) and padded.shape[1] == side * side
        assert padded[0, :n, 0].tolist() == list(range(n))               # pads with the first tokens
    model = small("transmil").eval()
    for n in (1, 2, 10, 17, 50):
        out = model(patient(n))
        assert out.logits.shape == (1, 4) and torch.isfinite(out.logits).all()
        assert out.extras["grid"] == (square_pad(torch.zeros(1, n, 1))[1],) * 2


def test_transmil_uses_published_attention_settings():
    model = build_model("transmil", InputDims(wsi=1024), TaskSpec.classification(2))
    att = model.layer1.attn
    assert (att.heads, att.dim_head, att.num_landmarks, att.pinv_iterations) == (8, 64, 256, 6)
    assert att.res_conv.kernel_size == (33, 1) and att.res_conv.groups == 8


# ---------------------------------------------------------------------------------------------- published sizes

# Parameter counts at the published dims, built on the meta device: 1024-d patch features (ResNet50-trunc / UNI),
# a 4-bin survival head, the six MCAT gene families and the 331 SurvPath pathways as shipped (their full
# definitions: 3,354 and 9,745 genes), 4,999 genes for the SNN (the union of the SurvPath sets), 384-d report
# embeddings (MiniLM):
#   abmil                   789,765      (CLAM-SB's 0.79M)
#   transmil              2,673,172      (2,672,146 with 2 classes: the paper's 2.67M)
#   snn                   1,346,820
#   mcat                  4,484,102
#   survpath             24,852,932      (331 two-layer SNNs of width 256: 21.9M of it; feed-forward 128->128->128)
#   late_fusion_concat    2,234,629
#   late_fusion_kronecker 11,536,165     (33^3 = 35,937 product terms -> 256: 9.2M of it)
PUBLISHED_COUNTS = {"abmil": 789_765, "transmil": 2_673_172, "snn": 1_346_820, "mcat": 4_484_102,
                    "survpath": 24_852_932, "late_fusion_concat": 2_234_629, "late_fusion_kronecker": 11_536_165}


def test_parameter_counts_at_published_dims():
    from pathmm_pipeline.genomics.genesets import builtin_collection

    families = tuple(len(v) for v in builtin_collection("mcat_families").sets.values())
    pathways = tuple(len(v) for v in builtin_collection("survpath").sets.values())
    dims = InputDims(wsi=1024, genes=4999, pathway_sizes=pathways, family_sizes=families, report=384)
    for name, expected in PUBLISHED_COUNTS.items():
        with torch.device("meta"):
            model = build_model(name, dims, TaskSpec.survival(4))
        assert sum(p.numel() for p in model.parameters()) == expected, name
        assert model.describe()["parameters"] == expected
    with torch.device("meta"):
        transmil = build_model("transmil", dims, TaskSpec.classification(2))
    assert abs(sum(p.numel() for p in transmil.parameters()) - 2.67e6) < 0.01e6


def test_survpath_and_abmil_follow_their_reference_code():
    dims = InputDims(wsi=32, pathway_sizes=(3, 4, 5))
    survpath = build_model("survpath", dims, TaskSpec.survival(4), dim=16, snn_hidden=(16, 16))
    ff = [m for m in survpath.feed_forward.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in ff] == [(8, 8), (8, 8)]  # SurvPath's FeedForward mult=1
    assert survpath.cross_attender.dropout.p == 0.0  # the reference builds no attention dropout
    plain = build_model("abmil", dims, TaskSpec.survival(4), hidden_dim=16, attn_dim=8)
    with_rho = build_model("abmil", dims, TaskSpec.survival(4), hidden_dim=16, attn_dim=8, rho_dim=12)
    assert plain.rho is None and plain.classifier.in_features == 16
    assert with_rho.classifier.in_features == 12 and with_rho.embedding_dim == 12
    out = with_rho(PatientInput(wsi=torch.randn(7, 32)))
    assert out.logits.shape == (1, 4) and out.embedding.shape == (1, 12)
    with pytest.raises(ModelConfigError, match="rho_dim"):
        build_model("abmil", dims, TaskSpec.survival(4), rho_dim=0)
