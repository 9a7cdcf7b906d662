"""The training harness on a tiny synthetic cohort built from real pipeline stores (feature stores written with
``write_store``, a genomics store built by ``build_genomics_store`` from a small expression CSV and GMT files,
a report-embedding store with token states), with a planted survival signal.

Covers: the cohort (presence masks, dims, seeded tile caps, scaler required), ABMIL learning the planted signal
(held-out C-index well above 0.5), bit-for-bit determinism, early stopping, no leakage of the validation
patients' expression into training, checkpoint provenance, and the missing-modality stress test. Small models
and one intra-op thread keep the file well under a minute on two cores."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from toy_cohort import (
    ABMIL_SMALL,
    D_TEXT,
    D_WSI,
    FUSION_SMALL,
    N_GENES,
    N_PATIENTS,
    NO_EXPRESSION,
    NO_REPORT,
    NO_SLIDES,
    ToyCohort,
    build_toy_cohort,
    genomics_store,
)

from pathmm_pipeline.cohort.splits import make_splits, read_splits, write_splits
from pathmm_pipeline.core.provenance import read_provenance, verify_provenance
from pathmm_pipeline.evaluation.predict import predict_logits
from pathmm_pipeline.evaluation.run import aggregate_folds, evaluate_fold, read_fold_evaluation
from pathmm_pipeline.models import InputDims, PatientInput
from pathmm_pipeline.models.checkpoint import load_checkpoint, read_checkpoint, verify_checkpoint
from pathmm_pipeline.training.finetune import train_fold
from pathmm_pipeline.training.settings import TrainConfig

SNN_SMALL = {"hidden": (16, 16), "dropout": 0.0}


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> ToyCohort:
    return build_toy_cohort(tmp_path_factory.mktemp("toy"))


@pytest.fixture(scope="module")
def splits(toy):
    patients = toy.manifest.drop_duplicates("patient_id").set_index("patient_id")
    return make_splits(patients.assign(event=patients.survival_event), k=3, stratify=("event",), seed=0)


def quick(**overrides) -> TrainConfig:
    values = dict(epochs=3, lr=1e-3, grad_accum=4, warmup_epochs=0.5, patience=None, progress=False, seed=0,
                  device="cpu", model_options=FUSION_SMALL)
    values.update(overrides)
    return TrainConfig(**values)


# ------------------------------------------------------------------------------------------- the cohort
def test_cohort_presence_dims_and_inputs(toy):
    cohort = toy.cohort(max_tiles=25, seed=3)
    table = cohort.presence_table()
    assert len(cohort) == N_PATIENTS
    assert not table.loc[list(NO_SLIDES), "wsi"].any() and table.wsi.sum() == N_PATIENTS - len(NO_SLIDES)
    assert not table.loc[list(NO_EXPRESSION), "genomics"].any()
    assert not table.loc[list(NO_REPORT), "report"].any()
    dims = cohort.input_dims()
    assert dims == InputDims(wsi=D_WSI, genes=N_GENES, pathway_sizes=(5, 10, 15), family_sizes=(8, 12, 10),
                             report=D_TEXT, n_cancer_types=2, pathway_members=dims.pathway_members)
    assert [list(m) for m in dims.pathway_members] == [i.tolist() for i in cohort.genomics.sets("pathways")]
    with pytest.raises(RuntimeError, match="scaler"):
        cohort.get("P000")                       # genomics needs a scaler fitted on training patients
    view = cohort.for_fold([f"P{i:03d}" for i in range(30)])
    item = view.get("P001")                      # two slides, capped at 25 tiles by a seeded sample
    x = item.x
    assert isinstance(x, PatientInput) and x.wsi.shape == (25, D_WSI) and x.wsi_coords.shape == (25, 2)
    assert torch.equal(view.get("P001").x.wsi, x.wsi)
    assert x.genes.shape == (N_GENES,) and [t.numel() for t in x.pathways] == [5, 10, 15]
    assert [t.numel() for t in x.families] == [8, 12, 10]
    assert x.report.shape == (D_TEXT,) and x.report_tokens.shape[1] == D_TEXT and 2 <= len(x.report_tokens) <= 5
    assert item.present == {"wsi": True, "genomics": True, "report": True}
    assert item.y.event in (0, 1) and item.y.cancer_type in (0, 1)
    missing = view.get(NO_SLIDES[0])
    assert missing.x.wsi is None and missing.present["wsi"] is False and missing.x.genes is not None
    assert view.get(NO_EXPRESSION[0]).x.present()["genomics"] is False
    only = view.get("P000", modalities=["report"]).x
    assert only.wsi is None and only.genes is None and only.report is not None
    # scaled on the training patients only: their mean of each gene is ~0
    train_rows = np.stack([view.get(p, ["genomics"]).x.genes.numpy() for p in view.scaler.train_patients])
    assert np.allclose(np.nanmean(train_rows, axis=0), 0, atol=0.1)
    assert not set(view.scaler.train_patients) & set(f"P{i:03d}" for i in range(30, 60))


# ------------------------------------------------------------------------------------------- learning
def test_abmil_learns_the_planted_signal(toy, splits):
    cohort = toy.cohort()
    config = quick(epochs=10, lr=5e-3, grad_accum=1, model_options=ABMIL_SMALL, monitor="val_loss", patience=None)
    result = train_fold("abmil", "survival", cohort, splits[0], config)
    assert NO_SLIDES[0] not in result.train_patients + result.val_patients
    assert result.scaler is None  # a WSI-only model fits no gene scaler
    evaluation = evaluate_fold(result, cohort, n_boot=100)
    c = evaluation.metrics.set_index(["subset", "cancer_type", "metric"]).sort_index().loc[("all", "all", "c_index")]
    print(f"held-out C-index {c.value:.3f} [{c.lower:.3f}, {c.upper:.3f}] on {int(c.n_patients)} patients")
    assert c.value > 0.65
    assert result.history.train_loss.iloc[-1] < result.history.train_loss.iloc[0]
    # the stress test of a WSI-only model: removing WSI leaves nothing, one row per metric, with a note
    stress = evaluation.stress()
    assert set(stress.subset) == {"withheld wsi"} and stress.value.isna().all()
    assert stress.note.str.contains("not evaluable").all()


def test_two_runs_are_identical(toy, splits):
    cohort = toy.cohort()
    a = train_fold("late_fusion_concat", "survival", cohort, splits[1], quick(model_options={**FUSION_SMALL,
                                                                                            "dropout": 0.25}))
    b = train_fold("late_fusion_concat", "survival", cohort, splits[1], quick(model_options={**FUSION_SMALL,
                                                                                            "dropout": 0.25}))
    cols = ["train_loss", "inner_val_loss", "inner_val_metric", "lr"]
    assert a.history[cols].equals(b.history[cols])
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # the lr schedule: warm-up then cosine decay
    assert a.history.lr.iloc[0] < a.history.lr.max() and a.history.lr.iloc[-1] < a.history.lr.max()


def test_early_stopping_triggers_on_the_inner_split_only(toy, splits):
    cohort = toy.cohort()
    config = quick(epochs=20, patience=2, min_delta=100.0, min_epochs=1, model_options=ABMIL_SMALL,
                   selection="inner")
    result = train_fold("abmil", "survival", cohort, splits[0], config)
    assert result.stopped_early and len(result.history) == 3 and result.best_epoch == 0
    assert result.history.best.tolist() == [True, False, False]
    # the inner split is a stratified fifth of the fold's training patients, never a held-out one
    assert result.inner_val_patients and set(result.inner_val_patients) <= set(splits[0].train)
    assert not set(result.inner_val_patients) & set(result.train_patients)
    assert abs(len(result.inner_val_patients) - 0.2 * len(splits[0].train)) <= 3
    metric = quick(epochs=20, patience=2, monitor="val_metric", optimizer="radam", model_options=ABMIL_SMALL,
                   selection="inner")
    result = train_fold("abmil", "survival", cohort, splits[0], metric)
    best = result.history.inner_val_metric.max()
    assert result.history.loc[result.history.epoch == result.best_epoch, "inner_val_metric"].item() == best
    assert result.stopped_early == (len(result.history) < 20)
    # under "last" nothing stops early, nothing is validated and the last epoch is kept
    last = train_fold("abmil", "survival", cohort, splits[0], quick(epochs=4, patience=1, min_delta=100.0,
                                                                    model_options=ABMIL_SMALL))
    assert not last.stopped_early and last.best_epoch == 3 and last.history.inner_val_loss.isna().all()
    assert last.inner_val_patients == [] and set(last.train_patients) == set(splits[0].train) - set(NO_SLIDES)


def test_validation_expression_does_not_leak_into_training(toy, splits, tmp_path):
    fold = splits[2]
    frame = pd.read_csv(toy.expression_csv, index_col=0)
    changed = frame.copy()
    val = [p for p in fold.val if p in changed.index]
    changed.loc[val] = changed.loc[val] * 3.0 + 5.0
    other, _ = genomics_store(tmp_path, changed, toy.gmts, "changed")
    config = quick(epochs=3, model_options=SNN_SMALL)
    a = train_fold("snn", "survival", toy.cohort(), fold, config)
    b = train_fold("snn", "survival", toy.cohort(genomics=other), fold, config)
    assert a.history.train_loss.tolist() == b.history.train_loss.tolist()
    assert np.array_equal(a.scaler.mean_, b.scaler.mean_) and np.array_equal(a.scaler.std_, b.scaler.std_)
    assert np.array_equal(a.time_bins, b.time_bins)
    assert set(a.scaler.train_patients) <= set(fold.train)
    _, la, _ = predict_logits(a.model, toy.cohort().with_scaler(a.scaler), a.val_patients)
    _, lb, _ = predict_logits(b.model, toy.cohort(genomics=other).with_scaler(b.scaler), b.val_patients)
    assert not np.array_equal(la, lb)  # the held-out data did change


def test_checkpoint_carries_verifiable_provenance(toy, splits, tmp_path):
    write_splits(splits, tmp_path / "splits")
    split_set = read_splits(tmp_path / "splits")
    cohort = toy.cohort()
    out = tmp_path / "run"
    result = train_fold("late_fusion_concat", "survival", cohort, split_set[0], quick(epochs=2), out_dir=out,
                        split_file=tmp_path / "splits")
    assert result.checkpoint == out / "checkpoint.pt" and result.checkpoint.is_file()
    log = pd.read_csv(out / "log.csv")
    assert list(log.columns) == ["epoch", "train_loss", "inner_val_loss", "inner_val_metric", "lr", "seconds", "best"]
    assert len(log) == 2 and json.loads((out / "log.json").read_text())["epochs"][1]["epoch"] == 1
    assert verify_checkpoint(result.checkpoint) == [] and verify_provenance(result.checkpoint) == []
    record = read_provenance(result.checkpoint)
    roles = set(record["inputs"])
    assert {"genomics", "reports", "split_file"} <= roles
    assert any(r.startswith("features:") for r in roles)
    assert all(len(entry["sha256"]) == 64 for entry in record["inputs"].values())
    assert record["params"]["model"] == "late_fusion_concat" and record["params"]["fold"]["index"] == 0
    payload = read_checkpoint(result.checkpoint)
    assert payload["time_bins"][0] == 0 and math.isinf(payload["time_bins"][-1])
    assert payload["scaler"]["train_patients"] == result.scaler.train_patients
    assert payload["fold"]["val"] == result.val_patients
    loaded = load_checkpoint(result.checkpoint, verify=True)
    _, a, _ = predict_logits(result.model, cohort.with_scaler(result.scaler), result.val_patients)
    _, b, _ = predict_logits(loaded.model, cohort.with_scaler(loaded.scaler), result.val_patients)
    assert np.array_equal(a, b)
    # an input changed after training is found
    split_file = tmp_path / "splits" / "splits_0.csv"
    split_file.write_text(split_file.read_text() + "\n")
    problems = verify_checkpoint(result.checkpoint)
    assert len(problems) == 1 and "split_file" in problems[0] and "changed" in problems[0]


# ------------------------------------------------------------------------------------------- evaluation
def test_stress_test_one_row_per_removed_modality(toy, splits, tmp_path):
    cohort = toy.cohort()
    result = train_fold("late_fusion_concat", "survival", cohort, splits[1], quick(epochs=2))
    assert NO_SLIDES[0] in result.val_patients
    evaluation = evaluate_fold(result, cohort, n_boot=50)
    stress = evaluation.stress()
    c_rows = stress[stress.metric == "c_index"]
    withheld = c_rows[c_rows.subset.str.startswith("withheld")]
    assert sorted(withheld.subset) == ["withheld genomics", "withheld report", "withheld wsi"]
    assert withheld.set_index("removed").loc["wsi", "modalities"] == "genomics+report"
    assert withheld.value.notna().all()
    # a validation patient left with no modality (P007 has genomics only) is skipped and counted, not an error
    only_genomics = [p for p in result.val_patients if p in NO_SLIDES and p in NO_REPORT]
    assert sorted(evaluation.skipped["withheld genomics"]) == only_genomics
    assert withheld.set_index("removed").loc["genomics", "n_patients"] == (len(result.val_patients)
                                                                          - len(only_genomics))
    # really missing modalities are scored apart: the held-out patients who lack each one, as they are
    missing = c_rows[c_rows.subset.str.startswith("missing")].set_index("subset")
    lacking = {m: [p for p in result.val_patients if not cohort.presence(p)[m]] for m in ("wsi", "genomics", "report")}
    for m, ids in lacking.items():
        if ids:
            assert missing.loc[f"missing {m}", "n_patients"] == len(ids)
            assert missing.loc[f"missing {m}", "removed"] == ""
    complete = c_rows.set_index("subset").loc["complete"]
    assert complete.n_patients == len(result.val_patients) - len(set().union(*map(set, lacking.values())))
    assert set(evaluation.metrics.metric) == {"c_index", "td_auc", "ibs", "logrank_p"}
    # per cancer type: the pooled C-index beside one per type, each with its bootstrap interval
    types = evaluation.metrics[(evaluation.metrics.subset == "all") & (evaluation.metrics.cancer_type != "all")]
    assert set(types.cancer_type) == {"A", "B"} and set(types.metric) == {"c_index"}
    assert types.n_patients.sum() == len(result.val_patients) and (types.lower <= types.value).all()
    tables = aggregate_folds([evaluation], [result])
    wide = tables.summary_wide()
    n_subsets = 1 + 3 + 1 + sum(bool(v) for v in lacking.values())
    assert len(wide) == n_subsets and {"all", "withheld wsi", "withheld genomics", "withheld report",
                                       "complete"} <= set(wide.subset)
    per_type = tables.per_cancer_type()
    assert list(per_type.cancer_type[:3]) == ["all", "A", "B"]
    assert "c_index" in wide.columns and tables.training.n_val.iloc[0] == len(result.val_patients)
    # a fold's evaluation written by one job and read back by the aggregating job gives the same tables
    again = aggregate_folds([read_fold_evaluation(evaluation.save(tmp_path / "eval"))], [result])
    pd.testing.assert_frame_equal(again.summary_wide(), wide)
    pd.testing.assert_frame_equal(again.logrank, tables.logrank)


@pytest.mark.parametrize("task, metric", [("binary", "macro_auc"), ("cox", "c_index")])
def test_other_tasks_train_and_evaluate(toy, splits, task, metric):
    cohort = toy.cohort(label_column="grade")
    result = train_fold("late_fusion_concat", task, cohort, splits[0], quick(epochs=2))
    evaluation = evaluate_fold(result, cohort, n_boot=20, stress=False)
    pooled = evaluation.metrics[evaluation.metrics.cancer_type == "all"]
    assert np.isfinite(pooled.set_index("metric").loc[metric, "value"])
    assert set(evaluation.metrics.cancer_type) == {"all", "A", "B"}
    if task == "cox":
        assert result.time_bins is None and result.task.is_cox
