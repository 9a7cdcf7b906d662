"""`evaluate` at cohort scale: wall time and peak memory of the report stage on generated results trees of
growing size (issue 17 item 7), side by side in one run.

Each tree is what the DAG leaves for ``rule evaluate`` at N slides (2-3 slides per patient, 3 cancer types,
one encoder, two runs x 5 folds of a survival task), written with the project's own writers where they exist:

* ``cohort/manifest.parquet`` and ``qc/slides.parquet`` (Parquet with provenance; the QC summary's record
  lists every tile and segmentation store, as ``write_qc_summary`` does), ``cohort/resolution.csv``;
* ``features/<enc>/<slide>.zarr``: one store written by ``write_store``, hard-linked per slide (small: 64 tiles
  x 64 dims; a real store is 100-1000x larger, so hashing it costs that much more);
* ``segmentation/<slide>.qc.png`` thumbnails; Snakemake benchmark TSVs per slide job (segment, tile, extract),
  per patient (clean_report) and per fold;
* ``training/<enc>/<run>/survival/fold_<k>/``: ``metrics.csv`` and ``predictions.csv`` (``FoldEvaluation.save``,
  one row per held-out patient and subset) and ``checkpoint.pt`` (``save_checkpoint`` of a small ABMIL, its
  fold lists and every feature store as an input, as training records them).

Each size runs ``pathmm_pipeline.stages.training.evaluate`` in a fresh subprocess, timed, with its peak RSS
from ``getrusage(RUSAGE_CHILDREN)`` of a wrapper process. Trees are cached under ``.cache/bench/evaluate``.

    python bench/evaluate_scale.py [--slides 1000 10000 100000] [--keep]

Prints seconds and peak MB per size and, per slide, the ratio of each size to the smallest.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache" / "bench" / "evaluate"
ENCODER = "uni"
RUNS = ("abmil", "abmil_inner")
FOLDS = 5
DIM = 64
TYPES = ("BLCA", "LUAD", "STAD")
BENCH_HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def cohort(n_slides: int, seed: int = 0) -> pd.DataFrame:
    """One row per slide: slide_id, patient_id (2-3 slides each), cancer type and survival."""
    rng = np.random.default_rng(seed)
    per_patient = np.where(rng.random(n_slides) < 0.5, 2, 3)
    patients = np.repeat(np.arange(n_slides), per_patient)[:n_slides]
    n_patients = int(patients.max()) + 1
    time_p = rng.exponential(40.0, n_patients).round(2) + 0.5
    event_p = (rng.random(n_patients) < 0.6).astype(int)
    type_p = rng.integers(0, len(TYPES), n_patients)
    return pd.DataFrame({"slide_id": [f"S{i:06d}" for i in range(n_slides)],
                         "patient_id": [f"P{p:06d}" for p in patients],
                         "cancer_type": [TYPES[t] for t in type_p[patients]],
                         "survival_time": time_p[patients], "survival_event": event_p[patients]})


def _parquet(frame: pd.DataFrame, path: Path, record: dict) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pathmm_pipeline.core.provenance import PARQUET_KEY

    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), PARQUET_KEY: json.dumps(record)})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def _fake_inputs(root: Path, names: list[str], kind: str) -> dict[str, dict]:
    """Input entries as ``describe_input`` writes them, without hashing (the stores are not written)."""
    return {f"{kind}:{n}": {"path": str(root / kind / f"{n}.zarr"), "given_path": f"{kind}/{n}.zarr",
                            "kind": "dir", "size": 4096, "sha256": "0" * 64} for n in names}


def write_tables(root: Path, slides: pd.DataFrame, rng: np.random.Generator) -> None:
    """The cohort manifest, the resolution table and the QC summary."""
    from pathmm_pipeline.core.provenance import build_provenance
    from pathmm_pipeline.preprocess.resolution import COLUMNS

    n = len(slides)
    _parquet(slides.assign(slide_path=[f"/data/slides/{s}.svs" for s in slides.slide_id]),
             root / "cohort" / "manifest.parquet", build_provenance("cohort_manifest", {}, {}))
    flags = np.where(rng.random(n) < 0.005, "mpp 0.352 um/px from tiff dpi 72: screen default", "")
    mpp = np.where(rng.random(n) < 0.7, 0.2527, 0.5013)
    resolution = pd.DataFrame({"slide_id": slides.slide_id, "path": [f"/data/slides/{s}.svs" for s in slides.slide_id],
                               "mpp_x": mpp, "mpp_y": mpp, "mpp_source": "openslide.mpp-x",
                               "objective_power": np.where(mpp < 0.3, 40.0, 20.0), "vendor": "aperio",
                               "backend": "openslide", "width": 80000, "height": 60000, "flags": flags})
    resolution[list(COLUMNS)].to_csv(root / "cohort" / "resolution.csv", index=False)
    status = np.where(rng.random(n) < 0.01, "skipped", np.where(rng.random(n) < 0.02, "qc_excluded", "ok"))
    n_tiles = np.where(status == "skipped", 0, rng.integers(200, 20000, n))
    excluded = (n_tiles * rng.uniform(0, 0.1, n)).astype(int)
    qc = pd.DataFrame({"slide_id": slides.slide_id, "segmentation_status": "ok", "tiling_status": status,
                       "reason": np.where(status == "skipped", "no tissue", np.where(
                           status == "qc_excluded", "tissue area 0.4 mm2 < 1.0", "")),
                       "tissue_area_mm2": rng.uniform(0.5, 400, n), "n_pieces": rng.integers(1, 9, n),
                       "pen_fraction": rng.uniform(0, 0.05, n), "n_tiles": n_tiles,
                       "qc_decision": np.where(status == "qc_excluded", "exclude", "include"),
                       "n_qc_candidates": n_tiles + excluded, "tiles_excluded_by_qc": excluded,
                       "tile_qc_reasons": [f"blur: {e}" if e else "" for e in excluded],
                       "slide_mpp": mpp, "achieved_mpp": 0.5, "level": 0, "read_px": 448,
                       "tile_store": [f"{root}/tiles/{s}.zarr" for s in slides.slide_id],
                       "segmentation_store": [f"{root}/segmentation/{s}.zarr" for s in slides.slide_id]})
    record = build_provenance("qc_summary", {}, {}, extra={"n_slides": n, "n_tiles": int(n_tiles.sum())})
    record["inputs"] = {**_fake_inputs(root, list(slides.slide_id), "tiles"),
                        **_fake_inputs(root, list(slides.slide_id), "segmentation")}
    _parquet(qc, root / "qc" / "slides.parquet", record)


def write_per_slide(root: Path, slides: pd.DataFrame, rng: np.random.Generator) -> list[Path]:
    """Feature stores (hard links of one written store), QC thumbnails and per-job benchmark files."""
    import cv2

    from pathmm_pipeline.core.provenance import build_provenance
    from pathmm_pipeline.core.stores import ArraySpec, write_store

    template = root / "template.zarr"
    write_store(template, {"features": ArraySpec(rng.standard_normal((64, DIM)).astype(np.float16),
                                                 ("tile", "feature")),
                           "coords": ArraySpec(rng.integers(0, 50000, (64, 2)), ("tile", "xy"))},
                {"slide_id": "template", "encoder": ENCODER}, build_provenance("extract_features", {}, {}))
    files = [p for p in sorted(template.rglob("*")) if p.is_file()]
    sources = list(files)
    stores = []
    feature_dir = root / "features" / ENCODER
    seg = root / "segmentation"
    seg.mkdir(parents=True, exist_ok=True)
    ok, png = cv2.imencode(".png", rng.integers(0, 255, (24, 32, 3), dtype=np.uint8))
    bench = root / "benchmarks"
    for sub in ("segment_tissue", "tile_slide", f"extract_features/{ENCODER}", "clean_report"):
        (bench / sub).mkdir(parents=True, exist_ok=True)
    for sid in slides.slide_id:
        store = feature_dir / f"{sid}.zarr"
        for i, file in enumerate(files):
            target = store / file.relative_to(template)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(sources[i], target)
            except OSError as exc:  # the file system's link limit (ext4: 65,000): a fresh copy to link to
                if exc.errno != errno.EMLINK:
                    raise
                shutil.copyfile(sources[i], target)
                sources[i] = target
        stores.append(store)
        (seg / f"{sid}.qc.png").write_bytes(png.tobytes())
        for sub, s in (("segment_tissue", 4.1), ("tile_slide", 12.7), (f"extract_features/{ENCODER}", 95.3)):
            (bench / sub / f"{sid}.tsv").write_text(BENCH_HEADER + f"{s}\t0:00:{int(s) % 60:02d}\t812.4\t2100.2\t"
                                                    "700.1\t720.3\t10.5\t2.1\t88.0\t" + f"{s * 0.9:.2f}\n")
    for pid in slides.patient_id.unique():
        (bench / "clean_report" / f"{pid}.tsv").write_text(BENCH_HEADER + "0.8\t0:00:00\t95.2\t300\t80\t85\t0\t0\t"
                                                           "90\t0.7\n")
    shutil.rmtree(template)
    return stores


def _fold_frames(run: str, fold: int, val: pd.DataFrame, train_risk_cut: float,
                 rng: np.random.Generator) -> tuple[pd.DataFrame, pd.DataFrame]:
    base = {"model": run, "task": "survival", "selection": "inner" if run.endswith("inner") else "last",
            "fold": fold, "removed": "", "modalities": "wsi"}
    risk = rng.standard_normal(len(val)) + 0.02 * (50 - val.survival_time.to_numpy())
    pred = pd.DataFrame({"patient_id": val.patient_id.to_numpy(), **base, "subset": "all",
                         "cancer_type": val.cancer_type.to_numpy(), "time": val.survival_time.to_numpy(),
                         "event": val.survival_event.to_numpy(), "risk": risk})
    surv = np.cumprod(rng.uniform(0.7, 0.99, (len(val), 4)), axis=1)
    for k in range(4):
        pred[f"surv_{k}"] = surv[:, k]
    pred["risk_group"] = np.where(risk > train_risk_cut, "high risk", "low risk")
    pred = pred[["patient_id", "model", "task", "selection", "fold", "subset", "removed", "modalities",
                 "cancer_type", "time", "event", "risk", *[f"surv_{k}" for k in range(4)], "risk_group"]]
    rows = []
    n, n_ev = len(val), int(val.survival_event.sum())
    for subset, removed, mods in (("all", "", "wsi"), ("withheld wsi", "wsi", "none")):
        for metric in ("c_index", "td_auc", "ibs", "logrank_p"):
            value = rng.uniform(0.55, 0.7) if subset == "all" else np.nan
            rows.append({**base, "subset": subset, "removed": removed, "modalities": mods, "cancer_type": "all",
                         "metric": metric, "value": value, "lower": value - 0.03 if metric == "c_index" else np.nan,
                         "upper": value + 0.03 if metric == "c_index" else np.nan,
                         "n_patients": n if subset == "all" else 0, "n_events": n_ev if subset == "all" else np.nan,
                         "note": "" if subset == "all" else "not evaluable: no modality left"})
    for name in TYPES:
        mask = val.cancer_type.to_numpy() == name
        value = rng.uniform(0.5, 0.75)
        rows.append({**base, "subset": "all", "cancer_type": name, "metric": "c_index", "value": value,
                     "lower": value - 0.05, "upper": value + 0.05, "n_patients": int(mask.sum()),
                     "n_events": int(val.survival_event.to_numpy()[mask].sum()), "note": ""})
    metrics = pd.DataFrame(rows)
    metrics["n_left_out"] = np.where((metrics.subset == "all") & (metrics.cancer_type == "all"), 0, 0)
    return metrics, pred


def write_folds(root: Path, slides: pd.DataFrame, stores: list[Path], rng: np.random.Generator) -> list[Path]:
    """Per run and fold: metrics, predictions and a checkpoint whose inputs are every feature store."""
    import torch

    from pathmm_pipeline.evaluation.run import FoldEvaluation
    from pathmm_pipeline.models import InputDims, TaskSpec, build_model
    from pathmm_pipeline.models.checkpoint import save_checkpoint

    patients = slides.drop_duplicates("patient_id").reset_index(drop=True)
    fold_of = rng.permutation(len(patients)) % FOLDS
    inputs = {f"wsi:{s.name.removesuffix('.zarr')}": s for s in stores}
    dims, task = InputDims(wsi=DIM, n_cancer_types=len(TYPES)), TaskSpec("survival", 4)
    torch.manual_seed(0)
    dirs = []
    (root / "splits").mkdir(parents=True, exist_ok=True)
    (root / "splits" / "splits_manifest.json").write_text(json.dumps(
        {"method": "stratified", "seed": 0, "k": FOLDS, "n_patients": len(patients)}))
    for run in RUNS:
        model = build_model("abmil", dims, task, hidden_dim=16, attn_dim=8, dropout=0.0)
        for fold in range(FOLDS):
            folder = root / "training" / ENCODER / run / "survival" / f"fold_{fold}"
            folder.mkdir(parents=True, exist_ok=True)
            val, train = patients[fold_of == fold], patients[fold_of != fold]
            metrics, pred = _fold_frames(run, fold, val, 0.0, rng)
            FoldEvaluation(run, "survival", fold, metrics, pred).save(folder)
            history = [{"epoch": e, "train_loss": 1.0 / (e + 1), "inner_val_loss": np.nan, "inner_val_metric": np.nan,
                        "lr": 1e-4, "seconds": 60.0} for e in range(20)]
            save_checkpoint(folder / "checkpoint.pt", model, model_name="abmil",
                            model_options={"hidden_dim": 16, "attn_dim": 8, "dropout": 0.0}, dims=dims, task=task,
                            task_name="survival", train_config={"epochs": 20, "selection": "last"},
                            fold={"index": fold, "train": train.patient_id.tolist(), "val": val.patient_id.tolist(),
                                  "dropped": {}, "selection": "last"},
                            time_bins=np.array([0.0, 10.0, 25.0, 50.0, 400.0]), scaler=None, history=history,
                            best_epoch=19, inputs=inputs, cancer_types=list(TYPES),
                            extra={"label": run, "selection": "last", "seconds": 1200.0, "peak_rss_mb": 4000.0,
                                   "peak_gpu_mb": None, "device": "cuda", "stopped_early": False})
            bench = root / "benchmarks" / "train" / ENCODER / run / "survival"
            bench.mkdir(parents=True, exist_ok=True)
            (bench / f"fold_{fold}.tsv").write_text(BENCH_HEADER + "1200\t0:20:00\t4000\t9000\t1\t1\t0\t0\t95\t1100\n")
            dirs.append(folder)
    return dirs


def build_tree(n_slides: int) -> tuple[Path, list[Path]]:
    """The results tree of ``n_slides`` slides (cached); returns its root and the fold folders."""
    root = CACHE / f"slides_{n_slides}" / "results"
    done = root.parent / "folds.json"
    if done.is_file():
        return root, [Path(p) for p in json.loads(done.read_text())]
    if root.parent.exists():
        shutil.rmtree(root.parent)
    rng = np.random.default_rng(n_slides)
    slides = cohort(n_slides)
    start = time.perf_counter()
    write_tables(root, slides, rng)
    stores = write_per_slide(root, slides, rng)
    dirs = write_folds(root, slides, stores, rng)
    done.write_text(json.dumps([str(d) for d in dirs]))
    print(f"  generated {n_slides} slides ({slides.patient_id.nunique()} patients) in "
          f"{time.perf_counter() - start:.0f} s", flush=True)
    return root, dirs


CHILD = """
import resource, subprocess, sys, time
start = time.perf_counter()
proc = subprocess.run(sys.argv[1:])
seconds = time.perf_counter() - start
print(f"{proc.returncode} {seconds:.3f} {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024:.1f}")
"""


def measure(root: Path, dirs: list[Path]) -> tuple[float, float]:
    """Seconds and peak RSS (MB) of ``evaluate`` on the tree, in a fresh process."""
    out = root / "evaluation" / "report.html"
    call = ("import sys; from pathmm_pipeline.stages.training import evaluate; "
            "evaluate(sys.argv[1:-2], sys.argv[-2], sys.argv[-1])")
    proc = subprocess.run([sys.executable, "-c", CHILD, sys.executable, "-c", call, *map(str, dirs), str(root),
                           str(out)], capture_output=True, text=True, cwd=REPO)
    code, seconds, peak = proc.stdout.split()[-3:]
    if code != "0":
        raise SystemExit(f"evaluate failed on {root}:\n{proc.stderr[-3000:]}")
    return float(seconds), float(peak)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slides", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--keep", action="store_true", help="keep the generated trees (.cache/bench/evaluate)")
    args = parser.parse_args()
    rows = []
    for n in sorted(args.slides):
        root, dirs = build_tree(n)
        seconds, peak = measure(root, dirs)
        html_mb = (root / "evaluation" / "report.html").stat().st_size / 1e6
        rows.append({"slides": n, "seconds": seconds, "peak_mb": peak, "html_mb": html_mb})
        print(f"  {n} slides: {seconds:.1f} s, peak {peak:.0f} MB, report {html_mb:.2f} MB", flush=True)
        if not args.keep:
            shutil.rmtree(root.parent)
    base = rows[0]
    print("\n| slides | seconds | peak MB | report MB | ms / slide | s ratio / slide ratio | MB ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        scale = r["slides"] / base["slides"]
        print(f"| {r['slides']:,} | {r['seconds']:.1f} | {r['peak_mb']:.0f} | {r['html_mb']:.2f} | "
              f"{1000 * r['seconds'] / r['slides']:.2f} | {r['seconds'] / base['seconds'] / scale:.2f} | "
              f"{r['peak_mb'] / base['peak_mb']:.2f} |")
    out = REPO / ".cache" / "bench" / "evaluate_scale.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
