"""The jobs that need no model start without torch: every slide's segmentation and tiling, every report's
cleaning, genomics and the manifest run as their own processes (one per slide or report), so importing torch
(about 2 s here) would be paid once per job for nothing."""

from __future__ import annotations

import subprocess
import sys

import pytest

LIGHT_MODULES = ("pathmm_pipeline.stages.preprocess", "pathmm_pipeline.stages.modalities",
                 "pathmm_pipeline.preprocess.segmentation", "pathmm_pipeline.preprocess.tiling",
                 "pathmm_pipeline.reports.stage", "pathmm_pipeline.genomics.stage", "pathmm_pipeline.preprocess.qc")


@pytest.mark.parametrize("module", LIGHT_MODULES)
def test_light_stage_modules_import_no_torch(module):
    code = f"import importlib, sys; importlib.import_module({module!r}); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False", f"{module} imports torch"


def test_cleaning_a_report_imports_no_torch(tmp_path):
    report = tmp_path / "r.txt"
    report.write_text("FINAL DIAGNOSIS:\nInvasive carcinoma, high grade. Seen by Dr. John Smith on 03/14/2021.\n")
    argv = ["clean-report", str(report), "--patient", "P1", "--out", str(tmp_path / "r.parquet")]
    code = f"import sys; from pathmm_pipeline.cli import main; rc = main({argv!r}); print(rc, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "0 False"
    assert (tmp_path / "r.parquet").is_file()
