"""The cohort resolution table: every slide's mpp (x and y), where it came from, objective, vendor and size,
read from the headers at manifest time (before any slide job), with the reason a slide job would refuse it.

A cohort mixing scanners, a slide read at a screen default of 72 dpi, or an override typed in the wrong unit shows
up here in one table, not as the one failed job among thousands; the HTML report shows its summary and flags."""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, fields
from pathlib import Path

import pandas as pd

from pathmm_pipeline.core.atomic import atomic_path
from pathmm_pipeline.preprocess.slides import ResolutionRecord, SlideLimits, read_resolution

log = logging.getLogger(__name__)

#: the table's columns, in order
COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(ResolutionRecord))


def resolution_table(slides: pd.DataFrame, backend: str = "openslide", fallback: bool = True,
                     limits: SlideLimits | None = None, threads: int = 4) -> pd.DataFrame:
    """One :class:`ResolutionRecord` per row of ``slides`` (a validated sample sheet: ``slide_id``,
    ``slide_path``, optional ``mpp``), headers read on ``threads`` threads (opening a slide waits on the disk)."""
    rows = slides.dropna(subset=["slide_id"])
    overrides = rows["mpp"] if "mpp" in rows else pd.Series([None] * len(rows), index=rows.index)

    def one(item: tuple[str, str, object]) -> ResolutionRecord:
        slide_id, path, mpp = item
        override = None if mpp is None or pd.isna(mpp) else float(mpp)
        return read_resolution(path, slide_id, backend=backend, fallback=fallback, mpp_override=override,
                               limits=limits)

    items = list(zip(rows["slide_id"], rows["slide_path"], overrides))
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        records = list(pool.map(one, items))
    table = pd.DataFrame([asdict(r) for r in records], columns=list(COLUMNS))
    flagged = table[table["flags"] != ""]
    for row in flagged.itertuples():
        log.warning("%s (%s): %s", row.slide_id, row.path, row.flags)
    log.info("resolution table: %d slides, %d flagged, mpp %s", len(table), len(flagged), _mpp_summary(table))
    return table


def _mpp_summary(table: pd.DataFrame) -> str:
    mpp = table.mpp_x.dropna()
    return "none" if mpp.empty else f"{mpp.min():.3g}-{mpp.max():.3g} um/px (median {mpp.median():.3g})"


def write_resolution_table(slides: pd.DataFrame, out: str | os.PathLike[str], **options: object) -> Path:
    """Write :func:`resolution_table` of ``slides`` as CSV at ``out`` (atomically); ``options`` go to it."""
    table = resolution_table(slides, **options)  # type: ignore[arg-type]
    with atomic_path(out) as tmp:
        table.to_csv(tmp, index=False)
    return Path(out)


def read_resolution_table(path: str | os.PathLike[str]) -> pd.DataFrame | None:
    """The table at ``path``, or None when it does not exist (a results tree written before it existed)."""
    path = Path(path)
    if not path.is_file():
        return None
    return pd.read_csv(path, dtype={"slide_id": str, "flags": str}, keep_default_na=False,
                       na_values={c: [""] for c in COLUMNS if c not in ("slide_id", "path", "flags", "mpp_source")})
