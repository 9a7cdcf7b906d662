"""A sample sheet's roi_path reaches tiling: Snakemake's dry run lists the ROI file among tile_slide's inputs (so that
a new or edited file re-runs the slide's tiling and everything after it) and passes it with --roi, and only that
slide's settings carry tiling.roi; a slide without one is planned as before."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from conftest import REPO, snakemake


def tile_jobs(root: Path) -> dict[str, tuple[str, str]]:
    """slide -> (input line, shell command) of its planned tile_slide job."""
    text = snakemake(root, "--dry-run", "--printshellcmds", "results/tiles/S1.zarr", "results/tiles/S2.zarr").stdout
    jobs = {}
    for block in text.split("rule ")[1:]:
        if block.startswith("tile_slide:"):
            slide = re.search(r"wildcards: slide=(\S+)", block).group(1)
            jobs[slide] = (re.search(r"input: (.*)", block).group(1), re.search(r"Shell command: (.*)", block).group(1))
    return jobs


def test_roi_file_is_an_input_of_its_slides_tiling(tmp_path):
    (tmp_path / "slides").mkdir()
    for name in ("S1.svs", "S2.svs"):
        (tmp_path / "slides" / name).touch()
    (tmp_path / "slides" / "S1.geojson").write_text('{"type": "FeatureCollection", "features": []}')
    (tmp_path / "samplesheet.csv").write_text(
        "patient_id,slide_id,slide_path,roi_path,mpp,cancer_type,survival_time,survival_event\n"
        "P1,S1,slides/S1.svs,slides/S1.geojson,0.5,BLCA,10,1\nP2,S2,slides/S2.svs,,0.5,BLCA,12,0\n")
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config.update(samplesheet=str(tmp_path / "samplesheet.csv"), results="results")
    config["training"]["models"] = []
    config["tiling"]["roi"]["include_classes"] = ["Tumor"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    jobs = tile_jobs(tmp_path)
    roi = str(tmp_path / "slides" / "S1.geojson")
    inputs, command = jobs["S1"]
    assert roi in inputs.split(", ") and f"--roi {roi}" in command and '"include_classes": ["Tumor"]' in command
    inputs, command = jobs["S2"]
    assert "geojson" not in inputs and "--roi" not in command and "include_classes" not in command
