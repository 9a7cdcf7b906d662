"""Per-pathway inputs for the models, from a patients x genes matrix and gene sets.

* :func:`pathway_gene_vectors`: one (patients x n_genes_of_set) array per set, the set's genes in the
  set's order (SurvPath's pathway tokens: each set's genes go through their own small network).
* :func:`family_vectors`: the same for MCAT's six gene families.
* :func:`mean_pathway_scores`: patients x sets, the mean of the set's (scaled) genes.
* :func:`rank_scores`: patients x sets, a rank-based single-sample score (below). It uses each sample's own
  values only, no statistic of the cohort, so it can be computed once for everyone without leakage.

Give the first three a matrix scaled by a :class:`~pathmm_pipeline.genomics.normalize.GeneScaler` fitted on
the fold's training patients; :func:`rank_scores` takes the unscaled log expression (per-gene scaling would
change the within-sample ranks).

Sets are given as a :class:`~pathmm_pipeline.genomics.genesets.FilteredCollection`, a mapping of set name to
gene symbols (then the matrix is a DataFrame with gene columns, or ``genes`` names its columns), or a list of
column-index arrays (as :func:`~pathmm_pipeline.genomics.stage.load_genomics` returns them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from pathmm_pipeline.genomics.genesets import FilteredCollection, GeneSetCollection

RANK_SCORE_DEFINITION = (
    "singscore-style unidirectional score, centred: in each sample, the N genes with a value are ranked "
    "ascending by expression, 1..N (ties get their average rank); for a set with n of its genes valued in that "
    "sample and mean rank R, score = (R - (n + 1) / 2) / (N - n) - 1/2, i.e. singscore's normalised score "
    "(R - Rmin) / (Rmax - Rmin) with Rmin = (n + 1) / 2 and Rmax = (2N - n + 1) / 2, minus 1/2. It lies in "
    "[-1/2, 1/2]; 0 is the expectation for n genes drawn at random, +1/2 the set's genes are the sample's top "
    "n; n = N gives 0 and n = 0 gives NaN."
)

SetsLike = FilteredCollection | GeneSetCollection | Mapping[str, Sequence[str]] | Sequence[np.ndarray]


def set_indices(sets: SetsLike, genes: Sequence[str] | None) -> list[np.ndarray]:
    """The sets as column-index arrays into ``genes`` (index arrays pass through unchanged)."""
    if isinstance(sets, (FilteredCollection, GeneSetCollection)):
        sets = dict(sets.sets)
    if isinstance(sets, Mapping):
        if genes is None:
            raise ValueError("gene sets given by name need the matrix's gene names (a DataFrame, or genes=)")
        position = {str(g): i for i, g in enumerate(genes)}
        out = []
        for name, members in sets.items():
            missing = [g for g in members if g not in position]
            if missing:
                raise KeyError(f"set '{name}': gene(s) not in the matrix: {missing[:5]}")
            out.append(np.array([position[g] for g in members], dtype=np.int64))
        return out
    return [np.asarray(idx, dtype=np.int64) for idx in sets]


def _matrix(matrix: pd.DataFrame | np.ndarray, genes: Sequence[str] | None
            ) -> tuple[np.ndarray, Sequence[str] | None]:
    if isinstance(matrix, pd.DataFrame):
        return matrix.to_numpy(dtype=np.float64), [str(g) for g in matrix.columns]
    values = np.asarray(matrix, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"need a patients x genes matrix, got shape {values.shape}")
    return values, genes


def flatten_sets(indices: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Index lists -> (flat gene-index array, offsets of length n_sets + 1): set k is flat[offsets[k]:offsets[k+1]]."""
    sizes = np.array([len(i) for i in indices], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    flat = np.concatenate([np.asarray(i, dtype=np.int64) for i in indices]) if indices else np.zeros(0, np.int64)
    return flat.astype(np.int32), offsets


def unflatten_sets(flat: np.ndarray, offsets: np.ndarray) -> list[np.ndarray]:
    """Inverse of :func:`flatten_sets`."""
    flat = np.asarray(flat, dtype=np.int64)
    return [flat[offsets[k]:offsets[k + 1]] for k in range(len(offsets) - 1)]


def pathway_gene_vectors(scaled: pd.DataFrame | np.ndarray, sets: SetsLike, genes: Sequence[str] | None = None,
                         dtype: np.dtype | type = np.float32) -> list[np.ndarray]:
    """One (patients x set size) array per set: the set's genes' values, in the set's order."""
    values, names = _matrix(scaled, genes)
    return [values[:, idx].astype(dtype) for idx in set_indices(sets, names)]


def family_vectors(scaled: pd.DataFrame | np.ndarray, families: SetsLike, genes: Sequence[str] | None = None,
                   dtype: np.dtype | type = np.float32) -> list[np.ndarray]:
    """MCAT's inputs: one (patients x family size) array per gene family (e.g. the ``mcat_families`` sets)."""
    return pathway_gene_vectors(scaled, families, genes, dtype)


def mean_pathway_scores(scaled: pd.DataFrame | np.ndarray, sets: SetsLike, genes: Sequence[str] | None = None
                        ) -> np.ndarray:
    """Patients x sets: the mean of each set's genes (missing values ignored; NaN if none is valued)."""
    values, names = _matrix(scaled, genes)
    out = np.full((values.shape[0], 0), np.nan)
    columns = []
    for idx in set_indices(sets, names):
        block = values[:, idx]
        valued = (~np.isnan(block)).sum(axis=1)
        with np.errstate(all="ignore"):
            columns.append(np.where(valued > 0, np.nansum(block, axis=1) / np.maximum(valued, 1), np.nan))
    return np.stack(columns, axis=1) if columns else out


def rank_scores(expression: pd.DataFrame | np.ndarray, sets: SetsLike, genes: Sequence[str] | None = None
                ) -> np.ndarray:
    """Patients x sets rank-based single-sample scores of unscaled expression; see :data:`RANK_SCORE_DEFINITION`."""
    values, names = _matrix(expression, genes)
    ranks = pd.DataFrame(values).rank(axis=1, method="average", ascending=True).to_numpy(dtype=np.float64)
    n_valued = (~np.isnan(values)).sum(axis=1).astype(np.float64)
    columns = []
    for idx in set_indices(sets, names):
        block = ranks[:, idx]
        n = (~np.isnan(block)).sum(axis=1).astype(np.float64)
        with np.errstate(all="ignore"):
            mean_rank = np.nansum(block, axis=1) / n
            score = (mean_rank - (n + 1.0) / 2.0) / (n_valued - n) - 0.5
        score = np.where(n == n_valued, 0.0, score)
        columns.append(np.where(n == 0, np.nan, score))
    return np.stack(columns, axis=1) if columns else np.full((values.shape[0], 0), np.nan)
