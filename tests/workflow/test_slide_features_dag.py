"""The slide-features rule in the real DAG: off by default (the demo plans no such job); listed slide encoders
write one store per slide from the extracted patch features, with provenance, and a finished run has nothing
left to do."""

from __future__ import annotations

import pandas as pd
import yaml
from conftest import REPO, planned_jobs, snakemake

from pathmm_pipeline.core.provenance import read_provenance
from pathmm_pipeline.preprocess.slide_features import load_slide_embedding


def _workdir(root, slide, slide_features):
    pd.DataFrame([{"patient_id": "TCGA-2F-A9KO", "slide_id": "P1-A", "slide_path": str(slide.path),
                   "cancer_type": "BLCA", "survival_time": 10.0, "survival_event": 1}]).to_csv(
        root / "samplesheet.csv", index=False)
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config.update(samplesheet=str(root / "samplesheet.csv"), results="results")
    config["training"]["models"] = []
    if slide_features is not None:
        config["slide_features"] = {**config.get("slide_features", {}), **slide_features}
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    return root


def test_default_config_plans_no_slide_feature_job(slide_factory, tmp_path):
    jobs = planned_jobs(_workdir(tmp_path, slide_factory("s", seed=0), None))
    assert jobs and "slide_features" not in jobs


def test_listed_slide_encoders_write_stores_with_provenance(slide_factory, tmp_path):
    root = _workdir(tmp_path, slide_factory("s", seed=0), {"encoders": ["mean", "tiny_slide"], "device": "cpu"})
    assert planned_jobs(root)["slide_features"] == 2
    snakemake(root)
    for name, dim in (("mean", 1280), ("tiny_slide", 64)):
        store = root / "results" / "slide_features" / name / "P1-A.zarr"
        emb = load_slide_embedding(store)
        assert emb.status == "ok" and emb.embedding.shape == (dim,)
        record = read_provenance(store)
        assert record["inputs"]["features"]["given_path"].endswith("features/efficientnet_lite0/P1-A.zarr")
        assert record["params"]["settings"] == {"encoder": name, "weights": None, "device": "cpu"}
    assert planned_jobs(root) == {}
