"""The evaluation report opens with a warning when the reports were kept with their identifiers."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.mark.parametrize("deid", [True, False])
def test_deid_off_puts_a_warning_at_the_top_of_the_report(tmp_path: Path, deid: bool) -> None:
    from pathmm_pipeline.reports.stage import DEID_OFF_WARNING, clean_reports
    from pathmm_pipeline.stages.training import report_notes

    paths = {}
    for patient in ("P1", "P2"):
        paths[patient] = tmp_path / f"{patient}.txt"
        paths[patient].write_text("FINAL DIAGNOSIS:\nInvasive carcinoma, pT2a. Seen by Dr. John Smith.\n")
    (tmp_path / "results" / "reports").mkdir(parents=True)
    clean_reports(paths, tmp_path / "results" / "reports" / "reports.parquet", deid=deid)
    notes = report_notes(tmp_path / "results")
    assert notes == ([] if deid else [f"WARNING: {DEID_OFF_WARNING} (2 of 2 reports)"])
    assert report_notes(tmp_path / "elsewhere") == []
