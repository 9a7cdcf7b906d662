"""Per-gene standardisation fitted on one fold's training patients, applied to everyone.

:class:`GeneScaler` learns, from the training rows only, each gene's median (to impute missing values), mean
and standard deviation; ``transform`` imputes a missing value with the training median, then returns
``(x - mean) / max(std, std_floor)``. Nothing about the other patients enters the fit, so validation and test
patients cannot leak into it. It serialises to and from a plain dict for model checkpoints.

The default ``std_floor`` of 0.1 (log2 units, i.e. a 7 % change in expression) only matters for genes that
barely vary in the training patients (on TCGA BLCA one gene, VAMP7, is constant; the next smallest standard
deviation is 0.36): they are not blown up into huge z-scores by noise. ``clip`` optionally bounds the result.

``method="minmax"`` is SurvPath's scaling instead (mahmoodlab/SurvPath ``datasets/dataset_survival.py``): one
``MinMaxScaler(feature_range=(-1, 1))`` fitted on the flattened training matrix (a single minimum and maximum
over every gene and training patient, not one per gene), applied to everyone without clipping, and the exact
zeros of the input put back to 0 afterwards (the reference treats them as missing). Missing values are imputed
with the training median first, as in the z-score mode (the reference has no path for them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

SCHEMA = "pathmm.GeneScaler/1"
METHODS = ("zscore", "minmax")


class GeneScaler:
    """Per-gene z-scoring (or SurvPath's global min-max, ``method="minmax"``) with training-median imputation;
    fit on training patients only."""

    def __init__(self, std_floor: float = 0.1, clip: float | None = None, method: str = "zscore") -> None:
        if method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
        if std_floor <= 0:
            raise ValueError(f"std_floor must be > 0, got {std_floor}")
        if clip is not None and clip <= 0:
            raise ValueError(f"clip must be > 0 or None, got {clip}")
        self.method = method
        self.lo_: float | None = None
        self.hi_: float | None = None
        self.std_floor = float(std_floor)
        self.clip = None if clip is None else float(clip)
        self.genes: list[str] | None = None
        self.median_: np.ndarray | None = None
        self.mean_: np.ndarray | None = None
        self.std_: np.ndarray | None = None
        self.train_patients: list[str] = []
        self.n_train = 0

    @property
    def fitted(self) -> bool:
        return self.mean_ is not None

    @property
    def scale_(self) -> np.ndarray:
        """The divisor per gene: the training standard deviation, floored at ``std_floor``."""
        self._check_fitted()
        return np.maximum(self.std_, self.std_floor)

    def fit(self, expression: pd.DataFrame | np.ndarray, train_patients: Sequence[str] | None = None,
            genes: Sequence[str] | None = None) -> GeneScaler:
        """Learn median, mean and std per gene from the training rows.

        ``expression`` is patients x genes: a DataFrame (then ``train_patients`` picks its training rows by
        index; without it every row is used), or an array (then it must hold only training rows, and
        ``genes`` names its columns). Missing values are ignored; a gene with no training value is an error.
        """
        if isinstance(expression, pd.DataFrame):
            frame = expression if train_patients is None else expression.loc[list(train_patients)]
            values = frame.to_numpy(dtype=np.float64)
            gene_names = [str(g) for g in frame.columns]
            patients = [str(p) for p in frame.index]
        else:
            if train_patients is not None and len(train_patients) != len(expression):
                raise ValueError("with an array, pass only the training rows (train_patients names them)")
            values = np.asarray(expression, dtype=np.float64)
            gene_names = [str(g) for g in genes] if genes is not None else [str(i) for i in range(values.shape[1])]
            patients = [str(p) for p in train_patients] if train_patients is not None else []
        if values.ndim != 2 or values.shape[0] == 0:
            raise ValueError(f"need a non-empty patients x genes matrix, got shape {values.shape}")
        if len(gene_names) != values.shape[1]:
            raise ValueError(f"{len(gene_names)} gene names for {values.shape[1]} columns")
        observed = ~np.isnan(values)
        empty = np.flatnonzero(~observed.any(axis=0))
        if empty.size:
            names = ", ".join(gene_names[i] for i in empty[:5])
            raise ValueError(f"{empty.size} gene(s) have no value in any training patient ({names}); drop them "
                             "first (the genomics stage's max_nan_fraction does)")
        self.median_ = np.nanmedian(values, axis=0)
        self.mean_ = np.nanmean(values, axis=0)
        self.std_ = np.nanstd(values, axis=0)
        self.lo_, self.hi_ = float(np.nanmin(values)), float(np.nanmax(values))
        self.genes = gene_names
        self.train_patients = patients
        self.n_train = int(values.shape[0])
        return self

    def _check_fitted(self) -> None:
        if self.mean_ is None:
            raise RuntimeError("GeneScaler is not fitted: call fit() on the training patients first")

    def transform(self, expression: pd.DataFrame | np.ndarray) -> pd.DataFrame | np.ndarray:
        """Impute missing values with the training median, then z-score; a DataFrame is aligned on genes."""
        self._check_fitted()
        if isinstance(expression, pd.DataFrame):
            missing = [g for g in self.genes if g not in expression.columns]
            if missing:
                raise KeyError(f"{len(missing)} gene(s) the scaler was fitted on are absent: {missing[:5]}")
            values = expression.loc[:, self.genes].to_numpy(dtype=np.float64)
        else:
            values = np.asarray(expression, dtype=np.float64)
            if values.ndim != 2 or values.shape[1] != len(self.genes):
                raise ValueError(f"expected {len(self.genes)} gene columns, got shape {values.shape}")
        values = np.where(np.isnan(values), self.median_, values)
        if self.method == "minmax":
            span = self.hi_ - self.lo_
            scaled = 2.0 * (values - self.lo_) / span - 1.0 if span > 0 else np.zeros_like(values)
            scaled = np.where(values == 0.0, 0.0, scaled)  # SurvPath: "rna -> put back in the zeros"
        else:
            scaled = (values - self.mean_) / self.scale_
        if self.clip is not None:
            scaled = np.clip(scaled, -self.clip, self.clip)
        if isinstance(expression, pd.DataFrame):
            return pd.DataFrame(scaled, index=expression.index, columns=pd.Index(self.genes, name="gene"))
        return scaled

    def fit_transform(self, expression: pd.DataFrame, train_patients: Sequence[str] | None = None) -> pd.DataFrame:
        """Fit on ``train_patients`` (all rows if None) and transform every row of ``expression``."""
        return self.fit(expression, train_patients).transform(expression)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types, for a checkpoint; :meth:`from_dict` restores an identical scaler."""
        self._check_fitted()
        return {"schema": SCHEMA, "method": self.method, "lo": self.lo_, "hi": self.hi_,
                "std_floor": self.std_floor, "clip": self.clip, "genes": list(self.genes),
                "median": self.median_.tolist(), "mean": self.mean_.tolist(), "std": self.std_.tolist(),
                "n_train": self.n_train, "train_patients": list(self.train_patients)}

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> GeneScaler:
        if record.get("schema") != SCHEMA:
            raise ValueError(f"not a GeneScaler record (schema {record.get('schema')!r}, expected {SCHEMA!r})")
        scaler = cls(std_floor=record["std_floor"], clip=record.get("clip"), method=record.get("method", "zscore"))
        lo, hi = record.get("lo"), record.get("hi")
        scaler.lo_, scaler.hi_ = (None if lo is None else float(lo)), (None if hi is None else float(hi))
        scaler.genes = [str(g) for g in record["genes"]]
        scaler.median_ = np.asarray(record["median"], dtype=np.float64)
        scaler.mean_ = np.asarray(record["mean"], dtype=np.float64)
        scaler.std_ = np.asarray(record["std"], dtype=np.float64)
        if not (len(scaler.genes) == len(scaler.median_) == len(scaler.mean_) == len(scaler.std_)):
            raise ValueError("GeneScaler record: genes, median, mean and std differ in length")
        scaler.n_train = int(record.get("n_train", 0))
        scaler.train_patients = [str(p) for p in record.get("train_patients", [])]
        return scaler
