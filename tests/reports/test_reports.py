"""The reports stage: cleaning, de-identification (hand-written corpus and demo reports built from real TCGA
clinical fields with planted fake identifiers), the text-encoder registry, MiniLM embeddings, chunking of long
reports, the Parquet / Zarr stage outputs with verified provenance, and bad inputs that write nothing."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from pathmm_pipeline.core.atomic import stale_temporaries  # noqa: E402
from pathmm_pipeline.core.errors import InputError  # noqa: E402
from pathmm_pipeline.core.provenance import hash_file, read_provenance, verify_provenance  # noqa: E402
from pathmm_pipeline.reports.clean import (  # noqa: E402
    SECTION_KEYS,
    clean_report,
    repair_hyphenation,
    repair_split_words,
    split_sections,
)
from pathmm_pipeline.reports.deid import PHI_TYPES, deidentify  # noqa: E402

CORPUS = Path(__file__).resolve().parents[1] / "data" / "deid_corpus.json"

MESSY = """ST. ALDRIC UNIVERSITY HOSPITAL
Department of Pathology and Laboratory Medicine      Tel (555) 555-0100
SURGICAL PATHOLOGY REPORT
Patient: ROE, JANE        MRN: 1234-567
=====================================

CLINICAL HISTORY/INFORMATION:
Gastric mass, rule out adeno carcinoma.

FINAL DIAGNOSIS
Stomach, gastrectomy: poorly differ-
entiated adenocarcinoma, well-
differentiated areas absent, infiltrating the muscularis
propria (pT2), 0 of 15 lymph nodes (pN0). A typical features
are absent.

Page 1 of 2

Microscopic Description: Sections show carci-
noma with sig net ring cells. Ki-
67 30%.
This test was developed and its performance characteristics determined by the
Department of Pathology. It has not been cleared or approved by the U.S. Food and
Drug Administration.

GROSS DESCRIPTION:
Received fresh, a 12 x 8 cm portion of stomach.
Note that margins are inked.

COMMENT(S):
Discussed with Dr. Quill.

Electronically signed by Odile Quill, MD on 01/02/2026
Jane Fenwick, M.D.
St. Aldric University Hospital      Page 2 of 2
"""


# ------------------------------------------------------------------------------------------------ demo reports
def _demo_reports(n_per_cohort: int, seed: int = 0) -> list[tuple[str, object]]:
    """(patient_id, Report) from real TCGA clinical rows of both cohorts via the demo report writer."""
    from pathmm_pipeline.demo import tcga
    from pathmm_pipeline.demo.reports import PatientFacts, make_report

    out = []
    for cohort in ("blca", "stad"):
        frame = tcga.load_clinical(cohort).dropna(subset=["age", "stage", "grade", "subtype", "is_female"])
        frame = frame[frame["stage"].isin(["I", "II", "III", "IV"])].sort_index()
        for i, (case_id, row) in enumerate(frame.head(n_per_cohort).iterrows()):
            facts = PatientFacts(str(case_id), cohort.upper(), str(row["stage"]), str(row["grade"]),
                                 str(row["subtype"]), int(row["age"]), "female" if row["is_female"] else "male")
            out.append((str(case_id), make_report(facts, np.random.default_rng(seed + i))))
    return out


def _surviving(identifiers: list[dict[str, str]], text: str) -> list[str]:
    """Planted identifiers still in ``text``: the exact string, or any word (3+ letters) of a planted name."""
    left = [f"{i['type']}:{i['text']}" for i in identifiers if i["text"] in text]
    for ident in identifiers:
        if ident["type"] == "NAME":
            for word in re.findall(r"[A-Za-z'-]{3,}", ident["text"]):
                if re.search(rf"(?i)(?<![A-Za-z]){re.escape(word)}(?![A-Za-z])", text):
                    left.append(f"NAME-word:{word}")
    return left


# ------------------------------------------------------------------------------------------------ cleaning
def test_hyphenation_and_split_word_repair() -> None:
    assert repair_hyphenation("invasive carci-\nnoma") == "invasive carcinoma"
    assert repair_hyphenation("chronic inflam-\nmatory cells") == "chronic inflammatory cells"
    assert repair_hyphenation("well-\ndifferentiated") == "well-differentiated"  # two real words keep the hyphen
    assert repair_hyphenation("Ki-\n67") == "Ki-67"
    assert repair_hyphenation("Vasquez-\nOrr") == "Vasquez-Orr"
    assert repair_split_words("rule out adeno carcinoma with sig net ring cells") == \
        "rule out adenocarcinoma with signet ring cells"
    assert repair_split_words("CARCI NOMA") == "CARCINOMA"
    # never join two real words, even when the joined form is a known word
    assert repair_split_words("a typical pattern, with in the wall") == "a typical pattern, with in the wall"
    assert repair_split_words("muscularis propria") == "muscularis propria"


def test_clean_report_removes_noise_and_splits_sections() -> None:
    report = clean_report(MESSY)
    assert set(report.sections) == set(SECTION_KEYS)
    text = report.text
    for noise in ("Page 1 of 2", "Page 2 of 2", "Electronically signed", "M.D.", "SURGICAL PATHOLOGY REPORT",
                  "UNIVERSITY HOSPITAL", "Food and", "performance characteristics", "=====", "MRN", "Tel"):
        assert noise not in text, noise
    s = report.sections
    assert s["clinical_history"] == "Gastric mass, rule out adenocarcinoma."
    assert s["diagnosis"].startswith("Stomach, gastrectomy: poorly differentiated adenocarcinoma, "
                                      "well-differentiated areas absent, infiltrating the muscularis propria (pT2)")
    assert "A typical features are absent." in s["diagnosis"]
    assert s["microscopic"] == "Sections show carcinoma with signet ring cells. Ki-67 30%."
    assert s["gross"] == "Received fresh, a 12 x 8 cm portion of stomach. Note that margins are inked."
    assert s["comment"] == "Discussed with Dr. Quill."
    assert s["other"] == ""
    assert report.removed["signature"] == 2 and report.removed["page"] == 2 and report.removed["disclaimer"] >= 1
    assert split_sections(report.text) == report.sections  # the joined text splits back into the same sections


@pytest.mark.parametrize("header, key", [
    ("FINAL DIAGNOSIS", "diagnosis"), ("Diagnosis:", "diagnosis"), ("FINAL PATHOLOGIC DIAGNOSIS:", "diagnosis"),
    ("MICROSCOPIC DESCRIPTION", "microscopic"), ("Microscopic examination:", "microscopic"),
    ("GROSS DESCRIPTION:", "gross"), ("Macroscopic description:", "gross"), ("COMMENTS:", "comment"),
    ("COMMENT(S)", "comment"), ("CLINICAL HISTORY/INFORMATION:", "clinical_history"),
    ("Clinical information:", "clinical_history"), ("ADDENDUM:", "other"),
])
def test_section_header_variants(header: str, key: str) -> None:
    report = clean_report(f"{header}\nSome text here.\n\nDIAGNOSIS:\nBenign.")
    if key == "diagnosis":
        assert report.sections["diagnosis"].startswith("Some text here.")
    else:
        assert "Some text here." in report.sections[key]
        assert report.sections["diagnosis"] == "Benign."


def test_clean_normalises_unicode_and_whitespace() -> None:
    report = clean_report("DIAGNOSIS:\r\n\ufb01brosis\u00a0and   focal\u200b necrosis\t\tpresent.\f")
    assert report.sections["diagnosis"] == "fibrosis and focal necrosis present."


# ------------------------------------------------------------------------------------------------ de-identification
def test_deid_corpus_removes_identifiers_and_keeps_clinical_terms() -> None:
    cases = json.loads(CORPUS.read_text())["cases"]
    assert len(cases) >= 40
    leaks, mistyped, false_removals, removed = [], [], [], 0
    for case in cases:
        result = deidentify(case["text"])
        for span in result.spans:
            assert case["text"][span.start:span.end] == span.original and span.type in PHI_TYPES
        for ident in case["remove"]:
            if ident["text"] in result.text:
                leaks.append((case["text"], ident))
            elif not any(s.type == ident["type"] and ident["text"] in s.original for s in result.spans):
                mistyped.append((case["text"], ident))
            else:
                removed += 1
        false_removals += [(case["text"], term) for term in case["keep"] if term not in result.text]
    n_identifiers = sum(len(c["remove"]) for c in cases)
    print(f"\ncorpus: {len(cases)} cases, {removed}/{n_identifiers} identifiers removed, "
          f"{len(false_removals)} false removals of {sum(len(c['keep']) for c in cases)} clinical terms")
    assert leaks == []
    assert mistyped == []
    assert false_removals == []


def test_deid_tags_and_offsets() -> None:
    text = "Seen by Dr. Mass on 03/14/2026 (MRN: 0048-2291); 3.5 cm mass, Gleason 4+3, pT2a pN0."
    result = deidentify(text)
    assert result.text == "Seen by Dr. [NAME] on [DATE] (MRN: [MRN]); 3.5 cm mass, Gleason 4+3, pT2a pN0."
    assert [(s.type, s.original) for s in result.spans] == [("NAME", "Mass"), ("DATE", "03/14/2026"),
                                                             ("MRN", "0048-2291")]
    assert result.counts() == {**dict.fromkeys(PHI_TYPES, 0), "NAME": 1, "DATE": 1, "MRN": 1}
    # names known from elsewhere (a registry) are removed wherever they occur
    assert deidentify("Thornquist tolerated the procedure.", extra_names=["Odo Thornquist"]).text == \
        "[NAME] tolerated the procedure."


def test_deid_demo_reports_no_planted_identifier_survives() -> None:
    reports = _demo_reports(30)
    planted = removed = 0
    survivors, false_removals = [], []
    for patient_id, report in reports:
        result = deidentify(report.text)
        planted += len(report.identifiers)
        removed += len(result.spans)
        survivors += [(patient_id, s) for s in _surviving(report.identifiers, result.text)]
        false_removals += [(patient_id, t) for t in report.clinical_terms if t not in result.text]
    print(f"\ndemo: {len(reports)} reports, {planted} planted identifiers, {removed} spans removed, "
          f"{len(survivors)} survived, {len(false_removals)} clinical terms lost")
    assert planted > 10 * len(reports)
    assert survivors == []
    assert false_removals == []


# ------------------------------------------------------------------------------------------------ encoders
@pytest.fixture(scope="module")
def minilm():
    from pathmm_pipeline.encoders.text import get_text_encoder

    return get_text_encoder("minilm")


def test_encoder_registry() -> None:
    from pathmm_pipeline.encoders.text import (
        UnknownTextEncoderError,
        create_text_encoder,
        list_text_encoders,
        register_text_encoder,
    )

    assert {"minilm", "hf_local"} <= set(list_text_encoders())
    with pytest.raises(UnknownTextEncoderError, match="registered text encoders: .*hf_local.*minilm"):
        create_text_encoder("biobert-from-the-internet")
    with pytest.raises(ValueError, match="already registered"):
        register_text_encoder("minilm")(lambda **kw: None)
    with pytest.raises(InputError, match="model folder not found"):
        create_text_encoder("hf_local", path="/nonexistent/biobert")


def test_minilm_embeddings(minilm) -> None:
    from pathmm_pipeline.encoders.text import minilm_model_dir

    assert minilm.dim == 384
    emb = minilm.embed(["The carcinoma invades the muscularis propria of the bladder.",
                        "Tumour infiltrates into the muscle layer of the bladder wall.",
                        "The train to Paris leaves at noon on Sundays."])
    assert emb.shape == (3, 384) and emb.dtype == np.float32
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    sims = emb @ emb.T
    assert sims[0, 1] > sims[0, 2] + 0.2 and sims[0, 1] > sims[1, 2] + 0.2
    assert minilm.weights_sha256 == hash_file(minilm_model_dir() / "model.safetensors")
    print(f"\nminilm: dim {minilm.dim}, loaded in {minilm.load_seconds:.1f} s")


def test_chunking_long_report(minilm) -> None:
    from pathmm_pipeline.encoders.text import plan_windows

    assert plan_windows(100, 254, 64) == [(0, 100)]
    assert plan_windows(600, 254, 64) == [(0, 254), (190, 444), (346, 600)]
    text = " ".join(f"Section {i}: invasive urothelial carcinoma with nests of atypical cells." for i in range(60))
    ids = minilm.tokenize(text)
    (encoded,) = minilm.encode([text], keep_tokens=True)
    windows = plan_windows(len(ids), minilm.window, minilm.overlap)
    assert len(windows) >= 3 and encoded.n_tokens == len(ids)
    assert encoded.window_tokens == [e - s for s, e in windows]
    for chunk, (start, end) in zip(encoded.chunks, windows):
        assert chunk.start == start and len(chunk.input_ids) <= minilm.max_length
        assert chunk.input_ids[0] == minilm.tokenizer.cls_token_id
        assert chunk.input_ids[-1] == minilm.tokenizer.sep_token_id
        assert chunk.input_ids[1:-1].tolist() == ids[start:end]
        assert chunk.hidden.shape == (len(chunk.input_ids), 384) and chunk.attention_mask.sum() == len(chunk.input_ids)
    # the report embedding is the token-weighted mean of the window embeddings (re-normalised)
    per_window = minilm.embed([minilm.tokenizer.decode(ids[s:e]) for s, e in windows])
    weights = np.array(encoded.window_tokens, float)
    expected = (per_window * weights[:, None]).sum(0) / weights.sum()
    expected /= np.linalg.norm(expected)
    assert np.dot(expected, encoded.embedding) > 0.999


def test_hf_local_encoder_cls_pooling(tmp_path: Path) -> None:
    from transformers import AutoTokenizer, BertConfig, BertModel

    from pathmm_pipeline.encoders.text import create_text_encoder, minilm_model_dir

    folder = tmp_path / "tiny-bert"
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=40)
    import torch

    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(minilm_model_dir())).save_pretrained(folder)
    encoder = create_text_encoder("hf_local", path=folder, pooling="cls", overlap=8)
    assert encoder.dim == 32 and encoder.max_length == 40 and encoder.pooling == "cls"
    (short, long) = encoder.encode(["Grade 2 carcinoma.", "carcinoma " * 100], keep_tokens=True)
    assert len(short.chunks) == 1 and len(long.chunks) == len(plan := [c.start for c in long.chunks]) > 3
    assert plan[1] - plan[0] == encoder.window - encoder.overlap
    # CLS pooling: a one-window text's embedding is its [CLS] hidden state
    assert np.allclose(short.embedding, short.chunks[0].hidden[0], atol=1e-5)
    assert encoder.describe()["weights_sha256"] == hash_file(folder / "model.safetensors")


# ------------------------------------------------------------------------------------------------ stage
@pytest.fixture()
def demo_report_files(tmp_path: Path) -> tuple[dict[str, Path], dict[str, object]]:
    reports = dict(_demo_reports(3, seed=7))
    folder = tmp_path / "reports"
    folder.mkdir()
    paths = {}
    for patient_id, report in reports.items():
        paths[patient_id] = folder / f"{patient_id}.txt"
        paths[patient_id].write_text(report.text, encoding="utf-8")
    return paths, reports


def test_clean_and_embed_stage(tmp_path: Path, demo_report_files, minilm) -> None:
    import pandas as pd
    import zarr

    from pathmm_pipeline.reports.stage import clean_reports, embed_reports

    paths, reports = demo_report_files
    out = clean_reports(paths, tmp_path / "out" / "reports.parquet")
    assert verify_provenance(out) == []
    frame = pd.read_parquet(out)
    assert frame.patient_id.tolist() == sorted(paths)
    assert {f"section_{k}" for k in SECTION_KEYS} | {f"n_phi_{t}" for t in PHI_TYPES} <= set(frame.columns)
    for row in frame.itertuples():
        report = reports[row.patient_id]
        for column in ["text", *[f"section_{k}" for k in SECTION_KEYS]]:
            assert _surviving(report.identifiers, getattr(row, column)) == [], (row.patient_id, column)
        assert all(term in row.text for term in report.clinical_terms)
        assert "inflammatory" in row.text and "Page 1 of 1" not in row.text and "signed by" not in row.text
        assert row.n_phi_total >= len(report.identifiers) and row.n_phi_EMAIL == 1 and row.n_phi_ADDRESS == 1
        assert row.section_diagnosis and row.section_gross and row.section_microscopic
    record = read_provenance(out)
    assert record["stage"] == "reports_clean" and record["extra"]["n_reports"] == len(paths)

    store = embed_reports(out, tmp_path / "out" / "reports.zarr", encoder="minilm", keep_tokens=True)
    assert verify_provenance(store) == []
    record = read_provenance(store)
    assert record["inputs"]["encoder_weights"]["sha256"] == minilm.weights_sha256
    assert record["extra"]["encoder_weights_sha256"] == minilm.weights_sha256
    group = zarr.open_group(str(store), mode="r")
    ids = [str(x) for x in group["patient_ids"][...]]
    assert ids == frame.patient_id.tolist()
    emb = group["embeddings"][...]
    assert emb.shape == (len(ids), 384) and emb.dtype == np.float32
    assert np.allclose(emb, minilm.embed(frame.text.tolist()), atol=1e-5)
    offsets = group["patient_chunk_offsets"][...]
    n_chunks = int(offsets[-1])
    assert group["input_ids"].shape[0] == group["hidden_states"].shape[0] == n_chunks >= len(ids)
    assert group["hidden_states"].shape[2] == 384
    mask, lengths = group["attention_mask"][...], group["chunk_length"][...]
    assert (mask.sum(1) == lengths).all()
    assert (np.diff(offsets) >= 1).all() and (group["chunk_patient"][...] == np.repeat(np.arange(len(ids)),
                                                                                        np.diff(offsets))).all()

    # a changed report is detected by the cleaned table's provenance
    first = next(iter(paths.values()))
    first.write_text(first.read_text() + "\nAddendum: none.\n")
    assert [f.problem for f in verify_provenance(out)] == ["changed"]


def test_clean_reports_without_deid_keeps_names(tmp_path: Path, demo_report_files, caplog) -> None:
    import pandas as pd

    from pathmm_pipeline.reports.stage import DEID_OFF_WARNING, clean_reports

    paths, reports = demo_report_files
    with caplog.at_level("WARNING"):
        frame = pd.read_parquet(clean_reports(paths, tmp_path / "raw.parquet", deid=False))
    assert any(DEID_OFF_WARNING in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
    assert (frame.n_phi_total == 0).all() and not frame.deidentified.any()
    patient_id = frame.patient_id.iloc[0]
    email = next(i["text"] for i in reports[patient_id].identifiers if i["type"] == "EMAIL")
    assert email in frame.text.iloc[0]


@pytest.mark.parametrize("kind", ["empty", "whitespace", "binary", "latin1", "missing", "header_only"])
def test_bad_reports_raise_and_write_nothing(tmp_path: Path, demo_report_files, kind: str) -> None:
    from pathmm_pipeline.reports.stage import ReportInputError, clean_reports

    paths, _ = demo_report_files
    bad = tmp_path / "reports" / "TCGA-BAD-0001.txt"
    if kind == "empty":
        bad.write_bytes(b"")
    elif kind == "whitespace":
        bad.write_text("  \n\n \t\n")
    elif kind == "binary":
        bad.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    elif kind == "latin1":
        bad.write_bytes("DIAGNOSIS: carcinome \xe0 cellules ind\xe9pendantes".encode("latin-1"))
    elif kind == "header_only":
        bad.write_text("SURGICAL PATHOLOGY REPORT\nPatient: DOE, JOHN   MRN: 1234-567\n-----\nPage 1 of 1\n")
    out = tmp_path / "out" / "reports.parquet"
    out.parent.mkdir()
    out.write_bytes(b"previous good output")
    with pytest.raises(ReportInputError) as err:
        clean_reports({**paths, "TCGA-BAD-0001": bad}, out)
    message = str(err.value)
    assert str(bad) in message and "TCGA-BAD-0001" in message
    assert isinstance(err.value, InputError) and err.value.patient_id == "TCGA-BAD-0001"
    assert out.read_bytes() == b"previous good output"  # the earlier output is untouched
    assert stale_temporaries(out.parent) == [] and sorted(p.name for p in out.parent.iterdir()) == ["reports.parquet"]


def test_bad_clean_tables_raise_and_write_nothing(tmp_path: Path, minilm) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pathmm_pipeline.reports.stage import embed_reports

    store = tmp_path / "out" / "reports.zarr"
    with pytest.raises(InputError, match="not found"):
        embed_reports(tmp_path / "missing.parquet", store, encoder=minilm)
    not_parquet = tmp_path / "fake.parquet"
    not_parquet.write_bytes(b"\x00\x01 not parquet")
    with pytest.raises(InputError, match="cannot be read as Parquet"):
        embed_reports(not_parquet, store, encoder=minilm)
    empty_text = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"patient_id": ["P1", "P2"], "text": ["Carcinoma.", "  "]}), empty_text)
    with pytest.raises(InputError, match="P2"):
        embed_reports(empty_text, store, encoder=minilm)
    assert not store.exists() and (not store.parent.exists() or stale_temporaries(store.parent) == [])
