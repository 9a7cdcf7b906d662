"""Read the compact real TCGA tables shipped with the package (see ``data/tcga/ATTRIBUTION.md``).

Cohorts are ``"blca"`` and ``"stad"``. Clinical conventions are the source's: ``censorship_* = 1`` means
censored (no event observed), survival times are in months, ``is_female`` is 1 for female.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pathmm_pipeline.core.data import TCGA_DATA

DATA_DIR = TCGA_DATA
COHORTS = ("blca", "stad")
PATHWAYS = ("hallmarks_comps", "hallmarks_signatures", "xena_comps", "xena_signatures", "gene_families_6")


def _cohort(cohort: str) -> str:
    key = cohort.lower()
    if key not in COHORTS:
        raise ValueError(f"unknown TCGA cohort {cohort!r}; choose one of {COHORTS}")
    return key


def load_clinical(cohort: str) -> pd.DataFrame:
    """One row per case: age, site, OS/DSS/PFI months and censorship, is_female, oncotree code, stage, grade,
    subtype (indexed by ``case_id``)."""
    frame = pd.read_parquet(DATA_DIR / f"{_cohort(cohort)}_clinical.parquet")
    return frame.set_index("case_id")


def load_expression(cohort: str) -> pd.DataFrame:
    """Patients x genes Xena log2 expression (float32), indexed by ``case_id``."""
    frame = pd.read_parquet(DATA_DIR / f"{_cohort(cohort)}_expression.parquet")
    return frame.set_index("case_id")


def splits_dir(cohort: str) -> Path:
    """The folder of the published 5-fold splits ``splits_0.csv`` .. ``splits_4.csv`` (train / val case ids)."""
    return DATA_DIR / _cohort(cohort) / "splits_5fold"


def pathway_table(name: str) -> pd.DataFrame:
    """A published pathway table: ``*_comps`` are gene x pathway 0/1 memberships (indexed by gene),
    ``*_signatures`` and ``gene_families_6`` list gene symbols per column."""
    if name not in PATHWAYS:
        raise ValueError(f"unknown pathway table {name!r}; choose one of {PATHWAYS}")
    path = DATA_DIR / "pathways" / f"{name}.csv.gz"
    if name.endswith("_comps"):
        return pd.read_csv(path, index_col=0)
    return pd.read_csv(path)
