"""Cohort quality-control summary: one row per slide from its segmentation and tile stores."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from pathmm_pipeline.core.atomic import atomic_path
from pathmm_pipeline.core.provenance import PARQUET_KEY, build_provenance
from pathmm_pipeline.core.stores import open_store


def summarize_slides(tile_stores: list[str | os.PathLike[str]],
                     segmentation_stores: list[str | os.PathLike[str]]) -> pd.DataFrame:
    """slide_id, statuses, tissue area, tile count, quality-control decision (the slide's, and the tiles it
    excluded per reason) and tile geometry for every slide."""
    seg = {}
    for path in segmentation_stores:
        attrs = dict(open_store(path).attrs)
        seg[attrs["slide_id"]] = (attrs, str(path))
    rows = []
    for path in tile_stores:
        attrs = dict(open_store(path).attrs)
        s_attrs, s_path = seg.get(attrs["slide_id"], ({}, None))
        rows.append({
            "slide_id": attrs["slide_id"],
            "segmentation_status": s_attrs.get("status"),
            "tiling_status": attrs["status"],
            "reason": attrs.get("reason") or s_attrs.get("reason") or "",
            "tissue_area_mm2": (s_attrs.get("tissue_area_um2") or 0.0) / 1e6,
            "n_pieces": s_attrs.get("n_pieces"),
            "pen_fraction": s_attrs.get("pen_fraction"),
            "n_tiles": attrs["n_tiles"],
            "qc_decision": "exclude" if attrs["status"] == "qc_excluded" else "include",
            "n_qc_candidates": attrs.get("n_qc_candidates", attrs["n_tiles"]),
            "tiles_excluded_by_qc": sum((attrs.get("qc_reasons") or {}).values()),
            "tile_qc_reasons": ", ".join(f"{k}: {v}" for k, v in sorted((attrs.get("qc_reasons") or {}).items())),
            "slide_mpp": attrs["slide_mpp"],
            "achieved_mpp": attrs["achieved_mpp"],
            "level": attrs["level"],
            "read_px": attrs["read_px"],
            "tile_store": str(path),
            "segmentation_store": s_path,
        })
    return pd.DataFrame(rows).sort_values("slide_id").reset_index(drop=True)


def write_qc_summary(tile_stores: list[str | os.PathLike[str]], segmentation_stores: list[str | os.PathLike[str]],
                     out_path: str | os.PathLike[str]) -> Path:
    """Write :func:`summarize_slides` as Parquet with provenance."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    frame = summarize_slides(tile_stores, segmentation_stores)
    inputs = {f"tiles:{Path(p).name}": p for p in tile_stores}
    inputs.update({f"segmentation:{Path(p).name}": p for p in segmentation_stores})
    record = build_provenance("qc_summary", inputs, {}, extra={"n_slides": int(len(frame)),
                                                               "n_tiles": int(frame.n_tiles.sum())})
    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), PARQUET_KEY: json.dumps(record)})
    with atomic_path(out_path) as tmp:
        pq.write_table(table, tmp)
    return Path(out_path)
