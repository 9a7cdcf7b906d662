"""ModalTune's clinical sentences: stage and T / N / M read as the reference code writes them, OncoTree names
and the rare set fitted on the corpus only, the location from the TCGA project or the table's site, and the
reference's composition of each task's text."""

from __future__ import annotations

import pytest

from pathmm_pipeline.models.clinical_text import (
    SubtypeGroups,
    clinical_values,
    location_phrase,
    patient_sentences,
    stage_phrase,
    task_texts,
    tnm_phrase,
)


@pytest.mark.parametrize(("value", "expected"), [
    ("III", "stage three"), ("Stage IIIA", "stage three"), ("stage IIb", "stage two"), ("IV", "stage four"),
    ("4", "stage four"), ("I", "stage one"), ("Stage X", "stage cannot be determined"), ("0", "stage zero"),
    ("IS", None), ("", None), (None, None), (float("nan"), None), ("advanced", None)])
def test_stage_phrase(value, expected):
    assert stage_phrase(value) == expected


@pytest.mark.parametrize(("axis", "value", "expected"), [
    ("t", "pT2a", "tumor stage two"), ("t", "T4b", "tumor stage four"), ("t", "Tis", "no tumor detected"),
    ("t", "TX", "tumor stage cannot be assessed"), ("n", "N0 (i+)", "cancer has not spread to lymph nodes"),
    ("n", "pN3a", "node stage three"), ("m", "cM1", "cancer has spread to distant organs"),
    ("m", "M0", "no metastasis detected"), ("m", "M2", None), ("n", "T1", None), ("t", None, None)])
def test_tnm_phrase(axis, value, expected):
    assert tnm_phrase(axis, value) == expected


def test_table_values_and_locations():
    row = {"patient_id": "P1", "subtype": "TSTAD", "stage": "IIIB", "t_stage": " ", "site": "B7",
           "ajcc_pathologic_n": "N1", "m_stage": "not reported"}
    # the TCGA tissue-source-site code ("site") is no anatomical site; blanks and "not reported" are unknown
    assert clinical_values(row) == {"diagnosis": "TSTAD", "stage": "IIIB", "n": "N1"}
    assert clinical_values({"oncotree_code": "DSTAD", "subtype": "STAD"})["diagnosis"] == "DSTAD"
    assert location_phrase({}, "BLCA") == "bladder urothelial" and location_phrase({}, "stad") == "stomach"
    assert location_phrase({}, "kidney cancer") == "kidney cancer"
    assert location_phrase({"site": "gastric antrum"}, "STAD") == "gastric antrum"


def test_rare_set_is_fitted_on_the_values_it_is_given():
    corpus = ["TSTAD"] * 12 + ["DSTAD"] * 10 + ["PSTAD"] * 3 + ["odd subtype"] * 2 + [None, ""]
    groups = SubtypeGroups.fit(corpus, min_patients=10)
    assert groups.kept == {"Tubular Stomach Adenocarcinoma", "Diffuse Type Stomach Adenocarcinoma"}
    assert groups.counts["Papillary Stomach Adenocarcinoma"] == 3
    assert groups.name("TSTAD") == "Tubular Stomach Adenocarcinoma"
    assert groups.name("PSTAD") == "rare stomach adenocarcinoma subtype"
    assert groups.name("odd subtype") == "rare subtype" and groups.name(None) is None
    # a value the corpus never saw is rare; without a threshold every subtype keeps its name
    assert groups.name("MSTAD") == "rare stomach adenocarcinoma subtype"
    assert SubtypeGroups().name("MSTAD") == "Mucinous Stomach Adenocarcinoma"
    # more patients of a subtype move it out of the rare set
    assert SubtypeGroups.fit(corpus + ["PSTAD"] * 7, 10).name("PSTAD") == "Papillary Stomach Adenocarcinoma"


def test_sentences_and_task_texts_follow_the_reference():
    values = {"diagnosis": "BLCA", "stage": "Stage IIIA", "t": "T3", "n": "N1", "m": "M0"}
    sentences = patient_sentences(values, "BLCA", "died between 12 and 24 months")
    assert sentences == {
        "location": "Cancer location: bladder urothelial;",
        "diagnosis": "Cancer diagnosis: Bladder Urothelial Carcinoma;",
        "stage": "Overall stage: stage three;", "t": "Tumor stage status: tumor stage three;",
        "n": "Lymph node status: node stage one;", "m": "Distant metastasis status: no metastasis detected;",
        "survival": "Survival status: The patient died between 12 and 24 months"}
    texts = task_texts(sentences, ["general", "subtype", "stage", "survival", "grade"])
    assert texts["subtype"] == "Cancer location: bladder urothelial; Cancer diagnosis: Bladder Urothelial Carcinoma;"
    assert texts["stage"] == ("Cancer location: bladder urothelial; Overall stage: stage three; Tumor stage status: "
                              "tumor stage three; Lymph node status: node stage one; Distant metastasis status: no "
                              "metastasis detected;")
    assert texts["survival"] == texts["stage"] + " " + sentences["survival"]
    assert texts["general"].split("; ")[1] == "Cancer diagnosis: Bladder Urothelial Carcinoma"
    assert "grade" not in texts
    # a task none of whose own facts is known has no target (the location alone says nothing)
    only = patient_sentences({"stage": "II"}, "STAD")
    assert set(task_texts(only, ["general", "subtype", "stage", "survival"])) == {"general", "stage", "survival"}
    assert task_texts(patient_sentences({}, "STAD"), ["general", "subtype"]) == {}
