"""The report at cohort scale: per-slide tables are capped (a count and the file with every row instead), the
tiles plot becomes a histogram, per-slide feature stores are not re-hashed, and the plain-text benchmark reader
gives pandas' numbers."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from pathmm_pipeline.evaluation.html import read_benchmarks, write_report
from pathmm_pipeline.evaluation.run import aggregate_folds

N_SLIDES, N_ROWS = 600, 20


def _cohort_tables(n: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    slides = [f"S{i:04d}" for i in range(n)]
    skipped = np.arange(n) % 13 == 0  # 47 slides not tiled
    qc = pd.DataFrame({"slide_id": slides, "segmentation_status": "ok",
                       "tiling_status": np.where(skipped, "skipped", "ok"),
                       "reason": np.where(skipped, "no tissue", ""), "tissue_area_mm2": 2.0,
                       "n_tiles": np.where(skipped, 0, 100 + np.arange(n)),
                       "qc_decision": "include", "n_qc_candidates": 100, "tiles_excluded_by_qc": 0,
                       "tile_qc_reasons": ""})
    flagged = np.arange(n) % 24 == 1  # 25 slides flagged
    resolution = pd.DataFrame({"slide_id": slides, "path": [f"/s/{s}.svs" for s in slides], "mpp_x": 0.25,
                               "mpp_y": 0.25, "mpp_source": "openslide.mpp-x", "objective_power": 40.0,
                               "vendor": "aperio", "backend": "openslide", "width": 1000, "height": 800,
                               "flags": np.where(flagged, "mpp from a 72 dpi screen default", "")})
    return qc, resolution


def test_report_of_a_big_cohort_caps_slide_rows_and_names_the_full_tables(tmp_path):
    qc, resolution = _cohort_tables(N_SLIDES)
    stores = {}
    for sid in qc.slide_id[:60]:
        store = tmp_path / "features" / "enc" / f"{sid}.zarr"
        store.mkdir(parents=True)
        (store / "c0").write_bytes(b"x")
        stores[f"features/enc/{sid}.zarr"] = store
    out = write_report(aggregate_folds([]), tmp_path / "out" / "report.html", qc=qc, resolution=resolution,
                       provenance=stores, max_slide_rows=N_ROWS)
    text = out.read_text()

    slide_cells = re.findall(r"<td>(S\d{4})</td>", text)
    n_tables = 2  # not-tiled slides, flagged resolutions
    assert 0 < len(slide_cells) <= n_tables * N_ROWS
    assert "47 of 600 slides" in text and f"first {N_ROWS} of 47 rows; all in <code>qc_slides.csv</code>" in text
    assert "<b>25 flagged</b>" in text
    assert f"first {N_ROWS} of 25 rows; all in <code>results/cohort/resolution.csv</code>" in text
    assert len(pd.read_csv(out.parent / "qc_slides.csv")) == N_SLIDES
    # one histogram, not one bar per slide
    assert text.count("data:image/png;base64,") == 1
    # per-slide stores: one row in the HTML, every one in the CSV, none re-hashed
    assert "features/enc/ (60 inputs)" in text
    prov = pd.read_csv(out.parent / "provenance.csv")
    assert len(prov) == 60 and prov.sha256.isna().all()


def test_small_cohort_keeps_every_slide_row(tmp_path):
    qc, resolution = _cohort_tables(30)
    out = write_report(aggregate_folds([]), tmp_path / "report.html", qc=qc, resolution=resolution,
                       max_slide_rows=N_ROWS * 2)
    assert set(qc.slide_id) <= set(re.findall(r"<td>(S\d{4})</td>", out.read_text()))


def test_benchmark_reader_matches_pandas(tmp_path):
    header = "s\th:m:s\tmax_rss\tmax_vms\tio_in\tmean_load\tcpu_time\n"
    files = {"a/one.tsv": header + "1.5\t0:00:01\t100.25\tNA\t-\t\t0.3\n",
             "a/two.tsv": header + "2\t0:00:02\t10\t20\t1\t50\t1\n\n4.25\t0:00:04\t30\t-\t3\t70\t2\n",
             "b.tsv": "s\tmax_rss\n3\t7.5\n", "c/short.tsv": header + "5\t0:00:05\t1\n",
             "empty.tsv": header, "bad.tsv": "x\ty\n1\t2\n"}
    for name, content in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(content)
    jobs = read_benchmarks(tmp_path).set_index("file")

    for name in ("a/one.tsv", "a/two.tsv", "b.tsv", "c/short.tsv"):
        frame = pd.read_csv(tmp_path / name, sep="\t", na_values=["NA", "-", ""])
        expected = frame.drop(columns=[c for c in ("h:m:s",) if c in frame]).apply(pd.to_numeric, errors="coerce")
        got = jobs.loc[str(tmp_path / name)]
        for column, value in expected.mean(numeric_only=True).items():
            assert np.isclose(got[column], value, equal_nan=True), (name, column)
    assert len(jobs) == 4 and set(jobs.rule) == {"a", "b", "c"}
    assert jobs.loc[str(tmp_path / "a/two.tsv"), "job"] == "two"
