"""Many slides per extraction job through the Snakemake DAG (features.slides_per_job = 2): one job per stable
bucket of slides, one store per slide, and re-runs that touch exactly the bucket of a changed or added slide."""

from __future__ import annotations

import os
import shutil
import time

import pandas as pd
import pytest
import yaml
from conftest import REPO, planned_jobs, snakemake

from pathmm_pipeline.core.provenance import read_provenance
from pathmm_pipeline.plan.buckets import slide_buckets
from pathmm_pipeline.preprocess.features import load_features

pytestmark = pytest.mark.slow

ENCODER = "efficientnet_lite0"
PER_JOB = 2


def _rule(bucket: str) -> str:
    return f"extract_features__{ENCODER}__{bucket}"


@pytest.fixture(scope="module")
def workdir(slide_factory, tmp_path_factory):
    root = tmp_path_factory.mktemp("buckets")
    rows = [{"patient_id": f"P{k}", "slide_id": f"S{k}", "slide_path": str(slide_factory(f"b{k}", seed=k).path),
             "cancer_type": "BLCA", "survival_time": 10.0 + k, "survival_event": k % 2} for k in range(3)]
    pd.DataFrame(rows).to_csv(root / "samplesheet.csv", index=False)
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config.update(samplesheet=str(root / "samplesheet.csv"), results="results")
    config["training"]["models"] = []
    config["features"].update(slides_per_job=PER_JOB, batch_size=16, threads=1)
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    snakemake(root)
    return root


def test_one_job_per_bucket_writes_one_store_per_slide(workdir):
    buckets = slide_buckets(["S0", "S1", "S2"], PER_JOB)
    assert len(buckets) >= 2 and max(map(len, buckets.values())) <= PER_JOB
    results = workdir / "results"
    for bucket, slides in buckets.items():
        assert (results / f"logs/extract_features/{ENCODER}/{bucket}.log").is_file()
        for slide in slides:
            store = results / f"features/{ENCODER}/{slide}.zarr"
            assert load_features(store).slide_id == slide and load_features(store).features.shape[1] == 1280
            assert read_provenance(store)["inputs"]["tiles"]["path"].endswith(f"tiles/{slide}.zarr")
    assert planned_jobs(workdir) == {}


def test_a_changed_slide_reruns_only_its_bucket(workdir):
    sheet = pd.read_csv(workdir / "samplesheet.csv")
    path = sheet.slide_path[1]
    stat = os.stat(path)
    os.utime(path, (time.time() + 5, time.time() + 5))  # the slide file is newer than its outputs
    try:
        bucket = next(b for b, slides in slide_buckets(sheet.slide_id, PER_JOB).items() if "S1" in slides)
        assert planned_jobs(workdir) == {"segment_tissue": 1, "tile_slide": 1, _rule(bucket): 1, "qc_summary": 1,
                                         "all": 1}
    finally:
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_an_added_slide_reruns_only_the_bucket_it_falls_into(workdir, slide_factory):
    sheet = pd.read_csv(workdir / "samplesheet.csv")
    original = sheet.copy()
    before = slide_buckets(sheet.slide_id, PER_JOB)
    new = {"patient_id": "P9", "slide_id": "S9", "slide_path": str(slide_factory("b9", seed=9).path),
           "cancer_type": "BLCA", "survival_time": 5.0, "survival_event": 1}
    sheet = pd.concat([sheet, pd.DataFrame([new])], ignore_index=True)
    after = slide_buckets(sheet.slide_id, PER_JOB)
    changed = {b for b, slides in after.items() if before.get(b) != slides}
    sheet.to_csv(workdir / "samplesheet.csv", index=False)
    try:
        jobs = planned_jobs(workdir)
    finally:
        original.to_csv(workdir / "samplesheet.csv", index=False)
    assert {r for r in jobs if r.startswith("extract_features")} == {_rule(b) for b in changed}
    assert len(changed) <= 2 and sum(len(after[b]) for b in changed) <= PER_JOB + 1
    assert jobs["segment_tissue"] == jobs["tile_slide"] == 1 and jobs["cohort_manifest"] == 1


def test_bucket_jobs_take_the_profile_settings_of_extract_features(workdir):
    bucket = next(iter(slide_buckets(["S0", "S1", "S2"], PER_JOB)))
    proc = snakemake(workdir, "--dry-run", "--forcerun", _rule(bucket), "--set-resources",
                     "extract_features:runtime=77", "--set-threads", "extract_features=2")
    text = proc.stdout + proc.stderr
    block = text.split(f"rule {_rule(bucket)}:")[1].split("\n[")[0]
    assert "runtime=77" in block and "threads: 2" in block, block
    shutil.rmtree(workdir / ".snakemake" / "incomplete", ignore_errors=True)
