"""The HTML report: two models trained on two folds of the synthetic cohort of ``test_training.py``, evaluated
with the stress test, aggregated, and written with a QC table, segmentation thumbnails, Snakemake benchmark
files and the inputs' provenance. The report must be one self-contained file with every section and its
images embedded, and the tables must be written as CSV beside it."""

from __future__ import annotations

import re

import cv2
import numpy as np
import pandas as pd
import pytest
from toy_cohort import ABMIL_SMALL, FUSION_SMALL, build_toy_cohort

from pathmm_pipeline.cohort.splits import make_splits
from pathmm_pipeline.core.provenance import hash_path
from pathmm_pipeline.evaluation.html import collect_inputs, read_benchmarks, write_report
from pathmm_pipeline.evaluation.run import aggregate_folds, evaluate_fold
from pathmm_pipeline.training.finetune import train_fold
from pathmm_pipeline.training.settings import TrainConfig

MODELS = {"abmil": ABMIL_SMALL, "late_fusion_concat": FUSION_SMALL}
CSVS = ("summary", "summary_wide", "folds", "predictions", "km_curves", "logrank", "training_history", "training",
        "qc_slides", "provenance", "cost_by_rule", "cost_jobs")


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory, torch_one_thread):
    root = tmp_path_factory.mktemp("report")
    toy = build_toy_cohort(root / "toy")
    cohort = toy.cohort()
    patients = toy.manifest.drop_duplicates("patient_id").set_index("patient_id")
    splits = make_splits(patients.assign(event=patients.survival_event), k=2, stratify=("event",), seed=0)
    results, evaluations = [], []
    for model, options in MODELS.items():
        config = TrainConfig(epochs=2, lr=5e-3, grad_accum=4, patience=None, progress=False, device="cpu",
                             model_options=options)
        for fold in splits:
            where = root / "training" / model / f"fold_{fold.index}"
            result = train_fold(model, "survival", cohort, fold, config, out_dir=where)
            results.append(result)
            evaluations.append(evaluate_fold(result, cohort, n_boot=50))
    return root, toy, aggregate_folds(evaluations, results), results


@pytest.fixture(scope="module")
def assets(run) -> dict:
    root, toy, _, _ = run
    slides = toy.manifest.slide_id.tolist()
    qc = pd.DataFrame({"slide_id": slides, "segmentation_status": "ok",
                       "tiling_status": ["skipped" if i == 0 else "ok" for i in range(len(slides))],
                       "reason": "", "tissue_area_mm2": np.linspace(1, 5, len(slides)),
                       "n_tiles": np.arange(len(slides)) * 3})
    qc_path = root / "qc" / "slides.parquet"
    qc_path.parent.mkdir(parents=True)
    qc.to_parquet(qc_path)
    seg = root / "segmentation"
    seg.mkdir()
    rng = np.random.default_rng(0)
    for sid in slides[:3]:
        cv2.imwrite(str(seg / f"{sid}.qc.png"), rng.integers(0, 255, (300, 240, 3), dtype=np.uint8))
    bench = root / "benchmarks"
    (bench / "tile_slide").mkdir(parents=True)
    (bench / "extract_features" / "toy").mkdir(parents=True)
    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    (bench / "genomics.tsv").write_text(header + "1.35\t0:00:01\t151.54\t553.88\t79.57\t113.18\t0\t0\t36\t0.99\n")
    (bench / "tile_slide" / "S1.tsv").write_text(header + "2.0\t0:00:02\t300.0\t1\t1\t1\t0\t0\t50\t1.5\n")
    (bench / "tile_slide" / "S2.tsv").write_text(header + "4.0\t0:00:04\t250.0\t1\t1\t1\t0\t0\t50\t3.5\n")
    (bench / "extract_features" / "toy" / "S1.tsv").write_text(header + "18\t0:00:18\t1739\t1\t1\t1\t0\t0\t99\t20\n")
    return {"qc": qc_path, "thumbnails": seg, "benchmarks": bench}


def test_report_has_every_section_embedded_images_and_csvs(run, assets):
    root, toy, tables, results = run
    provenance = {"genomics": toy.genomics, "reports": toy.reports,
                  "feature store": toy.features_dir / "P000-slide1.zarr", "checkpoint": results[0].checkpoint,
                  "absent": root / "nope.zarr"}
    out = write_report(tables, root / "out" / "report.html", provenance=provenance, **assets)
    text = out.read_text()

    for section in ("results", "km", "training", "qc", "provenance", "cost"):
        assert f"id='{section}'" in text
    # self-contained: no script, no external resource, images inline
    assert "<script" not in text and not re.search(r"(src|href)=['\"]https?:", text)
    n_png = text.count("data:image/png;base64,")
    assert n_png == len(MODELS) + len(MODELS) + 1  # KM per model, training curves per model, tiles per slide
    assert text.count("data:image/jpeg;base64,") == 3  # the three segmentation thumbnails, scaled down
    assert "log-rank" in text and "±" in text and "withheld wsi" in text and "missing genomics" in text
    assert "id='protocol'" in text and "selection: last" in text and "id='types'" in text

    csv_dir = out.parent
    for name in CSVS:
        assert (csv_dir / f"{name}.csv").is_file(), name
    wide = pd.read_csv(csv_dir / "summary_wide.csv")
    subsets = {m: set(wide[wide.model == m].subset) for m in MODELS}
    assert subsets["abmil"] == {"all", "withheld wsi"}
    assert {"all", "withheld wsi", "withheld genomics", "withheld report", "complete", "missing genomics",
            "missing report"} <= subsets["late_fusion_concat"]
    assert set(wide.selection) == {"last"}
    summary = pd.read_csv(csv_dir / "summary.csv")
    pooled = (summary.subset == "all") & (summary.cancer_type == "all")
    c = summary[(summary.model == "late_fusion_concat") & pooled & (summary.metric == "c_index")]
    folds = pd.read_csv(csv_dir / "folds.csv")
    values = folds[(folds.model == "late_fusion_concat") & (folds.subset == "all") & (folds.cancer_type == "all")
                   & (folds.metric == "c_index")].value
    assert c["n_folds"].item() == 2 and np.isclose(c["mean"].item(), values.mean())
    assert np.isclose(c["std"].item(), values.std(ddof=1))

    cost = pd.read_csv(csv_dir / "cost_by_rule.csv").set_index("rule")
    assert cost.loc["tile_slide", "jobs"] == 2 and cost.loc["tile_slide", "wall_s_total"] == 6.0
    assert cost.loc["tile_slide", "peak_max_rss_mb"] == 300.0 and cost.loc["extract_features", "jobs"] == 1
    assert "train:abmil/survival" in cost.index and cost.loc["train:abmil/survival", "jobs"] == 2

    prov = pd.read_csv(csv_dir / "provenance.csv").set_index("input")
    assert prov.loc["genomics", "sha256"] == hash_path(toy.genomics) and prov.loc["genomics", "stage"] == "genomics"
    assert prov.loc["checkpoint", "stage"] == "train" and prov.loc["absent", "status"] == "missing"
    assert prov.loc["feature store", "code_version"] == "0.1.0"
    history = pd.read_csv(csv_dir / "training_history.csv")
    assert len(history) == 2 * 2 * 2
    assert {"train_loss", "inner_val_loss", "inner_val_metric", "lr"} <= set(history.columns)


def test_benchmarks_and_inputs_are_found_in_a_results_folder(run, assets):
    root = run[0]
    jobs = read_benchmarks(assets["benchmarks"])
    assert sorted(jobs.rule.unique()) == ["extract_features", "genomics", "tile_slide"]
    assert set(jobs[jobs.rule == "tile_slide"].job) == {"S1", "S2"}
    found = collect_inputs(root)
    assert "qc/slides.parquet" in found and any(k.startswith("training/") for k in found)
