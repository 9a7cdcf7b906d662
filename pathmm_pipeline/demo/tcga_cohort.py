"""A slide-less cohort from a TCGA folder: the real-data genomics benchmark's input.

``build_tcga_cohort(source, out)`` turns a folder in the layout SurvPath released its TCGA data in
(``rna_xena.csv`` patients x genes, ``metadata.csv`` one row per diagnostic slide with survival, age, sex and
oncotree code, ``clinical.csv`` stage / grade / subtype, ``splits_5fold/splits_<k>.csv`` the published patient
splits) -- or the name of a cohort shipped with the package (``blca``, ``stad``) -- into:

* ``samplesheet.csv``: one row per patient with expression and a disease-specific survival (DSS) endpoint,
  ``slide_id`` and ``slide_path`` empty (no slide: the patients take part through expression alone);
* ``expression.tsv``: the expression as a Xena-style genes x ``<case>-01`` table;
* ``splits/splits_<k>.csv``: the published splits restricted to those patients (the count left out is logged
  and written to ``cohort.json``);
* ``cohort.yaml``: the config lines that point the pipeline at them (sample sheet, cancer types, published
  splits, results folder), to pass after the shared config:
  ``snakemake --configfile workflow/config/tcga_genomics.yaml <out>/cohort.yaml``.

Nothing here depends on the cohort: another TCGA project in the same layout works unchanged.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from pathmm_pipeline.core.atomic import atomic_path, write_text_atomic
from pathmm_pipeline.core.errors import InputError
from pathmm_pipeline.demo import tcga
from pathmm_pipeline.demo.compact_tcga import clinical_table, expression_table

log = logging.getLogger(__name__)

SHEET_COLUMNS = ("patient_id", "slide_id", "slide_path", "cancer_type", "survival_time", "survival_event",
                 "subtype", "grade", "stage", "age", "sex", "expression_path")


def _read_source(source: str | os.PathLike[str]) -> tuple[pd.DataFrame, pd.DataFrame, Path, str]:
    """(clinical one row per case, expression cases x genes, splits folder, cohort name)."""
    path = Path(source)
    if not path.exists() and str(source).lower() in tcga.COHORTS:
        name = str(source).lower()
        return (tcga.load_clinical(name).reset_index(), tcga.load_expression(name), tcga.splits_dir(name), name)
    if not path.is_dir():
        raise InputError(path, "is neither a folder nor a packaged TCGA cohort",
                         f"give a folder with rna_xena.csv, metadata.csv, clinical.csv and splits_5fold/, or one of "
                         f"{', '.join(tcga.COHORTS)}")
    for name in ("rna_xena.csv", "metadata.csv", "clinical.csv", "splits_5fold"):
        if not (path / name).exists():
            raise InputError(path / name, "not found", "the folder must hold rna_xena.csv, metadata.csv, "
                             "clinical.csv and splits_5fold/ (the SurvPath TCGA layout)")
    try:
        clinical = clinical_table(path)
        expression = expression_table(path).set_index("case_id")
    except (KeyError, ValueError) as exc:
        raise InputError(path, f"cannot be read as a TCGA cohort folder: {exc}") from None
    return clinical, expression, path / "splits_5fold", path.name.lower()


def _sex(value: float) -> str | None:
    return None if pd.isna(value) else ("female" if float(value) == 1 else "male")


def build_tcga_cohort(source: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                      results: str | None = None, cancer_type: str | None = None) -> Path:
    """Write the slide-less cohort of ``source`` (a folder or a packaged cohort name) into ``out_dir`` and
    return the path of its ``cohort.yaml``. ``results``: the results folder it names (default
    ``results_tcga_<cohort>``); ``cancer_type``: the cancer type of every patient (default: the folder's name
    upper-cased, the TCGA project)."""
    clinical, expression, splits_dir, name = _read_source(source)
    out = Path(out_dir)
    clinical = clinical.drop_duplicates("case_id").set_index("case_id")
    usable = clinical.dropna(subset=["survival_months_dss", "censorship_dss"])
    usable = usable[usable.index.isin(expression.index)].sort_index()
    if usable.empty:
        raise InputError(source, "no patient has both expression and a DSS endpoint")
    # the TCGA project is the cancer type (STAD's oncotree codes are its histological subtypes)
    types = pd.Series(cancer_type or name.upper(), index=usable.index)
    sheet = pd.DataFrame({
        "patient_id": usable.index, "slide_id": "", "slide_path": "", "cancer_type": types.to_numpy(),
        "survival_time": usable["survival_months_dss"].round(4).to_numpy(),
        "survival_event": (1 - usable["censorship_dss"].astype(int)).to_numpy(),
        "subtype": usable.get("subtype"), "grade": usable.get("grade"), "stage": usable.get("stage"),
        "age": usable["age"].to_numpy(), "sex": [_sex(v) for v in usable["is_female"]],
        "expression_path": "expression.tsv"}, columns=list(SHEET_COLUMNS))
    matrix = expression.loc[usable.index].T
    matrix.columns = [f"{case}-01" for case in matrix.columns]
    matrix.index.name = "sample"

    kept = set(usable.index)
    split_files = sorted(splits_dir.glob("splits_*.csv"), key=lambda p: int(p.stem.split("_")[1]))
    if not split_files:
        raise InputError(splits_dir, "holds no splits_<k>.csv")
    counts = []
    with atomic_path(out, use_scratch=False) as tmp:
        (tmp / "splits").mkdir(parents=True)
        for f in split_files:
            split = pd.read_csv(f, index_col=0)
            train = [p for p in split["train"].dropna().astype(str) if p in kept]
            val = [p for p in split["val"].dropna().astype(str) if p in kept]
            dropped = int(split["train"].notna().sum() + split["val"].notna().sum()) - len(train) - len(val)
            frame = pd.DataFrame({"train": pd.Series(train, dtype=object), "val": pd.Series(val, dtype=object)})
            write_text_atomic(tmp / "splits" / f.name, frame.to_csv(lineterminator="\n"))
            counts.append({"split": f.name, "train": len(train), "val": len(val), "left_out": dropped})
        write_text_atomic(tmp / "samplesheet.csv", sheet.to_csv(index=False, lineterminator="\n"))
        write_text_atomic(tmp / "expression.tsv",
                          matrix.map(lambda v: str(np.float32(v))).to_csv(sep="\t", lineterminator="\n"))
        config = {"samplesheet": str((out / "samplesheet.csv").resolve()),
                  "cancer_types": sorted(set(types)),
                  "results": results or f"results_tcga_{name}",
                  "training": {"published_splits": str((out / "splits").resolve()), "folds": len(split_files)}}
        write_text_atomic(tmp / "cohort.yaml", yaml.safe_dump(config, sort_keys=False))
        write_text_atomic(tmp / "cohort.json", json.dumps({
            "source": str(source), "cohort": name, "patients": len(sheet), "genes": int(expression.shape[1]),
            "events": int(sheet.survival_event.sum()), "endpoint": "DSS (survival_months_dss, censorship_dss)",
            "splits": counts}, indent=1) + "\n")
    log.info("TCGA cohort %s: %d patients (%d DSS events), %d genes, %d published splits -> %s", name, len(sheet),
             int(sheet.survival_event.sum()), expression.shape[1], len(split_files), out)
    return out / "cohort.yaml"
