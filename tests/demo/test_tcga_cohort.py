"""The real-data benchmark's input: a TCGA folder in SurvPath's layout -> a slide-less cohort with the published
splits, which the DAG plans with the genomics benchmark config (no slide stage, no WSI model)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import REPO

from pathmm_pipeline.cohort.splits import read_splits
from pathmm_pipeline.core.errors import InputError
from pathmm_pipeline.demo import tcga
from pathmm_pipeline.demo.tcga_cohort import build_tcga_cohort
from pathmm_pipeline.preprocess.samplesheet import load_samplesheet, slide_entries


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A cohort folder in the layout of ../shared/data/tcga/<cohort>/, written from the packaged STAD tables
    (one slide row per case in metadata.csv, as released; one case without expression)."""
    root = tmp_path_factory.mktemp("tcga") / "stad"
    (root / "splits_5fold").mkdir(parents=True)
    clinical = tcga.load_clinical("stad").reset_index()
    expression = tcga.load_expression("stad")
    meta = clinical.drop(columns=["stage", "grade", "subtype"]).assign(slide_id=lambda f: f.case_id + "-DX1.svs",
                                                                       train=1.0)
    meta.to_csv(root / "metadata.csv")
    clinical[["case_id", "stage", "grade", "subtype"]].to_csv(root / "clinical.csv")
    expression.drop(index=expression.index[0]).to_csv(root / "rna_xena.csv")
    for split in sorted(tcga.splits_dir("stad").glob("splits_*.csv")):
        pd.read_csv(split, index_col=0).to_csv(root / "splits_5fold" / split.name)
    return root


def test_a_folder_becomes_a_slide_less_cohort_with_the_published_splits(folder, tmp_path):
    cohort_yaml = build_tcga_cohort(folder, tmp_path / "out")
    out = cohort_yaml.parent
    config = yaml.safe_load(cohort_yaml.read_text())
    assert config["cancer_types"] == ["STAD"] and config["training"]["folds"] == 5
    sheet = load_samplesheet(config["samplesheet"], config["cancer_types"])
    assert slide_entries(sheet) == {} and sheet.expression_path.notna().all()
    expression = tcga.load_expression("stad")
    clinical = tcga.load_clinical("stad").dropna(subset=["survival_months_dss", "censorship_dss"])
    expected = set(clinical.index) & set(expression.index[1:])
    assert set(sheet.patient_id) == expected  # the case without expression is not in the cohort
    row = sheet.set_index("patient_id").loc[sorted(expected)[0]]
    real = clinical.loc[sorted(expected)[0]]
    assert row.survival_time == pytest.approx(real.survival_months_dss, abs=1e-3)
    assert row.survival_event == 1 - real.censorship_dss
    splits = read_splits(config["training"]["published_splits"], known_patients=sheet.patient_id)
    published = [pd.read_csv(p, index_col=0) for p in sorted(tcga.splits_dir("stad").glob("splits_*.csv"))]
    for fold, source in zip(splits, published):
        assert set(fold.val) == set(source.val.dropna()) & expected
        assert set(fold.train) == set(source.train.dropna()) & expected
    matrix = pd.read_csv(out / "expression.tsv", sep="\t", index_col=0)
    assert matrix.shape == (expression.shape[1], len(expected))


def test_a_packaged_cohort_by_name_and_bad_folders(tmp_path):
    path = build_tcga_cohort("blca", tmp_path / "blca")
    assert len(pd.read_csv(path.parent / "samplesheet.csv")) > 300
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="rna_xena.csv"):
        build_tcga_cohort(tmp_path / "empty", tmp_path / "x")
    with pytest.raises(InputError, match="neither a folder"):
        build_tcga_cohort(tmp_path / "nowhere", tmp_path / "y")


def test_the_benchmark_config_plans_every_expression_model_and_no_slide_stage(folder, tmp_path):
    cohort_yaml = build_tcga_cohort(folder, tmp_path / "stad")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-s", str(REPO / "Snakefile"), "--directory",
                           str(tmp_path), "--configfile", str(REPO / "config.yaml"),
                           str(REPO / "workflow" / "config" / "tcga_genomics.yaml"), str(cohort_yaml),
                           "--cores", "1"], capture_output=True, text=True, env=env, timeout=600)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-3000:]
    table = text.split("Job stats:")[1]
    counts = {line.split()[0]: int(line.split()[1]) for line in table.splitlines()[3:]
              if len(line.split()) == 2 and line.split()[1].isdigit()}
    assert counts["train"] == 6 * 5 and counts["genomics"] == 1 and counts["evaluate"] == 1
    assert not {"segment_tissue", "tile_slide", "extract_features", "qc_summary", "pretrain"} & set(counts)
    for run in ("ridge_cox_hallmarks", "snn", "alter_genomics", "mice_genomics", "umeml_genomics",
                "late_fusion_genomics"):
        assert f"model={run}," in text, run
    # a WSI model on this cohort is refused before any job, naming the run
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"training": {"models": ["snn", "abmil"]}}))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-s", str(REPO / "Snakefile"), "--directory",
                           str(tmp_path), "--configfile", str(REPO / "config.yaml"),
                           str(REPO / "workflow" / "config" / "tcga_genomics.yaml"), str(cohort_yaml), str(bad),
                           "--cores", "1"], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode != 0 and "run 'abmil' (model abmil) requires wsi" in proc.stdout + proc.stderr
