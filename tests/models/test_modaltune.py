"""ModalTune and the frozen slide encoders: the zero-initialised injector gate leaves the frozen encoder's image
tokens bit-identical at step 0, the frozen encoder's weights stay bit-identical (and grad-free) through
optimizer steps, the multi-task KL against a hand computation, text targets with a fake text encoder and the
fixed projector, forward/backward with and without genomics (wsi required), the Prov-GigaPath slide encoder at
its published sizes (parameter count on the meta device), LongNet dilated attention against a naive loop, strict
checkpoint loading with an error naming the file and keys, general-prompt feature extraction for a linear
probe, pretraining, and determinism.

Tiny dims (a 64-d, 2-block stand-in encoder; a 32-d, 3-layer LongNet for the dilated path) keep the file to a
few seconds on two CPU cores."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pathmm_pipeline.encoders.slide import (
    GIGAPATH_SEGMENT_LENGTHS,
    GigaPathSlideEncoder,
    SlideEncoderSpec,
    UnknownSlideEncoderError,
    build_slide_encoder,
    dilated_attention,
    get_slide_encoder_spec,
    list_slide_encoders,
    register_slide_encoder,
    unregister_slide_encoder,
)
from pathmm_pipeline.encoders.weights import WeightsError
from pathmm_pipeline.models import (
    InputDims,
    MissingModalityError,
    ModelConfigError,
    ModelInputError,
    PatientInput,
    PretrainBatch,
    TaskSpec,
    build_model,
    get_model_class,
    list_models,
    model_options,
)
from pathmm_pipeline.models.modaltune import (
    HashingTextEncoder,
    ModalTune,
    TextProjector,
    multitask_kl,
    text_targets,
)

SIZES = (3, 5, 4, 6)
DIMS = InputDims(wsi=16, pathway_sizes=SIZES, n_cancer_types=2)
SMALL = dict(gene_dim=8, n_pathway_tokens=4, mixer_depth=1, extra_extractors=1)

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def patient(n: int = 10, seed: int = 0, cancer_type: int = 0) -> PatientInput:
    g = torch.Generator().manual_seed(seed)
    return PatientInput(wsi=torch.randn(n, DIMS.wsi, generator=g),
                        wsi_coords=torch.randint(0, 20_000, (n, 2), generator=g),
                        pathways=[torch.randn(s, generator=g) for s in SIZES], cancer_type=cancer_type)


def small(task: TaskSpec = TaskSpec.survival(4), seed: int = 0, dims: InputDims = DIMS, **extra) -> ModalTune:
    torch.manual_seed(seed)
    model = build_model("modaltune", dims, task, **{**SMALL, **extra})
    assert isinstance(model, ModalTune)
    return model


@pytest.fixture
def small_gigapath():
    """A 32-d, 3-layer LongNet (dilated attention, 3 branches) registered as a slide encoder for the test."""
    spec = SlideEncoderSpec("gigapath_test", "LongNet 3 x 32-d", 32, 3,
                            lambda d_in: GigaPathSlideEncoder(d_in, embed_dim=32, depth=3, heads=4,
                                                              segment_lengths=(4, 8, 16), dilated_ratios=(1, 2, 4)))
    register_slide_encoder(spec, replace=True)
    yield spec.name
    unregister_slide_encoder(spec.name)


# ---------------------------------------------------------------------------------------------- building


def test_registry_options_and_build_errors():
    assert "modaltune" in list_models() and get_model_class("modaltune") is ModalTune and ModalTune.pretrainable
    assert ModalTune.requires == {"wsi"} and ModalTune.uses == {"wsi", "genomics"}
    opts = model_options("modaltune")
    assert opts["slide_encoder"] == "tiny_slide" and opts["slide_weights"] is None and opts["dim"] is None
    assert opts["tasks"] == ("general", "survival", "subtype", "stage") and opts["task_prompt"] is None
    assert opts["adapter_every"] is None and opts["kl_weight"] == 10.0 and opts["n_pathway_tokens"] == 64
    assert opts["protocol"] == "probe" and opts["probe_penalty"] == 0.1 and opts["probe_c"] == 1.0
    assert set(list_slide_encoders()) >= {"gigapath_slide", "tiny_slide"}
    # the published protocol: the probe reads the general prompt; fine-tuning's prompt follows the task kind
    assert small().task_name == "general" and small().direct_fit
    tune = dict(protocol="finetune")
    assert small(**tune).task_name == "survival" and not small(**tune).direct_fit
    assert small(TaskSpec.classification(3), **tune).task_name == "subtype"
    assert small(TaskSpec.binary(), tasks=("general", "grade"), **tune).task_name == "general"
    assert small(TaskSpec.binary(), task_prompt="general", **tune).task_name == "general"
    with pytest.raises(ModelConfigError, match="task_prompt 'grade'"):
        small(task_prompt="grade", **tune)
    with pytest.raises(ModelConfigError, match="protocol must be one of"):
        small(protocol="linear")
    with pytest.raises(ModelConfigError, match="reads the general prompt"):
        small(tasks=("survival",))
    with pytest.raises(ModelConfigError, match="distinct names"):
        small(tasks=("general", "general"))
    with pytest.raises(ModelConfigError, match="multiple of heads"):
        small(heads=3)
    with pytest.raises(ModelConfigError, match="adapter_every"):
        small(adapter_every=3)
    with pytest.raises(UnknownSlideEncoderError, match="tiny_slide"):
        small(slide_encoder="tiny_slid")
    with pytest.raises(ModelConfigError, match="cancer_type_names"):
        small(cancer_type_names=["BLCA"])
    # no pathway dims: a wsi-only instance
    model = small(dims=InputDims(wsi=16))
    assert model.modalities == {"wsi"} and model.pathway_tokens is None
    with pytest.raises(ModelConfigError, match="InputDims.wsi"):
        build_model("modaltune", InputDims(pathway_sizes=SIZES), TaskSpec.binary())


# ---------------------------------------------------------------------------------------------- frozen encoder


def test_zero_gate_leaves_the_frozen_encoder_output_unchanged(small_gigapath):
    for name in ("tiny_slide", small_gigapath):
        model = small(slide_encoder=name, heads=2).train()
        assert all(float(a.injector.gamma.detach().abs().max()) == 0.0 for a in model.adapters)
        x = patient(12, seed=3)
        wsi = model.wsi_features(x)
        state = model.encode(wsi, x.wsi_coords, x.pathways)  # with grad, in training mode
        assert state.image_tokens.requires_grad
        assert torch.equal(state.image_tokens, model.slide_encoder(wsi, x.wsi_coords))
        # a non-zero gate does change them: the adapters do inject
        with torch.no_grad():
            model.adapters[0].injector.gamma.fill_(0.5)
        assert not torch.equal(model.encode(wsi, x.wsi_coords, x.pathways).image_tokens,
                               model.slide_encoder(wsi, x.wsi_coords))


def test_frozen_encoder_is_bit_identical_after_tuning_steps():
    model = small().train()
    before = {k: v.clone() for k, v in model.slide_encoder.state_dict().items()}
    assert not any(p.requires_grad for p in model.slide_encoder.parameters())
    assert model.trainable_parameters() < sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    for step in range(4):
        x = patient(8 + step, seed=step, cancer_type=step % 2)
        out = model(x, targets=model.targets_for(model.clinical_sentences(step % 2, step % 4, step % 2)))
        assert model.training and not model.slide_encoder.training  # train() keeps the encoder in eval mode
        loss = out.logits.logsumexp(-1).sum() + out.extras["aux_loss"]
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is None for p in model.slide_encoder.parameters())
        assert model.adapters[0].injector.gamma.grad is not None
        opt.step()
    after = model.slide_encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert float(model.adapters[0].injector.gamma.detach().abs().max()) > 0  # the adapters did learn
    assert model.pretrained_state().keys().isdisjoint(k for k in model.state_dict() if k.startswith("slide_"))


# ---------------------------------------------------------------------------------------------- forward


def test_forward_backward_with_and_without_genomics():
    model = small(TaskSpec.classification(3), protocol="finetune").train()
    for x, missing in ((patient(), []), (patient(seed=1).without("genomics"), ["genomics"])):
        out = model(x)
        assert out.logits.shape == (1, 3) and out.embedding.shape == (1, model.out_dim)
        assert set(out.extras["task_embeddings"]) == {"general", "survival", "subtype", "stage"}
        assert torch.equal(out.embedding, out.extras["task_embeddings"]["subtype"])
        assert out.extras["missing"] == missing and out.extras["aux_loss"] is None
        assert out.extras["injector_gates"].shape == (len(model.adapters),)
        model.zero_grad()
        out.logits.sum().backward()
        assert model.prompts.grad is not None and model.classifier.weight.grad is not None
        used = model.pathway_tokens.snns[0][0][0].weight.grad
        assert (used is not None and used.abs().sum() > 0) == (not missing)
    with pytest.raises(MissingModalityError, match="requires wsi"):
        model(patient().without("wsi"))
    with pytest.raises(ModelInputError, match="wsi_coords"):
        model(PatientInput(wsi=torch.randn(5, 16), pathways=patient().pathways))
    with pytest.raises(ModelInputError, match="pathways has 3 vectors"):
        model(PatientInput(wsi=torch.randn(5, 16), wsi_coords=torch.zeros(5, 2), pathways=patient().pathways[:3]))


def test_general_embedding_extraction_for_a_linear_probe_is_deterministic():
    model = small(TaskSpec.binary()).eval()
    xs = [patient(6 + i, seed=20 + i) for i in range(8)]
    with torch.no_grad():
        feats = torch.cat([model.task_embedding(x, "general") for x in xs]).numpy()
        again = torch.cat([model.task_embeddings(x)["general"] for x in xs]).numpy()
    assert feats.shape == (8, model.out_dim) and np.array_equal(feats, again) and np.isfinite(feats).all()
    with pytest.raises(ModelConfigError, match="no task prompt 'grade'"):
        model.task_embedding(xs[0], "grade")
    from sklearn.linear_model import LogisticRegression

    probe = LogisticRegression(max_iter=200).fit(feats, [0, 1] * 4)
    assert probe.predict_proba(feats).shape == (8, 2)
    # same seed, same model and outputs
    twin = small(TaskSpec.binary()).eval()
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), twin.state_dict().values()))
    with torch.no_grad():
        assert torch.equal(twin.task_embedding(xs[0], "general"), model.task_embedding(xs[0], "general"))


# ---------------------------------------------------------------------------------------------- text targets


def test_multitask_kl_matches_a_hand_computation():
    pred = {"general": torch.tensor([[1.0, 2.0, 0.0]]), "survival": torch.tensor([[0.5, -1.0, 3.0]]),
            "subtype": torch.tensor([[9.0, 9.0, 9.0]])}
    target = {"general": torch.tensor([[0.0, 1.0, 1.0]]), "survival": torch.tensor([[2.0, 0.0, -2.0]])}

    def kl(p, t, temperature):
        p, t = np.asarray(p) / np.linalg.norm(p) / temperature, np.asarray(t) / np.linalg.norm(t) / temperature
        sp, st = np.exp(p) / np.exp(p).sum(), np.exp(t) / np.exp(t).sum()
        return float((st * (np.log(st) - np.log(sp))).sum()) * temperature ** 2

    for temperature in (1.0, 0.25):
        expected = (kl([1, 2, 0], [0, 1, 1], temperature) + kl([0.5, -1, 3], [2, 0, -2], temperature)) / 2
        got = float(multitask_kl(pred, target, temperature))
        assert got == pytest.approx(expected, rel=1e-5)
    assert float(multitask_kl(pred, {"general": pred["general"] * 3})) == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError, match="no task in common"):
        multitask_kl(pred, {"grade": torch.zeros(1, 3)})
    # the model's aux loss is kl_weight x this KL on its own task embeddings
    model = small().eval()
    x = patient(seed=5)
    targets = model.targets_for(model.clinical_sentences(1, 0, 1.0))
    with torch.no_grad():
        out = model(x, targets=targets)
    expected = model.kl_weight * float(multitask_kl(out.extras["task_embeddings"], targets))
    assert float(out.extras["aux_loss"]) == pytest.approx(expected, rel=1e-6)


def test_text_targets_with_a_fake_encoder_and_the_fixed_projector():
    texts = {"general": "Cancer location: bladder urothelial; Survival status: The patient died before 12 months",
             "subtype": "Cancer location: bladder urothelial; Cancer diagnosis: Bladder Urothelial Carcinoma;"}
    seen: list[list[str]] = []

    def fake(batch: list[str]) -> np.ndarray:
        seen.append(batch)
        return np.stack([np.full(6, float(len(t))) for t in batch])

    raw = text_targets(texts, fake)
    assert seen == [[texts["general"], texts["subtype"]]] and set(raw) == {"general", "subtype"}
    assert raw["subtype"].shape == (1, 6) and float(raw["subtype"][0, 0]) == len(texts["subtype"])
    assert text_targets({}, fake) == {}
    projector = TextProjector(6, 4, seed=7)
    projected = text_targets({"subtype": texts["subtype"]}, fake, projector)["subtype"]
    assert projected.shape == (1, 4) and torch.allclose(projected, projector(raw["subtype"]))
    # fixed: buffers (saved, never trained), the same for the same seed, others for another
    assert not list(projector.parameters()) and set(projector.state_dict()) == {"w1", "b1", "w2", "b2"}
    assert torch.equal(TextProjector(6, 4, seed=7).w1, projector.w1)
    assert not torch.equal(TextProjector(6, 4, seed=8).w1, projector.w1)
    # the offline default encoder: deterministic, unit norm, different texts differ
    enc = HashingTextEncoder(32)
    a, b = enc(["subtype: BLCA", "subtype: STAD"]), enc(["subtype: BLCA"])
    assert np.array_equal(a[:1], b) and np.allclose(np.linalg.norm(a, axis=1), 1) and not np.allclose(a[0], a[1])
    # a model takes any encoder of its text width
    model = small(text_dim=6, cancer_type_names=["BLCA", "STAD"])
    model.set_text_encoder(fake)
    sentences = model.clinical_sentences(0, clinical={"diagnosis": "BLCA"})
    assert set(model.targets_for(sentences)) == {"general", "subtype"}
    model.set_text_encoder(lambda batch: np.zeros((len(batch), 5)))
    with pytest.raises(ModelConfigError, match="text_dim=5"):
        model.targets_for(sentences)


def test_pretraining_objective():
    model = small(cancer_type_names=["BLCA", "STAD"]).train()
    assert model.clinical_sentences(1, 2, 0.0) == {
        "location": "Cancer location: stomach;",
        "survival": "Survival status: The patient was censored in follow-up interval 3"}
    assert model.clinical_sentences(0, -1, -1.0) == {"location": "Cancer location: bladder urothelial;"}
    # with the bins' edges in months (cut on the training patients), the reference's sentences
    edges = [0.0, 11.6, 24.2, 40.0, float("inf")]
    survival = "Survival status: The patient "
    assert model.clinical_sentences(1, 1, 1.0, edges)["survival"] == survival + "died between 12 and 24 months"
    assert model.clinical_sentences(0, 0, 0.0, edges)["survival"] == survival + "was censored before 12 months"
    assert model.clinical_sentences(0, 3, 1.0, edges)["survival"] == survival + "died after 40 months"
    inputs = [patient(8, seed=40), patient(9, seed=41).without("genomics"), patient(7, seed=42).without("wsi"),
              patient(6, seed=43)]
    batch = PretrainBatch(inputs, torch.tensor([0, 1, 1, 0]), torch.tensor([1, -1, 2, 3]),
                          torch.tensor([1.0, -1.0, 0.0, 0.0]),
                          clinical=[{"diagnosis": "BLCA", "stage": "III"}, {"diagnosis": "TSTAD", "stage": "IVA"},
                                    {}, {"stage": "II", "t": "pT2a", "n": "N0", "m": "M0"}])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(6):
        terms = model.pretraining_loss(batch)
        assert set(terms) == {"kl", "loss"} and torch.isfinite(terms["loss"])
        opt.zero_grad()
        terms["loss"].backward()
        opt.step()
        losses.append(float(terms["loss"].detach()))
    assert losses[-1] < losses[0]
    # no slide in the batch: nothing to distil, zero with a graph
    empty = model.pretraining_loss(PretrainBatch([inputs[2]], torch.tensor([1])))
    assert float(empty["loss"].detach()) == 0.0
    empty["loss"].backward()
    # fine-tuning inherits everything but the head and the frozen encoder
    state = model.pretrained_state()
    assert not any(k.startswith(("classifier.", "slide_encoder.")) for k in state) and "projector.w1" in state
    tuned = small(TaskSpec.classification(3), seed=1)
    report = tuned.load_pretrained(state)
    assert not report["skipped"] and torch.equal(tuned.prompts, model.prompts)


# ---------------------------------------------------------------------------------------------- slide encoders


def test_gigapath_slide_encoder_has_the_published_sizes():
    spec = get_slide_encoder_spec("gigapath_slide")
    assert (spec.embed_dim, spec.depth, spec.d_in) == (768, 12, 1536) and "slide_encoder.pth" in \
        spec.published_weights and "prov-gigapath/prov-gigapath" in spec.published_weights
    assert GIGAPATH_SEGMENT_LENGTHS == (1024, 5792, 32768, 185363, 1048576)
    with torch.device("meta"):
        enc = GigaPathSlideEncoder()
    layer = enc.blocks[0]
    assert len(enc.blocks) == 12 and enc.embed_dim == 768 and layer.self_attn.heads == 16
    assert layer.ffn.fc1.out_features == 3072 and enc.patch_embed.proj.in_features == 1536
    assert layer.self_attn.dilated_ratios == (1, 2, 4, 8, 16) and enc.norm.eps == 1e-6
    per_layer = 4 * (768 * 768 + 768) + 2 * 768 + (768 * 3072 + 3072) + (3072 * 768 + 768) + 2 * 3072 + 4 * 768
    expected = (1536 * 768 + 768) + 768 + 12 * per_layer + 2 * 768 + 2 * 768
    assert sum(p.numel() for p in enc.parameters()) == expected == 86_330_880
    keys = set(enc.state_dict())  # the published checkpoint's key names
    assert {"patch_embed.proj.weight", "cls_token", "encoder.layers.11.self_attn.inner_attn_ln.weight",
            "encoder.layers.0.ffn.ffn_layernorm.bias", "encoder.layers.0.self_attn_layer_norm.weight",
            "encoder.layers.0.final_layer_norm.weight", "encoder.layer_norm.weight", "norm.weight"} <= keys


def _naive_dilated(q, k, v, segments, ratios):
    """Dilated attention written as torchscale describes it, one (segment, head, query) at a time."""
    _, length, heads, d = q.shape
    outs, lses = [], []
    for sl, r in zip(segments, ratios):
        g = min(sl, length)
        m, hg = math.ceil(g / r), math.ceil(heads / r)
        out, lse = torch.zeros(length, heads, d, dtype=q.dtype), torch.full((length, heads), -math.inf,
                                                                           dtype=q.dtype)
        for s in range(math.ceil(length / g)):
            for j in range(heads):
                local = [pos for pos in range(m * r) if pos % r == j // hg]
                real = [pos < g and s * g + pos < length for pos in local]
                keys = torch.stack([k[0, s * g + pos, j] if ok else torch.zeros(d, dtype=q.dtype)
                                    for pos, ok in zip(local, real)])
                vals = torch.stack([v[0, s * g + pos, j] if ok else torch.zeros(d, dtype=q.dtype)
                                    for pos, ok in zip(local, real)])
                for pos, ok in zip(local, real):
                    if ok:
                        scores = keys @ q[0, s * g + pos, j] / math.sqrt(d)
                        lse[s * g + pos, j] = torch.logsumexp(scores, 0)
                        out[s * g + pos, j] = torch.softmax(scores, 0) @ vals
        outs.append(out)
        lses.append(lse)
    w = torch.softmax(torch.stack(lses), dim=0)
    return sum(wi.unsqueeze(-1) * o for wi, o in zip(w, outs)).unsqueeze(0)


@pytest.mark.parametrize("length,heads,segments,ratios", [
    (11, 4, (4, 8, 32), (1, 2, 4)),        # sequence, segment and ratio padding
    (9, 3, (5, 16), (1, 2)),               # head padding (3 heads, ratio 2)
    (7, 2, (3, 6), (2, 1)),                # several segments with a ratio
])
def test_dilated_attention_matches_a_naive_loop(length, heads, segments, ratios):
    g = torch.Generator().manual_seed(length)
    q, k, v = (torch.randn(1, length, heads, 4, generator=g, dtype=torch.float64) for _ in range(3))
    got = dilated_attention(q, k, v, segments, ratios)
    assert torch.allclose(got, _naive_dilated(q, k, v, segments, ratios), atol=1e-12)
    # one dense branch is ordinary softmax attention
    dense = dilated_attention(q, k, v, (64,), (1,))
    ref = torch.softmax(torch.einsum("bqhd,bkhd->bhqk", q, k) / 2.0, dim=-1)
    assert torch.allclose(dense, torch.einsum("bhqk,bkhd->bqhd", ref, v), atol=1e-12)


def test_slide_encoder_checkpoints_load_strictly(tmp_path, small_gigapath):
    enc = build_slide_encoder(small_gigapath, 12)
    assert enc.frozen and not enc.training and not any(p.requires_grad for p in enc.parameters())
    enc.train()
    assert not enc.training
    x, coords = torch.randn(8, 12), torch.randint(0, 4096, (8, 2))
    with torch.no_grad():
        out = enc(x, coords)
    assert out.shape == (1, 9, 32) and torch.isfinite(out).all()
    # a checkpoint of the architecture (nested under "model", with a wrapper prefix) loads strictly
    good = tmp_path / "slide_encoder.pth"
    torch.save({"model": {f"module.{k}": v for k, v in enc.state_dict().items()}}, good)
    loaded = build_slide_encoder(small_gigapath, 12, good)
    assert loaded.weights_source == str(good) and len(loaded.weights_sha256) == 64 and loaded.frozen
    with torch.no_grad():
        assert torch.equal(loaded(x, coords), out)
    # another architecture's checkpoint: the error names the file and the first offending keys
    wrong = tmp_path / "wrong.pth"
    torch.save(build_slide_encoder("tiny_slide", 1536).state_dict(), wrong)
    with pytest.raises(WeightsError, match=r"wrong\.pth.*gigapath_slide.*missing key\(s\): patch_embed\.proj\."
                                           r"weight.*unexpected key\(s\)") as info:
        build_slide_encoder("gigapath_slide", 1536, wrong)
    assert "prov-gigapath/prov-gigapath" in str(info.value)
    with pytest.raises(WeightsError, match=r"shape mismatch.*patch_embed\.proj\.weight"):
        build_slide_encoder(small_gigapath, 10, good)
    with pytest.raises(WeightsError, match="not downloaded"):
        build_slide_encoder("gigapath_slide", 1536, "hf_hub:prov-gigapath/prov-gigapath")
    with pytest.raises(WeightsError, match="not found"):
        build_slide_encoder("gigapath_slide", 1536, tmp_path / "absent.pth")
    # ModalTune takes the weights through slide_weights
    model = small(slide_encoder=small_gigapath, slide_weights=str(good), heads=2, dims=InputDims(wsi=12))
    assert model.describe()["slide_weights"] == str(good)


def test_tiny_slide_is_seeded_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    a = build_slide_encoder("tiny_slide", 16)
    after_a = torch.rand(3)
    torch.manual_seed(123)
    torch.rand(3)  # a different stream position does not change the encoder
    b = build_slide_encoder("tiny_slide", 16)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    torch.manual_seed(123)
    build_slide_encoder("tiny_slide", 16)
    assert torch.equal(torch.rand(3), after_a)


# ---------------------------------------------------------------------------------------------- published probe


def _probe_data(n: int = 24, seed: int = 0):
    xs = [patient(6 + i % 5, seed=seed * 100 + i) for i in range(n)]
    rng = np.random.default_rng(seed)
    times = rng.uniform(1, 60, n)
    events = (rng.random(n) < 0.6).astype(int)
    labels = np.arange(n) % 3
    return xs, times, events, labels


def test_probe_protocol_fits_the_published_cox_on_frozen_general_features():
    from lifelines import CoxPHFitter

    model = small(TaskSpec.survival(4), probe_penalty=0.1).train()
    xs, times, events, _ = _probe_data()
    before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("probe.")}
    edges = np.array([0.0, 10.0, 25.0, 40.0, np.inf])
    rows = model.fit_direct(xs, times, events, edges=edges)
    assert rows[-1]["chosen"] and rows[-1]["penalty"] == 0.1 and model.training  # mode restored
    # nothing but the probe changed: the adapters are the tuned (here: initial) ones
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    model.eval()
    with torch.no_grad():
        feats = np.stack([model.task_embedding(x, "general").reshape(-1).numpy() for x in xs]).astype(np.float64)
    mean, scale = feats.mean(0), np.where(feats.std(0) > 1e-8, feats.std(0), 1.0)
    frame = __import__("pandas").DataFrame((feats - mean) / scale, columns=[f"p{i}" for i in range(feats.shape[1])])
    frame["time"], frame["event"] = times, events
    reference = CoxPHFitter(penalizer=0.1).fit(frame, "time", "event").params_.to_numpy()
    assert np.allclose(model.probe.weight.numpy()[0], reference, atol=1e-4)
    with torch.no_grad():
        logits = torch.cat([model(x).logits for x in xs])
    assert logits.shape == (24, 4) and torch.isfinite(logits).all()
    # the risk the bins imply orders patients as the Cox linear predictor does
    from pathmm_pipeline.tasks.kinds import risk_scores

    lp = ((feats - mean) / scale) @ reference
    assert np.array_equal(np.argsort(risk_scores(TaskSpec.survival(4), logits.numpy())), np.argsort(lp))
    # a Cox task gets the linear predictor itself; the probe is not inherited by fine-tuning
    cox = small(TaskSpec("survival", 1))
    cox.fit_direct(xs, times, events)
    with torch.no_grad():
        assert np.allclose(torch.cat([cox.eval()(x).logits for x in xs]).numpy().reshape(-1),
                           ((feats - mean) / scale) @ reference, atol=1e-3)
    assert not any(k.startswith("probe.") for k in model.pretrained_state())
    with pytest.raises(ModelConfigError, match="needs protocol 'probe'"):
        small(protocol="finetune").fit_direct(xs, times, events)


def test_probe_protocol_for_classification_and_its_inner_search():
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    xs, times, events, labels = _probe_data(30, seed=2)
    model = small(TaskSpec.classification(3))
    model.fit_direct(xs[:24], times[:24], events[:24], fit_label=labels[:24])
    model.eval()
    with torch.no_grad():
        feats = np.stack([model.task_embedding(x, "general").reshape(-1).numpy() for x in xs])
        logits = torch.cat([model(x).logits for x in xs]).numpy()
    reference = OneVsRestClassifier(LogisticRegression(C=1.0, solver="liblinear", max_iter=200, random_state=0))
    reference.fit(feats[:24], labels[:24])
    assert np.allclose(logits, reference.decision_function(feats), atol=1e-4)
    # binary: one decision function
    binary = small(TaskSpec.binary())
    binary.fit_direct(xs[:24], times[:24], events[:24], fit_label=labels[:24] % 2)
    with torch.no_grad():
        assert binary.eval()(xs[0]).logits.shape == (1, 1)
    # selection inner: C searched on the check patients, refitted on both; the chosen row is last
    tuned = small(TaskSpec.classification(3))
    rows = tuned.fit_direct(xs[:18], times[:18], events[:18], xs[18:24], times[18:24], events[18:24],
                            fit_label=labels[:18], check_label=labels[18:24])
    assert len(rows) == 5 and rows[-1]["chosen"] and rows[-1]["n_fit"] == 24
    assert float(tuned.probe.chosen_penalty) in {1.0 / c for c in (0.01, 0.1, 1.0, 10.0)}
    with pytest.raises(ValueError, match=">= 2 classes"):
        small(TaskSpec.classification(3)).fit_direct(xs[:4], times[:4], events[:4], fit_label=np.zeros(4, int))
