"""ALTER and MICE through the harness on the toy cohort of test_training (planted survival signal in the
patch features and gene G00): pretraining lowers its objective, fine-tuning from the pretrained checkpoint
finds the signal on held-out patients, every modality subset trains and predicts, and the data-efficiency
curve runs. Small model sizes and one thread keep the file to about a minute on two cores."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from toy_cohort import ToyCohort, build_toy_cohort

from pathmm_pipeline.cohort.splits import Fold
from pathmm_pipeline.downstream.kinds import data_efficiency, patient_embeddings, subsample
from pathmm_pipeline.evaluation.predict import predict_logits
from pathmm_pipeline.models import MODALITIES
from pathmm_pipeline.stats.metrics import c_index
from pathmm_pipeline.tasks.kinds import risk_scores
from pathmm_pipeline.training.finetune import train_fold
from pathmm_pipeline.training.pretrain import PretrainConfig, pretrain
from pathmm_pipeline.training.settings import TrainConfig

pytestmark = pytest.mark.usefixtures("torch_one_thread")

SMALL = {
    "alter": {"dim": 16, "heads": 2, "layers": 1, "n_experts": 2, "top_k": 1, "n_features": 8, "region_size": 2,
              "dropout": 0.0},
    "mice": {"dim": 16, "n_overlap": 2, "top_k": 1, "fusion_layers": 1, "fusion_heads": 2, "dropout": 0.0},
}
#: pretraining schedule per method (MICE's supervised pretraining overfits 60 patients at a higher rate) and the
#: held-out C-index each fine-tuned model must beat (measured with the epoch chosen on an inner split of the
#: training patients, never on the held-out ones: ALTER 0.69, MICE 0.622; chance 0.5)
PRETRAIN = {"alter": {"epochs": 5, "lr": 2e-3}, "mice": {"epochs": 3, "lr": 5e-4}}
PLANTED_MIN = {"alter": 0.65, "mice": 0.6}


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> ToyCohort:
    return build_toy_cohort(tmp_path_factory.mktemp("toy_methods"))


def _fold(toy: ToyCohort) -> Fold:
    ids = toy.manifest.patient_id.drop_duplicates().tolist()
    return Fold(0, ids[:60], ids[60:])


@pytest.fixture(scope="module")
def pretrained(toy: ToyCohort, tmp_path_factory) -> dict[str, object]:
    out = {}
    cohort = toy.cohort()
    for name in SMALL:
        folder = tmp_path_factory.mktemp(f"pre_{name}")
        config = PretrainConfig(batch_size=12, progress=False, model_options=SMALL[name], **PRETRAIN[name])
        out[name] = (pretrain(name, cohort, _fold(toy).train, config, out_dir=folder), folder / "pretrained.pt")
    return out


@pytest.mark.parametrize("name", list(SMALL))
def test_pretraining_lowers_its_objective_on_the_cohort(pretrained, name: str) -> None:
    history = pretrained[name][0].history
    assert np.isfinite(history.loss).all()
    assert history.loss.iloc[-1] < history.loss.iloc[0], history


@pytest.mark.parametrize("name", list(SMALL))
def test_fine_tuned_model_finds_the_planted_signal_on_held_out_patients(toy: ToyCohort, pretrained,
                                                                        name: str) -> None:
    cohort = toy.cohort()
    fold = _fold(toy)
    config = TrainConfig(epochs=8, lr=1e-3, grad_accum=8, progress=False, patience=None, n_bins=4,
                         model_options=SMALL[name], selection="inner")
    result = train_fold(name, "survival", cohort, fold, config, pretrained=pretrained[name][1])
    assert result.inner_val_patients and not set(result.inner_val_patients) & set(fold.val)
    view = cohort.with_scaler(result.scaler)
    kept, logits, _ = predict_logits(result.model, view, fold.val)
    times, events = view.survival(kept)
    score = c_index(times, events, risk_scores(result.task, logits))
    assert len(kept) == 30 and score > PLANTED_MIN[name], score


@pytest.mark.parametrize("name", list(SMALL))
def test_every_modality_subset_trains_and_predicts(toy: ToyCohort, name: str) -> None:
    """A cohort restricted to each non-empty modality subset: one epoch of training, then predictions for
    every validation patient that has one of those modalities."""
    fold = _fold(toy)
    for k in (1, 2, 3):
        for subset in itertools.combinations(MODALITIES, k):
            cohort = toy.cohort()
            dims_cohort = cohort
            config = TrainConfig(epochs=1, lr=1e-3, grad_accum=16, progress=False, patience=None, n_bins=2,
                                 model_options={**SMALL[name], "modalities": frozenset(subset)})
            result = train_fold(name, "survival", dims_cohort, fold, config)
            assert set(result.model.modalities) == set(subset)
            view = cohort.with_scaler(result.scaler) if result.scaler is not None else cohort
            kept, logits, _ = predict_logits(result.model, view, fold.val)
            assert kept and np.isfinite(logits).all(), subset


def test_report_free_embeddings_skip_patients_left_without_a_modality(toy: ToyCohort, pretrained) -> None:
    model = pretrained["alter"][0].model
    cohort = toy.cohort().for_fold(_fold(toy).train)
    ids = ["P000", "P007"]  # P007 has no slide; it still has genomics
    kept, x = patient_embeddings(model, cohort, ids, withhold=("report",))
    assert kept == ids and x.shape == (2, model.embedding_dim)
    kept, _ = patient_embeddings(model, cohort, ["P007"], withhold=("report", "genomics"))
    assert kept == []


def test_data_efficiency_curve_per_fraction_init_and_cancer_type(toy: ToyCohort, pretrained) -> None:
    cohort = toy.cohort()
    fold = _fold(toy)
    config = TrainConfig(epochs=2, lr=1e-3, grad_accum=8, progress=False, patience=None, n_bins=2,
                         model_options=SMALL["mice"])
    table = data_efficiency("mice", "survival", cohort, fold, config, pretrained=pretrained["mice"][1],
                            fractions=(0.25, 1.0), label="mice_demo").table
    assert set(table.init) == {"pretrained", "scratch"}
    assert set(table.cancer_type) == {"all", "A", "B"}
    counts = table[(table.cancer_type == "all") & (table.init == "scratch")].set_index("fraction").n_train
    assert counts[0.25] < counts[1.0] == 60
    assert table.value.notna().all() and (table.model == "mice_demo").all()
    sub = subsample(fold.train, cohort, 0.1, seed=0)
    assert len(sub) >= 4 and set(sub) <= set(fold.train)  # at least 2 per cancer type
    assert sub == subsample(fold.train, cohort, 0.1, seed=0)


def test_linear_probe_on_frozen_general_prompt_features(toy: ToyCohort) -> None:
    """ModalTune's published protocol: tune, then a Cox model on the general-prompt features."""
    from pathmm_pipeline.downstream.kinds import linear_probe, probe_features

    cohort = toy.cohort()
    fold = _fold(toy)
    options = {"n_pathway_tokens": 4, "gene_dim": 8, "mixer_depth": 1, "cancer_type_names": ["A", "B"]}
    result = pretrain("modaltune", cohort, fold.train, PretrainConfig(epochs=1, batch_size=12, progress=False,
                                                                      model_options=options))
    view = cohort.for_fold(fold.train)
    kept, features = probe_features(result.model, view, fold.val)
    assert "P007" not in kept  # no slide: ModalTune requires one
    assert features.shape == (len(kept), result.model.embedding_dim)
    table = linear_probe(result.model, view, fold, "survival", label="modaltune_demo").table
    row = table.iloc[0]
    assert row.probe == "cox" and row.metric == "c_index" and 0 <= row.value <= 1 and row.n_val == 30
    assert row.selection == "last" and row.penalty == 0.5
    # under "inner" the penalty is searched on an inner split of the training patients, then refitted on all
    inner = linear_probe(result.model, view, fold, "survival", selection="inner")
    row = inner.table.iloc[0]
    assert row.selection == "inner" and row.penalty in (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0) and row.n_inner_val > 0
    assert inner.fitted["cox.params"].shape == (result.model.embedding_dim,)


def test_zero_and_few_shot_cancer_type_in_the_aligned_space(toy: ToyCohort) -> None:
    from pathmm_pipeline.downstream.kinds import zero_and_few_shot

    cohort = toy.cohort()
    fold = _fold(toy)
    result = pretrain("mstar", cohort, fold.train, PretrainConfig(
        epochs=1, batch_size=12, progress=False, model_options={"dim": 16, "proj_dim": 8, "heads": 2}))
    prompts = {"A": ["a slide of tumour type A"], "B": ["a slide of tumour type B"]}
    def fake_text_encoder(texts):  # the toy's reports are 8-d random vectors: prompts in the same space
        return np.stack([np.random.default_rng(len(t)).normal(size=8) for t in texts]).astype(np.float32)

    out = zero_and_few_shot(result.model, cohort.for_fold(fold.train), fold, fake_text_encoder, ks=(1, 2),
                            seeds=2, prompts=prompts, label="mstar_demo")
    table = out.table
    assert len([k for k in out.fitted if k.endswith(".coef")]) == 2 * 2  # one classifier per k and seed
    assert list(table.setting) == ["zero-shot", "few-shot", "few-shot"]
    assert table.balanced_accuracy.between(0, 1).all() and (table.model == "mstar_demo").all()
    with pytest.raises(ValueError, match="no zero-shot prompts"):
        zero_and_few_shot(result.model, cohort.for_fold(fold.train), fold, prompts={"A": ["x"]})


#: seed methods II at toy size and the held-out C-index each must beat (measured: 0.675, 0.852, 0.801)
SMALL_II = {
    "umeml": ({"dim": 32, "heads": 2, "proto_layers": 1, "omic_layers": 1, "decoder_layers": 1, "dropout": 0.0}, 0.62),
    "modaltune": ({"n_pathway_tokens": 4, "gene_dim": 8, "mixer_depth": 1, "dropout": 0.0}, 0.7),
    "mstar": ({"dim": 16, "proj_dim": 8, "heads": 2, "dropout": 0.0}, 0.7),
}


@pytest.mark.parametrize("name", list(SMALL_II))
def test_seed_methods_ii_find_the_planted_signal_on_held_out_patients(toy: ToyCohort, name: str) -> None:
    options, minimum = SMALL_II[name]
    cohort = toy.cohort()
    fold = _fold(toy)
    config = TrainConfig(epochs=8, lr=1e-3, grad_accum=8, progress=False, patience=None, n_bins=4,
                         model_options=options)
    result = train_fold(name, "survival", cohort, fold, config)
    view = cohort.with_scaler(result.scaler) if result.scaler is not None else cohort
    kept, logits, _ = predict_logits(result.model, view, fold.val)
    times, events = view.survival(kept)
    score = c_index(times, events, risk_scores(result.task, logits))
    assert len(kept) == 30 and score > minimum, score
