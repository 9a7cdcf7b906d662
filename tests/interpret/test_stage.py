"""The heatmap stage on a results folder in the DAG's layout: real slides segmented and tiled, feature stores, a
trained-fold checkpoint with its held-out predictions; the top / bottom patients are drawn in score order, a slide
is drawn on request into its own folder, and the report's listing finds the former only."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from pathmm_pipeline.cli import main
from pathmm_pipeline.core.provenance import build_provenance
from pathmm_pipeline.core.stores import ArraySpec, write_store
from pathmm_pipeline.evaluation.html import heatmaps_html
from pathmm_pipeline.evaluation.predict import predict_logits
from pathmm_pipeline.interpret.settings import HeatmapSettings
from pathmm_pipeline.interpret.stage import INDEX, collect_heatmaps, pick_patients
from pathmm_pipeline.models import InputDims, TaskSpec, build_model
from pathmm_pipeline.models.checkpoint import save_checkpoint
from pathmm_pipeline.preprocess.segmentation import SegmentationSettings, segment_slide
from pathmm_pipeline.preprocess.tiling import TilingSettings, load_tiles, tile_slide
from pathmm_pipeline.stages.heatmaps import heatmaps, run_paths
from pathmm_pipeline.tasks.kinds import risk_scores

PATIENTS = [f"P{i}" for i in range(6)]
D = 12


@pytest.fixture(scope="module")
def results(slide_factory, tmp_path_factory):
    """results/ with 6 one-slide patients, an ABMIL fold trained on P0-P1 (weights seeded, not fitted) and its
    predictions on the held-out P2-P5."""
    from pathmm_pipeline.cohort.dataset import MultimodalCohort

    root = tmp_path_factory.mktemp("heat") / "results"
    rows = []
    for i, patient in enumerate(PATIENTS):
        sid = f"S{i}"
        slide = slide_factory(f"heatstage{i}", size=(2048, 1536), seed=i)
        seg = root / "segmentation" / f"{sid}.zarr"
        segment_slide(slide.path, seg, root / "segmentation" / f"{sid}.geojson",
                      root / "segmentation" / f"{sid}.qc.png", SegmentationSettings(), fallback=False)
        tile_slide(slide.path, seg, root / "tiles" / f"{sid}.zarr", TilingSettings(), fallback=False)
        coords = load_tiles(root / "tiles" / f"{sid}.zarr").coords
        n = len(coords)
        feats = np.random.default_rng(i).normal(size=(n, D)).astype(np.float16)
        attrs = {"slide_id": sid, "status": "ok", "reason": "", "n_tiles": n,
                 "encoder": {"name": "toy", "weights_sha256": "0" * 64, "embed_dim": D},
                 "transform": {"tile_px": 256, "input_size": 224, "tile_mpp": 0.5}}
        write_store(root / "features" / "toy" / f"{sid}.zarr", {"features": ArraySpec(feats, ("tile", "feature")),
                                                                "coords": ArraySpec(coords, ("tile", "xy"))},
                    attrs, build_provenance("features", {}, {}))
        rows.append({"patient_id": patient, "slide_id": sid, "slide_path": str(slide.path), "cancer_type": "BLCA",
                     "survival_time": 10.0 + i, "survival_event": i % 2})
    manifest = pd.DataFrame(rows)
    (root / "cohort").mkdir(parents=True)
    manifest.to_parquet(root / "cohort" / "manifest.parquet")
    torch.manual_seed(0)
    task = TaskSpec.survival(4)
    model = build_model("abmil", InputDims(wsi=D), task, hidden_dim=16, attn_dim=8).eval()
    fold_dir = root / "training" / "toy" / "abmil" / "survival" / "fold_0"
    train, val = PATIENTS[:2], PATIENTS[2:]
    save_checkpoint(fold_dir / "checkpoint.pt", model, model_name="abmil", model_options={"hidden_dim": 16,
                    "attn_dim": 8}, dims=InputDims(wsi=D), task=task, task_name="survival", train_config={},
                    fold={"index": 0, "train": train, "val": val}, time_bins=np.array([0.0, 5, 10, 15, 99]),
                    scaler=None, history=[], best_epoch=0, inputs={}, cancer_types=["BLCA"],
                    extra={"label": "abmil", "cohort": {"label_column": None, "pathway_collection": None,
                                                        "family_collection": None}})
    cohort = MultimodalCohort.from_manifest(manifest, root / "features" / "toy", cancer_types=["BLCA"])
    kept, logits, _ = predict_logits(model, cohort, val)
    pd.DataFrame({"patient_id": kept, "subset": "all", "risk": risk_scores(task, logits)}).to_csv(
        fold_dir / "predictions.csv", index=False)
    return root


def test_pick_patients_highest_first_then_lowest_and_never_twice():
    frame = pd.DataFrame({"patient_id": ["a", "b", "c", "a"], "subset": ["all", "all", "all", "withheld wsi"],
                          "risk": [0.5, 2.0, -1.0, 9.0]})
    assert [(p, w) for p, w, _ in pick_patients(frame, 1)] == [("b", "highest risk"), ("c", "lowest risk")]
    assert [p for p, _, _ in pick_patients(frame, 2)] == ["b", "a", "c"]
    binary = pd.DataFrame({"patient_id": ["a", "b"], "subset": "all", "prob_1": [0.2, 0.9]})
    assert pick_patients(binary, 1)[0][:2] == ("b", "highest P(class 1)")


def test_settings_refuse_nonsense():
    with pytest.raises(ValueError, match="top_k_patients"):
        HeatmapSettings(top_k_patients=0)
    with pytest.raises(ValueError, match="nonsense"):
        HeatmapSettings.from_dict({"nonsense": 1})


def test_fold_heatmaps_draw_the_top_and_bottom_held_out_patients(results):
    paths = run_paths(results, "abmil", 0)
    out = heatmaps(paths["checkpoint"], paths["manifest"], paths["out"], {"top_k_patients": 1, "top_k_tiles": 2},
                   features_dir=paths["features"], tiles_dir=paths["tiles"], segmentation_dir=paths["segmentation"])
    index = json.loads((out / INDEX).read_text())
    risk = pd.read_csv(paths["checkpoint"].parent / "predictions.csv", dtype={"patient_id": str}).set_index(
        "patient_id").risk
    assert [r["patient_id"] for r in index["slides"]] == [risk.idxmax(), risk.idxmin()]
    assert [r["why"] for r in index["slides"]] == ["highest risk", "lowest risk"]
    assert all(r["held_out"] for r in index["slides"]) and index["requested"] is False
    assert set(index["provenance"]["inputs"]) >= {"checkpoint", "manifest", "predictions"}
    for row in index["slides"]:
        folder = out / row["slide_id"]
        assert {"attention.png", "contribution.png", "tiles.geojson", "heatmap.json"} <= {p.name for p in
                                                                                           folder.iterdir()}
        assert sorted(p.name for p in (folder / "tiles").iterdir()) == ["bottom_01.png", "bottom_02.png",
                                                                       "top_01.png", "top_02.png"]
        caption = json.loads((folder / "heatmap.json").read_text())["caption"]
        assert caption["patient"] == row["patient_id"] and caption["fold"] == 0
    listed = collect_heatmaps(results)
    assert list(listed.slide_id) == [r["slide_id"] for r in index["slides"]]
    assert listed.png.str.endswith("attention.png").all() and (listed.run == "abmil").all()
    section = heatmaps_html(listed)  # the evaluation report's section: attention and contribution per slide
    assert section.count("<img src='data:image/jpeg;base64,") == 2 * len(listed) and "highest risk" in section
    assert "no heatmap" in heatmaps_html(listed.iloc[:0])


def test_a_slide_on_request_goes_to_its_own_folder_and_not_into_the_report(results, capsys):
    assert main(["heatmaps", "--run", "abmil", "--fold", "0", "--results", str(results), "--slide", "S0",
                 "--settings", '{"top_k_tiles": 0}']) == 0
    out = results / "heatmaps" / "requested" / "toy" / "abmil" / "survival" / "fold_0"
    index = json.loads((out / INDEX).read_text())
    assert [r["slide_id"] for r in index["slides"]] == ["S0"] and index["requested"] is True
    assert index["slides"][0]["why"] == "requested, trained on in this fold"
    assert not (out / "S0" / "tiles").exists()
    assert "requested" not in set(collect_heatmaps(results).png.str.split("/").sum())
    assert main(["heatmaps", "--run", "abmil", "--fold", "3", "--results", str(results)]) == 2
    assert "fold_3/checkpoint.pt" in capsys.readouterr().err


def test_no_heatmap_gives_an_empty_listing(tmp_path):
    listed = collect_heatmaps(tmp_path)
    assert listed.empty and "png" in listed.columns
