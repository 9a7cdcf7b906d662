"""Every entry of the generated bad-input corpus (pathmm_pipeline/badcorpus.py) meets the `pathmm` command that
reads it: the command stops where it must, with one error naming the file and the problem, and an output
that already held a good result is left exactly as it was; the entries that must not stop complete with an
explicit status."""

from __future__ import annotations

import shutil

import pytest

from pathmm_pipeline.cli import main
from pathmm_pipeline.core.provenance import hash_file, hash_tree
from pathmm_pipeline.core.stores import open_store
from pathmm_pipeline.demo.badcorpus import build_bad_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    return root, {entry.name: entry for entry in build_bad_corpus(root)}


@pytest.fixture(scope="module")
def good_results(corpus, tmp_path_factory):
    """One good output per command kind, written by the same commands from good inputs."""
    root, _ = corpus
    out = tmp_path_factory.mktemp("good")
    slide = root / "slides" / "good.svs"
    assert main(["segment", str(slide), "--store", str(out / "seg.zarr"), "--geojson", str(out / "seg.zarr.geojson"),
                 "--thumbnail", str(out / "seg.zarr.png")]) == 0
    sheet = out / "sheet.csv"
    sheet.write_text("patient_id,slide_id,slide_path,cancer_type,survival_time,survival_event\n"
                     f"P1,S1,{slide},BLCA,10,1\n")
    assert main(["manifest", str(sheet), "--out", str(out / "manifest.parquet"), "--settings",
                 '{"cancer_types": ["BLCA", "STAD"]}']) == 0
    report = out / "report.txt"
    report.write_text("FINAL DIAGNOSIS: invasive urothelial carcinoma, high grade.\n")
    assert main(["clean-report", str(report), "--patient", "P1", "--out", str(out / "report.parquet")]) == 0
    expr = out / "expression.tsv"
    expr.write_text("gene\tTCGA-AA-0001-01\tTCGA-AA-0002-01\nTP53\t1.0\t2.0\nKRAS\t5.0\t6.0\n")
    assert main(["genomics", "--expression", str(expr), "--out", str(out / "genomics.zarr"), "--settings",
                 '{"patients": ["TCGA-AA-0001", "TCGA-AA-0002"], "genesets": ["hallmarks"], '
                 '"min_genes_per_set": 1}']) in (0, 2)
    return {"segment": out / "seg.zarr", "manifest": out / "manifest.parquet", "clean-report": out / "report.parquet",
            "genomics": out / "genomics.zarr"}


def digest(path):
    return hash_tree(path) if path.is_dir() else hash_file(path)


NAMES = ["zero-byte slide", "truncated TIFF", "TIFF that OpenSlide cannot open", "slide without mpp",
         "TIFF at a 72 dpi screen default", "store with a deleted chunk",
         "all-white slide", "pen-only region", "sample sheet: duplicate ids", "sample sheet: missing columns",
         "sample sheet: negative time", "sample sheet: unknown cancer type",
         "expression: duplicated genes and NaN rows", "empty report", "binary file posing as a report",
         "1 MB report"]


def test_the_corpus_covers_every_case_of_the_issue(corpus):
    assert sorted(corpus[1]) == sorted(NAMES)
    assert all(entry.path.exists() for entry in corpus[1].values())


@pytest.mark.parametrize("name", NAMES)
def test_each_bad_input_gets_its_outcome_and_loses_nothing(corpus, good_results, tmp_path, capsys, name):
    entry = corpus[1][name]
    command = entry.args[0]
    protected = good_results.get(command)
    if entry.stops and protected is not None and protected.exists():
        target = tmp_path / protected.name
        (shutil.copytree if protected.is_dir() else shutil.copy)(protected, target)
        before = digest(target)
    else:
        target, before = tmp_path / f"out{'.zarr' if command in ('segment', 'genomics') else '.parquet'}", None
    args = [a.replace("{out}", str(target)) for a in entry.args]
    code = main(args)
    err = capsys.readouterr().err
    if entry.stops:
        assert code != 0, f"{name}: the command did not stop"
        lines = [line for line in err.splitlines() if ": error: " in line]
        assert len(lines) == 1, err  # one error, naming the file on its first line (a list of rows may follow)
        assert entry.path.name in lines[0], lines[0]
        message = err[err.index(lines[0]):]
        for word in entry.expect:
            assert word.lower() in message.lower(), (word, message)
        assert "Traceback" not in err
        if before is not None:
            assert digest(target) == before, f"{name}: the earlier good output changed"
    else:
        assert code == 0, err
        status = open_store(target).attrs["status"]
        assert status == "no_tissue", status
