"""Read one gene-expression matrix into a patients x genes, log2-scale float64 table.

Accepted files: CSV (``.csv``, ``.csv.gz``), TSV (``.tsv``, ``.txt``, ``.tab``, optionally gzipped) and Parquet
(``.parquet``, ``.pq``). The first column (CSV/TSV), or the pandas index or first text column (Parquet), holds
the row labels; the header holds the column labels. A CSV header may omit the corner cell (R's
``write.csv`` style).

Decisions, each recorded on the returned :class:`ExpressionMatrix`:

* **Orientation** (``"auto"``): the axis whose labels look like samples holds the samples. A label looks like a
  sample when it is a TCGA barcode (``TCGA-XX-XXXX...``) or, when ``patients`` is given, when its patient key
  is one of them. An axis wins when at least half its labels look like samples and at least half more than
  the other axis's do; failing that, the axis of Ensembl gene ids (``ENSG...``) is the gene axis; failing
  that the file is refused and ``orientation`` must be given (``"samples_x_genes"`` / ``"genes_x_samples"``).
* **Patients**: a TCGA barcode maps to its patient by its first 12 characters (``TCGA-2F-A9KO-01A`` ->
  ``TCGA-2F-A9KO``); any other id is its own patient.
* **Several samples of one patient** (``multi_sample``): ``"primary_then_mean"`` (default) keeps the primary
  tumour samples (TCGA sample type ``01``) if there are any, else the other tumour samples (``02``-``09``),
  else all, and averages what it kept (NaN-aware); ``"mean"`` averages all; ``"error"`` refuses. Every
  patient so resolved is logged and listed in ``resolutions``.
* **Scale** (``scale``): ``"auto"`` calls the values *raw* (counts, TPM, FPKM) when none is negative and the
  largest exceeds ``raw_threshold`` (100: a log2 value of 100 would be 2**100 reads), else *log2*. Raw values
  become ``log2(x + 1)``. ``"raw"`` forces the transform (negative values are then an error), ``"log2"``
  keeps the values.
* **Duplicated gene symbols** (``duplicates``): ``"error"`` (default) refuses the file naming the genes,
  ``"mean"`` averages the duplicated columns, ``"first"`` keeps the first.

Errors are :class:`~pathmm_pipeline.core.errors.InputError` naming the file, the problem (with the gene, sample or
patient concerned) and what to do: unreadable or malformed tables, ragged rows, non-numeric or infinite
cells, duplicated sample ids, duplicated genes (by default), samples whose values are all missing.

Missing values stay NaN here; :func:`drop_sparse_genes` drops genes missing in too many patients, and the
rest are imputed per fold with the training median by :class:`~pathmm_pipeline.genomics.normalize.GeneScaler`.
"""

from __future__ import annotations

import csv
import gzip
import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pathmm_pipeline.core.errors import InputError

log = logging.getLogger(__name__)

SAMPLES_X_GENES = "samples_x_genes"
GENES_X_SAMPLES = "genes_x_samples"
ORIENTATIONS = ("auto", SAMPLES_X_GENES, GENES_X_SAMPLES)
SCALES = ("auto", "log2", "raw")
DUPLICATE_POLICIES = ("error", "mean", "first")
MULTI_SAMPLE_POLICIES = ("primary_then_mean", "mean", "error")
RAW_THRESHOLD = 100.0

NA_TOKENS = frozenset({"", "NA", "N/A", "NaN", "nan", "NAN", "null", "NULL", "None", "#N/A"})
TCGA_BARCODE = re.compile(r"^(TCGA-[A-Z0-9]{2}-[A-Z0-9]{4})(?:-(\d{2})([A-Z])?)?", re.IGNORECASE)
ENSEMBL_GENE = re.compile(r"^ENS[A-Z]*G\d{6,}", re.IGNORECASE)
PRIMARY_TUMOUR = "01"
TUMOUR_TYPES = {f"{i:02d}" for i in range(1, 10)}

_DELIMITED = {".csv": ",", ".tsv": "\t", ".txt": "\t", ".tab": "\t"}
_PARQUET = (".parquet", ".pq")


@dataclass
class ExpressionMatrix:
    """A matrix read by :func:`read_expression`: ``data`` is patients x genes, float64, log2 scale.

    ``samples`` maps each patient to the sample ids the file had for it, ``used_samples`` to those averaged
    into its row; ``resolutions`` says, one line per patient with several samples, what was done.
    """

    path: Path
    data: pd.DataFrame
    orientation: str
    orientation_reason: str
    scale: dict[str, Any]
    samples: dict[str, list[str]]
    used_samples: dict[str, list[str]]
    resolutions: list[str] = field(default_factory=list)
    duplicate_genes: dict[str, int] = field(default_factory=dict)
    duplicates_policy: str = "error"
    multi_sample_policy: str = "primary_then_mean"

    @property
    def patients(self) -> list[str]:
        return [str(p) for p in self.data.index]

    @property
    def genes(self) -> list[str]:
        return [str(g) for g in self.data.columns]

    def summary(self) -> dict[str, Any]:
        """What was read and decided, as plain JSON types (for store attributes and provenance)."""
        return {
            "path": str(self.path),
            "orientation": self.orientation,
            "orientation_reason": self.orientation_reason,
            "scale": self.scale,
            "n_samples": int(sum(len(v) for v in self.samples.values())),
            "n_patients": int(self.data.shape[0]),
            "n_genes": int(self.data.shape[1]),
            "multi_sample_policy": self.multi_sample_policy,
            "resolutions": list(self.resolutions),
            "duplicates_policy": self.duplicates_policy,
            "duplicate_genes": dict(self.duplicate_genes),
        }


@dataclass
class _RawTable:
    """A table as read: row labels, column labels, float values, and cells that are not numbers."""

    rows: list[str]
    cols: list[str]
    values: np.ndarray
    bad: list[tuple[int, int, str]]


def patient_of(sample_id: str) -> str:
    """The patient a sample id belongs to: a TCGA barcode's first 12 characters (upper-cased), otherwise the
    id itself."""
    match = TCGA_BARCODE.match(sample_id)
    return match.group(1).upper() if match else sample_id


def sample_type(sample_id: str) -> str | None:
    """A TCGA barcode's two-digit sample type (``01`` primary tumour, ``11`` solid normal, ...), else None."""
    match = TCGA_BARCODE.match(sample_id)
    return match.group(2) if match else None


def _suffix(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    return Path(name).suffix


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _listing(items: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(f"'{x}'" for x in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _parse_cells(cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Text cells -> float64 values and a mask of cells that are neither numbers nor missing-value tokens."""
    flat = pd.Series(cells.ravel(), dtype=object).astype(str).str.strip()
    values = pd.to_numeric(flat, errors="coerce").to_numpy(dtype=np.float64)
    bad = (np.isnan(values) & ~flat.isin(NA_TOKENS).to_numpy()) | np.isinf(values)
    return values.reshape(cells.shape), bad.reshape(cells.shape)


def _open_text(path: Path):
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def _read_delimited(path: Path, sep: str) -> _RawTable:
    kind = "CSV" if sep == "," else "tab-separated"
    hint = f"save the matrix as a {kind} table: one header line, one row per gene or sample, a label first"
    lines: list[int] = []
    table: list[list[str]] = []
    try:
        with _open_text(path) as fh:
            reader = csv.reader(fh, delimiter=sep)
            for row in reader:
                if row and any(cell.strip() for cell in row):
                    table.append(row)
                    lines.append(reader.line_num)
    except (UnicodeDecodeError, csv.Error, OSError, EOFError) as exc:
        raise InputError(path, f"cannot be read as a {kind} text table ({exc})", hint) from exc
    if not table:
        raise InputError(path, "is empty", hint)
    if len(table) < 2:
        raise InputError(path, "malformed expression matrix: a header line but no data rows", hint)
    n_header, n_data = len(table[0]), len(table[1])
    if n_data < 2:
        raise InputError(path, f"malformed expression matrix: the first data row has {_plural(n_data, 'field')}"
                         f" (is the file really {kind}?)", hint)
    if n_header not in (n_data, n_data - 1):
        raise InputError(path, f"malformed expression matrix: the header (line {lines[0]}) has "
                         f"{_plural(n_header, 'field')} but the first data row {n_data}", hint)
    for row, line in zip(table[1:], lines[1:]):
        if len(row) != n_data:
            raise InputError(path, f"malformed expression matrix: row '{row[0].strip()}' (line {line}) has "
                             f"{_plural(len(row), 'field')}, the rows above {n_data}", hint)
    header = [c.strip() for c in table[0]]
    cols = header[1:] if n_header == n_data else header
    rows = [r[0].strip() for r in table[1:]]
    cells = np.array([r[1:] for r in table[1:]], dtype=object)
    values, bad = _parse_cells(cells)
    bad_cells = [(int(i), int(j), str(cells[i, j]).strip()) for i, j in zip(*np.nonzero(bad))]
    return _RawTable(rows, cols, values, bad_cells)


def _read_parquet(path: Path) -> _RawTable:
    import pyarrow as pa
    import pyarrow.parquet as pq

    hint = "write the matrix with a text column (or pandas index) of row labels and one numeric column per label"
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise InputError(path, f"cannot be read as a Parquet table ({exc})", hint) from exc
    names = [str(n) for n in table.column_names]
    if len(names) < 2 or table.num_rows == 0:
        raise InputError(path, f"malformed expression matrix: {table.num_rows} rows and "
                         f"{_plural(len(names), 'column')}", hint)
    index_columns = [c for c in ((table.schema.pandas_metadata or {}).get("index_columns") or [])
                     if isinstance(c, str)]
    if len(index_columns) == 1 and index_columns[0] in names:
        label_pos = names.index(index_columns[0])
    elif pa.types.is_string(table.schema.field(0).type) or pa.types.is_large_string(table.schema.field(0).type):
        label_pos = 0
    else:
        raise InputError(path, "malformed expression matrix: no column of row labels (the first column is "
                         f"'{names[0]}' of type {table.schema.field(0).type})", hint)
    rows = ["" if v is None else str(v).strip() for v in table.column(label_pos).to_pylist()]
    value_positions = [i for i in range(len(names)) if i != label_pos]
    cols = [names[i].strip() for i in value_positions]
    values = np.empty((len(rows), len(cols)), dtype=np.float64)
    bad_cells: list[tuple[int, int, str]] = []
    for j, pos in enumerate(value_positions):
        column = table.column(pos)
        kind = column.type
        if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind):
            values[:, j] = column.to_pandas().to_numpy(dtype=np.float64, na_value=np.nan)
            for i in np.flatnonzero(np.isinf(values[:, j])):
                bad_cells.append((int(i), j, str(values[i, j])))
        else:
            raw = np.array(["" if v is None else str(v) for v in column.to_pylist()], dtype=object)
            parsed, bad = _parse_cells(raw)
            values[:, j] = parsed
            bad_cells += [(int(i), j, str(raw[i]).strip()) for i in np.flatnonzero(bad)]
    return _RawTable(rows, cols, values, bad_cells)


def _read_raw(path: Path) -> _RawTable:
    if not path.is_file():
        raise InputError(path, "expression file not found", "check expression_path in the sample sheet")
    suffix = _suffix(path)
    if suffix in _PARQUET:
        return _read_parquet(path)
    if suffix in _DELIMITED:
        return _read_delimited(path, _DELIMITED[suffix])
    raise InputError(path, f"unsupported expression file type '{suffix or path.name}'",
                     "use .csv, .tsv, .txt (tab-separated) or .parquet, optionally .gz for text")


def _sample_fraction(labels: Sequence[str], patients: set[str] | None) -> tuple[float, str]:
    if not labels:
        return 0.0, "no labels"
    tcga = sum(bool(TCGA_BARCODE.match(x)) for x in labels) / len(labels)
    known = sum(patient_of(x) in patients for x in labels) / len(labels) if patients else 0.0
    if known > tcga:
        return known, f"{known:.0%} are sample-sheet patients"
    return tcga, f"{tcga:.0%} are TCGA barcodes"


def detect_orientation(rows: Sequence[str], cols: Sequence[str],
                       patients: Iterable[str] | None = None) -> tuple[str, str]:
    """Which axis holds the samples, and why (see the module docstring); raises ``ValueError`` if unclear."""
    known = set(patients) if patients is not None else None
    fr, why_r = _sample_fraction(rows, known)
    fc, why_c = _sample_fraction(cols, known)
    if fr >= 0.5 and fr - fc >= 0.5:
        return SAMPLES_X_GENES, f"row labels look like samples ({why_r}; columns: {why_c})"
    if fc >= 0.5 and fc - fr >= 0.5:
        return GENES_X_SAMPLES, f"column labels look like samples ({why_c}; rows: {why_r})"
    er = sum(bool(ENSEMBL_GENE.match(x)) for x in rows) / max(1, len(rows))
    ec = sum(bool(ENSEMBL_GENE.match(x)) for x in cols) / max(1, len(cols))
    if ec >= 0.5 > er:
        return SAMPLES_X_GENES, f"column labels are Ensembl gene ids ({ec:.0%})"
    if er >= 0.5 > ec:
        return GENES_X_SAMPLES, f"row labels are Ensembl gene ids ({er:.0%})"
    raise ValueError(f"cannot tell which axis holds the samples (rows: {why_r}; columns: {why_c}; "
                     f"e.g. rows {list(rows[:3])}, columns {list(cols[:3])})")


def _detect_scale(path: Path, values: np.ndarray, scale: str, raw_threshold: float) -> tuple[np.ndarray, dict]:
    finite = values[np.isfinite(values)]
    vmin = float(finite.min()) if finite.size else float("nan")
    vmax = float(finite.max()) if finite.size else float("nan")
    if scale == "auto":
        if finite.size and vmin >= 0 and vmax > raw_threshold:
            detected, reason = "raw", f"no negative values and max {vmax:.4g} > {raw_threshold:g}"
        elif finite.size and vmin < 0:
            detected, reason = "log2", f"negative values (min {vmin:.4g}): already on a log scale"
        else:
            detected, reason = "log2", f"max {vmax:.4g} <= {raw_threshold:g}: already on a log scale"
    elif scale == "raw":
        if finite.size and vmin < 0:
            raise InputError(path, f"scale 'raw' was requested but the matrix has negative values (min {vmin:.4g})",
                             "raw counts/TPM cannot be negative: set scale to 'log2' or 'auto'")
        detected, reason = "raw", "set in the settings"
    else:
        detected, reason = "log2", "set in the settings"
    record = {"setting": scale, "detected": detected, "reason": reason, "min": vmin, "max": vmax,
              "transform": "log2(x+1)" if detected == "raw" else None}
    if detected == "raw":
        values = np.log2(values + 1.0)
        log.info("%s: raw-scale expression (%s): applied log2(x+1)", path, reason)
    return values, record


def _resolve_samples(path: Path, frame: pd.DataFrame, policy: str
                     ) -> tuple[pd.DataFrame, dict[str, list[str]], dict[str, list[str]], list[str]]:
    """Collapse a samples x genes frame to patients x genes by ``policy`` (see the module docstring)."""
    sample_ids = [str(s) for s in frame.index]
    keys = [patient_of(s) for s in sample_ids]
    samples: dict[str, list[str]] = {}
    for sid, key in zip(sample_ids, keys):
        samples.setdefault(key, []).append(sid)
    if len(samples) == len(sample_ids):
        frame = frame.copy()
        frame.index = pd.Index(keys, name="patient_id")
        return frame, samples, {k: list(v) for k, v in samples.items()}, []
    used: dict[str, list[str]] = {}
    resolutions: list[str] = []
    rows = []
    for patient, ids in samples.items():
        chosen, why = ids, "one sample"
        if len(ids) > 1:
            if policy == "error":
                raise InputError(path, f"patient '{patient}' has {len(ids)} samples ({', '.join(ids)})",
                                 "keep one sample per patient, or set multi_sample to 'primary_then_mean' or 'mean'")
            if policy == "primary_then_mean":
                primary = [s for s in ids if sample_type(s) == PRIMARY_TUMOUR]
                tumour = [s for s in ids if sample_type(s) in TUMOUR_TYPES]
                if primary:
                    chosen, why = primary, "primary tumour (-01)"
                elif tumour:
                    chosen, why = tumour, "tumour samples (no primary tumour -01)"
                else:
                    chosen, why = ids, "no tumour sample"
            else:
                why = "policy 'mean'"
            action = "averaged" if len(chosen) > 1 else "kept"
            line = f"{patient}: {len(ids)} samples ({', '.join(ids)}): {action} {', '.join(chosen)} [{why}]"
            resolutions.append(line)
            log.info("%s: %s", path, line)
        used[patient] = chosen
        block = frame.loc[chosen].to_numpy(dtype=np.float64)
        if len(chosen) == 1:
            rows.append(block[0])
        else:
            with np.errstate(all="ignore"):
                counts = np.sum(~np.isnan(block), axis=0)
                sums = np.nansum(block, axis=0)
                rows.append(np.where(counts > 0, sums / np.maximum(counts, 1), np.nan))
    out = pd.DataFrame(np.vstack(rows), index=pd.Index(list(samples), name="patient_id"), columns=frame.columns)
    return out, samples, used, resolutions


def read_expression(path: str | os.PathLike[str], orientation: str = "auto", *, scale: str = "auto",
                    duplicates: str = "error", multi_sample: str = "primary_then_mean",
                    patients: Iterable[str] | None = None, raw_threshold: float = RAW_THRESHOLD) -> ExpressionMatrix:
    """Read an expression matrix into patients x genes log2 values (float64); see the module docstring.

    ``patients`` (the sample sheet's patient ids) only helps detect the orientation; no row is dropped here.
    Raises :class:`InputError` naming the file and the gene, sample or patient at fault.
    """
    for name, value, allowed in (("orientation", orientation, ORIENTATIONS), ("scale", scale, SCALES),
                                 ("duplicates", duplicates, DUPLICATE_POLICIES),
                                 ("multi_sample", multi_sample, MULTI_SAMPLE_POLICIES)):
        if value not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    path = Path(path)
    raw = _read_raw(path)

    if orientation == "auto":
        try:
            orientation, reason = detect_orientation(raw.rows, raw.cols, patients)
        except ValueError as exc:
            raise InputError(path, str(exc), "set the orientation explicitly: 'samples_x_genes' or "
                             "'genes_x_samples'") from exc
    else:
        reason = "set in the settings"
    samples_first = orientation == SAMPLES_X_GENES
    sample_ids, genes = (raw.rows, raw.cols) if samples_first else (raw.cols, raw.rows)
    values = raw.values if samples_first else raw.values.T
    what = ("row", "column") if samples_first else ("column", "row")

    if raw.bad:
        problems = []
        for i, j, cell in raw.bad[:5]:
            s, g = (i, j) if samples_first else (j, i)
            problems.append(f"gene '{genes[g]}', sample '{sample_ids[s]}': {cell!r}")
        more = f" (and {len(raw.bad) - 5} more)" if len(raw.bad) > 5 else ""
        verb = "is not a number" if len(raw.bad) == 1 else "are not numbers"
        raise InputError(path, f"{_plural(len(raw.bad), 'cell')} {verb}: " + "; ".join(problems) + more,
                         "expression cells must be numbers; leave missing values empty or write NA")
    for label, kind in ((sample_ids, f"sample ({what[0]})"), (genes, f"gene ({what[1]})")):
        empty = [k for k, x in enumerate(label) if not x]
        if empty:
            raise InputError(path, f"malformed expression matrix: {kind} label {empty[0] + 1} is empty",
                             "every sample and gene needs a label")

    dup_samples = pd.Index(sample_ids)[pd.Index(sample_ids).duplicated()].unique().tolist()
    if dup_samples:
        raise InputError(path, f"sample id(s) listed more than once: {_listing(dup_samples)}",
                         "each sample may appear once; merge or rename the duplicates")

    counts = pd.Index(genes).value_counts()
    dup_genes = {str(g): int(n) for g, n in counts[counts > 1].items()}
    frame = pd.DataFrame(values, index=pd.Index(sample_ids, name="sample_id"), columns=pd.Index(genes, name="gene"))
    if dup_genes:
        items = list(dup_genes.items())
        listed = ", ".join(f"'{g}' ({n} times)" for g, n in items[:5])
        listed += f" and {len(items) - 5} more" if len(items) > 5 else ""
        if duplicates == "error":
            raise InputError(path, f"{_plural(len(dup_genes), 'gene symbol')} listed more than once: {listed}",
                             "fix the matrix, or set duplicates to 'mean' (average them) or 'first'")
        if duplicates == "mean":
            frame = frame.T.groupby(level=0, sort=False).mean().T
        else:
            frame = frame.loc[:, ~frame.columns.duplicated(keep="first")]
        log.info("%s: %s duplicated: %s (%s)", path, _plural(len(dup_genes), "gene"), listed, duplicates)

    empty_samples = frame.index[frame.isna().all(axis=1)].tolist()
    if empty_samples:
        who = ", ".join(f"sample '{s}' (patient '{patient_of(s)}')" if patient_of(s) != s else f"patient '{s}'"
                        for s in empty_samples[:5])
        more = f" and {len(empty_samples) - 5} more" if len(empty_samples) > 5 else ""
        raise InputError(path, f"all values are missing for {who}{more}",
                         "remove the sample or fill in its expression")

    transformed, scale_record = _detect_scale(path, frame.to_numpy(dtype=np.float64), scale, raw_threshold)
    frame = pd.DataFrame(transformed, index=frame.index, columns=frame.columns)
    data, samples, used, resolutions = _resolve_samples(path, frame, multi_sample)
    data.columns = pd.Index([str(g) for g in data.columns], name="gene")
    return ExpressionMatrix(path=path, data=data.astype(np.float64), orientation=orientation,
                            orientation_reason=reason, scale=scale_record, samples=samples, used_samples=used,
                            resolutions=resolutions, duplicate_genes=dup_genes, duplicates_policy=duplicates,
                            multi_sample_policy=multi_sample)


def drop_sparse_genes(frame: pd.DataFrame, max_nan_fraction: float) -> tuple[pd.DataFrame, dict[str, float]]:
    """Drop genes missing in more than ``max_nan_fraction`` of the rows; return the rest and the dropped
    genes with their missing fractions. Uses only which values are missing, never the values themselves."""
    if not 0.0 <= max_nan_fraction <= 1.0:
        raise ValueError(f"max_nan_fraction must be in [0, 1], got {max_nan_fraction}")
    fraction = frame.isna().mean(axis=0)
    drop = fraction[(fraction > max_nan_fraction) | (fraction >= 1.0)]
    return frame.drop(columns=drop.index), {str(g): float(f) for g, f in drop.items()}
