"""How a fitted choice (best epoch, early stop, probe penalty) is made without the held-out patients.

The rule: nothing reported on a patient may have been fitted, selected or tuned with that patient's data or
outcome. Two protocols (``training.selection``):

* ``last`` (default): train for the configured number of epochs and keep the last one; no validation data is
  read during training at all (SurvPath's reference code reports the last epoch).
* ``inner``: carve an **inner-validation split** out of each fold's *training* patients
  (:func:`inner_split`: stratified by event and cancer type, a seeded ``fraction``), train on the rest and
  use the inner split for early stopping and the best-epoch choice (ModalTune selects on a separate
  validation split). The held-out fold is read only by the final evaluation.

The inner split of every outer fold is written once, beside the fold's split file
(:func:`write_inner_splits`: ``inner_<k>.csv``, the split-file format: the ``train`` column is the inner
training set, ``val`` the inner-validation set) and read back by every run (:func:`read_inner_split`), so all
models of a fold select on the same patients and the checkpoint's provenance records the file and its hash.
Fits that are not one of the written folds (a data-efficiency subsample) carve theirs with the same function.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from pathmm_pipeline.core.errors import InputError

SELECTIONS = ("last", "inner")
INNER_FILE = "inner_{}.csv"
DEFAULT_STRATA = ("event", "cancer_type")


def check_selection(selection: str) -> str:
    """``selection`` when it is a known protocol, else a ValueError listing them."""
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {', '.join(SELECTIONS)}, got {selection!r}")
    return selection


def strata_table(patients: pd.DataFrame) -> pd.DataFrame:
    """``patients`` (one row per patient) with the integer ``event`` column the strata read (0 when unknown)."""
    if "survival_event" not in patients:
        return patients
    event = pd.to_numeric(patients["survival_event"], errors="coerce").fillna(0).astype(int)
    return patients.assign(event=event)


def _strata(table: pd.DataFrame, patients: Sequence[str], columns: Sequence[str]) -> list[str]:
    keys = []
    for p in patients:
        parts = []
        for c in columns:
            value = table.at[p, c] if (c in table.columns and p in table.index) else ""
            parts.append("" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value))
        keys.append("|".join(parts))
    return keys


def inner_split(table: pd.DataFrame, train: Sequence[str], fraction: float = 0.2, seed: int = 0,
                stratify: Sequence[str] = DEFAULT_STRATA, key: str | int = 0) -> tuple[list[str], list[str]]:
    """``(inner_train, inner_val)``: a seeded, stratified ``fraction`` of ``train`` held out for selection.

    ``table``: one row per patient, indexed by patient id, with the ``stratify`` columns (absent columns and
    empty cells are one stratum). Each stratum gives ``round(fraction * n)`` patients (a stratum of one gives
    none); at least one patient overall, and at least one is always left to train on. ``key`` (e.g. the outer
    fold index) makes the draw of each fold independent. Both lists keep the order of ``train``."""
    if not 0 < fraction < 1:
        raise ValueError(f"the inner-validation fraction must be in (0, 1), got {fraction}")
    train = [str(p) for p in train]
    if len(train) < 2:
        raise ValueError(f"{len(train)} training patient(s) cannot be split for inner validation")
    rng = np.random.default_rng([int(seed), zlib.crc32(str(key).encode())])
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(_strata(table, train, stratify)):
        groups.setdefault(s, []).append(i)
    chosen: set[int] = set()
    for name in sorted(groups):
        members = groups[name]
        n = int(round(fraction * len(members))) if len(members) > 1 else 0
        chosen.update(int(members[j]) for j in rng.choice(len(members), n, replace=False))
    if not chosen:
        chosen.add(int(rng.integers(len(train))))
    if len(chosen) == len(train):
        chosen.discard(max(chosen))
    val = [p for i, p in enumerate(train) if i in chosen]
    rest = [p for i, p in enumerate(train) if i not in chosen]
    return rest, val


def inner_split_path(splits_dir: str | os.PathLike[str], fold_index: int) -> Path:
    return Path(splits_dir) / INNER_FILE.format(fold_index)


def write_inner_splits(split_set, table: pd.DataFrame, folder: str | os.PathLike[str], fraction: float = 0.2,
                       seed: int = 0, stratify: Sequence[str] = DEFAULT_STRATA) -> list[Path]:
    """One ``inner_<k>.csv`` per outer fold of ``split_set`` (the split-file format), atomically."""
    from pathmm_pipeline.cohort.splits import Fold, fold_csv
    from pathmm_pipeline.core.atomic import write_text_atomic

    written = []
    for fold in split_set:
        rest, val = inner_split(table, fold.train, fraction, seed, stratify, key=fold.index)
        written.append(write_text_atomic(inner_split_path(folder, fold.index),
                                         fold_csv(Fold(fold.index, tuple(rest), tuple(val)))))
    return written


def read_inner_split(path: str | os.PathLike[str], fold_index: int, outer_train: Sequence[str]
                     ) -> tuple[list[str], list[str]]:
    """The inner split of a fold, checked against the fold: both parts inside the outer training patients,
    disjoint, and together all of them."""
    from pathmm_pipeline.cohort.splits import read_fold

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "inner-validation split not found",
                         "run the make_splits rule (it writes inner_<k>.csv beside splits_<k>.csv)")
    fold = read_fold(path, fold_index)
    outer = set(outer_train)
    problems = []
    outside = sorted((set(fold.train) | set(fold.val)) - outer)
    if outside:
        problems.append(f"patient(s) {outside[:5]} are not training patients of fold {fold_index}")
    both = sorted(set(fold.train) & set(fold.val))
    if both:
        problems.append(f"patient(s) {both[:5]} are in both inner train and inner val")
    absent = sorted(outer - set(fold.train) - set(fold.val))
    if absent:
        problems.append(f"training patient(s) {absent[:5]} of fold {fold_index} are in neither column")
    if not fold.val:
        problems.append("the inner-validation column is empty")
    if problems:
        raise InputError(path, "; ".join(problems), "remake the splits (make_splits) so that the inner split "
                         "matches its outer fold")
    return list(fold.train), list(fold.val)
