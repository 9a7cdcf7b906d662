"""The validated sample sheet is checked once per DAG: the main process validates in full and caches it by
content; a cluster job (trust_cache) reads the cache of the same content and touches no listed file, and any change
of the sheet, the cancer types or the labels is a new key."""

from __future__ import annotations

import pandas as pd
import pytest

from pathmm_pipeline.core.errors import SampleSheetError
from pathmm_pipeline.plan.samplesheet import samplesheet_key, validated_samplesheet
from pathmm_pipeline.preprocess.samplesheet import load_samplesheet


def _sheet(tmp_path, n=30):
    for i in range(n):
        (tmp_path / f"s{i}.svs").write_bytes(b"x")
    pd.DataFrame({"patient_id": [f"P{i // 2}" for i in range(n)], "slide_id": [f"S{i}" for i in range(n)],
                  "slide_path": [f"s{i}.svs" for i in range(n)], "cancer_type": "BRCA",
                  "survival_time": [float(i // 2) for i in range(n)], "survival_event": [i // 2 % 2 for i in range(n)]}
                 ).to_csv(tmp_path / "sheet.csv", index=False)
    return tmp_path / "sheet.csv"


def test_a_job_reads_the_main_process_cache_without_touching_the_files(tmp_path):
    sheet, cache = _sheet(tmp_path), tmp_path / "cache"
    full = validated_samplesheet(sheet, ["BRCA"], [], trust_cache=False, cache_dir=cache)
    pd.testing.assert_frame_equal(full, load_samplesheet(sheet, ["BRCA"], []))
    assert len(list(cache.glob("samplesheet-*.pkl"))) == 1
    (tmp_path / "s3.svs").unlink()  # a job never checks the files again: the main process did
    pd.testing.assert_frame_equal(validated_samplesheet(sheet, ["BRCA"], [], trust_cache=True, cache_dir=cache),
                                  full)
    with pytest.raises(SampleSheetError, match="s3.svs' does not exist"):  # the main process always does
        validated_samplesheet(sheet, ["BRCA"], [], trust_cache=False, cache_dir=cache)


def test_any_change_is_a_new_key_and_a_damaged_cache_is_a_miss(tmp_path):
    sheet, cache = _sheet(tmp_path), tmp_path / "cache"
    key = samplesheet_key(sheet, ["BRCA"], [])
    assert samplesheet_key(sheet, ["BRCA", "LUAD"], []) != key
    assert samplesheet_key(sheet, ["BRCA"], ["grade"]) != key
    validated_samplesheet(sheet, ["BRCA"], [], trust_cache=False, cache_dir=cache)
    sheet.write_text(sheet.read_text().replace("BRCA", "LUAD", 1))  # one cell
    assert samplesheet_key(sheet, ["BRCA"], []) != key
    with pytest.raises(SampleSheetError, match="unknown cancer_type 'LUAD'"):  # a job validates new content
        validated_samplesheet(sheet, ["BRCA"], [], trust_cache=True, cache_dir=cache)
    sheet.write_text(sheet.read_text().replace("LUAD", "BRCA", 1))
    (cache / f"samplesheet-{key}.pkl").write_bytes(b"damaged")
    assert len(validated_samplesheet(sheet, ["BRCA"], [], trust_cache=True, cache_dir=cache)) == 30
