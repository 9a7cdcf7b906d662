"""The whole DAG on a small demo cohort, through training and the HTML evaluation report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pathmm_pipeline.audit import audit

from conftest import REPO

pytestmark = pytest.mark.slow

PLANTED_SIGNAL_MIN = 0.65


@pytest.fixture(scope="module")
def run(source_slide, tmp_path_factory):
    from pathmm_pipeline.demo import build_demo_cohort

    root = tmp_path_factory.mktemp("train_dag")
    sheet = build_demo_cohort(root / "cohort", n_patients=16, seed=3, source_slide=source_slide, slide_scale=0.4)
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config.update(samplesheet=str(sheet), results="results")
    config["segmentation"].update(min_tissue_area_um2=16000.0, min_hole_area_um2=6400.0)  # slides shrunk by 0.4
    config["features"].update(batch_size=16, num_workers=0)
    # UMEML and the other baselines train through the same rule (their own tests cover them); these runs cover
    # every rule: pretraining (ALTER, MICE with the external corpus, ModalTune's tuning, mSTAR stage 1), mSTAR
    # stage 2 feeding the feature stage, and each downstream task
    config["training"].update(models=["abmil", "alter", "mice", "modaltune", "mstar"],
                              folds=2, n_boot=50, compare_encoders={"mstar_efficientnet_lite0": ["abmil"]})
    config["training"]["mstar"]["settings"].update(tiles_per_slide=8, batch_size=8, threads=2, max_steps=6)
    config["training"]["settings"].update(epochs=8, patience=4, n_bins=2)  # few events per fold
    config["training"]["pretraining"].update(external=str(sheet.parent / "external" / "patients.csv"))
    config["training"]["pretraining"]["settings"].update(epochs=2, n_bins=2, batch_size=8)
    config["training"]["variants"]["mice"]["options"].update(pretrain_bins=2)
    config["training"]["downstream"] = {
        "report_generation": {"models": ["alter"], "settings": {"epochs": 3, "d_model": 32, "ff_dim": 64}},
        "data_efficiency": {"models": ["mice"], "fractions": [0.5, 1.0], "per_cancer_type": False},
        "linear_probe": {"models": ["modaltune"]}, "zero_shot": {"models": ["mstar"]}}
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    proc = snakemake(root)
    assert proc.returncode == 0, proc.stderr[-6000:]
    return root / "results"


def snakemake(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    return subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory",
                           str(root), "--configfile", str(root / "config.yaml"), "--cores", "2", *args],
                          capture_output=True, text=True, env=env, timeout=1500)


def test_report_covers_every_model_and_the_stress_test(run):
    html = (run / "evaluation" / "report.html").read_text()
    for text in ("abmil", "alter", "mice", "modaltune", "mstar",
                 "data:image/png;base64", "Kaplan", "Missing-modality stress test", "id='pretraining'",
                 "report generation", "data efficiency", "linear probe", "zero shot"):
        assert text in html, text
    summary = pd.DataFrame(json.loads((run / "evaluation" / "summary.json").read_text()))
    assert {"abmil", "alter", "mice", "modaltune", "mstar", "abmil@mstar_efficientnet_lite0"} <= set(summary["model"])
    stress = pd.read_csv(run / "evaluation" / "stress.csv").set_index("model")
    assert {"without wsi", "without genomics", "without report"} <= set(stress.columns)
    assert stress.loc["mice", "without wsi"] != "n/a" and stress.loc["alter", "without genomics"] != "n/a"
    fold = pd.read_csv(run / "training/efficientnet_lite0/mice/survival/fold_0/metrics.csv")
    removed = set(fold["subset"])
    assert "all" in removed and len(removed) >= 3  # all, and each modality removed in turn


def test_checkpoints_and_every_store_verify(run):
    stores, stale = audit(run)
    assert stores and all(s.ok for s in stores), [str(f) for s in stores for f in s.findings]
    assert stale == []
    assert any(s.stage == "train" for s in stores)


def test_fine_tuning_starts_from_the_fold_pretraining_which_saw_no_validation_patient(run):
    from pathmm_pipeline.training.checkpoint import read_checkpoint
    from pathmm_pipeline.training.pretrain import read_pretrained

    for model in ("alter", "mice"):
        for fold in (0, 1):
            pre = run / f"pretraining/efficientnet_lite0/{model}/fold_{fold}/pretrained.pt"
            ckpt = read_checkpoint(run / f"training/efficientnet_lite0/{model}/survival/fold_{fold}/checkpoint.pt")
            assert Path(ckpt["provenance"]["inputs"]["pretrained"]["path"]) == pre.resolve()
            corpus = read_pretrained(pre)["corpus"]
            assert set(corpus["patients"]).isdisjoint(ckpt["fold"]["val"])
            assert (len(corpus["external_patients"]) > 600) == (model == "mice")  # ALTER's demo variant: none
    generation = pd.read_csv(run / "training/efficientnet_lite0/alter/survival/fold_0/downstream_report_generation.csv")
    assert set(generation.method) == {"decoder", "retrieval"} and generation.bleu_4.between(0, 1).all()


def test_mstar_stage2_weights_feed_the_feature_stage(run):
    from pathmm_pipeline.features import load_features
    from pathmm_pipeline.provenance import read_provenance

    weights = run / "mstar/stage2/mstar_efficientnet_lite0.pt"
    record = read_provenance(weights)
    assert any("stage1" in str(v.get("path", "")) for v in record["inputs"].values())
    stores = sorted((run / "features/mstar_efficientnet_lite0").glob("*.zarr"))
    assert stores
    feats = load_features(stores[0])
    assert feats.features.shape[1] == 1280
    assert read_provenance(stores[0])["inputs"]["weights"]["sha256"] == record["outputs"]["checkpoint"]["sha256"] \
        if "checkpoint" in record.get("outputs", {}) else True


def test_a_pretraining_change_reruns_pretraining_and_what_follows_only(run):
    """ALTER's triplet weight is a pretraining parameter: its pretraining, fine-tuning and downstream jobs
    re-run, and nothing else (no other model, no feature stage)."""
    root = run.parent
    config = yaml.safe_load((root / "config.yaml").read_text())
    config["training"]["variants"]["alter"]["options"]["w_triplet"] = 0.5
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    from test_workflow import planned_jobs

    jobs = planned_jobs(root)
    assert jobs == {"pretrain": 2, "train": 2, "downstream": 2, "evaluate": 1, "all": 1}, jobs


def test_abmil_finds_the_planted_signal_on_held_out_patients(run):
    """The demo plants a cellular-tissue share that follows each patient's survival; pooled over both folds'
    held-out patients, ABMIL's risk must order them clearly better than chance (fixed seeds, deterministic)."""
    from pathmm_pipeline.evaluation.metrics import c_index

    predictions = pd.read_csv(run / "evaluation" / "predictions.csv")
    held_out = predictions[(predictions.model == "abmil") & (predictions.subset == "all")]
    assert len(held_out) == 16
    score = c_index(held_out.time.to_numpy(), held_out.event.to_numpy(), held_out.risk.to_numpy())
    assert score > PLANTED_SIGNAL_MIN, score
