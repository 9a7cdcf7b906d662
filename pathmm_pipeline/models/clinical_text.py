"""ModalTune's text targets: a patient's clinical table written as the paper's sentences, one text per task.

The sentences follow the reference code (martellab-sri/ModalTune ``data_utils/make_textemb_conch.py``,
``generate_prompts``): ``"Cancer location: <organ>;"``, ``"Cancer diagnosis: <subtype>;"``, ``"Overall stage:
stage two;"``, ``"Tumor stage status: tumor stage three;"``, ``"Lymph node status: ...;"``, ``"Distant metastasis
status: ...;"`` and ``"Survival status: The patient died between 12 and 24 months"``; the task texts combine
them as the reference does (:data:`TASK_SENTENCES`): the diagnosis (``subtype``) task reads location +
diagnosis, ``stage`` location + stage + T + N + M, ``survival`` those + survival, ``general`` everything.

* **Subtype**: an OncoTree code is written as its OncoTree name (:data:`ONCOTREE`); any other value as given. A
  :class:`SubtypeGroups` fitted on the pretraining corpus (the fold's training patients only) pools the
  subtypes seen in fewer than ``min_patients`` of them into a **rare set**, written ``"rare <parent> subtype"``
  (the reference drops such diagnoses from its classification labels and keeps their text).
* **Stage**: ``I``-``IV`` with any sub-letter (``IIIA``, ``Stage IIb``, ``3``) -> ``"stage one"`` ..
  ``"stage four"``; ``X`` -> ``"stage cannot be determined"``; T / N / M categories likewise (reference
  mappings). Values that cannot be read are unknown, never guessed.
* **Location**: a ``site`` value when the table has one, else the organ of the TCGA project
  (:data:`CANCER_LOCATIONS`, the reference's ``cancer_code`` extended to the other TCGA projects), else the
  cancer type's own name.

A task has a text only when one of its own facts is known (a location alone is no target).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: TCGA project -> the organ of the location sentence (reference ``cancer_code`` plus the other projects)
CANCER_LOCATIONS: dict[str, str] = {
    "ACC": "adrenal gland", "BLCA": "bladder urothelial", "BRCA": "breast", "CESC": "cervix",
    "CHOL": "bile duct", "COAD": "colon", "COADREAD": "colorectal", "DLBC": "lymph node", "ESCA": "esophagus",
    "GBM": "brain", "GBMLGG": "brain", "HNSC": "head and neck", "KICH": "kidney", "KIRC": "kidney",
    "KIRP": "kidney", "LGG": "brain", "LIHC": "liver", "LUAD": "lung", "LUSC": "lung", "MESO": "pleura",
    "NSCLC": "lung", "OV": "ovary", "PAAD": "pancreas", "PCPG": "adrenal gland", "PRAD": "prostate",
    "RCC": "kidney", "READ": "rectum", "SARC": "soft tissue", "SKCM": "skin", "STAD": "stomach",
    "TGCT": "testis", "THCA": "thyroid", "THYM": "thymus", "UCEC": "uterus", "UCS": "uterus", "UVM": "eye",
}

#: OncoTree code -> (name, parent name) for the codes of the TCGA projects (oncotree.mskcc.org, tumor types
#: 2021-11-02); the parent names the rare set of its children
ONCOTREE: dict[str, tuple[str, str]] = {
    "BLCA": ("Bladder Urothelial Carcinoma", "bladder"),
    "STAD": ("Stomach Adenocarcinoma", "stomach adenocarcinoma"),
    "DSTAD": ("Diffuse Type Stomach Adenocarcinoma", "stomach adenocarcinoma"),
    "ISTAD": ("Intestinal Type Stomach Adenocarcinoma", "stomach adenocarcinoma"),
    "MSTAD": ("Mucinous Stomach Adenocarcinoma", "stomach adenocarcinoma"),
    "PSTAD": ("Papillary Stomach Adenocarcinoma", "stomach adenocarcinoma"),
    "TSTAD": ("Tubular Stomach Adenocarcinoma", "stomach adenocarcinoma"),
    "SSRCC": ("Signet Ring Cell Carcinoma of the Stomach", "stomach adenocarcinoma"),
    "IDC": ("Breast Invasive Ductal Carcinoma", "breast"), "ILC": ("Breast Invasive Lobular Carcinoma", "breast"),
    "MDLC": ("Breast Mixed Ductal and Lobular Carcinoma", "breast"),
    "COAD": ("Colon Adenocarcinoma", "colorectal"), "READ": ("Rectal Adenocarcinoma", "colorectal"),
    "MACR": ("Mucinous Adenocarcinoma of the Colon and Rectum", "colorectal"),
    "LUAD": ("Lung Adenocarcinoma", "lung"), "LUSC": ("Lung Squamous Cell Carcinoma", "lung"),
    "CCRCC": ("Renal Clear Cell Carcinoma", "kidney"), "PRCC": ("Papillary Renal Cell Carcinoma", "kidney"),
    "CHRCC": ("Chromophobe Renal Cell Carcinoma", "kidney"),
    "GB": ("Glioblastoma", "glioma"), "ASTR": ("Astrocytoma", "glioma"), "ODG": ("Oligodendroglioma", "glioma"),
    "UEC": ("Uterine Endometrioid Carcinoma", "uterus"), "USC": ("Uterine Serous Carcinoma", "uterus"),
    "HNSC": ("Head and Neck Squamous Cell Carcinoma", "head and neck"),
    "HCC": ("Hepatocellular Carcinoma", "liver"), "PAAD": ("Pancreatic Adenocarcinoma", "pancreas"),
    "PRAD": ("Prostate Adenocarcinoma", "prostate"), "SKCM": ("Cutaneous Melanoma", "skin"),
}

_ROMAN = {"I": 1, "II": 2, "III": 3, "IV": 4}
_WORDS = {0: "zero", 1: "one", 2: "two", 3: "three", 4: "four"}
#: the reference's T / N / M sentences (``tumor_stage_mapper``, ``node_stage_mapper``, ``metastasis_stage_mapper``)
T_PHRASES = {"0": "no tumor detected", "X": "tumor stage cannot be assessed",
             **{str(k): f"tumor stage {_WORDS[k]}" for k in (1, 2, 3, 4)}}
N_PHRASES = {"0": "cancer has not spread to lymph nodes", "X": "node spread cannot be assessed",
             **{str(k): f"node stage {_WORDS[k]}" for k in (1, 2, 3)}}
M_PHRASES = {"0": "no metastasis detected", "1": "cancer has spread to distant organs",
             "X": "metastasis status cannot be assessed"}
#: the sentences each task's text holds, in order (the reference's prompt composition)
TASK_SENTENCES: dict[str, tuple[str, ...]] = {
    "general": ("location", "diagnosis", "stage", "t", "n", "m", "survival"),
    "subtype": ("location", "diagnosis"),
    "stage": ("location", "stage", "t", "n", "m"),
    "survival": ("location", "stage", "t", "n", "m", "survival"),
}
#: the table columns each fact is read from, first non-empty wins
CLINICAL_COLUMNS: dict[str, tuple[str, ...]] = {
    "diagnosis": ("oncotree_code", "subtype", "primary_diagnosis"),
    "stage": ("stage", "ajcc_pathologic_stage"),
    "t": ("t_stage", "ajcc_pathologic_t"),
    "n": ("n_stage", "ajcc_pathologic_n"),
    "m": ("m_stage", "ajcc_pathologic_m"),
    "site": ("site_name", "primary_site"),
}
_PREFIX = {"location": "Cancer location: {};", "diagnosis": "Cancer diagnosis: {};", "stage": "Overall stage: {};",
           "t": "Tumor stage status: {};", "n": "Lymph node status: {};", "m": "Distant metastasis status: {};",
           "survival": "Survival status: The patient {}"}


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value) or not str(value).strip() \
        or str(value).strip().lower() in ("nan", "none", "na", "n/a", "unknown", "not reported", "[not available]")


def clinical_values(row: Mapping[str, Any]) -> dict[str, str]:
    """The clinical facts of one table row (:data:`CLINICAL_COLUMNS`), blanks left out."""
    out: dict[str, str] = {}
    for fact, columns in CLINICAL_COLUMNS.items():
        for column in columns:
            if column in row and not _blank(row[column]):
                out[fact] = str(row[column]).strip()
                break
    return out


def stage_phrase(value: Any) -> str | None:
    """``"Stage IIIA"`` / ``"IIIA"`` / ``"3"`` -> ``"stage three"``; ``X`` -> ``"stage cannot be determined"``;
    anything else None."""
    if _blank(value):
        return None
    text = re.sub(r"(?i)^\s*(?:ajcc\s+)?(?:pathologic(?:al)?\s+)?stage\s*", "", str(value)).strip().upper()
    if text == "X":
        return "stage cannot be determined"
    match = re.fullmatch(r"(IV|I{1,3}|[0-4])[A-D]?[0-9]?(?:\s*\(.*\))?", text)
    if not match:
        return None
    token = match.group(1)
    number = int(token) if token.isdigit() else _ROMAN[token]
    return "stage zero" if number == 0 else f"stage {_WORDS[number]}"


def tnm_phrase(axis: str, value: Any) -> str | None:
    """A T / N / M category (``pT2a``, ``T3``, ``N0 (i+)``, ``cM1``, ``Tis``) as the reference's sentence."""
    if _blank(value):
        return None
    table = {"t": T_PHRASES, "n": N_PHRASES, "m": M_PHRASES}[axis]
    text = re.sub(r"\s*\(.*\)$", "", str(value).strip())
    match = re.fullmatch(rf"(?i)[ypcra]{{0,2}}{axis}(is|X|[0-4])[a-d]?(?:mi)?", text)
    if not match:
        return None
    code = match.group(1).upper()
    return table.get("0" if code == "IS" else code)


def subtype_name(value: str) -> str:
    """An OncoTree code's name (:data:`ONCOTREE`), else the value."""
    entry = ONCOTREE.get(str(value).strip().upper())
    return entry[0] if entry else str(value).strip()


@dataclass(frozen=True)
class SubtypeGroups:
    """The subtypes the pretraining corpus has enough of; others form the rare set. Fit it on the corpus (the
    fold's training patients only) with :meth:`fit`."""

    kept: frozenset[str] = frozenset()
    min_patients: int = 0
    counts: dict[str, int] = field(default_factory=dict)

    @classmethod
    def fit(cls, values: Iterable[Any], min_patients: int) -> SubtypeGroups:
        """Count each subtype (by its OncoTree name) over ``values``; keep those seen >= ``min_patients``."""
        counts = Counter(subtype_name(v) for v in values if not _blank(v))
        return cls(frozenset(k for k, n in counts.items() if n >= min_patients), int(min_patients), dict(counts))

    def name(self, value: Any) -> str | None:
        """The diagnosis written for ``value``: its name, or the rare set it falls into."""
        if _blank(value):
            return None
        name = subtype_name(value)
        if self.min_patients <= 0 or name in self.kept:
            return name
        entry = ONCOTREE.get(str(value).strip().upper())
        return f"rare {entry[1]} subtype" if entry else "rare subtype"


def location_phrase(values: Mapping[str, str], cancer_type: str | None) -> str | None:
    """The site of the table, else the TCGA project's organ, else the cancer type's name."""
    if "site" in values:
        return values["site"]
    if cancer_type is None or _blank(cancer_type):
        return None
    return CANCER_LOCATIONS.get(str(cancer_type).strip().upper(), str(cancer_type).strip())


def patient_sentences(values: Mapping[str, str], cancer_type: str | None = None, survival: str | None = None,
                      groups: SubtypeGroups | None = None) -> dict[str, str]:
    """One sentence per known fact of a patient (``values`` from :func:`clinical_values`; ``survival`` e.g.
    ``"died between 12 and 24 months"``)."""
    groups = groups or SubtypeGroups()
    facts = {"location": location_phrase(values, cancer_type), "diagnosis": groups.name(values.get("diagnosis")),
             "stage": stage_phrase(values.get("stage")), "t": tnm_phrase("t", values.get("t")),
             "n": tnm_phrase("n", values.get("n")), "m": tnm_phrase("m", values.get("m")), "survival": survival}
    return {k: _PREFIX[k].format(v) for k, v in facts.items() if v}


def task_texts(sentences: Mapping[str, str], tasks: Sequence[str]) -> dict[str, str]:
    """Each task's text: its sentences (:data:`TASK_SENTENCES`; a task not listed reads the sentence of its own
    name), joined by spaces; a task none of whose own facts (beyond the location) is known has no text."""
    out: dict[str, str] = {}
    for task in tasks:
        keys = [k for k in TASK_SENTENCES.get(task, (task,)) if k in sentences]
        if any(k != "location" for k in keys):
            out[task] = " ".join(sentences[k] for k in keys)
    return out
