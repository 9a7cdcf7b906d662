"""Every piece of text a results tree holds, for tests that check no identifier of a raw report survives: text
files (logs, CSV, JSON, HTML, GeoJSON, ...), Parquet string columns and metadata, Zarr attributes and string
arrays, and the report embedding store's token ids decoded back to text with its own tokenizer."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

TEXT_SUFFIXES = {".txt", ".log", ".csv", ".tsv", ".json", ".html", ".geojson", ".md", ".yaml", ".list"}


def texts_under(root: Path) -> Iterator[tuple[Path, str]]:
    """(path, text) for every readable text a results tree holds."""
    import pandas as pd
    import pyarrow.parquet as pq
    import zarr

    for path in sorted(root.rglob("*")):
        if any(part.endswith(".zarr") for part in path.relative_to(root).parts[:-1]):
            continue  # inside a store: read through zarr below
        if path.suffix == ".zarr" and path.is_dir():
            group = zarr.open_group(str(path), mode="r")
            yield path, json.dumps(dict(group.attrs), default=str)
            for name, array in group.arrays():
                yield path / name, json.dumps(dict(array.attrs), default=str)
                if array.dtype.kind in "OUT" or "str" in str(array.dtype).lower():
                    yield path / name, " ".join(map(str, array[...].ravel().tolist()))
            if "input_ids" in group:
                yield path / "input_ids", _decoded_tokens(group)
        elif path.suffix == ".parquet":
            frame = pd.read_parquet(path)
            columns = [c for c in frame.columns if frame[c].dtype == object or str(frame[c].dtype) == "string"]
            yield path, " ".join(frame[c].astype(str).str.cat(sep=" ") for c in columns)
            yield path, json.dumps({k.decode(): v.decode(errors="replace")
                                    for k, v in (pq.read_schema(path).metadata or {}).items()})
        elif path.is_file() and (path.suffix in TEXT_SUFFIXES or path.parent.name == "logs"):
            yield path, path.read_text(errors="replace")


def _decoded_tokens(group) -> str:
    from pathmm_pipeline.encoders.text import get_text_encoder

    name = group.attrs["encoder"]["name"]
    tokenizer = get_text_encoder(name).tokenizer
    ids = group["input_ids"][...]
    mask = group["attention_mask"][...]
    return " ".join(tokenizer.decode([int(t) for t, m in zip(row, keep) if m], skip_special_tokens=True)
                    for row, keep in zip(ids, mask))


def find_in_results(root: Path, needles: list[str]) -> list[tuple[str, str]]:
    """(path, needle) for every needle found (case-insensitively) anywhere in the results tree."""
    found = []
    for path, text in texts_under(root):
        low = text.lower()
        found += [(str(path), n) for n in needles if n.lower() in low]
    return found
