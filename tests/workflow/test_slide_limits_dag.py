"""The caps on one slide (config.yaml's ``slide.max_*``) reach the slide rules: a slide with more tiles than
``slide.max_tiles`` fails its tiling job with the clear message in its log, and raising the cap re-runs nothing
that succeeded (a cap is no re-run trigger)."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml
from conftest import REPO, snakemake

pytestmark = pytest.mark.slow

TARGET = "results/tiles/S0.zarr"


@pytest.fixture(scope="module")
def workdir(slide_factory, tmp_path_factory):
    root = tmp_path_factory.mktemp("limits_dag")
    pd.DataFrame([{"patient_id": "P0", "slide_id": "S0", "slide_path": str(slide_factory("s").path),
                   "cancer_type": "BLCA", "survival_time": 10.0, "survival_event": 1}]).to_csv(
        root / "samplesheet.csv", index=False)
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config.update(samplesheet=str(root / "samplesheet.csv"), results="results")
    config["training"]["models"] = []
    config["slide"]["max_tiles"] = 5
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    proc = snakemake(root, TARGET, check=False)
    return root, config, proc


def test_a_slide_above_max_tiles_fails_its_tiling_job_clearly(workdir):
    root, _, proc = workdir
    assert proc.returncode != 0
    assert (root / "results/segmentation/S0.zarr/zarr.json").is_file()  # segmentation is under every cap
    assert not (root / "results/tiles/S0.zarr").exists()
    log = (root / "results/logs/tile_slide/S0.log").read_text()
    assert "pathmm tile-slide: error:" in log and "slide.max_tiles = 5" in log and "Traceback" not in log


def test_raising_the_cap_reruns_only_the_failed_job(workdir):
    root, config, _ = workdir
    config["slide"]["max_tiles"] = 1_000_000
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    proc = snakemake(root, TARGET, "--dry-run", "--printshellcmds")
    text = proc.stdout + proc.stderr
    assert "rule segment_tissue" not in text and "rule tile_slide" in text
    assert "--max-side-px 300000 --max-megapixels 40000 --max-tiles 1000000" in text
