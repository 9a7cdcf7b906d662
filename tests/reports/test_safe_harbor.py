"""The independent de-identification check: the Faker corpus of planted Safe Harbor identifiers (deterministic,
exact offsets, every category, ages of 89 and under kept) and the scorer (oracle 1.0, identity 0.0, partial leaks,
false removals, bad annotations refused)."""

from __future__ import annotations

import re

import pytest

from pathmm_pipeline.demo.safe_harbor import TEMPLATES, PlantedReport, build_safe_harbor_corpus
from pathmm_pipeline.reports.deid import DeidResult, PHISpan
from pathmm_pipeline.reports.phi_eval import SAFE_HARBOR_CATEGORIES, score_deid


@pytest.fixture(scope="module")
def corpus() -> list[PlantedReport]:
    return build_safe_harbor_corpus(100, seed=0)


def _spans(pairs: list[tuple[int, int]]) -> DeidResult:
    return DeidResult("", [PHISpan("X", s, e, "") for s, e in pairs])


def test_the_corpus_is_deterministic_per_seed():
    a, b, c = (build_safe_harbor_corpus(15, seed=s) for s in (4, 4, 5))
    assert a == b
    assert [r.text for r in a] != [r.text for r in c]


def test_offsets_are_exact_and_identifiers_do_not_touch_clinical_terms(corpus):
    for r in corpus:
        for _cat, start, end, value in r.identifiers:
            assert r.text[start:end] == value and value.strip() == value and value
        for start, end, term in r.clinical:
            assert r.text[start:end] == term
        marks = sorted([(s, e) for _, s, e, _ in r.identifiers] + [(s, e) for s, e, _ in r.clinical])
        assert all(prev[1] <= nxt[0] for prev, nxt in zip(marks, marks[1:])), r.template


def test_every_category_and_template_appears_in_100_reports(corpus):
    found = {cat for r in corpus for cat, *_ in r.identifiers}
    assert found == set(SAFE_HARBOR_CATEGORIES)
    assert {r.template for r in corpus} == set(TEMPLATES) and len(TEMPLATES) >= 12
    assert sum(len(r.clinical) for r in corpus) >= 500


def test_names_come_from_several_locales_and_forms(corpus):
    names = [v for r in corpus for cat, _, _, v in r.identifiers if cat == "NAME"]
    assert any(re.search(r"[^\x00-\x7f]", n) for n in names), "no non-ASCII (European) name"
    assert any("," in n for n in names) and any(" " not in n for n in names)
    glued = [r.text[s - 3:s] for r in corpus for cat, s, _, _ in r.identifiers if cat == "MRN"]
    assert "MRN" in glued or "MR#" in glued, "no glued MRN0048229 form"


_AGE = re.compile(r"(?<![\d.])(\d{1,3})(?=-year-old|-yr-old| y/o| yo| years old)|(?:age|aged) (\d{1,3})\b", re.I)


def test_only_ages_over_89_are_identifiers(corpus):
    seen_old = seen_young = 0
    for r in corpus:
        ages = {(s, e) for cat, s, e, _ in r.identifiers if cat == "AGE_OVER_89"}
        kept = [(s, e) for s, e, _ in r.clinical]
        for m in _AGE.finditer(r.text):
            group = 1 if m.group(1) else 2
            span, age = (m.start(group), m.end(group)), int(m.group(group))
            if age > 89:
                seen_old += 1
                assert span in ages, (r.template, m.group())
            else:
                seen_young += 1
                assert span not in ages and any(s <= span[0] and span[1] <= e for s, e in kept), m.group()
    assert seen_old >= 10 and seen_young >= 50


def test_an_oracle_scores_1_and_the_identity_0(corpus):
    by_text = {r.text: [(s, e) for _, s, e, _ in r.identifiers] for r in corpus}
    oracle = score_deid(corpus, lambda text: _spans(by_text[text]))
    table = oracle.table()
    assert list(table.columns) == ["category", "planted", "removed", "recall", "partial"]
    assert (table["recall"] == 1.0).all() and oracle.false_removal_rate == 0.0 and not oracle.leaks
    assert table["category"].iloc[-1] == "ALL" and table["planted"].iloc[-1] == sum(len(r.identifiers) for r in corpus)
    identity = score_deid(corpus, lambda text: [])
    assert (identity.table()["recall"] == 0.0).all() and identity.overall.partial == 0


def test_partial_leaks_punctuation_and_initials():
    text = "Patient John Q. Smith, MRN 004 8229, seen by SMITH, JOHN."
    ids = [("NAME", 8, 21, "John Q. Smith"), ("MRN", 27, 35, "004 8229"), ("NAME", 45, 56, "SMITH, JOHN")]
    report = PlantedReport(text, ids, [], "hand")
    # the initial "Q" and the comma may stay uncovered; "8229" and "John" may not
    score = score_deid([report], lambda t: _spans([(8, 12), (16, 21), (27, 30), (45, 50), (52, 56)]))
    assert score.categories["NAME"].removed == 2 and score.categories["NAME"].partial == 0
    assert score.categories["MRN"].removed == 0 and score.categories["MRN"].partial == 1
    assert [leak.surviving for leak in score.leaks] == [("8229",)]
    only_last = score_deid([report], lambda t: _spans([(16, 21)]))
    assert only_last.categories["NAME"].partial == 1 and only_last.leaks[0].surviving == ("John",)
    assert only_last.categories["MRN"].partial == 0 and only_last.categories["MRN"].recall == 0.0


def test_false_removals_count_clinical_terms_touched():
    text = "Gleason 4+3=7, pT2a pN0, 65-year-old man."
    report = PlantedReport(text, [], [(0, 13, "Gleason 4+3=7"), (15, 19, "pT2a"), (20, 23, "pN0"),
                                      (25, 36, "65-year-old")], "hand")
    score = score_deid([report], lambda t: _spans([(8, 11), (25, 27)]))
    assert [term for _, term in score.false_removals] == ["Gleason 4+3=7", "65-year-old"]
    assert score.false_removal_rate == 0.5


def test_bad_annotations_and_spans_are_refused():
    text = "Seen by Dr. Lori Adams."
    shifted = PlantedReport(text, [("NAME", 11, 21, "Lori Adams")], [], "hand")
    with pytest.raises(ValueError, match="not at"):
        score_deid([shifted], lambda t: [])
    good = PlantedReport(text, [("NAME", 12, 22, "Lori Adams")], [], "hand")
    with pytest.raises(ValueError, match="outside the text"):
        score_deid([good], lambda t: _spans([(12, 99)]))


# ------------------------------------------------------------------------------------------------ deidentify itself
def test_deidentify_recall_on_a_held_out_faker_corpus():
    """Seed 1 was used while writing the rules; seeds 2 and 7 were not. Measured on 300 reports of seed 2: 0.979
    overall, every category >= 0.91, no clinical term removed; the bounds leave room for a different draw."""
    from pathmm_pipeline.reports.deid import deidentify

    score = score_deid(build_safe_harbor_corpus(120, seed=7), deidentify)
    table = score.table().set_index("category")
    assert table.loc["ALL", "recall"] >= 0.95, table
    assert (table["recall"] >= 0.8).all(), table
    assert score.false_removals == []


@pytest.mark.parametrize("text, survivor", [
    ("Images at https://slides.example-hospital.org/view?id=88 and www.path-lab.com/cases.", "example-hospital"),
    ("Uploaded from workstation 10.12.200.7 and 2001:db8:85a3::8a2e:370:7334 today.", "370"),
    ("A 93-year-old woman; the other patient, aged 91, declined.", "93"),
    ("A 93-year-old woman; the other patient, aged 91, declined.", "91"),
    ("Record MRN0048229 reviewed.", "0048229"),
    ("Guarantor 219-09-9999 on file; plan W2337970128.", "219-09-9999"),
    ("Member ID: QBZ173110067, Medicare No. 301988822J.", "301988822J"),
    ("Seen in clinic on the 3rd of March for follow-up.", "3rd"),
    ("Patient lives in Springfield, Vermont 05156 with family.", "05156"),
    ("Patient lives in Springfield, Vermont 05156 with family.", "Springfield"),
    ("Outside slides from Mount Sinai Hospital were reviewed.", "Sinai"),
    ("Pacemaker generator, Serial number: (01)00884838000001(21)AB1234, explanted.", "00884838000001"),
    ("NPI: 1234567893; DEA # AB1234563.", "AB1234563"),
    ("Called to the OR at +44 (0)20 7946 0958 and 020 7946 0959.", "7946"),
])
def test_formats_the_old_rules_missed_are_removed(text, survivor):
    from pathmm_pipeline.reports.deid import deidentify

    assert survivor not in deidentify(text).text


def test_young_ages_and_clinical_terms_stay():
    from pathmm_pipeline.reports.deid import deidentify

    text = ("A 67-year-old man, age 89. Gleason 4+3=7, pT2a pN0, 12 mm, Ki-67 30 %, Grade 2, 1 of 12 lymph nodes. "
            "Stage IIIA (AJCC 8th edition). Specimen A1-A12.")
    assert deidentify(text).text == text
