"""mSTAR: the stage-1 aggregator's pretraining objective (finite on mixed modality subsets, decreasing,
reproducible), stage-2 self-taught training on a real pyramidal TIFF slide with the tiny test ViT (the EMA
teacher after one step, weights + provenance written, loaded back through the encoder registry and used by
feature extraction), zero-shot classification by prompts and the few-shot curve. Tiny dims, one thread."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from pathmm_pipeline.core.provenance import read_provenance, verify_provenance
from pathmm_pipeline.downstream.zero_shot import few_shot_curve, zero_shot_classify
from pathmm_pipeline.encoders import get_encoder_spec, load_encoder, read_state_dict, unregister_encoder
from pathmm_pipeline.encoders.zoo import build_vit_tiny_test
from pathmm_pipeline.models import (
    InputDims,
    ModelConfigError,
    PatientInput,
    PretrainBatch,
    TaskSpec,
    build_model,
    model_options,
)
from pathmm_pipeline.models.mstar import MSTAR
from pathmm_pipeline.preprocess.features import ExtractionSettings, TileDataset, extract_features, load_features
from pathmm_pipeline.preprocess.segmentation import SegmentationSettings, segment_slide
from pathmm_pipeline.preprocess.tiling import TilingSettings, load_tiles, tile_slide
from pathmm_pipeline.training.self_taught import (
    SelfTaughtTrainer,
    load_aggregator,
    register_mstar_encoder,
    sample_tiles,
    train_patch_encoder,
)
from pathmm_pipeline.training.settings import SelfTaughtConfig

pytestmark = pytest.mark.usefixtures("torch_one_thread")

DIMS = InputDims(wsi=16, genes=12, report=10, n_cancer_types=2)
SMALL = dict(dim=16, heads=2, proj_dim=8, genomics_hidden=(16,), genomics_dropout=0.0, dropout=0.0)
TINY_VIT = 192  # vit_tiny_test embed_dim


def stage1(dims: InputDims = DIMS, seed: int = 0, **extra) -> MSTAR:
    torch.manual_seed(seed)
    return build_model("mstar", dims, TaskSpec.classification(3), **{**SMALL, **extra})  # type: ignore[return-value]


def mixed_batch(seed: int = 0) -> PretrainBatch:
    """Eight patients: all three modalities, slide + report only, slide + genes only, slide only, and a
    slide-less genomics-only patient (left out of every term: it has no report to pair its RNA with)."""
    g = torch.Generator().manual_seed(seed)

    def patient(n: int, wsi: bool = True, genes: bool = True, report: bool = True) -> PatientInput:
        return PatientInput(wsi=torch.randn(n, DIMS.wsi, generator=g) if wsi else None,
                            genes=torch.randn(DIMS.genes, generator=g) if genes else None,
                            report=torch.randn(DIMS.report, generator=g) if report else None)

    inputs = [patient(5), patient(7), patient(4, genes=False), patient(9, report=False), patient(6),
              patient(3, genes=False, report=False), patient(8, report=False), patient(5, wsi=False)]
    return PretrainBatch(inputs, torch.tensor([0, 1, 0, 1, 0, 1, 1, 0]))


# ---------------------------------------------------------------------------------------------- stage 1


def test_pretraining_loss_terms_on_mixed_modality_subsets():
    model = stage1()
    terms = model.pretraining_loss(mixed_batch())
    assert set(terms) == {"wsi_report", "wsi_genomics", "report_genomics", "triplet", "loss"}
    assert all(torch.isfinite(v) and v.dim() == 0 for v in terms.values())
    assert all(float(terms[k].detach()) > 0 for k in ("wsi_report", "wsi_genomics", "report_genomics", "triplet"))
    values = {k: float(v.detach()) for k, v in terms.items()}
    parts = values["wsi_report"] + values["wsi_genomics"] + values["report_genomics"] + values["triplet"]
    assert math.isclose(values["loss"], parts, rel_tol=1e-6)
    terms["loss"].backward()
    assert model.logit_scale.grad is not None and model.aggregator.fc.weight.grad is not None
    assert model.report_projection.weight.grad.abs().sum() > 0
    assert model.classifier.weight.grad is None  # the task head takes no part in pretraining
    # reproducible, and the weights apply to the named terms
    again = stage1().pretraining_loss(mixed_batch())
    assert all(torch.equal(terms[k].detach(), again[k].detach()) for k in terms)
    weighted = stage1(w_report=2.0, w_genomics=0.0, w_triplet=0.5, w_report_genomics=3.0).pretraining_loss(
        mixed_batch())
    assert torch.allclose(weighted["wsi_report"], 2 * terms["wsi_report"].detach())
    assert float(weighted["wsi_genomics"].detach()) == 0.0
    assert torch.allclose(weighted["triplet"], 0.5 * terms["triplet"].detach())
    assert torch.allclose(weighted["report_genomics"], 3 * terms["report_genomics"].detach())


def test_the_rna_encoder_is_a_performer_over_gene_tokens_and_an_snn_remains_an_option():
    from pathmm_pipeline.models.mstar import PerformerGeneEncoder

    performer = stage1()
    assert isinstance(performer.genomics_encoder[0], PerformerGeneEncoder)
    assert performer.genomics_encoder[0].gene_embedding.num_embeddings == DIMS.genes
    genes = torch.randn(3, DIMS.genes)
    assert performer.genomics_projection(genes).shape == (3, 8)
    # one gene's value changes its own token and so the pooled embedding: the encoder reads gene identity
    moved = genes.clone()
    moved[:, 4] += 3.0
    assert not torch.allclose(performer.genomics_projection(genes), performer.genomics_projection(moved))
    snn_model = stage1(genomics_encoder="snn")
    assert not isinstance(snn_model.genomics_encoder[0], PerformerGeneEncoder)
    assert snn_model.genomics_projection(genes).shape == (3, 8)
    with pytest.raises(ModelConfigError, match="genomics_encoder"):
        stage1(genomics_encoder="transformer")


def test_slide_less_patients_with_report_and_rna_enter_the_report_rna_term_only():
    model = stage1()
    batch = mixed_batch()
    slide_less = PretrainBatch([x.without("wsi") for x in batch.inputs[:3]], torch.tensor([0, 1, 0]))
    terms = model.pretraining_loss(slide_less)
    assert float(terms["wsi_report"].detach()) == 0.0 and float(terms["triplet"].detach()) == 0.0
    assert float(terms["report_genomics"].detach()) > 0 and terms["loss"].requires_grad
    terms["loss"].backward()
    assert model.genomics_encoder[0].gene_embedding.weight.grad.abs().sum() > 0
    assert model.aggregator.fc.weight.grad is None


def test_pairs_with_fewer_than_two_patients_are_skipped():
    model = stage1()
    batch = mixed_batch()
    only_one_report = PretrainBatch([x if i == 0 else x.without("report") for i, x in enumerate(batch.inputs)],
                                    batch.cancer_type)
    terms = model.pretraining_loss(only_one_report)
    assert float(terms["wsi_report"].detach()) == 0.0 and float(terms["wsi_genomics"].detach()) > 0
    slide_less = PretrainBatch([x.without("wsi").without("report") for x in batch.inputs[:3]],
                               torch.tensor([0, 1, 0]))
    zero = model.pretraining_loss(slide_less)
    assert float(zero["loss"].detach()) == 0.0 and zero["loss"].requires_grad
    one_type = PretrainBatch(batch.inputs, torch.zeros(8, dtype=torch.long))
    assert float(model.pretraining_loss(one_type)["triplet"].detach()) == 0.0


def test_pretraining_loss_decreases():
    model = stage1()
    batch = mixed_batch(seed=3)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        terms = model.pretraining_loss(batch)
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()
        losses.append(float(terms["loss"].detach()))
    assert np.isfinite(losses).all()
    assert np.mean(losses[-3:]) < 0.6 * np.mean(losses[:3]), losses


def test_fine_tuning_forward_embeddings_and_options():
    model = stage1()
    x = mixed_batch().inputs[0]
    out = model(x)
    assert out.logits.shape == (1, 3) and out.embedding.shape == (1, 16) and out.extras["used"] == ["wsi"]
    assert torch.allclose(model.slide_embedding(x), out.embedding)
    cls, patches = model.aggregate(x.wsi)
    assert cls.shape == (1, 16) and patches.shape == (5, 16) and model.reembed_patches(x.wsi).shape == (5, 16)
    assert model.patch_projection(x.wsi).shape == (5, 16)
    assert model.slide_projection(cls).shape == (1, 8) and model.text_projection(torch.randn(4, 10)).shape == (4, 8)
    assert not any(k.startswith("classifier.") for k in model.pretrained_state())
    assert {"dim", "proj_dim", "w_report", "w_genomics", "w_triplet", "init_temperature"} <= set(model_options("mstar"))
    assert MSTAR.pretrainable and MSTAR.requires == {"wsi"} and MSTAR.genomics_field == "genes"
    assert math.isclose(float(model.logit_scale.detach()), math.log(1 / 0.07), rel_tol=1e-6)
    wsi_only = stage1(InputDims(wsi=16))
    assert wsi_only.modalities == {"wsi"}
    with pytest.raises(ModelConfigError, match="no text projection"):
        wsi_only.text_projection(torch.randn(2, 10))
    with pytest.raises(ModelConfigError, match="must include 'wsi'"):
        stage1(modalities=["genomics", "report"])
    with pytest.raises(Exception, match="requires wsi"):
        model(x.without("wsi"))


# ---------------------------------------------------------------------------------------------- stage 2


@pytest.fixture(scope="module")
def slide_tiles(slide_factory, tmp_path_factory):
    slide = slide_factory("mstar", size=(1792, 1536), seed=2)
    out = tmp_path_factory.mktemp("mstar")
    segment_slide(slide.path, out / "seg.zarr", out / "seg.geojson", out / "seg.png", SegmentationSettings(),
                  fallback=False)
    tile_slide(slide.path, out / "seg.zarr", out / "tiles.zarr", TilingSettings(), fallback=False)
    assert len(load_tiles(out / "tiles.zarr").coords) >= 6
    return slide.path, out / "tiles.zarr", out


@pytest.fixture(scope="module")
def aggregator_checkpoint(tmp_path_factory):
    """A stage-1 pretraining checkpoint (the harness's format) of an mSTAR model on 192-d tiny-ViT features."""
    from pathmm_pipeline.training.pretrain import PretrainConfig, PretrainResult, save_pretrained

    dims = InputDims(wsi=TINY_VIT, genes=12, report=10)
    options = {**SMALL}
    model = stage1(dims)
    result = PretrainResult("mstar", model, pd.DataFrame([{"epoch": 0, "loss": 1.0}]), ["P1"], [], 0.1, 0.0, None,
                            "cpu")
    config = PretrainConfig(model_options=options, progress=False)
    return save_pretrained(tmp_path_factory.mktemp("stage1") / "pretrained.pt", result, config, dims, {})


def tiny_config(**extra) -> SelfTaughtConfig:
    values = dict(epochs=3, lr=1e-3, batch_size=4, tiles_per_slide=6, momentum=0.9, progress=False, device="cpu",
                  threads=1)
    values.update(extra)
    return SelfTaughtConfig(**values)


def read_tiles(slide_path, tiles_store, k: int = 6) -> torch.Tensor:
    tiles = load_tiles(tiles_store)
    spec = get_encoder_spec("vit_tiny_test")
    dataset = TileDataset(slide_path, tiles.geometry, tiles.coords, spec.input_size, spec.interpolation)
    index = sample_tiles(len(dataset), k, np.random.default_rng(0))
    return torch.stack([dataset[int(i)] for i in index])


def test_one_step_moves_the_student_and_the_teacher_is_its_ema(slide_tiles, aggregator_checkpoint):
    slide_path, tiles_store, _ = slide_tiles
    aggregator, _ = load_aggregator(aggregator_checkpoint)
    frozen = {k: v.clone() for k, v in aggregator.state_dict().items()}
    torch.manual_seed(0)
    student = load_encoder("vit_tiny_test", None).model
    trainer = SelfTaughtTrainer(student, aggregator, get_encoder_spec("vit_tiny_test"), tiny_config(), "cpu")
    teacher0 = {k: v.detach().clone() for k, v in trainer.teacher.named_parameters()}
    terms = trainer.step(read_tiles(slide_path, tiles_store))
    assert 0 < terms["patch"] < 2 and terms["loss"] == terms["patch"]  # not zero although student = teacher
    student1 = dict(trainer.student.named_parameters())
    teacher1 = dict(trainer.teacher.named_parameters())
    for name in ("patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "norm.bias"):
        assert not torch.equal(student1[name].detach(), teacher0[name])
        expected = 0.9 * teacher0[name] + 0.1 * student1[name].detach()
        torch.testing.assert_close(teacher1[name], expected, rtol=0, atol=1e-7)
    assert not any(p.requires_grad for p in trainer.teacher.parameters())
    assert all(torch.equal(v, frozen[k]) for k, v in aggregator.state_dict().items())  # the aggregator is frozen
    with pytest.raises(ValueError, match="192-d"):
        SelfTaughtTrainer(build_vit_tiny_test(), stage1(), get_encoder_spec("vit_tiny_test"), tiny_config())


def test_self_taught_training_writes_weights_that_extraction_can_use(slide_tiles, aggregator_checkpoint, tmp_path):
    slide_path, tiles_store, _ = slide_tiles
    slides = [(slide_path, tiles_store, "P1")]
    path = train_patch_encoder(slides, aggregator_checkpoint, "vit_tiny_test", tiny_config(), tmp_path / "st.pth",
                               base_weights=None)
    assert path == tmp_path / "st.pth" and path.is_file()
    assert not list(tmp_path.glob("*.tmp-*"))
    record = read_provenance(path)
    assert record["stage"] == "mstar_self_taught"
    assert set(record["inputs"]) == {"slide_0", "tiles_0", "aggregator"}
    assert record["params"]["config"]["momentum"] == 0.9 and record["params"]["base_encoder"] == "vit_tiny_test"
    history = record["extra"]["history"]
    assert [h["step"] for h in history] == [1, 2, 3] and all(h["n_tiles"] == 6 for h in history)
    assert all(np.isfinite(h["loss"]) for h in history)
    assert verify_provenance(path) == []

    # the weights are the tiny ViT's own state dict: they load strictly, and differ from the seeded start
    state = read_state_dict(path)
    torch.manual_seed(0)
    start = build_vit_tiny_test()
    assert set(state) == set(start.state_dict())
    assert not torch.equal(state["blocks.0.attn.qkv.weight"], start.state_dict()["blocks.0.attn.qkv.weight"])
    start.load_state_dict(state, strict=True)

    # deterministic under the seed
    again = train_patch_encoder(slides, aggregator_checkpoint, "vit_tiny_test", tiny_config(), tmp_path / "b.pth",
                                base_weights=None)
    assert all(torch.equal(v, read_state_dict(again)[k]) for k, v in state.items())

    # registered as an encoder whose default weights are that file, and used by feature extraction
    spec = register_mstar_encoder("mstar_vit_tiny_test", "vit_tiny_test", path)
    try:
        assert spec.default_weights == str(path.absolute()) and spec.embed_dim == TINY_VIT
        loaded = load_encoder("mstar_vit_tiny_test")
        assert loaded.weights_source == str(path.absolute())
        x = torch.randn(2, 3, 64, 64)
        start.eval()
        torch.testing.assert_close(loaded.model(x), start(x))
        settings = ExtractionSettings(encoder="mstar_vit_tiny_test", weights=str(path), batch_size=8, num_workers=0,
                                      dtype="float32", threads=1)  # extraction sets torch's thread count
        n = extract_features(slide_path, tiles_store, tmp_path / "f.zarr", settings)
        store = load_features(tmp_path / "f.zarr")
        assert store.features.shape == (n, TINY_VIT) and np.isfinite(store.features).all()
        assert store.encoder["name"] == "mstar_vit_tiny_test" and read_provenance(tmp_path / "f.zarr")["inputs"][
            "weights"]["path"] == str(path.resolve())
    finally:
        unregister_encoder("mstar_vit_tiny_test")


def test_slide_term_and_config_errors(slide_tiles, aggregator_checkpoint):
    slide_path, tiles_store, _ = slide_tiles
    aggregator, _ = load_aggregator(aggregator_checkpoint)
    torch.manual_seed(0)
    trainer = SelfTaughtTrainer(build_vit_tiny_test(), aggregator, get_encoder_spec("vit_tiny_test"),
                                tiny_config(w_slide=1.0, similarity="mse"), "cpu")
    tiles = read_tiles(slide_path, tiles_store)
    first = trainer.step(tiles)
    assert first["slide"] == pytest.approx(0.0, abs=1e-5)  # student = teacher before the first update
    second = trainer.step(tiles)
    assert second["slide"] > 0 and np.isfinite(second["loss"])
    with pytest.raises(ValueError, match="similarity"):
        SelfTaughtConfig(similarity="l1")
    with pytest.raises(ValueError, match="momentum"):
        SelfTaughtConfig(momentum=1.5)
    with pytest.raises(ValueError, match="torch.save"):
        train_patch_encoder([(slide_path, tiles_store, "P1")], aggregator, "vit_tiny_test", tiny_config(),
                            "weights.safetensors")


# ---------------------------------------------------------------------------------------------- zero / few shot


def test_zero_shot_with_prompts_aligned_to_planted_embeddings():
    dim = 10
    model = stage1(InputDims(wsi=16, report=dim), dim=dim, heads=2, proj_dim=dim)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=torch.Generator().manual_seed(1)))
    with torch.no_grad():  # the same rotation on both sides: cosine similarities are preserved
        model.wsi_projection.weight.copy_(q)
        model.wsi_projection.bias.zero_()
        model.report_projection.weight.copy_(q)
        model.report_projection.bias.zero_()
    g = torch.Generator().manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(3, dim, generator=g), dim=-1)
    classes = ["tumour", "stroma", "necrosis"]
    truth = [0, 1, 2, 2, 1, 0, 0, 2, 1, 1]
    slides = centres[truth] + 0.15 * torch.randn(len(truth), dim, generator=g)
    prompts = {c: [f"an H&E image of {c}", f"{c} tissue", f"a slide showing {c}"] for c in classes}
    table = {p: centres[i] + 0.2 * torch.randn(dim, generator=g) for i, c in enumerate(classes) for p in prompts[c]}

    def text_encoder(texts: list[str]) -> np.ndarray:
        return torch.stack([table[t] for t in texts]).numpy()

    result = zero_shot_classify(slides, prompts, text_encoder, model)
    assert result.classes == classes and result.predicted == [classes[i] for i in truth]
    assert result.scores.shape == (10, 3) and np.all(np.abs(result.scores) <= 1 + 1e-6)
    np.testing.assert_allclose(result.probabilities.sum(1), 1.0, rtol=1e-5)
    predicted, scores = result
    assert predicted == result.predicted
    shared = model.slide_projection(slides).detach()
    assert zero_shot_classify(shared, prompts, text_encoder, model, project_slides=False).predicted == predicted
    with pytest.raises(ValueError, match="no prompt"):
        zero_shot_classify(slides, {"a": []}, text_encoder, model)


def test_few_shot_curve_on_separable_data():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16)) * 1.2
    def draw(n):
        y = np.repeat(np.arange(3), n)
        return centres[y] + rng.normal(size=(len(y), 16)), np.array(["a", "b", "c"])[y]
    x_train, y_train = draw(20)
    x_test, y_test = draw(30)
    curve = few_shot_curve(x_train, y_train, x_test, y_test, ks=(1, 2, 4, 8), seeds=5)
    assert list(curve.columns) == ["k", "n_train", "balanced_accuracy_mean", "balanced_accuracy_std", "n_runs"]
    assert curve.k.tolist() == [1, 2, 4, 8] and curve.n_train.tolist() == [3, 6, 12, 24]
    acc = curve.balanced_accuracy_mean.to_numpy()
    assert acc[-1] >= acc[0] and acc[-1] > 0.9 and acc[0] > 1 / 3
    assert np.all(np.diff(acc) > -0.05)  # more shots never hurt much
    assert (curve.balanced_accuracy_std >= 0).all() and (curve.n_runs == 5).all()
    pd.testing.assert_frame_equal(curve, few_shot_curve(x_train, y_train, x_test, y_test, ks=(1, 2, 4, 8), seeds=5))
    with pytest.raises(ValueError, match="two classes"):
        few_shot_curve(x_train[:5], ["a"] * 5, x_test, y_test)


def test_the_slide_path_starts_the_same_whichever_pretraining_towers_exist():
    full, slide_only = stage1(), stage1(modalities=["wsi"])
    assert not hasattr(slide_only, "genomics_encoder") and hasattr(full, "genomics_encoder")
    for name, value in slide_only.state_dict().items():
        assert torch.equal(value, full.state_dict()[name]), name
