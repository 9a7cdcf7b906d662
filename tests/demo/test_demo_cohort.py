"""The offline demo cohort: real TCGA patients, composed slides both readers open, reports with planted
identifiers, ground truth, determinism, and a planted histology signal that measurably follows survival."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from pathmm_pipeline.core.errors import InputError
from pathmm_pipeline.demo import build_demo_cohort, tcga
from pathmm_pipeline.demo.cohort import (
    LVI_BASE,
    LVI_SPAN,
    SAMPLESHEET_COLUMNS,
    Patient,
    martingale_risk,
    plant_report_signal,
)
from pathmm_pipeline.demo.source import ENV_VAR, ensure_source_slide, verify_source_slide
from pathmm_pipeline.demo.tissue import mean_haematoxylin
from pathmm_pipeline.preprocess.slides import open_slide

REPO = Path(__file__).resolve().parents[2]
LOCAL_COPY = Path("/tmp/wheels/cmu_small_region.svs")
N_PATIENTS, SEED, SCALE = 6, 0, 0.4


@pytest.fixture(scope="module")
def demo_source() -> Path:
    """The real CMU-1-Small-Region slide: $PATHMM_SOURCE_SLIDE, a local copy, or fetched into a cache."""
    if not os.environ.get(ENV_VAR) and LOCAL_COPY.is_file():
        return verify_source_slide(LOCAL_COPY)
    return ensure_source_slide(Path(os.environ.get("PATHMM_CACHE", REPO / ".cache" / "pathmm")))


@pytest.fixture(scope="module")
def cohort(demo_source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small demo cohort (built once), as the folder holding its sample sheet."""
    out = tmp_path_factory.mktemp("demo") / "cohort"
    sheet = build_demo_cohort(out, n_patients=N_PATIENTS, seed=SEED, source_slide=demo_source, slide_scale=SCALE)
    assert sheet == out / "samplesheet.csv"
    return out


@pytest.fixture(scope="module")
def full_sheet(cohort: Path) -> pd.DataFrame:
    return pd.read_csv(cohort / "samplesheet.csv", dtype=str, keep_default_na=False)


@pytest.fixture(scope="module")
def sheet(full_sheet: pd.DataFrame) -> pd.DataFrame:
    """The slide rows (the patients with slides)."""
    return full_sheet[full_sheet.slide_path != ""].reset_index(drop=True)


def test_slide_less_patients_have_expression_and_every_other_one_a_report(cohort, full_sheet, sheet):
    """Four real patients outside the slide cohort (and outside the external pretraining corpus) enter without
    a slide, as TCGA cases with expression but no diagnostic slide; the pipeline accepts the sheet."""
    from pathmm_pipeline.preprocess.samplesheet import load_samplesheet, slide_entries

    rows = full_sheet[full_sheet.slide_path == ""]
    assert len(rows) == 4 and (rows.slide_id == "").all() and rows.patient_id.is_unique
    assert not set(rows.patient_id) & set(sheet.patient_id)
    assert (rows.expression_path == "expression.tsv").all()
    assert list(rows.report_path != "") == [True, False, True, False]
    external = pd.read_csv(cohort / "external" / "patients.csv")
    assert not set(rows.patient_id) & set(external.patient_id)
    loaded = load_samplesheet(cohort / "samplesheet.csv", ["BLCA", "STAD"])
    assert set(slide_entries(loaded)) == set(sheet.slide_id)


@pytest.fixture(scope="module")
def truth(cohort: Path) -> dict:
    return json.loads((cohort / "truth" / "truth.json").read_text())


def _h_density(path: Path, mask_path: Path, mask_mpp: float) -> float:
    """Mean haematoxylin OD over a slide's (eroded) truth tissue, read near 2 um/px and resized to the mask."""
    mask = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE) > 0
    mask = cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    with open_slide(path) as reader:
        level = reader.best_level_for_downsample(2.0 / reader.info.mpp)
        image = reader.read_region((0, 0), level, reader.info.level_dimensions[level])
    image = cv2.resize(image, (mask.shape[1], mask.shape[0]), interpolation=cv2.INTER_AREA)
    return mean_haematoxylin(image, mask)


def test_samplesheet_columns_paths_and_real_labels(cohort, sheet):
    assert tuple(sheet.columns) == SAMPLESHEET_COLUMNS
    assert sheet["slide_id"].is_unique
    assert sheet["patient_id"].nunique() == N_PATIENTS
    assert set(sheet["cancer_type"]) == {"BLCA", "STAD"}
    assert (sheet.groupby("cancer_type")["patient_id"].nunique() == N_PATIENTS // 2).all()
    assert (sheet["mpp"] == "").all()
    for column in ("slide_path", "expression_path", "report_path"):
        for value in sheet[column]:
            assert not Path(value).is_absolute()
            assert (cohort / value).is_file(), value
    # labels are the real TCGA ones; the event is the source's censorship_dss inverted
    for row in sheet.drop_duplicates("patient_id").itertuples():
        real = tcga.load_clinical(row.cancer_type).loc[row.patient_id]
        assert float(row.survival_time) == pytest.approx(real["survival_months_dss"], abs=1e-3)
        assert int(row.survival_event) == 1 - int(real["censorship_dss"])
        assert (row.stage, row.grade, row.subtype) == (real["stage"], real["grade"], real["subtype"])
        assert int(row.age) == int(real["age"])
        assert row.sex == ("female" if real["is_female"] else "male")
    events = sheet.drop_duplicates("patient_id")["survival_event"].astype(int)
    assert 0 < events.sum() < N_PATIENTS


def test_samplesheet_passes_pipeline_validation(cohort):
    from pathmm_pipeline.preprocess.samplesheet import load_samplesheet

    frame = load_samplesheet(cohort / "samplesheet.csv", cancer_types=["BLCA", "STAD"])
    assert len(frame) == len(pd.read_csv(cohort / "samplesheet.csv"))


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
def test_every_slide_opens_with_its_mpp_and_pyramid(cohort, sheet, truth, backend):
    for row in sheet.itertuples():
        facts = truth["slides"][row.slide_id]
        with open_slide(cohort / row.slide_path, backend=backend, fallback=False) as reader:
            info = reader.info
            assert info.mpp == pytest.approx(facts["mpp"], abs=1e-3)
            assert info.dimensions == (facts["width"], facts["height"])
            assert info.level_count >= 2
            assert info.level_count == facts["levels"]
            if row.slide_path.endswith(".svs"):
                assert info.objective_power == pytest.approx(20.0 if facts["mpp"] > 0.3 else 40.0)
            tile = reader.read_region((info.dimensions[0] // 2, info.dimensions[1] // 2), 0, (256, 256))
            assert tile.shape == (256, 256, 3)


def test_slide_mix_styles_magnifications_and_one_blank(sheet, truth):
    slides = truth["slides"].values()
    assert {s["style"] for s in slides} == {"aperio", "generic"}
    assert {s["mpp"] for s in slides} == {0.25, 0.5}
    assert sum(not s["has_tissue"] for s in slides) == 1
    assert sheet["patient_id"].value_counts().max() >= 2
    for slide_id, s in truth["slides"].items():
        assert s["slide"].endswith(".svs" if s["style"] == "aperio" else ".tiff")
        assert sheet.loc[sheet.slide_id == slide_id, "slide_path"].item() == s["slide"]


def test_truth_masks_match_slides(cohort, truth):
    assert truth["mask_mpp"] == 8.0
    for slide_id, s in truth["slides"].items():
        mask = cv2.imread(str(cohort / s["mask"]), cv2.IMREAD_GRAYSCALE)
        scale = s["mpp"] / truth["mask_mpp"]
        assert mask.shape == (int(s["height"] * scale), int(s["width"] * scale))
        assert set(np.unique(mask)) <= {0, 255}
        if not s["has_tissue"]:
            assert mask.max() == 0
            continue
        assert 0.08 < (mask > 0).mean() < 0.6
        # stained pixels of the slide itself line up with the mask (pen and bubble are thin, holes are glass)
        with open_slide(cohort / s["slide"]) as reader:
            level = reader.info.level_count - 1
            image = reader.read_region((0, 0), level, reader.info.level_dimensions[level])
        image = cv2.resize(image, (mask.shape[1], mask.shape[0]), interpolation=cv2.INTER_AREA)
        od = -np.log10((image.astype(np.float32) + 1) / 256).sum(axis=-1)
        found, known = od > 0.3, mask > 0
        assert (found & known).sum() / (found | known).sum() > 0.85, slide_id


def test_planted_signal_follows_survival_risk(cohort, sheet):
    from lifelines.utils import concordance_index

    signal = pd.read_csv(cohort / "truth" / "signal.csv")
    assert set(signal["slide_id"]) == set(sheet["slide_id"])
    per_patient = signal.dropna(subset=["cellular_fraction"]).groupby("patient_id").first()
    assert len(per_patient) == N_PATIENTS
    time, event = per_patient["survival_months_dss"].to_numpy(), per_patient["event"].to_numpy()
    # the documented formula: p = clip(0.15 + 0.70 r + N(0, 0.03^2)), r from the martingale-residual rank
    np.testing.assert_allclose(per_patient["risk_score"], martingale_risk(time, event.astype(float)), atol=1e-5)
    assert np.abs(per_patient["cellular_fraction"] - (0.15 + 0.7 * per_patient["risk_rank"])).max() < 0.12
    # higher p = higher risk = shorter survival
    assert concordance_index(time, -per_patient["cellular_fraction"], event) > 0.8
    tissue = signal.dropna(subset=["cellular_fraction"])
    assert np.abs(tissue["realised_cellular_fraction"] - tissue["cellular_fraction"]).max() < 0.05


def test_report_signal_is_written_in_every_report_and_listed(cohort, sheet):
    reported = pd.read_csv(cohort / "truth" / "report_signal.csv")
    assert set(sheet["patient_id"]) < set(reported["patient_id"])  # and the slide-less patients with a report
    per_slide = pd.read_csv(cohort / "truth" / "signal.csv").set_index("patient_id")["lymphovascular_invasion"]
    for row in reported.itertuples():
        text = " ".join((cohort / "reports" / f"{row.patient_id}.txt").read_text().split())  # unwrapped
        present = "Lymphovascular invasion present." in text
        absent = "Lymphovascular invasion not identified." in text
        assert present != absent and present == bool(row.lymphovascular_invasion), row.patient_id
        if row.patient_id in per_slide.index:
            assert set(np.atleast_1d(per_slide.loc[row.patient_id])) == {row.lymphovascular_invasion}


def test_report_signal_follows_the_documented_formula():
    """P(LVI) = LVI_BASE + LVI_SPAN * risk rank, on many synthetic outcomes: the worst decile has LVI far more
    often than the best, each near the formula's rate."""
    rng = np.random.default_rng(7)
    n = 4000
    time, event = rng.exponential(30.0, n), rng.random(n) < 0.5
    patients = [Patient(f"P{i}", "BLCA", float(t), int(e), "II", "G2", "x", 60, "male")
                for i, (t, e) in enumerate(zip(time, event, strict=True))]
    lvi = plant_report_signal(patients, np.random.default_rng(0))
    risk = martingale_risk(time, event.astype(float))
    order = np.argsort(risk, kind="stable")
    flags = np.array([lvi[patients[i].patient_id] for i in order], float)
    best, worst = flags[: n // 10].mean(), flags[-(n // 10):].mean()
    assert abs(best - (LVI_BASE + LVI_SPAN * 0.05)) < 0.06 and abs(worst - (LVI_BASE + LVI_SPAN * 0.95)) < 0.06
    # another draw gives other flags: the signal's noise is its own
    again = plant_report_signal(patients, np.random.default_rng(1))
    assert 0.1 < np.mean([lvi[k] != again[k] for k in lvi]) < 0.6


def test_measured_haematoxylin_increases_with_planted_fraction(cohort, truth):
    signal = pd.read_csv(cohort / "truth" / "signal.csv").dropna(subset=["cellular_fraction"])
    p = signal["cellular_fraction"].to_numpy()
    h = np.array([_h_density(cohort / truth["slides"][s]["slide"], cohort / truth["slides"][s]["mask"],
                             truth["mask_mpp"]) for s in signal["slide_id"]])
    assert np.corrcoef(p, h)[0, 1] > 0.9
    for i in range(len(p)):
        for j in range(len(p)):
            if p[i] > p[j] + 0.25:
                assert h[i] > h[j], (signal["slide_id"].iloc[i], signal["slide_id"].iloc[j], h[i], h[j])


def test_reports_carry_planted_identifiers_and_clinical_terms(cohort, sheet):
    planted = json.loads((cohort / "reports" / "planted_identifiers.json").read_text())
    terms = json.loads((cohort / "reports" / "clinical_terms.json").read_text())
    assert set(sheet["patient_id"]) < set(planted)  # and the slide-less patients with a report
    for row in sheet.drop_duplicates("patient_id").itertuples():
        text = (cohort / row.report_path).read_text()
        for header in ("CLINICAL HISTORY:", "GROSS DESCRIPTION:", "MICROSCOPIC DESCRIPTION:", "DIAGNOSIS:",
                       "COMMENT:", "Page 1 of 1", "Electronically signed by"):
            assert header in text
        kinds = {item["type"] for item in planted[row.patient_id]}
        assert kinds == {"NAME", "DATE", "MRN", "ACCESSION", "PHONE", "ADDRESS", "EMAIL"}
        for item in planted[row.patient_id]:
            assert item["text"] in text, item
        for term in terms[row.patient_id]:
            assert term in text, term
        assert "muscularis propria" in text and f"{row.age}-year-old" in text
        assert ("Lauren classification" in text) == (row.cancer_type == "STAD")
        assert "-\n" in text and ".  " in text  # OCR damage: hyphenated line break, doubled spaces


def test_expression_table_is_xena_style(cohort, full_sheet):
    table = pd.read_csv(cohort / "expression.tsv", sep="\t", index_col=0)
    assert table.index.name == "sample"
    patients = list(dict.fromkeys(full_sheet["patient_id"]))
    assert sorted(table.columns) == sorted(f"{p}-01" for p in patients)
    for row in full_sheet.drop_duplicates("patient_id").itertuples():
        real = tcga.load_expression(row.cancer_type).loc[row.patient_id]
        assert list(table.index) == list(real.index)
        np.testing.assert_array_equal(table[f"{row.patient_id}-01"].to_numpy(np.float32), real.to_numpy())


def test_same_seed_same_cohort(cohort, demo_source, tmp_path):
    again = tmp_path / "again"
    build_demo_cohort(again, n_patients=N_PATIENTS, seed=SEED, source_slide=demo_source, slide_scale=SCALE,
                      workers=1)
    for name in ("samplesheet.csv", "expression.tsv", "reports/planted_identifiers.json", "truth/signal.csv"):
        assert (again / name).read_bytes() == (cohort / name).read_bytes(), name
    for report in (cohort / "reports").glob("*.txt"):
        assert (again / "reports" / report.name).read_bytes() == report.read_bytes()
    path = pd.read_csv(cohort / "samplesheet.csv")["slide_path"].iloc[0]

    def level2_hash(root: Path) -> str:
        with open_slide(root / path) as reader:
            level = min(2, reader.info.level_count - 1)
            pixels = reader.read_region((0, 0), level, reader.info.level_dimensions[level])
        return hashlib.sha256(pixels.tobytes()).hexdigest()

    assert level2_hash(again) == level2_hash(cohort)


def test_other_seed_other_cohort(demo_source, tmp_path):
    out = tmp_path / "other"
    build_demo_cohort(out, n_patients=2, seed=SEED + 1, source_slide=demo_source, slide_scale=0.2, workers=1,
                      n_slide_less=0)
    first = pd.read_csv(out / "samplesheet.csv")
    assert first["patient_id"].nunique() == 2 and len(first) >= 3  # one glass-only slide is always added


def test_refuses_to_replace_a_foreign_folder(demo_source, tmp_path):
    (tmp_path / "mine.txt").write_text("not a cohort")
    with pytest.raises(InputError, match="not a demo cohort"):
        build_demo_cohort(tmp_path, n_patients=2, source_slide=demo_source)
    assert (tmp_path / "mine.txt").read_text() == "not a cohort"


def test_wrong_source_slide_is_refused(tmp_path, monkeypatch):
    fake = tmp_path / "fake.svs"
    fake.write_bytes(b"not a slide")
    with pytest.raises(InputError, match="--source-slide"):
        verify_source_slide(fake)
    monkeypatch.setenv(ENV_VAR, str(fake))
    with pytest.raises(InputError, match="fake.svs"):
        ensure_source_slide(tmp_path / "cache")


def test_compact_tcga_tables():
    for cohort_name in tcga.COHORTS:
        clinical = tcga.load_clinical(cohort_name)
        assert clinical.index.is_unique and len(clinical) > 300
        assert set(clinical["censorship_dss"].unique()) <= {0, 1}
        expression = tcga.load_expression(cohort_name)
        assert expression.shape[1] == 1577 and (expression.dtypes == np.float32).all()
        splits = sorted(tcga.splits_dir(cohort_name).glob("splits_*.csv"))
        assert [s.name for s in splits] == [f"splits_{k}.csv" for k in range(5)]
        fold = pd.read_csv(splits[0], index_col=0)
        assert list(fold.columns) == ["train", "val"]
        assert set(fold["val"].dropna()) <= set(clinical.index) | set(expression.index)
    assert tcga.pathway_table("hallmarks_comps").shape[1] == 50
    assert tcga.pathway_table("xena_comps").shape == (1577, 281)
    assert tcga.pathway_table("gene_families_6").shape[1] == 6


def test_segmentation_recovers_demo_tissue(cohort, sheet, tmp_path):
    """The pipeline's segmentation against the demo's ground truth: pen marks, bubbles and holes included."""
    from pathmm_pipeline.preprocess.segmentation import SegmentationSettings, segment_slide

    scores = {}
    for row in sheet.itertuples():
        out = tmp_path / row.slide_id
        result = segment_slide(cohort / row.slide_path, out / "m.zarr", out / "m.geojson", out / "m.png",
                               # this cohort is shrunk by SCALE: so are its tissue pieces' areas
                               SegmentationSettings(min_tissue_area_um2=100_000.0 * SCALE ** 2,
                                                    min_hole_area_um2=40_000.0 * SCALE ** 2),
                               slide_id=row.slide_id)
        truth = cv2.imread(str(cohort / "truth" / f"{row.slide_id}_tissue.png"), cv2.IMREAD_GRAYSCALE) > 0
        if not truth.any():
            assert result.status == "no_tissue"
            continue
        truth = cv2.resize(truth.astype(np.float32), result.mask.shape[::-1], interpolation=cv2.INTER_AREA) >= 0.5
        mask = result.mask > 0
        scores[row.slide_id] = (mask & truth).sum() / (mask | truth).sum()
    assert scores and min(scores.values()) > 0.85 and np.mean(list(scores.values())) > 0.93, scores
