"""The pretraining stage on the toy cohort of test_training: corpus from the fold's training patients only,
an external slide-less cohort aligned to the cohort's genes, the checkpoint with provenance, fine-tuning that
starts from it (and refuses one of another model or other dims)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from toy_cohort import D_WSI, N_GENES, ToyCohort, build_toy_cohort, expression_frame, genomics_store

from pathmm_pipeline.cohort.splits import Fold
from pathmm_pipeline.core.errors import InputError
from pathmm_pipeline.core.provenance import read_provenance, verify_provenance
from pathmm_pipeline.models import (
    InputDims,
    ModelOutput,
    PathmmModel,
    PretrainBatch,
    TaskSpec,
    register_model,
    unregister_model,
)
from pathmm_pipeline.models.checkpoint import read_checkpoint
from pathmm_pipeline.models.objectives import symmetric_info_nce
from pathmm_pipeline.training.finetune import train_fold
from pathmm_pipeline.training.pretrain import (
    PretrainConfig,
    align_genomics,
    apply_pretrained,
    external_cohort,
    pretrain,
    read_pretrained,
)
from pathmm_pipeline.training.settings import TrainConfig

pytestmark = pytest.mark.usefixtures("torch_one_thread")


class TinyContrastive(PathmmModel):
    """Mean-pooled WSI and a linear gene encoder, aligned by InfoNCE; records every batch it pretrains on."""

    uses = frozenset({"wsi", "genomics"})
    requires = frozenset()
    genomics_field = "genes"
    pretrainable = True
    seen: list[PretrainBatch] = []

    def __init__(self, dims: InputDims, task: TaskSpec, dim: int = 8) -> None:
        super().__init__(dims, task)
        self.wsi_enc = nn.Linear(dims.wsi, dim)
        self.gene_enc = nn.Linear(dims.genes, dim)
        self.classifier = nn.Linear(dim, task.n_outputs)
        self.embedding_dim = dim

    def embed(self, x) -> dict[str, torch.Tensor]:
        out = {}
        if x.wsi is not None:
            out["wsi"] = self.wsi_enc(self.wsi_features(x)).mean(0, keepdim=True)
        if x.genes is not None:
            out["genomics"] = self.gene_enc(self.gene_vector(x))
        return out

    def forward(self, x) -> ModelOutput:
        present = self.check_input(x)
        z = torch.stack(list(self.embed(x).values())).mean(0)
        return ModelOutput(self.classifier(z), z, {"present": present, "missing": []})

    def pretraining_loss(self, batch: PretrainBatch) -> dict[str, torch.Tensor]:
        TinyContrastive.seen.append(batch)
        pairs = [self.embed(x) for x in batch.inputs]
        both = [p for p in pairs if len(p) == 2]
        loss = symmetric_info_nce(torch.cat([p["wsi"] for p in both]), torch.cat([p["genomics"] for p in both]), 0.0)
        return {"contrastive": loss, "loss": loss}


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> ToyCohort:
    return build_toy_cohort(tmp_path_factory.mktemp("toy_pretrain"))


@pytest.fixture(autouse=True)
def tiny_model():
    register_model("tiny_contrastive")(TinyContrastive)
    TinyContrastive.seen = []
    yield
    unregister_model("tiny_contrastive")


@pytest.fixture(scope="module")
def external(toy: ToyCohort, tmp_path_factory) -> tuple[pd.DataFrame, object]:
    """40 slide-less patients with expression (genes in another order, one gene missing) and survival."""
    root = tmp_path_factory.mktemp("external")
    risk = pd.Series(np.random.default_rng(5).normal(0, 1, 40), index=[f"X{i:03d}" for i in range(40)])
    frame = expression_frame(risk, seed=9).iloc[:, ::-1].drop(columns=["G05"])
    store, csv = genomics_store(root, frame, toy.gmts, "external")
    table = pd.DataFrame({"patient_id": risk.index, "cancer_type": ["A", "B"] * 20,
                          "survival_time": np.linspace(5, 60, 40), "survival_event": [1, 0] * 20,
                          "expression_path": csv.name})
    table.to_csv(root / "patients.csv", index=False)
    return root / "patients.csv", store


def _fold(toy: ToyCohort) -> Fold:
    ids = toy.manifest.patient_id.drop_duplicates().tolist()
    return Fold(0, ids[:60], ids[60:])


def test_pretraining_sees_training_and_external_patients_only_and_writes_an_audited_checkpoint(
        toy: ToyCohort, external, tmp_path) -> None:
    cohort = toy.cohort()
    fold = _fold(toy)
    ext = external_cohort(external[0], external[1], cohort, exclude=cohort.patient_ids)
    assert len(ext) == 40 and ext.input_dims().genes == N_GENES
    assert not any(ext.presence(p)["wsi"] for p in ext.patient_ids)
    config = PretrainConfig(epochs=4, batch_size=10, lr=1e-2, progress=False, model_options={"dim": 8})
    result = pretrain("tiny_contrastive", cohort, fold.train, config, external=ext, out_dir=tmp_path,
                      split_file=None)
    seen = {id(x) for b in TinyContrastive.seen for x in b.inputs}
    assert len(seen) == 4 * (60 + 40 - 0)  # every corpus patient once per epoch (each has a modality)
    sizes = sorted({len(b) for b in TinyContrastive.seen})
    assert max(sizes) == 10
    # survival bins for supervised objectives: known for everyone here
    assert all(bool((b.bins >= 0).all()) for b in TinyContrastive.seen)
    history = result.history
    assert list(history.columns[:3]) == ["epoch", "contrastive", "loss"]
    assert history.loss.iloc[-1] < history.loss.iloc[0]

    payload = read_pretrained(tmp_path / "pretrained.pt")
    assert payload["corpus"]["patients"] == fold.train
    assert set(fold.val).isdisjoint(payload["corpus"]["patients"])
    assert not any(k.startswith("classifier.") for k in payload["state_dict"])
    record = read_provenance(tmp_path / "pretrained.pt")
    assert record["stage"] == "pretrain" and "external:genomics" in record["inputs"]
    assert verify_provenance(tmp_path / "pretrained.pt") == []
    assert (tmp_path / "pretrain_log.csv").is_file()


def test_external_genes_are_aligned_to_the_cohort_store(toy: ToyCohort, external) -> None:
    cohort = toy.cohort()
    ext = external_cohort(external[0], external[1], cohort)
    assert ext.genomics.genes == cohort.genomics.genes
    assert np.isnan(ext.genomics.frame()["G05"]).all()  # the gene the external matrix lacks
    from pathmm_pipeline.genomics.stage import load_genomics
    raw = load_genomics(external[1])
    aligned = align_genomics(raw, cohort.genomics)
    assert aligned.frame().loc["X010", "G08"] == raw.frame().loc["X010", "G08"]


def test_fine_tuning_starts_from_the_pretrained_weights_and_records_them(toy: ToyCohort, tmp_path) -> None:
    cohort = toy.cohort()
    fold = _fold(toy)
    pre = pretrain("tiny_contrastive", cohort, fold.train,
                   PretrainConfig(epochs=2, batch_size=8, progress=False, model_options={"dim": 8}),
                   out_dir=tmp_path / "pre")
    model = pre.model
    fresh_cfg = TrainConfig(epochs=1, lr=1e-12, grad_accum=8, progress=False, model_options={"dim": 8}, patience=None)
    result = train_fold("tiny_contrastive", "survival", cohort, fold, fresh_cfg, out_dir=tmp_path / "ft",
                        pretrained=tmp_path / "pre" / "pretrained.pt")
    # with a vanishing learning rate the encoders are still the pretrained ones
    assert torch.allclose(result.model.wsi_enc.weight, model.wsi_enc.weight, atol=1e-6)
    payload = read_checkpoint(tmp_path / "ft" / "checkpoint.pt")
    assert "pretrained" in payload["provenance"]["inputs"]
    assert payload["provenance"]["extra"]["pretrained"]["n_loaded"] == 4


def test_pretrained_checkpoint_of_other_dims_or_model_is_refused(toy: ToyCohort, tmp_path) -> None:
    cohort = toy.cohort()
    fold = _fold(toy)
    pretrain("tiny_contrastive", cohort, fold.train,
             PretrainConfig(epochs=1, batch_size=8, progress=False, model_options={"dim": 8}), out_dir=tmp_path)
    other = TinyContrastive(InputDims(wsi=D_WSI + 1, genes=N_GENES), TaskSpec.survival(4), dim=8)
    with pytest.raises(ValueError, match="other input dims"):
        apply_pretrained(other, tmp_path / "pretrained.pt")
    with pytest.raises(InputError, match="not found"):
        apply_pretrained(other, tmp_path / "nope.pt")
    with pytest.raises(ValueError, match="no pretraining objective"):
        pretrain("abmil", cohort, fold.train, PretrainConfig(epochs=1, progress=False))


def test_bad_external_tables_are_refused_naming_the_file(tmp_path) -> None:
    from pathmm_pipeline.preprocess.samplesheet import read_external_patients

    with pytest.raises(InputError, match="not found"):
        read_external_patients(tmp_path / "absent.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("patient_id,cancer_type,survival_time\nX1,BLCA,3\n")
    with pytest.raises(InputError, match=r"bad\.csv.*missing column\(s\) survival_event, expression_path"):
        read_external_patients(bad)
    dup = tmp_path / "dup.csv"
    dup.write_text("patient_id,cancer_type,survival_time,survival_event,expression_path\n"
                   "X1,BLCA,3,1,e.tsv\nX1,BLCA,4,0,e.tsv\n")
    with pytest.raises(InputError, match=r"dup\.csv.*duplicated patient id"):
        read_external_patients(dup)
    good = tmp_path / "good.csv"
    good.write_text("patient_id,cancer_type,survival_time,survival_event,expression_path\nX1,BLCA,3,1,e.tsv\n")
    assert read_external_patients(good).expression_path.iloc[0] == str(tmp_path / "e.tsv")
