"""The cohort sample sheet: read (CSV or Parquet), validate every row, and resolve file references.

One row per slide; a patient without any slide has one row with ``slide_id`` and ``slide_path`` empty and takes
part through expression and/or a report (models that need a slide leave such patients out, with a count).
Patient-level fields (cancer type, survival, labels) repeat on each of a patient's slides and must agree. Paths are
relative to the sample sheet's folder unless absolute; a slide may name its regions of interest (``roi_path``, a
QuPath GeoJSON that restricts its tiles, :mod:`pathmm_pipeline.preprocess.roi`). Every problem found is reported
at once, each naming its row (the line number in a CSV) and column.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pandas as pd

from pathmm_pipeline.core.config import load_schema
from pathmm_pipeline.core.errors import InputError, SampleSheetError

PATH_COLUMNS = ("slide_path", "roi_path", "expression_path", "report_path")
PATIENT_COLUMNS = ("cancer_type", "survival_time", "survival_event", "subtype", "grade", "stage", "age", "sex",
                   "expression_path", "report_path")


@dataclass(frozen=True)
class SlideEntry:
    """One validated slide row, with resolved paths."""

    slide_id: str
    patient_id: str
    path: str
    mpp: float | None
    cancer_type: str
    roi: str | None = None  # the slide's ROI GeoJSON (roi_path), resolved


def _read_table(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise SampleSheetError(path, ["file not found"])
    try:
        if path.suffix.lower() == ".parquet":
            return pd.read_parquet(path)
        sep = "\t" if path.suffix.lower() in (".tsv", ".txt") else ","
        return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, na_values=[""])
    except Exception as exc:
        raise SampleSheetError(path, [f"cannot be read as a table: {exc}"]) from exc


def _row_label(path: Path, index: int) -> str:
    # a CSV's line number: one header line, 1-based
    return f"row {index + 1} (line {index + 2})" if path.suffix.lower() != ".parquet" else f"row {index + 1}"


def _coerce(frame: pd.DataFrame, path: Path, problems: list[str]) -> pd.DataFrame:
    """Turn text cells into numbers where the schema wants numbers, recording cells that are not numbers."""
    frame = frame.copy()
    for column, kind in (("mpp", float), ("survival_time", float), ("age", float), ("survival_event", int)):
        if column not in frame:
            continue
        values = []
        for i, raw in enumerate(frame[column].tolist()):
            if raw is None or (isinstance(raw, float) and np.isnan(raw)) or (isinstance(raw, str) and not raw.strip()):
                values.append(None)
                continue
            try:
                number = float(raw)
                if kind is int:
                    if number != int(number):
                        raise ValueError
                    number = int(number)
                values.append(number)
            except (TypeError, ValueError):
                problems.append(f"{_row_label(path, i)}: column '{column}' must be a number, got {raw!r}")
                values.append(None)
        frame[column] = pd.Series(values, index=frame.index, dtype=object)
    return frame


def _resolve(base: Path, value: str) -> str:
    p = Path(value)
    return os.path.normpath(p if p.is_absolute() else base / p)


def load_samplesheet(path: str | os.PathLike[str], cancer_types: list[str], extra_labels: list[str] | None = None,
                     check_files: bool = True) -> pd.DataFrame:
    """Validate the sample sheet at ``path`` and return it with paths resolved.

    Raises :class:`SampleSheetError` listing every problem: unknown or missing columns, duplicate slide ids,
    missing files, negative survival times, unknown cancer types, patients whose fields disagree.
    """
    path = Path(path)
    frame = _read_table(path)
    schema = load_schema("samplesheet")
    known = set(schema["properties"]) | set(extra_labels or [])
    problems: list[str] = []

    if frame.empty:
        raise SampleSheetError(path, ["has no rows"])
    for column in frame.columns:
        if column not in known:
            close = difflib.get_close_matches(str(column), sorted(known), n=1)
            hint = (f" (did you mean '{close[0]}'?)" if close
                    else " (declare extra label columns under 'labels' in config.yaml)")
            problems.append(f"unknown column '{column}'{hint}")
    missing = [c for c in schema["required"] if c not in frame.columns]
    pair = [c for c in ("slide_id", "slide_path") if c in frame.columns]
    if len(pair) == 1:  # slides need both columns; a cohort without slides may leave both out
        missing.append(({"slide_id", "slide_path"} - set(pair)).pop())
    problems += [f"missing required column '{c}'" for c in missing]
    if missing:
        raise SampleSheetError(path, problems)

    for column in ("slide_id", "slide_path"):  # a cohort without any slide may leave both columns out
        if column not in frame:
            frame[column] = None
    frame = _coerce(frame, path, problems)
    validator = jsonschema.Draft202012Validator({**schema, "additionalProperties": True})
    records = frame.astype(object).where(frame.notna(), None).to_dict(orient="records")
    for i, record in enumerate(records):
        for error in validator.iter_errors(record):
            column = ".".join(str(p) for p in error.absolute_path) or "row"
            value = record.get(column)
            problems.append(f"{_row_label(path, i)}: column '{column}' {_describe(error, value)}")

    problems += _slide_less_problems(frame, path)
    named = frame["slide_id"].dropna()
    duplicates = named[named.duplicated(keep=False)]
    for slide_id, rows in duplicates.groupby(duplicates).groups.items():
        labels = ", ".join(_row_label(path, int(r)) for r in rows)
        problems.append(f"duplicate slide_id '{slide_id}' in {labels}")

    allowed = set(cancer_types)
    for i, value in enumerate(frame["cancer_type"].tolist()):
        if isinstance(value, str) and value and value not in allowed:
            problems.append(f"{_row_label(path, i)}: unknown cancer_type '{value}' (config.yaml allows "
                            f"{', '.join(sorted(allowed))})")

    if "survival_time" in frame or "survival_event" in frame:
        for i, record in enumerate(records):
            has_time = record.get("survival_time") is not None
            has_event = record.get("survival_event") is not None
            if has_time != has_event:
                problems.append(f"{_row_label(path, i)}: survival_time and survival_event must both be given or "
                                "both be empty")

    for column in [c for c in PATIENT_COLUMNS if c in frame]:
        given = frame[["patient_id", column]].dropna()
        per_patient = given[column].astype(str).groupby(given["patient_id"]).nunique()
        for patient in per_patient[per_patient > 1].index:
            seen = sorted(frame.loc[frame.patient_id == patient, column].dropna().astype(str).unique())
            problems.append(f"patient '{patient}': slides disagree on '{column}' ({', '.join(seen)})")

    base = path.parent
    for column in [c for c in PATH_COLUMNS if c in frame]:
        resolved = []
        for i, value in enumerate(frame[column].tolist()):
            if not isinstance(value, str) or not value:
                resolved.append(None)
                continue
            full = _resolve(base, value)
            if check_files and not Path(full).is_file():
                problems.append(f"{_row_label(path, i)}: {column} '{value}' does not exist (looked for {full})")
            resolved.append(full)
        frame[column] = resolved

    if problems:
        raise SampleSheetError(path, problems)
    return frame.reset_index(drop=True)


def _present(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _slide_less_problems(frame: pd.DataFrame, path: Path) -> list[str]:
    """Rows without a slide: slide_id and slide_path empty together, one such row per patient and only for a
    patient with no slide row, who must then bring expression or a report (else nothing describes them)."""
    problems = []
    has_slide = [_present(a) for a in frame["slide_id"]]
    has_path = [_present(b) for b in frame["slide_path"]]
    for i, (a, b) in enumerate(zip(has_slide, has_path)):
        if a != b:
            problems.append(f"{_row_label(path, i)}: slide_id and slide_path must both be given (a slide) or both "
                            "be empty (a patient without slides)")
    slide_less = frame[[not a and not b for a, b in zip(has_slide, has_path)]]
    with_slides = set(frame.patient_id[[a and b for a, b in zip(has_slide, has_path)]])
    for patient, rows in slide_less.groupby("patient_id").groups.items():
        labels = ", ".join(_row_label(path, int(r)) for r in rows)
        if patient in with_slides:
            problems.append(f"patient '{patient}' has slides and a row without a slide ({labels}): drop that row")
        elif len(rows) > 1:
            problems.append(f"patient '{patient}' has more than one row without a slide ({labels})")
    nothing = []
    for i, row in slide_less.iterrows():
        if not any(_present(row.get(c)) for c in ("expression_path", "report_path")):
            nothing.append(str(row.patient_id))
        if _present(row.get("roi_path")):
            problems.append(f"{_row_label(path, int(i))}: roi_path is given but the row has no slide (an ROI "
                            "restricts a slide's tiles)")
    if nothing:
        problems.append(f"patient(s) {', '.join(sorted(set(nothing)))} have no slide, no expression_path and no "
                        "report_path: no modality to learn from")
    return problems


def _describe(error: jsonschema.ValidationError, value: Any) -> str:
    if error.validator == "minimum" and isinstance(value, (int, float)):
        return f"must be >= {error.validator_value}, got {value}"
    if error.validator == "exclusiveMinimum":
        return f"must be > {error.validator_value}, got {value}"
    if error.validator == "pattern":
        return f"{value!r} may only use letters, digits, '.', '_' and '-'"
    if error.validator == "enum":
        allowed = ", ".join(str(v) for v in error.validator_value if v is not None)
        return f"must be one of {allowed} or empty, got {value!r}"
    return error.message


def slide_entries(frame: pd.DataFrame) -> dict[str, SlideEntry]:
    """slide_id -> :class:`SlideEntry` for a validated sample sheet."""
    entries = {}
    for row in frame.itertuples(index=False):
        if not _present(row.slide_id):  # a patient without slides
            continue
        mpp = getattr(row, "mpp", None)
        roi = getattr(row, "roi_path", None)
        entries[row.slide_id] = SlideEntry(
            slide_id=row.slide_id, patient_id=row.patient_id, path=row.slide_path,
            mpp=None if mpp is None or (isinstance(mpp, float) and np.isnan(mpp)) else float(mpp),
            cancer_type=row.cancer_type, roi=roi if _present(roi) else None)
    return entries


def write_manifest(sheet_path: str | os.PathLike[str], out_path: str | os.PathLike[str], cancer_types: list[str],
                   extra_labels: list[str] | None = None) -> Path:
    """Validate the sample sheet and write it as a Parquet manifest carrying its provenance."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from pathmm_pipeline.core.atomic import atomic_path
    from pathmm_pipeline.core.provenance import PARQUET_KEY, build_provenance

    frame = load_samplesheet(sheet_path, cancer_types, extra_labels)
    record = build_provenance("manifest", {"samplesheet": sheet_path},
                              {"cancer_types": list(cancer_types), "labels": list(extra_labels or [])},
                              extra={"n_slides": int(len(frame)), "n_patients": int(frame.patient_id.nunique())})
    table = pa.Table.from_pandas(frame.astype(object).where(frame.notna(), None), preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), PARQUET_KEY: json.dumps(record)})
    with atomic_path(out_path) as tmp:
        pq.write_table(table, tmp)
    return Path(out_path)


#: the columns of an external (slide-less) pretraining patients table, besides ``expression_path``
EXTERNAL_COLUMNS = ("patient_id", "cancer_type", "survival_time", "survival_event")


def read_external_patients(path: str | os.PathLike[str]) -> pd.DataFrame:
    """The external (slide-less) patients table: ``patient_id``, ``cancer_type``, ``survival_time``,
    ``survival_event`` and ``expression_path`` (relative paths are taken from the table's folder)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "external patients table not found", "build it (`pathmm demo-cohort` writes one) "
                         "or set training.pretraining.external to null")
    table = pd.read_csv(path, dtype={"patient_id": str, "cancer_type": str})
    missing = [c for c in (*EXTERNAL_COLUMNS, "expression_path") if c not in table]
    if missing:
        raise InputError(path, f"missing column(s) {', '.join(missing)}",
                         f"the external patients table needs {', '.join((*EXTERNAL_COLUMNS, 'expression_path'))}")
    duplicated = table.patient_id[table.patient_id.duplicated()].tolist()
    if duplicated:
        raise InputError(path, f"duplicated patient id(s) {duplicated[:5]}", "give each patient one row")
    table["expression_path"] = [str(p if Path(p).is_absolute() else path.parent / p)
                                for p in table.expression_path.astype(str)]
    return table
