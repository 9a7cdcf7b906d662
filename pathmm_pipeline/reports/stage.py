"""The reports stage: report files -> cleaned, de-identified Parquet table -> Zarr store of text embeddings.

:func:`clean_reports` reads one plain-text report per patient, de-identifies it, cleans it and writes a Parquet
table with one row per patient (columns: ``patient_id``, ``text``, one ``section_<key>`` column per canonical
section, ``n_phi_<TYPE>`` per identifier type and ``n_phi_total``, ``n_chars``, ``deidentified``) carrying its
provenance under :data:`pathmm_pipeline.core.provenance.PARQUET_KEY` in the Parquet metadata.

Order of operations per report: Unicode/whitespace normalisation and line-break hyphenation repair, then
de-identification of the WHOLE report (headers included, so identifier counts cover every identifier in the
file), then cleaning (header/footer/signature/disclaimer removal, section split, stray-space repair), then a
second de-identification pass over the cleaned sections (catches anything the repairs made whole again).

:func:`embed_reports` embeds the ``text`` column with a registered text encoder and writes a Zarr store:

* ``patient_ids`` (P,) string, ``embeddings`` (P, D) float32, ``n_tokens`` (P,) int32 content tokens;
* with ``keep_tokens``: per window ("chunk") of every report, ``input_ids`` (C, L) int32 padded with the
  tokenizer's pad id, ``attention_mask`` (C, L) int8, ``hidden_states`` (C, L, D) (float16 by default), and the
  index ``chunk_patient`` (C,) (row in ``patient_ids``), ``chunk_start`` (C,) (first content token of the
  window in the report), ``chunk_length`` (C,) (tokens with specials) and ``patient_chunk_offsets`` (P+1,)
  (patient p's chunks are rows ``offsets[p]:offsets[p+1]``).

The provenance records the encoder, its settings and the sha256 of its weight file(s), which are also recorded
(and so re-verified) as inputs.

Bad inputs -- a missing report, an empty one, a binary / non-UTF-8 file posing as a report, one longer than
``max_chars`` characters (``reports.max_chars``), a report with no text left after cleaning -- raise
:class:`ReportInputError` naming the file and the patient (every bad report is listed), before anything is
written; outputs are written atomically, so a failure leaves no partial output.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pathmm_pipeline.core.atomic import atomic_path
from pathmm_pipeline.core.errors import InputError
from pathmm_pipeline.core.provenance import PARQUET_KEY, build_provenance, hash_file
from pathmm_pipeline.core.stores import ArraySpec, StoreWriter, writing_store
from pathmm_pipeline.reports.clean import (
    MAX_REPORT_CHARS,
    SECTION_KEYS,
    clean_report,
    join_sections,
    normalize,
    repair_hyphenation,
)
from pathmm_pipeline.reports.deid import PHI_TYPES, deidentify

log = logging.getLogger(__name__)

#: the warning a run with ``reports.deid: false`` writes into every cleaning log (and the report shows)
DEID_OFF_WARNING = ("reports.deid is false: report text is stored as written, identifiers included; the cleaned "
                    "tables, the embeddings and everything that reads them are not de-identified")

if TYPE_CHECKING:  # cleaning a report imports no torch: the encoders are imported when embedding
    from pathmm_pipeline.encoders.text import TextEncoder

STAGE_CLEAN = "reports_clean"
STAGE_EMBED = "reports_embed"
SECTION_COLUMNS = tuple(f"section_{key}" for key in SECTION_KEYS)
PHI_COLUMNS = tuple(f"n_phi_{kind}" for kind in PHI_TYPES)
MAX_CONTROL_FRACTION = 0.05


class ReportInputError(InputError):
    """One or more report files are missing, empty or not text; names each file and its patient."""

    def __init__(self, problems: list[tuple[str, str, str]]) -> None:
        self.problems = list(problems)  # (patient_id, path, problem)
        patient, path, problem = self.problems[0]
        self.patient_id = patient
        listing = "; ".join(f"patient '{p}': {f}: {what}" for p, f, what in self.problems[1:])
        message = f"report of patient '{patient}' {problem}"
        if listing:
            message += f" (and {len(self.problems) - 1} more: {listing})"
        super().__init__(path, message, "fix or remove these reports and run again; nothing was written")


def read_report(patient_id: str, path: str | os.PathLike[str], max_chars: int = MAX_REPORT_CHARS) -> str:
    """The text of one report file; raises :class:`ReportInputError` if it is missing, binary, empty or longer
    than ``max_chars`` characters."""
    problem = _report_problem(Path(path), max_chars)
    if isinstance(problem, str):
        raise ReportInputError([(patient_id, str(path), problem)])
    return problem[0]


def _too_long(size: str, max_chars: int) -> str:
    return (f"is too long: {size}, over the limit of {max_chars:,} characters (reports.max_chars); split the "
            "file if it holds several reports, or raise reports.max_chars")


def _report_problem(path: Path, max_chars: int = MAX_REPORT_CHARS) -> str | tuple[str]:
    """A problem description, or a 1-tuple holding the decoded text (at most ``max_chars`` characters)."""
    if not path.exists():
        return "does not exist (file not found)"
    if not path.is_file():
        return "is not a file"
    size = path.stat().st_size
    if size > 4 * max_chars + 3:  # UTF-8: at most 4 bytes a character and a BOM; too long unread
        return _too_long(f"{size:,} bytes", max_chars)
    try:
        data = path.read_bytes()
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if not data.strip():
        return "is empty"
    if b"\x00" in data:
        return "is a binary file, not UTF-8 text (contains NUL bytes)"
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return f"is not UTF-8 text (undecodable byte at offset {exc.start}); convert it to UTF-8"
    if len(text) > max_chars:
        return _too_long(f"{len(text):,} characters", max_chars)
    controls = sum(1 for ch in text if ord(ch) < 32 and ch not in "\n\r\t\f\v")
    if controls > MAX_CONTROL_FRACTION * len(text):
        return f"looks binary, not text ({controls} control characters in {len(text)})"
    if not text.strip():
        return "is empty (whitespace only)"
    return (text,)


def process_report(text: str, deid: bool = True) -> dict[str, Any]:
    """Clean (and de-identify) one report's text; returns the row of the cleaned table (without patient_id)."""
    prepared = repair_hyphenation(normalize(text))
    counts = dict.fromkeys(PHI_TYPES, 0)
    if deid:
        first = deidentify(prepared)
        prepared = first.text
        for kind, n in first.counts().items():
            counts[kind] += n
    cleaned = clean_report(prepared)
    sections = dict(cleaned.sections)
    if deid:
        for key, body in sections.items():
            if body:
                second = deidentify(body)
                sections[key] = second.text
                for kind, n in second.counts().items():
                    counts[kind] += n
    full = join_sections(sections)
    row: dict[str, Any] = {"text": full}
    row.update({f"section_{key}": sections.get(key, "") for key in SECTION_KEYS})
    row.update({f"n_phi_{kind}": int(counts[kind]) for kind in PHI_TYPES})
    row["n_phi_total"] = int(sum(counts.values()))
    row["n_chars"] = len(full)
    row["deidentified"] = bool(deid)
    return row


def clean_reports(report_paths: Mapping[str, str | os.PathLike[str]], out_parquet: str | os.PathLike[str],
                  deid: bool = True, max_chars: int = MAX_REPORT_CHARS) -> Path:
    """Clean and de-identify every patient's report into one Parquet table at ``out_parquet`` (see module doc);
    a report longer than ``max_chars`` characters is refused (:class:`ReportInputError`)."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not report_paths:
        raise InputError(out_parquet, "no reports given", "pass {patient_id: report path} for at least one patient")
    if not deid:
        log.warning("%s: %s", out_parquet, DEID_OFF_WARNING)
    problems: list[tuple[str, str, str]] = []
    texts: dict[str, str] = {}
    for patient_id in sorted(report_paths, key=str):
        path = Path(report_paths[patient_id])
        if not isinstance(patient_id, str) or not patient_id.strip():
            problems.append((str(patient_id), str(path), "has an empty patient id"))
            continue
        result = _report_problem(path, max_chars)
        if isinstance(result, str):
            problems.append((patient_id, str(path), result))
        else:
            texts[patient_id] = result[0]
    rows = []
    for patient_id, text in texts.items():
        row = process_report(text, deid=deid)
        if not row["text"].strip():
            problems.append((patient_id, str(report_paths[patient_id]),
                             "has no report text left after cleaning (only headers, footers or signatures)"))
            continue
        rows.append({"patient_id": patient_id, **row})
    if problems:
        raise ReportInputError(problems)

    frame = pd.DataFrame(rows, columns=["patient_id", "text", *SECTION_COLUMNS, *PHI_COLUMNS, "n_phi_total",
                                        "n_chars", "deidentified"])
    totals = {kind: int(frame[f"n_phi_{kind}"].sum()) for kind in PHI_TYPES}
    record = build_provenance(
        STAGE_CLEAN, {f"report:{pid}": report_paths[pid] for pid in texts},
        {"deid": bool(deid), "sections": list(SECTION_KEYS), "phi_types": list(PHI_TYPES),
         "order": "normalize+hyphenation -> deidentify -> clean -> deidentify sections"},
        extra={"n_reports": int(len(frame)), "n_phi_removed": totals,
               "report_sha256": {pid: hash_file(report_paths[pid]) for pid in texts}})
    schema = pa.schema([("patient_id", pa.string()), ("text", pa.string()),
                        *[(c, pa.string()) for c in SECTION_COLUMNS], *[(c, pa.int32()) for c in PHI_COLUMNS],
                        ("n_phi_total", pa.int32()), ("n_chars", pa.int32()), ("deidentified", pa.bool_())])
    table = pa.Table.from_pandas(frame, schema=schema, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), PARQUET_KEY: json.dumps(record)})
    with atomic_path(out_parquet) as tmp:
        pq.write_table(table, tmp)
    return Path(out_parquet)


def read_clean_table(path: Path, text_column: str) -> tuple[list[str], list[str]]:
    import pyarrow.parquet as pq

    if not path.is_file():
        raise InputError(path, "cleaned reports table not found", "run clean_reports first")
    try:
        table = pq.read_table(path)
    except Exception as exc:  # noqa: BLE001 - any parquet failure names the file
        raise InputError(path, f"cannot be read as Parquet: {exc}", "re-run clean_reports") from exc
    missing = [c for c in ("patient_id", text_column) if c not in table.column_names]
    if missing:
        raise InputError(path, f"missing column(s) {', '.join(missing)}", "it must come from clean_reports")
    ids = [str(x) for x in table.column("patient_id").to_pylist()]
    texts = table.column(text_column).to_pylist()
    if not ids:
        raise InputError(path, "has no rows", "give at least one report to clean_reports")
    seen: set[str] = set()
    dupes = sorted({i for i in ids if i in seen or seen.add(i)})  # type: ignore[func-returns-value]
    if dupes:
        raise InputError(path, f"duplicate patient ids: {', '.join(dupes)}", "one row per patient")
    empty = [pid for pid, text in zip(ids, texts) if not isinstance(text, str) or not text.strip()]
    if empty:
        raise InputError(path, f"empty report text for patient(s) {', '.join(empty)}",
                         "re-run clean_reports (it refuses empty reports)")
    return ids, [str(t) for t in texts]


#: reports encoded together by :func:`embed_reports`: its peak memory grows with this, not with the cohort
REPORTS_PER_BATCH = 32


def embed_reports(clean_parquet: str | os.PathLike[str], out_store: str | os.PathLike[str],
                  encoder: str | TextEncoder = "minilm", pooling: str | None = None, keep_tokens: bool = True,
                  encoder_options: Mapping[str, Any] | None = None, hidden_dtype: str = "float16",
                  text_column: str = "text", reports_per_batch: int = REPORTS_PER_BATCH) -> Path:
    """Embed the cleaned reports into a Zarr store at ``out_store`` (layout in the module docstring).

    ``encoder`` is a registered name (built once per process with ``pooling`` and ``encoder_options``) or a
    :class:`~pathmm_pipeline.encoders.text.TextEncoder` already built; ``pooling=None`` keeps the encoder's
    default. Reports are encoded ``reports_per_batch`` at a time and their token rows written into the store as
    they come, so memory holds one batch's hidden states, never the cohort's. The windows are planned first
    (every report tokenized), so the store has the layout, rows and padded width one encoding of every report
    gives; its values are the same as long as the encoder's numerics do not depend on which windows share a
    forward batch (on the CPU a window alone in a batch of one row can differ in the last float16 bit).
    """
    if reports_per_batch < 1:
        raise ValueError(f"reports_per_batch must be >= 1, got {reports_per_batch}")
    clean_parquet = Path(clean_parquet)
    ids, texts = read_clean_table(clean_parquet, text_column)
    model = _text_encoder(encoder, pooling, encoder_options)
    n = len(ids)
    pad_id = int(model.tokenizer.pad_token_id or 0)
    embeddings = np.zeros((n, model.dim), np.float32)
    n_tokens = np.zeros(n, np.int32)
    seconds = 0.0
    with writing_store(out_store) as store:
        rows = _TokenRows(store, model, texts, pad_id, np.dtype(hidden_dtype)) if keep_tokens else None
        for first in range(0, n, reports_per_batch):
            start = time.perf_counter()
            encoded = model.encode(texts[first:first + reports_per_batch], keep_tokens=keep_tokens)
            seconds += time.perf_counter() - start
            for i, e in enumerate(encoded, start=first):
                embeddings[i], n_tokens[i] = e.embedding, e.n_tokens
            if rows is not None:
                rows.write(first, encoded)
        store.write("patient_ids", ArraySpec(np.array(ids, dtype=np.dtypes.StringDType()), ("patient",)))
        store.write("embeddings", ArraySpec(embeddings, ("patient", "feature"), (4096, model.dim)))
        store.write("n_tokens", ArraySpec(n_tokens, ("patient",)))
        if rows is not None:
            rows.write_index(store)
        store.finish(*_embed_record(model, clean_parquet, keep_tokens, hidden_dtype, text_column, seconds, n, pad_id))
    return Path(out_store)


def _text_encoder(encoder: str | TextEncoder, pooling: str | None,
                  encoder_options: Mapping[str, Any] | None) -> TextEncoder:
    """The encoder to embed with: one already built (its pooling must match), or a registered one built now."""
    if not isinstance(encoder, str):
        if pooling is not None and pooling != getattr(encoder, "pooling", pooling):
            raise ValueError(f"encoder {encoder.name!r} was built with pooling={encoder.pooling!r}, not {pooling!r}")
        return encoder
    options = dict(encoder_options or {})
    if pooling is not None:
        options["pooling"] = pooling
    from pathmm_pipeline.encoders.text import get_text_encoder

    return get_text_encoder(encoder, **options)  # type: ignore[return-value]


class _TokenRows:
    """The token arrays of an embedding store, created at their final shape from the planned windows (every
    report tokenized first, which is cheap) and filled a batch of reports at a time."""

    def __init__(self, store: StoreWriter, model: TextEncoder, texts: list[str], pad_id: int,
                 hidden_dtype: np.dtype) -> None:
        if not hasattr(model, "window_lengths"):
            model.encode(texts[:1], keep_tokens=True)  # the encoder's own refusal, naming the setting
            raise ValueError(f"encoder {model.name!r} keeps no token states: set reports.keep_tokens: false")
        self.lengths = [model.window_lengths(text) for text in texts]
        self.offsets = np.concatenate([[0], np.cumsum([len(w) for w in self.lengths])]).astype(np.int64)
        n_chunks, width = int(self.offsets[-1]), max(max(w) for w in self.lengths)
        self.width, self.pad_id, self.hidden_dtype = width, pad_id, hidden_dtype
        self.starts = np.zeros(n_chunks, np.int32)
        self.input_ids = store.create("input_ids", (n_chunks, width), np.int32, ("chunk", "token"), (256, width))
        self.mask = store.create("attention_mask", (n_chunks, width), np.int8, ("chunk", "token"), (256, width))
        self.hidden = store.create("hidden_states", (n_chunks, width, model.dim), hidden_dtype,
                                   ("chunk", "token", "feature"), (16, width, model.dim))

    def write(self, first: int, encoded: list[Any]) -> None:
        """The rows of reports ``first``, ``first + 1``, ... (``encoded``: their encodings, in order)."""
        chunks = [c for e in encoded for c in (e.chunks or [])]
        lo, hi = int(self.offsets[first]), int(self.offsets[first + len(encoded)])
        planned = [n for w in self.lengths[first:first + len(encoded)] for n in w]
        if [len(c.input_ids) for c in chunks] != planned:
            raise RuntimeError(f"the encoder cut reports {first}..{first + len(encoded) - 1} into windows other "
                               "than planned (TextEncoder.window_lengths disagrees with encode)")
        input_ids = np.full((hi - lo, self.width), self.pad_id, np.int32)
        mask = np.zeros((hi - lo, self.width), np.int8)
        hidden = np.zeros((hi - lo, self.width, self.hidden.shape[2]), self.hidden_dtype)
        for row, c in enumerate(chunks):
            length = len(c.input_ids)
            input_ids[row, :length] = c.input_ids
            mask[row, :length] = c.attention_mask
            hidden[row, :length] = c.hidden.astype(hidden.dtype)
            self.starts[lo + row] = c.start
        self.input_ids[lo:hi] = input_ids
        self.mask[lo:hi] = mask
        self.hidden[lo:hi] = hidden

    def write_index(self, store: StoreWriter) -> None:
        """The chunk index arrays: each chunk's patient row, first content token and length; patient offsets."""
        patient = np.repeat(np.arange(len(self.lengths), dtype=np.int32), np.diff(self.offsets))
        store.write("chunk_patient", ArraySpec(patient.astype(np.int32), ("chunk",)))
        store.write("chunk_start", ArraySpec(self.starts, ("chunk",)))
        store.write("chunk_length", ArraySpec(np.array([n for w in self.lengths for n in w], np.int32), ("chunk",)))
        store.write("patient_chunk_offsets", ArraySpec(self.offsets, ("patient_edge",)))


def _embed_record(model: TextEncoder, clean_parquet: Path, keep_tokens: bool, hidden_dtype: str, text_column: str,
                  seconds: float, n: int, pad_id: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The attributes and the provenance of an embedding store."""
    description = model.describe()
    inputs: dict[str, str | os.PathLike[str]] = {"clean_reports": clean_parquet}
    for i, file in enumerate(model.weight_files):
        inputs["encoder_weights" if len(model.weight_files) == 1 else f"encoder_weights_{i}"] = file
    params = {"encoder": model.name, "pooling": model.pooling, "keep_tokens": bool(keep_tokens),
              "hidden_dtype": hidden_dtype if keep_tokens else None, "text_column": text_column,
              "max_length": model.max_length, "overlap": model.overlap, "normalize": model.normalize}
    record = build_provenance(STAGE_EMBED, inputs, params,
                              extra={"encoder": description, "encoder_weights_sha256": model.weights_sha256,
                                     "seconds": seconds, "device": str(model.device), "n_patients": n})
    attrs = {"encoder": description, "dim": model.dim, "n_patients": n, "keep_tokens": bool(keep_tokens),
             "pad_token_id": pad_id, "text_column": text_column,
             "layout": "embeddings[p] is patient_ids[p]; chunks of patient p are rows "
                       "patient_chunk_offsets[p]:patient_chunk_offsets[p+1] of the token arrays"}
    return attrs, record


def merge_clean_tables(tables: list[str | os.PathLike[str]], out_parquet: str | os.PathLike[str]) -> Path:
    """Concatenate per-patient cleaned-report tables (one :func:`clean_reports` output each) into one cohort
    table with provenance, so that editing one report re-runs only that report's cleaning job and the merge."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not tables:
        raise InputError(out_parquet, "no cleaned report tables to merge", "the cohort has no report_path entries")
    frames = [pd.read_parquet(path) for path in tables]
    frame = pd.concat(frames, ignore_index=True).sort_values("patient_id").reset_index(drop=True)
    duplicated = frame.patient_id[frame.patient_id.duplicated()].tolist()
    if duplicated:
        raise InputError(out_parquet, f"patients cleaned twice: {duplicated}", "give each patient one report")
    record = build_provenance("reports_merge", {f"clean:{Path(p).name}": p for p in tables}, {},
                              extra={"n_patients": int(len(frame))})
    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), PARQUET_KEY: json.dumps(record)})
    with atomic_path(out_parquet) as tmp:
        pq.write_table(table, tmp)
    return Path(out_parquet)
