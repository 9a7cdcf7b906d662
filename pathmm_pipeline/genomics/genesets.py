"""Gene-set collections: read them (GMT, membership tables, column-per-set tables, built-ins) and keep the
sets with enough measured genes.

File formats:

* **GMT** (``.gmt``, ``.gmt.gz``): one set per line, tab-separated: name, description, then its genes.
* **Membership table** (CSV/TSV): genes as rows (first column), sets as columns, cells 0/1, like
  ``hallmarks_comps.csv`` and ``xena_comps.csv``.
* **Column-per-set table** (CSV/TSV): one column per set, its cells the set's gene symbols (ragged, blank
  padded), like ``gene_families_6.csv`` and ``*_signatures.csv``.

Built-in collections (the tables released with SurvPath, shipped in ``pathmm_pipeline/data/tcga/pathways``):

=================  ====  =====================================================================================
``hallmarks``        50  MSigDB Hallmark sets (``hallmarks_comps``)
``reactome``        281  the Reactome pathways of the Xena panel (``xena_comps``)
``survpath``        331  both, as SurvPath combines them (``combine``), sets in SurvPath's (sorted) order
``mcat_families``     6  MCAT's gene families (``gene_families_6``)
=================  ====  =====================================================================================

:func:`filter_collection` restricts each set to the measured genes (sorted by symbol, as SurvPath and MCAT
order them) and drops sets with fewer than ``min_genes`` measured genes, recording each with its reason.
"""

from __future__ import annotations

import csv
import gzip
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pathmm_pipeline.core.errors import InputError

BUILTIN_TABLES = {
    "hallmarks": ("hallmarks_comps",),
    "reactome": ("xena_comps",),
    "survpath": ("xena_comps", "hallmarks_comps"),
    "mcat_families": ("gene_families_6",),
}
BUILTIN_COUNTS = {"hallmarks": 50, "reactome": 281, "survpath": 331, "mcat_families": 6}
_NA = {"", "NA", "N/A", "NaN", "nan", "null", "None"}


@dataclass(frozen=True)
class GeneSetCollection:
    """Named gene sets as defined (genes in the order given, duplicates removed), with where they came from."""

    name: str
    sets: dict[str, tuple[str, ...]]
    source: str
    files: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.sets)


@dataclass(frozen=True)
class DroppedSet:
    """A set left out by :func:`filter_collection`, and why."""

    name: str
    n_measured: int
    n_defined: int
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "n_measured": self.n_measured, "n_defined": self.n_defined, "reason": self.reason}


@dataclass(frozen=True)
class FilteredCollection:
    """The kept sets of a collection, each restricted to measured genes (sorted), and the dropped ones."""

    name: str
    source: str
    files: tuple[str, ...]
    min_genes: int
    sets: dict[str, tuple[str, ...]]
    n_defined: dict[str, int]
    dropped: list[DroppedSet] = field(default_factory=list)
    genes_in_collection: int = 0
    genes_matched: int = 0

    @property
    def set_names(self) -> list[str]:
        return list(self.sets)

    def indices(self, genes: Sequence[str]) -> list[np.ndarray]:
        """Each kept set as column positions (int64) in ``genes``."""
        position = {g: i for i, g in enumerate(genes)}
        missing = sorted({g for members in self.sets.values() for g in members if g not in position})
        if missing:
            raise KeyError(f"collection '{self.name}': {len(missing)} gene(s) not among the given genes: {missing[:5]}")
        return [np.array([position[g] for g in members], dtype=np.int64) for members in self.sets.values()]

    def summary(self) -> dict[str, Any]:
        """Counts, names and reasons as plain JSON types (for store attributes)."""
        return {
            "source": self.source, "files": list(self.files), "min_genes": self.min_genes,
            "n_defined": len(self.sets) + len(self.dropped), "n_kept": len(self.sets), "n_dropped": len(self.dropped),
            "genes_in_collection": self.genes_in_collection, "genes_matched": self.genes_matched,
            "set_names": self.set_names, "gene_lists": {k: list(v) for k, v in self.sets.items()},
            "set_sizes_defined": dict(self.n_defined), "dropped": [d.to_dict() for d in self.dropped],
        }


def _unique(genes: Sequence[str]) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for gene in genes:
        gene = str(gene).strip()
        if gene and gene not in _NA:
            seen.setdefault(gene, None)
    return tuple(seen)


def _open_text(path: Path):
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".gz", ".gmt", ".csv", ".tsv", ".txt"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return name


def read_gmt(path: str | os.PathLike[str]) -> dict[str, tuple[str, ...]]:
    """Read a GMT file: ``name <TAB> description <TAB> gene <TAB> gene ...`` per line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "gene-set file not found")
    hint = "a GMT line is: set name, a description (may be empty), then gene symbols, all tab-separated"
    sets: dict[str, tuple[str, ...]] = {}
    try:
        with _open_text(path) as fh:
            for number, line in enumerate(fh, start=1):
                line = line.rstrip("\r\n")
                if not line.strip() or line.startswith("#"):
                    continue
                fields = line.split("\t")
                name = fields[0].strip()
                if len(fields) < 2 or not name:
                    raise InputError(path, f"line {number}: not a GMT line (expected tab-separated name, "
                                     f"description and genes, got {line[:60]!r})", hint)
                if name in sets:
                    raise InputError(path, f"line {number}: gene set '{name}' is defined twice", "rename or merge it")
                sets[name] = _unique(fields[2:])
    except (UnicodeDecodeError, OSError, EOFError) as exc:
        raise InputError(path, f"cannot be read as a text GMT file ({exc})", hint) from exc
    if not sets:
        raise InputError(path, "no gene set in the file", hint)
    return sets


def _read_text_table(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise InputError(path, "gene-set file not found")
    name = path.name.lower().removesuffix(".gz")
    sep = "\t" if name.endswith((".tsv", ".txt", ".tab")) else ","
    try:
        frame = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, na_filter=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError, OSError) as exc:
        raise InputError(path, f"cannot be read as a gene-set table ({exc})",
                         "use a GMT file, a gene x set 0/1 table, or one column of gene symbols per set") from exc
    if frame.shape[1] == 0:
        raise InputError(path, "gene-set table has no columns")
    with _open_text(path) as fh:
        header = [h.strip() for h in next(csv.reader(fh, delimiter=sep), [])]
    repeated = sorted({h for h in header if h and header.count(h) > 1})
    if repeated:
        raise InputError(path, f"column(s) named more than once: {repeated[:5]}", "give every gene set its own name")
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


def _is_membership(frame: pd.DataFrame) -> bool:
    if frame.shape[1] < 2 or frame.shape[0] == 0:
        return False
    cells = frame.iloc[:, 1:].to_numpy(dtype=object).ravel()
    return bool(np.isin(cells, ["0", "1", "0.0", "1.0"]).mean() > 0.95)


def read_membership_table(path: str | os.PathLike[str]) -> dict[str, tuple[str, ...]]:
    """Read a gene x set table of 0/1 cells (first column: gene symbols) into set -> genes."""
    path = Path(path)
    return _membership(path, _read_text_table(path))


def _membership(path: Path, frame: pd.DataFrame) -> dict[str, tuple[str, ...]]:
    if frame.shape[1] < 2:
        raise InputError(path, "a membership table needs a gene column and at least one set column")
    genes = [str(g).strip() for g in frame.iloc[:, 0]]
    values = frame.iloc[:, 1:]
    ok = values.isin(["0", "1", "0.0", "1.0"]).to_numpy()
    if not ok.all():
        i, j = (int(x[0]) for x in np.nonzero(~ok))
        raise InputError(path, f"membership table cell for gene '{genes[i]}', set '{values.columns[j]}' is "
                         f"{values.iat[i, j]!r}, not 0 or 1", "membership tables hold 0/1 only")
    dup = pd.Index(genes)[pd.Index(genes).duplicated()].unique().tolist()
    if dup:
        raise InputError(path, f"gene(s) listed on more than one row: {dup[:5]}", "merge the rows")
    member = values.to_numpy(dtype=object).astype(float) == 1.0
    return {str(col): _unique([g for g, m in zip(genes, member[:, j]) if m]) for j, col in enumerate(values.columns)}


def read_column_table(path: str | os.PathLike[str]) -> dict[str, tuple[str, ...]]:
    """Read a table with one column per set, its cells the set's gene symbols (blank cells ignored)."""
    return _columns(_read_text_table(Path(path)))


def _columns(frame: pd.DataFrame) -> dict[str, tuple[str, ...]]:
    return {str(col): _unique(frame[col].tolist()) for col in frame.columns}


def read_geneset_file(path: str | os.PathLike[str], name: str | None = None) -> GeneSetCollection:
    """Read any supported gene-set file; the format is told by the suffix (GMT) or the cells (0/1 or genes)."""
    path = Path(path)
    if path.name.lower().removesuffix(".gz").endswith(".gmt"):
        sets = read_gmt(path)
        kind = "gmt"
    else:
        frame = _read_text_table(path)
        if _is_membership(frame):
            sets, kind = _membership(path, frame), "membership"
        else:
            sets, kind = _columns(frame), "columns"
    return GeneSetCollection(name or _stem(path), sets, f"{kind}:{path}", (str(path),))


def builtin_file(table: str) -> Path:
    """Path of a built-in pathway table shipped with the package (``data/tcga/pathways/<table>.csv.gz``)."""
    from pathmm_pipeline.core.data import TCGA_DATA

    return TCGA_DATA / "pathways" / f"{table}.csv.gz"


def builtin_collection(name: str) -> GeneSetCollection:
    """One of :data:`BUILTIN_TABLES`, read from the committed tables."""
    if name not in BUILTIN_TABLES:
        raise ValueError(f"unknown built-in gene-set collection {name!r}; choose one of {sorted(BUILTIN_TABLES)}")
    files = [builtin_file(t) for t in BUILTIN_TABLES[name]]
    for file in files:
        if not file.is_file():
            raise InputError(file, f"built-in gene-set table for '{name}' is missing from the installation",
                             "reinstall pathmm-pipeline (the package data under data/tcga/pathways)")
    sets: dict[str, tuple[str, ...]] = {}
    for file in files:
        part = read_geneset_file(file).sets
        clash = set(part) & set(sets)
        if clash:
            raise ValueError(f"built-in collection {name!r}: set names in more than one table: {sorted(clash)[:5]}")
        sets.update(part)
    if name == "survpath":  # SurvPath's combine_signatures.csv lists the 331 sets sorted by name
        sets = {k: sets[k] for k in sorted(sets)}
    if len(sets) != BUILTIN_COUNTS[name]:
        raise ValueError(f"built-in collection {name!r} has {len(sets)} sets, expected {BUILTIN_COUNTS[name]}")
    return GeneSetCollection(name, sets, f"builtin:{name}", tuple(str(f) for f in files))


def load_collection(spec: str | os.PathLike[str]) -> GeneSetCollection:
    """A built-in collection by name, or a gene-set file by path (named after the file)."""
    text = os.fspath(spec)
    if text in BUILTIN_TABLES:
        return builtin_collection(text)
    path = Path(text)
    if path.suffix or os.sep in text or path.exists():
        return read_geneset_file(path)
    raise ValueError(f"gene-set collection {text!r} is neither a built-in ({', '.join(sorted(BUILTIN_TABLES))}) "
                     "nor a file path")


def filter_collection(collection: GeneSetCollection, measured_genes: Sequence[str], min_genes: int = 1
                      ) -> FilteredCollection:
    """Restrict each set to ``measured_genes`` (sorted) and drop those with fewer than ``min_genes`` of them."""
    if min_genes < 1:
        raise ValueError(f"min_genes must be >= 1, got {min_genes}")
    measured = set(measured_genes)
    kept: dict[str, tuple[str, ...]] = {}
    defined: dict[str, int] = {}
    dropped: list[DroppedSet] = []
    for name, genes in collection.sets.items():
        present = tuple(sorted(g for g in genes if g in measured))
        if not genes:
            dropped.append(DroppedSet(name, 0, 0, "the set lists no genes"))
        elif len(present) < min_genes:
            dropped.append(DroppedSet(name, len(present), len(genes),
                                      f"{len(present)} of its {len(genes)} genes measured, fewer than the "
                                      f"minimum of {min_genes}"))
        else:
            kept[name] = present
            defined[name] = len(genes)
    union = {g for genes in collection.sets.values() for g in genes}
    return FilteredCollection(collection.name, collection.source, collection.files, min_genes, kept, defined,
                              dropped, genes_in_collection=len(union), genes_matched=len(union & measured))


def as_mapping(sets: Mapping[str, Sequence[str]] | FilteredCollection | GeneSetCollection
               ) -> dict[str, tuple[str, ...]]:
    """The set -> genes mapping of a collection or a plain mapping."""
    if isinstance(sets, (FilteredCollection, GeneSetCollection)):
        return dict(sets.sets)
    return {str(k): tuple(v) for k, v in sets.items()}
