"""The DAG runs from a shell whose PATH lacks the venv: every rule finds the `pathmm` installed beside the Python
that runs Snakemake (issue 18 item 9)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_a_job_runs_without_the_venv_on_path(tmp_path):
    (tmp_path / "P1.txt").write_text("FINAL DIAGNOSIS:\\nInvasive urothelial carcinoma, high grade, pT2a.\\n")
    pd.DataFrame([{"patient_id": "P1", "cancer_type": "BLCA", "report_path": "P1.txt"}]).to_csv(
        tmp_path / "samplesheet.csv", index=False)
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config.update(samplesheet=str(tmp_path / "samplesheet.csv"), results="results")
    config["training"].update(models=[], compare_encoders={})
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    bare = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    assert subprocess.run(["bash", "-c", "command -v pathmm"], env=bare, capture_output=True).returncode != 0
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory",
                           str(tmp_path), "--configfile", str(tmp_path / "config.yaml"), "--cores", "1",
                           "results/reports/clean/P1.parquet"], env=bare, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "command not found" not in proc.stderr
    assert pd.read_parquet(tmp_path / "results/reports/clean/P1.parquet").text.str.contains("pT2a").all()
