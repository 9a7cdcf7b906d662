"""Patient-level k-fold splits: made once, written as files, and read back by every model.

**File format** (that of the published SurvPath/MCAT splits, e.g. ``splits_dir("blca")``): one CSV per fold,
``splits_<k>.csv`` for ``k = 0 .. K-1``, with a header ``,train,val``, an unnamed integer index ``0 .. n-1`` and
one patient id (a TCGA case id, ``TCGA-2F-A9KO``) per cell; the shorter column is padded with empty cells.
:func:`write_splits` writes exactly this format (a published folder read by :func:`read_splits` and written
again is identical byte for byte) plus a ``splits_manifest.json`` beside it (how the splits were made).

**Checks** (:meth:`SplitSet.problems`, run by :func:`read_splits` and :func:`write_splits`): no patient twice
in one column; no patient in both train and val of a fold; every fold covers the same patients; every patient
is in exactly one validation fold; with ``known_patients``, no patient outside them. Problems are reported
together, each naming the file and the patient.

**Making splits** (:func:`make_splits`):

* ``stratify=("event", "label")`` (any columns): scikit-learn ``StratifiedKFold`` on the combined key of the
  columns; strata with fewer than ``k`` patients fall back to their first column's value, then to one
  ``"rare"`` stratum (merged into the largest stratum if still smaller than ``k``).
* ``stratify="site"``: all patients of a tissue-source site in the same fold (``StratifiedGroupKFold`` on the
  ``event`` column when there is one, else ``GroupKFold``), as in the published TCGA splits. The site is the
  ``site`` column, else the TCGA barcode's characters 6-7 (``TCGA-2F-A9KO`` -> ``2F``, ``barcode[5:7]``).
* ``stratify=None``: plain shuffled ``KFold``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pathmm_pipeline.core.atomic import write_text_atomic
from pathmm_pipeline.core.errors import InputError

SPLIT_FILE = "splits_{}.csv"
MANIFEST = "splits_manifest.json"
SCHEMA = "pathmm.splits/1"
_BAD_ID_CHARS = (",", '"', "\n", "\r")


class SplitError(InputError):
    """A split set violates the patient-level rules; lists every problem found."""

    def __init__(self, path: object, problems: list[str]) -> None:
        self.problems = list(problems)
        listing = "\n  - ".join(self.problems)
        super().__init__(path, f"{len(self.problems)} problem(s) in the splits:\n  - {listing}",
                         "fix the split files (or remake them with make_splits); no model was trained")


@dataclass(frozen=True)
class Fold:
    """One fold: training and validation patient ids, in file order."""

    index: int
    train: tuple[str, ...]
    val: tuple[str, ...]


@dataclass(frozen=True)
class SplitSet:
    """K folds of patient ids, and where they came from."""

    folds: tuple[Fold, ...]
    method: str = "file"
    seed: int | None = None
    source: str = ""  # the folder read from, if any
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def k(self) -> int:
        return len(self.folds)

    def __len__(self) -> int:
        return len(self.folds)

    def __iter__(self) -> Iterator[Fold]:
        return iter(self.folds)

    def __getitem__(self, index: int) -> Fold:
        return self.folds[index]

    @property
    def patients(self) -> list[str]:
        """Every patient of any fold, sorted."""
        return sorted({p for f in self.folds for p in (*f.train, *f.val)})

    def _where(self, index: int) -> str:
        name = SPLIT_FILE.format(index)
        return str(Path(self.source) / name) if self.source else name

    def problems(self, known_patients: Iterable[str] | None = None) -> list[str]:
        """Every violation of the patient-level rules (empty when the set is sound)."""
        out: list[str] = []
        everyone = set(self.patients)
        val_of: dict[str, list[int]] = {}
        for f in self.folds:
            where = self._where(f.index)
            for column, ids in (("train", f.train), ("val", f.val)):
                seen: set[str] = set()
                for p in ids:
                    if p in seen:
                        out.append(f"{where}: patient '{p}' appears twice in the {column} column")
                    seen.add(p)
                    if not p or p != p.strip() or any(c in p for c in _BAD_ID_CHARS):
                        out.append(f"{where}: bad patient id {p!r} in the {column} column")
            for p in sorted(set(f.train) & set(f.val)):
                out.append(f"{where}: patient '{p}' is in both train and val")
            for p in sorted(everyone - set(f.train) - set(f.val)):
                out.append(f"{where}: patient '{p}' (in another fold) is in neither train nor val")
            for p in f.val:
                val_of.setdefault(p, []).append(f.index)
            if not f.val:
                out.append(f"{where}: the validation column is empty")
        for p in sorted(everyone):
            folds = sorted(set(val_of.get(p, [])))
            if not folds:
                out.append(f"patient '{p}' is in no validation fold (only ever trained on)")
            elif len(folds) > 1:
                out.append(f"patient '{p}' is in the validation column of several folds: "
                           + ", ".join(self._where(i) for i in folds))
        if known_patients is not None:
            known = {str(p) for p in known_patients}
            for f in self.folds:
                for column, ids in (("train", f.train), ("val", f.val)):
                    for p in ids:
                        if p not in known:
                            out.append(f"{self._where(f.index)}: patient '{p}' ({column}) is not among the "
                                       f"{len(known)} known patients")
        return out

    def validate(self, known_patients: Iterable[str] | None = None) -> SplitSet:
        """Raise :class:`SplitError` listing every problem; return ``self`` when there is none."""
        found = self.problems(known_patients)
        if found:
            raise SplitError(self.source or "<splits>", found)
        return self

    def restrict(self, patients: Iterable[str]) -> tuple[SplitSet, list[str]]:
        """The same folds with only ``patients`` kept (e.g. those with expression), and the patients dropped."""
        keep = {str(p) for p in patients}
        dropped = sorted(set(self.patients) - keep)
        folds = tuple(Fold(f.index, tuple(p for p in f.train if p in keep), tuple(p for p in f.val if p in keep))
                      for f in self.folds)
        meta = {**self.meta, "dropped_patients": dropped}
        return SplitSet(folds, self.method, self.seed, self.source, meta), dropped

    def val_fold(self) -> dict[str, int]:
        """Patient -> the fold whose validation column holds it."""
        return {p: f.index for f in self.folds for p in f.val}


# ------------------------------------------------------------------------------------------- read / write
def fold_csv(fold: Fold) -> str:
    n = max(len(fold.train), len(fold.val))
    lines = [",train,val"]
    for i in range(n):
        a = fold.train[i] if i < len(fold.train) else ""
        b = fold.val[i] if i < len(fold.val) else ""
        lines.append(f"{i},{a},{b}")
    return "\n".join(lines) + "\n"


def read_fold(path: Path, index: int) -> Fold:
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, index_col=0)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise InputError(path, f"cannot read the split file ({exc})") from exc
    if list(frame.columns) != ["train", "val"]:
        raise InputError(path, f"expected the columns ',train,val' (an unnamed index, then train and val), "
                         f"got {[str(c) for c in frame.columns]}", "write split files with write_splits")

    def column(name: str) -> tuple[str, ...]:
        values = [str(v).strip() for v in frame[name].tolist()]
        return tuple(v for v in values if v)

    return Fold(index, column("train"), column("val"))


def read_splits(folder: str | os.PathLike[str], known_patients: Iterable[str] | None = None,
                validate: bool = True) -> SplitSet:
    """Read ``splits_0.csv .. splits_<K-1>.csv`` from ``folder`` (published or written by :func:`write_splits`)
    and check them (:meth:`SplitSet.validate`, unknown patients included when ``known_patients`` is given)."""
    root = Path(folder)
    if not root.is_dir():
        raise InputError(root, "split folder does not exist", "make splits with make_splits / write_splits")
    indexed: dict[int, Path] = {}
    for path in root.glob("splits_*.csv"):
        suffix = path.stem[len("splits_"):]
        if not suffix.isdigit():
            raise InputError(path, "split file name is not splits_<integer>.csv")
        indexed[int(suffix)] = path
    if not indexed:
        raise InputError(root, "no splits_<k>.csv file in this folder")
    missing = sorted(set(range(max(indexed) + 1)) - set(indexed))
    if missing:
        raise InputError(root, f"split file(s) missing for fold(s) {missing}: the folds must be numbered 0..K-1")
    folds = tuple(read_fold(indexed[i], i) for i in sorted(indexed))
    meta: dict[str, Any] = {}
    method, seed = "file", None
    manifest = root / MANIFEST
    if manifest.is_file():
        meta = json.loads(manifest.read_text())
        method, seed = str(meta.get("method", "file")), meta.get("seed")
    split_set = SplitSet(folds, method, seed, str(root), meta)
    return split_set.validate(known_patients) if validate else split_set


def write_splits(split_set: SplitSet, folder: str | os.PathLike[str], overwrite: bool = False) -> list[Path]:
    """Write one ``splits_<k>.csv`` per fold in the published format, and ``splits_manifest.json``; each file
    atomically. Refuses a folder that already holds split files unless ``overwrite`` (splits are made once)."""
    root = Path(folder)
    split_set.validate()
    existing = sorted(root.glob("splits_*.csv")) if root.is_dir() else []
    if existing and not overwrite:
        raise InputError(root, f"already holds {len(existing)} split file(s)",
                         "splits are written once and reused; pass overwrite=True to replace them")
    written = [write_text_atomic(root / SPLIT_FILE.format(f.index), fold_csv(f)) for f in split_set.folds]
    for stale in existing:
        if stale not in written:
            stale.unlink()
    manifest = {"schema": SCHEMA, "k": split_set.k, "method": split_set.method, "seed": split_set.seed,
                "n_patients": len(split_set.patients),
                "folds": [{"index": f.index, "n_train": len(f.train), "n_val": len(f.val)} for f in split_set.folds],
                **{k: v for k, v in split_set.meta.items() if k in ("stratify", "strata", "columns", "sites")}}
    written.append(write_text_atomic(root / MANIFEST, json.dumps(manifest, indent=2, default=str)))
    return written


# ------------------------------------------------------------------------------------------------ making
def site_of(barcode: str) -> str:
    """The tissue-source site of a TCGA barcode: characters 6-7 (``TCGA-2F-A9KO`` -> ``2F``)."""
    b = str(barcode)
    if len(b) < 8 or b[4] != "-" or b[7] != "-":
        raise ValueError(f"'{b}' is not a TCGA barcode (TCGA-SS-PPPP); give a 'site' column instead")
    return b[5:7]


def _merge_rare(keys: pd.Series, coarse: pd.Series, k: int) -> pd.Series:
    counts = keys.value_counts()
    keys = keys.where(~keys.isin(counts[counts < k].index), coarse)
    counts = keys.value_counts()
    keys = keys.where(~keys.isin(counts[counts < k].index), "rare")
    counts = keys.value_counts()
    if "rare" in counts and counts["rare"] < k:
        largest = counts.drop("rare").idxmax() if len(counts) > 1 else "rare"
        keys = keys.replace("rare", largest)
    return keys


def make_splits(patients_df: pd.DataFrame, k: int = 5,
                stratify: str | Sequence[str] | None = ("event", "label"), seed: int = 0) -> SplitSet:
    """K patient-level folds over the rows of ``patients_df`` (indexed by patient id, one row per patient).

    ``stratify``: column names to stratify on (e.g. ``("event", "label")``), ``"site"`` to keep each
    tissue-source site in one fold, or ``None``. Patient ids are sorted within each column of a fold.
    """
    from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold

    if k < 2:
        raise ValueError(f"k must be >= 2, got {k}")
    ids = [str(p) for p in patients_df.index]
    if len(set(ids)) != len(ids):
        dup = pd.Index(ids)[pd.Index(ids).duplicated()].tolist()
        raise ValueError(f"patients_df has duplicated patient ids: {dup[:5]}")
    if len(ids) < k:
        raise ValueError(f"{len(ids)} patients cannot make {k} folds")
    x = np.zeros((len(ids), 1))
    meta: dict[str, Any] = {"stratify": stratify}
    if stratify == "site":
        sites = (patients_df["site"].astype(str) if "site" in patients_df.columns
                 else pd.Series([site_of(p) for p in ids], index=patients_df.index))
        if sites.nunique() < k:
            raise ValueError(f"{sites.nunique()} sites cannot fill {k} folds")
        if "event" in patients_df.columns:
            y = patients_df["event"].astype(int).to_numpy()
            splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        else:
            y = np.zeros(len(ids), dtype=int)
            splitter = GroupKFold(n_splits=k, shuffle=True, random_state=seed)
        parts = list(splitter.split(x, y, groups=sites.to_numpy()))
        method = "site"
        meta["sites"] = int(sites.nunique())
    elif stratify is None:
        parts = list(KFold(n_splits=k, shuffle=True, random_state=seed).split(x))
        method = "kfold"
    else:
        columns = [stratify] if isinstance(stratify, str) else list(stratify)
        absent = [c for c in columns if c not in patients_df.columns]
        if absent:
            raise KeyError(f"stratification column(s) {absent} not in patients_df ({list(patients_df.columns)})")
        keys = patients_df[columns].astype(str).agg("|".join, axis=1)
        keys = _merge_rare(keys, patients_df[columns[0]].astype(str), k)
        parts = list(StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(x, keys.to_numpy()))
        method = "stratified:" + "+".join(columns)
        meta["strata"] = {str(a): int(b) for a, b in keys.value_counts().sort_index().items()}
    id_array = np.array(ids, dtype=object)
    folds = tuple(Fold(i, tuple(sorted(id_array[tr])), tuple(sorted(id_array[va])))
                  for i, (tr, va) in enumerate(parts))
    return SplitSet(folds, method, seed, "", meta).validate()
