"""Report text at size: cleaning is linear (a 1 MB text without full stops is cleaned in one go; before, 40 KB
took 21 s), a report over ``reports.max_chars`` is refused naming the file, its size and the limit, and
``embed_reports`` streams batches of reports into a store equal to the one written in one batch. No timings are
asserted: the sizes are chosen so that a quadratic pass would not finish within the suite."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pathmm_pipeline.reports.clean import MAX_REPORT_CHARS, clean_report, remove_disclaimers
from pathmm_pipeline.reports.stage import ReportInputError, clean_reports, embed_reports

WORDS = ("invasive", "urothelial", "carcinoma", "with", "nests", "of", "atypical", "cells", "within", "the", "stroma")


def _no_full_stops(size: int) -> str:
    words = " ".join(WORDS[i % len(WORDS)] for i in range(size // 6))
    lines = [words[i:i + 70] for i in range(0, len(words), 70)]  # wrapped lines, one paragraph
    return "\n".join(lines)[:size]


# ------------------------------------------------------------------------------------------------ linear cleaning
def test_a_megabyte_without_full_stops_is_cleaned_with_its_disclaimer_removed() -> None:
    text = "DIAGNOSIS:\n" + _no_full_stops(1_000_000) + "\nThis test was developed by the laboratory."
    report = clean_report(text)
    assert report.removed["disclaimer"] == 1  # the whole text is one sentence: it goes, as before
    assert report.sections["diagnosis"] == ""
    kept = clean_report("DIAGNOSIS:\n" + _no_full_stops(1_000_000))
    assert len(kept.sections["diagnosis"]) > 900_000 and "\n" not in kept.sections["diagnosis"]


@pytest.mark.parametrize("unit", ["A1", "Aa", "a-", "Department of pathology ", "page 1 of 2 ", "final "])
def test_long_single_lines_are_cleaned(unit: str) -> None:
    line = unit * (300_000 // len(unit))
    for text in (line, f"Case: {line}", f"{line}-\nnoma"):
        assert isinstance(clean_report(text).text, str)


@pytest.mark.parametrize(("text", "expected"), [
    ("Keep this. This test was developed here. Keep that.", "Keep this.  Keep that."),
    ("Approved by the U.S. Food and Drug Administration. Next.", "  Next."),  # "U.S." ends no sentence
    ("No CLIAx words. Not clia-less either.", "No CLIAx words. "),
    ("Sentence one.\nConfidential information follows", "Sentence one. "),
    ("A. CLIA here. B.", "  B."),  # "A." is an initial: the sentence starts before it
    ("Plain text with no boilerplate", "Plain text with no boilerplate"),
])
def test_disclaimer_sentences_are_removed_whole(text: str, expected: str) -> None:
    """The outputs of the earlier single regex, which re-scanned each sentence from every word (quadratic)."""
    got, n = remove_disclaimers(text)
    assert (got, n) == (expected, int(got != text))


# ------------------------------------------------------------------------------------------------ size limit
def _report(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_report_over_the_limit_is_refused_naming_file_size_and_limit(tmp_path) -> None:
    good = _report(tmp_path, "good.txt", "DIAGNOSIS: invasive carcinoma.\n")
    long = _report(tmp_path, "long.txt", "DIAGNOSIS: " + "carcinoma " * 20)
    out = tmp_path / "out.parquet"
    with pytest.raises(ReportInputError) as info:
        clean_reports({"P1": good, "P2": long}, out, max_chars=100)
    message = str(info.value)
    assert "\n" not in message and "long.txt" in message and "P2" in message
    assert "211 characters" in message and "limit of 100 characters" in message and "reports.max_chars" in message
    assert not out.exists()
    assert clean_reports({"P1": good}, out, max_chars=100) == out


def test_a_file_far_over_the_limit_is_refused_before_it_is_read(tmp_path) -> None:
    huge = _report(tmp_path, "huge.txt", "x" * 500)
    with pytest.raises(ReportInputError, match=r"huge\.txt: .*is too long: 500 bytes, over the limit of 100"):
        clean_reports({"P1": huge}, tmp_path / "out.parquet", max_chars=100)


def test_the_limit_flows_from_the_settings(tmp_path) -> None:
    from pathmm_pipeline.stages.modalities import clean_report as stage_clean
    from pathmm_pipeline.stages.settings import CleanReportSettings

    assert CleanReportSettings().max_chars == MAX_REPORT_CHARS == 1_000_000
    report = _report(tmp_path, "r.txt", "DIAGNOSIS: carcinoma of the bladder, muscle invasive.\n")
    with pytest.raises(ReportInputError, match="over the limit of 20 characters"):
        stage_clean(report, "P1", tmp_path / "o.parquet", json.loads('{"deid": true, "max_chars": 20}'))
    assert stage_clean(report, "P1", tmp_path / "o.parquet", {"deid": True}).exists()


# ------------------------------------------------------------------------------------------------ streaming
@pytest.fixture(scope="module")
def minilm():
    from pathmm_pipeline.encoders.text import get_text_encoder

    return get_text_encoder("minilm")


def test_streamed_embedding_store_equals_the_one_batch_store(tmp_path, minilm) -> None:
    from pathmm_pipeline.core.stores import open_store

    body = ("CLINICAL HISTORY:\nHaematuria and a bladder mass.\n\nMICROSCOPIC DESCRIPTION:\n"
            + " ".join(["Nests and cords of atypical urothelial cells invade the muscularis propria."] * 8)
            + "\n\nDIAGNOSIS:\nInvasive urothelial carcinoma, high grade.\n")
    paths = {f"P{i}": _report(tmp_path, f"r{i}.txt", body * (1 + i % 3)) for i in range(5)}
    table = clean_reports(paths, tmp_path / "clean.parquet", deid=False)
    whole = embed_reports(table, tmp_path / "whole.zarr", encoder=minilm, reports_per_batch=100)
    stores = [embed_reports(table, tmp_path / f"streamed{k}.zarr", encoder=minilm, reports_per_batch=k)
              for k in (2, 3)]
    a = open_store(whole)
    assert a["patient_chunk_offsets"][-1] > len(paths)  # several windows per report
    for path in stores:
        b = open_store(path)  # verifies its content digests
        assert sorted(a.array_keys()) == sorted(b.array_keys())
        for name in a.array_keys():
            x, y = a[name], b[name]
            assert (x.shape, x.chunks, x.dtype, x.metadata.dimension_names) == \
                   (y.shape, y.chunks, y.dtype, y.metadata.dimension_names), name
            assert np.array_equal(x[...], y[...]), name
        attrs_a, attrs_b = dict(a.attrs), dict(b.attrs)
        assert attrs_a.pop("content_sha256") == attrs_b.pop("content_sha256")  # the same chunk bytes
        prov_a, prov_b = attrs_a.pop("provenance"), attrs_b.pop("provenance")
        assert attrs_a == attrs_b and prov_a["params"] == prov_b["params"] and prov_a["inputs"] == prov_b["inputs"]


def test_a_failed_streamed_embedding_leaves_no_store(tmp_path, minilm, monkeypatch) -> None:
    paths = {f"P{i}": _report(tmp_path, f"r{i}.txt", "DIAGNOSIS: carcinoma of the bladder.\n") for i in range(4)}
    table = clean_reports(paths, tmp_path / "clean.parquet", deid=False)
    calls = []

    def failing(texts, keep_tokens=False):
        calls.append(len(texts))
        if len(calls) == 2:
            raise MemoryError("out of memory in the second batch")
        return type(minilm).encode(minilm, texts, keep_tokens=keep_tokens)

    monkeypatch.setattr(minilm, "encode", failing)
    with pytest.raises(MemoryError):
        embed_reports(table, tmp_path / "e.zarr", encoder=minilm, reports_per_batch=2)
    assert calls == [2, 2] and not (tmp_path / "e.zarr").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("e.zarr")] == []  # no partial either
