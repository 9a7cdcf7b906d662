"""Pathology report texts for the demo patients: the real TCGA clinical fields written up as a surgical
pathology report, with planted FAKE identifiers (names, dates, MRN, accession, phone, address, e-mail) that
a de-identifier must remove, clinical terms it must keep, and a little OCR damage (a word hyphenated across
a line break, doubled spaces).

All names, numbers and places are invented from the small lists below; nothing refers to a real person.
"""

from __future__ import annotations

import datetime as dt
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

FIRST_FEMALE = ("Margaret", "Linda", "Evelyn", "Rosa", "Janet", "Harriet", "Colleen", "Ingrid", "Dolores",
                "Beatrice", "Nadia", "Wilma", "Teresa", "Agnes", "Lorraine", "Yvonne")
FIRST_MALE = ("Walter", "Gerald", "Leonard", "Francis", "Howard", "Stanley", "Raymond", "Vincent", "Clifford",
              "Emil", "Rudolph", "Dennis", "Bernard", "Marvin", "Oscar", "Russell")
LAST_NAMES = ("Haverford", "Kowalczyk", "Lindqvist", "Ashbury", "Pellegrino", "Oyelaran", "Thistlewood",
              "Marchetti", "Brannigan", "Vasquez-Orr", "Delacroix", "Nakamura", "Whitlock", "Grzesiak",
              "Fairbairn", "Okonkwo", "Castellanos", "Rutherford", "Szabo", "Mcallister")
PHYSICIAN_FIRST = ("Alan", "Priya", "Martin", "Helena", "Samuel", "Ines", "Tobias", "Miriam", "Conrad", "Leila")
PHYSICIAN_LAST = ("Whitcombe", "Raghunathan", "Okafor", "Lindgren", "Abernathy", "Moreau", "Castellano",
                  "Hargreave", "Petrosyan", "Van Dalen")
STREETS = ("Larkspur Lane", "Millbrook Road", "Quarry Hill Drive", "Elmwood Avenue", "Tannery Street",
           "Orchard Court", "Heron Bay Road", "Lantern Way")
PLACES = (("Fairhaven", "MA", "027"), ("Millbrook", "NY", "125"), ("Cedar Falls", "IA", "506"),
          ("Port Ellery", "ME", "041"), ("Greenvale", "OH", "441"), ("Brookfield", "WI", "530"))
MAIL_DOMAINS = ("mailbox.example", "postmail.example", "inbox.example")
INSTITUTIONS = ("Northbrook Regional Medical Center", "St. Aldric University Hospital",
                "Lakeshore General Hospital")

LAUREN = {"DSTAD": "diffuse", "SSRCC": "diffuse", "TSTAD": "intestinal", "PSTAD": "intestinal",
          "MSTAD": "intestinal", "STAD": "intestinal"}
STAD_HISTOLOGY = {"DSTAD": "diffuse-type adenocarcinoma", "SSRCC": "signet ring cell carcinoma",
                  "TSTAD": "tubular adenocarcinoma", "PSTAD": "papillary adenocarcinoma",
                  "MSTAD": "mucinous adenocarcinoma", "STAD": "adenocarcinoma, not otherwise specified"}
T_BY_STAGE = {"BLCA": {"0": ("pTa", "pN0"), "I": ("pT1", "pN0"), "II": ("pT2a", "pN0"), "III": ("pT3a", "pN1"),
                       "IV": ("pT4b", "pN2")},
              "STAD": {"0": ("pTis", "pN0"), "I": ("pT1b", "pN0"), "II": ("pT2", "pN1"), "III": ("pT3", "pN2"),
                       "IV": ("pT4b", "pN3a")}}


@dataclass(frozen=True)
class PatientFacts:
    """The real clinical fields a report is written from."""

    patient_id: str
    cancer_type: str  # "BLCA" or "STAD"
    stage: str  # "0", "I".."IV"
    grade: str  # e.g. "G2"; "GX" when not assessable
    subtype: str
    age: int
    sex: str  # "female" or "male"
    # the planted report signal of the demo (None: the report does not mention it); see
    # :func:`pathmm_pipeline.demo.cohort.plant_report_signal`
    lymphovascular_invasion: bool | None = None


@dataclass
class Report:
    """A report text with the identifiers planted in it and the clinical terms it must keep."""

    text: str
    identifiers: list[dict[str, str]] = field(default_factory=list)
    clinical_terms: list[str] = field(default_factory=list)


T = TypeVar("T")


def _pick(rng: np.random.Generator, options: Sequence[T]) -> T:
    return options[int(rng.integers(len(options)))]


def _date_formats(rng: np.random.Generator, day: dt.date) -> str:
    style = int(rng.integers(3))
    if style == 0:
        return day.strftime("%m/%d/%Y")
    if style == 1:
        return day.isoformat()
    return f"{day.strftime('%B')} {day.day}, {day.year}"


def _wrap(text: str, keep: list[str], width: int = 76) -> str:
    """Wrap a paragraph at ``width`` without breaking inside any phrase of ``keep``."""
    for phrase in keep:
        text = text.replace(phrase, phrase.replace(" ", "\x00"))
    wrapped = textwrap.fill(text, width=width, break_long_words=False, break_on_hyphens=False)
    return wrapped.replace("\x00", " ")


def _wrap_hyphenated(text: str, word: str, cut: int, keep: list[str]) -> str:
    """Wrap like :func:`_wrap`, but end a line inside ``word`` with a hyphen after ``cut`` letters (OCR style)."""
    at = text.find(word)
    if at < 0:
        return _wrap(text, keep)
    head = _wrap(text[:at] + word[:cut] + "-", keep)
    return head + "\n" + _wrap(word[cut:] + text[at + len(word):], keep)


def _grade_number(grade: str) -> str | None:
    return grade[1:] if len(grade) == 2 and grade[1].isdigit() else None


def _bladder(facts: PatientFacts, rng: np.random.Generator, size_mm: int) -> tuple[str, str, str, list[str]]:
    t, n = T_BY_STAGE["BLCA"].get(facts.stage, ("pT2a", "pN0"))
    g = _grade_number(facts.grade)
    grade_txt = f"Grade {g}" if g else "Grade not assessable (GX)"
    invasive = t not in ("pTa", "pTis", "pT1")
    gross = (f"The specimen consists of a radical cystectomy with a tan-white exophytic tumour on the "
             f"posterior wall measuring {size_mm} mm in greatest dimension. The ureteric margins are "
             f"submitted separately. Representative sections are in cassettes A1 to A{int(rng.integers(8, 17))}.")
    depth = "The tumour invades the muscularis propria" if invasive else "The muscularis propria is free of tumour"
    if t.startswith(("pT3", "pT4")):
        depth += " and extends into perivesical fat"
    micro = (f"Sections show urothelial carcinoma with nests and cords of atypical cells within a chronic "
             f"inflammatory stroma. {depth}. "
             f"Nuclear pleomorphism is marked; mitoses are readily identified. {grade_txt} (WHO 1973).")
    diagnosis = (f"Urinary bladder, radical cystectomy: invasive urothelial carcinoma, {grade_txt}, "
                 f"tumour size {size_mm} mm. Pathologic stage {t} {n} (AJCC 8th edition), stage group {facts.stage}.")
    terms = ["urothelial carcinoma", "muscularis propria", t, n, f"{size_mm} mm", "AJCC 8th edition"]
    if g:
        terms.append(f"Grade {g}")
    return gross, micro, diagnosis, terms


def _stomach(facts: PatientFacts, rng: np.random.Generator, size_mm: int) -> tuple[str, str, str, list[str]]:
    t, n = T_BY_STAGE["STAD"].get(facts.stage, ("pT3", "pN1"))
    g = _grade_number(facts.grade)
    grade_txt = f"Grade {g}" if g else "Grade not assessable (GX)"
    histology = STAD_HISTOLOGY.get(facts.subtype, STAD_HISTOLOGY["STAD"])
    lauren = LAUREN.get(facts.subtype, "intestinal")
    gross = (f"The specimen consists of a distal gastrectomy with an ulcerated tumour on the lesser curvature "
             f"measuring {size_mm} mm, {int(rng.integers(15, 60))} mm from the distal margin. "
             f"{int(rng.integers(12, 31))} lymph nodes are identified in the perigastric fat.")
    micro = (f"Sections show gastric {histology} infiltrating through the muscularis propria into the "
             f"subserosa, with a chronic inflammatory infiltrate and focal necrosis. Lauren classification: "
             f"{lauren} type. {grade_txt}. Helicobacter-like organisms are not identified.")
    diagnosis = (f"Stomach, distal gastrectomy: {histology}, {grade_txt}, Lauren classification {lauren} type, "
                 f"tumour size {size_mm} mm. Pathologic stage {t} {n} (AJCC 8th edition), stage group {facts.stage}.")
    terms = ["Lauren classification", "muscularis propria", t, n, f"{size_mm} mm", "AJCC 8th edition", histology]
    if g:
        terms.append(f"Grade {g}")
    return gross, micro, diagnosis, terms


LVI_PRESENT = ("Lymphovascular invasion is present: tumour emboli are seen within several thin-walled "
               "lymphovascular channels at the invasive front.")
LVI_ABSENT = "No lymphovascular invasion is identified."


def _lymphovascular(finding: bool | None) -> tuple[str, str, list[str]]:
    """The microscopic sentence, the diagnosis clause and the kept terms of the lymphovascular finding."""
    if finding is None:
        return "", "", []
    if finding:
        return " " + LVI_PRESENT, " Lymphovascular invasion present.", ["Lymphovascular invasion", "tumour emboli"]
    return " " + LVI_ABSENT, " Lymphovascular invasion not identified.", ["lymphovascular invasion"]


def make_report(facts: PatientFacts, rng: np.random.Generator) -> Report:
    """Write the report of one patient; identifiers are drawn from ``rng``."""
    female = facts.sex == "female"
    first = _pick(rng, FIRST_FEMALE if female else FIRST_MALE)
    last = _pick(rng, LAST_NAMES)
    surgeon = f"{_pick(rng, PHYSICIAN_FIRST)} {_pick(rng, PHYSICIAN_LAST)}"
    pathologist = surgeon
    while pathologist == surgeon:
        pathologist = f"{_pick(rng, PHYSICIAN_FIRST)} {_pick(rng, PHYSICIAN_LAST)}"
    institution = _pick(rng, INSTITUTIONS)
    collected = dt.date(2024, 1, 1) + dt.timedelta(days=int(rng.integers(0, 700)))
    born = collected - dt.timedelta(days=int(facts.age * 365.25 + rng.integers(30, 330)))
    received = collected + dt.timedelta(days=int(rng.integers(0, 2)))
    signed = received + dt.timedelta(days=int(rng.integers(2, 7)))
    referred = collected - dt.timedelta(days=int(rng.integers(10, 45)))
    dates = {k: _date_formats(rng, d) for k, d in
             (("dob", born), ("collected", collected), ("received", received), ("signed", signed),
              ("referred", referred))}
    mrn = f"{int(rng.integers(1000, 9999))}-{int(rng.integers(100, 999))}"
    accession = f"S{collected.year % 100:02d}-{int(rng.integers(1, 99999)):05d}"
    phone = f"({int(rng.integers(201, 989))}) 555-01{int(rng.integers(0, 100)):02d}"
    lab_phone = f"({int(rng.integers(201, 989))}) 555-01{int(rng.integers(0, 100)):02d}"
    city, state, zip3 = _pick(rng, PLACES)
    street = f"{int(rng.integers(12, 4980))} {_pick(rng, STREETS)}"
    address = f"{street}, {city}, {state} {zip3}{int(rng.integers(10, 99))}"
    email = f"{first.lower()}.{last.lower()}{int(rng.integers(10, 99))}@{_pick(rng, MAIL_DOMAINS)}"
    size_mm = int(rng.integers(8, 65))
    build = _bladder if facts.cancer_type == "BLCA" else _stomach
    gross, micro, diagnosis, terms = build(facts, rng, size_mm)
    lvi_micro, lvi_diagnosis, lvi_terms = _lymphovascular(facts.lymphovascular_invasion)  # draws nothing from rng
    micro, diagnosis, terms = micro + lvi_micro, diagnosis + lvi_diagnosis, terms + lvi_terms

    name_upper = f"{last.upper()}, {first.upper()}"
    name_plain = f"{first} {last}"
    who = "woman" if female else "man"
    organ = ("haematuria and a bladder mass on cystoscopy" if facts.cancer_type == "BLCA"
             else "epigastric pain, weight loss and a gastric mass on endoscopy")
    history = (f"{facts.age}-year-old {who} with {organ}, referred by Dr. {surgeon} on {dates['referred']}. "
               f"Biopsy showed carcinoma; resection performed.")
    gross = f"Received in formalin, labeled with the name {name_plain} and MRN {mrn}. " + gross
    comment = (f"Findings discussed with Dr. {surgeon} by telephone on {dates['signed']}. Patient contact on "
               f"file: {phone}, {email}.")
    keep = [name_plain, name_upper, surgeon, pathologist, mrn, accession, phone, email, address, *dates.values(),
            *terms]
    body = []
    for title, paragraph in (("CLINICAL HISTORY", history), ("GROSS DESCRIPTION", gross),
                             ("MICROSCOPIC DESCRIPTION", micro), ("DIAGNOSIS", diagnosis), ("COMMENT", comment)):
        # OCR damage: a word hyphenated across a line break, and doubled spaces between sentences
        paragraph = paragraph.replace(". Biopsy", ".  Biopsy").replace(". The specimen", ".  The specimen")
        body.append(f"{title}:\n{_wrap_hyphenated(paragraph, 'inflammatory', 6, keep)}")
    text_body = "\n\n".join(body)
    sex_letter = "F" if female else "M"
    header = "\n".join([
        institution.upper(),
        f"Department of Pathology and Laboratory Medicine        Tel {lab_phone}",
        "SURGICAL PATHOLOGY REPORT",
        "-" * 76,
        f"Patient:  {name_upper}        MRN: {mrn}",
        f"DOB: {dates['dob']}   Age: {facts.age}   Sex: {sex_letter}",
        f"Accession: {accession}   Collected: {dates['collected']}   Received: {dates['received']}",
        f"Address: {address}",
        f"Submitting physician: Dr. {surgeon}",
        "-" * 76,
    ])
    footer = "\n".join([
        "-" * 76,
        f"Electronically signed by {pathologist}, MD on {dates['signed']}",
        f"{institution} - Accession {accession}                 Page 1 of 1",
    ])
    text = f"{header}\n\n{text_body}\n\n{footer}\n"
    identifiers = [{"type": "NAME", "text": name_upper}, {"type": "NAME", "text": name_plain},
                   {"type": "NAME", "text": surgeon}, {"type": "NAME", "text": pathologist},
                   {"type": "MRN", "text": mrn}, {"type": "ACCESSION", "text": accession},
                   {"type": "PHONE", "text": phone}, {"type": "PHONE", "text": lab_phone},
                   {"type": "ADDRESS", "text": address}, {"type": "EMAIL", "text": email}]
    seen: set[str] = set()
    for value in dates.values():
        if value not in seen:
            seen.add(value)
            identifiers.append({"type": "DATE", "text": value})
    return Report(text=text, identifiers=identifiers, clinical_terms=list(dict.fromkeys(terms)))
