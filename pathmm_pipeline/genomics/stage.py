"""The genomics stage: a cohort's expression files and patients in, one Zarr store out; and its loader.

:func:`build_genomics_store` reads every expression file (:func:`~pathmm_pipeline.genomics.io.read_expression`),
keeps the sample sheet's patients, drops genes missing in too many of them, matches the configured gene-set
collections to the measured genes, computes the rank-based pathway scores, and writes atomically one store:

=====================================  =======================  =============================================
array                                  dims                     content
=====================================  =======================  =============================================
``patient_ids``                        patient                  the sample sheet's patients with expression
``genes``                              gene                     measured genes kept
``expression``                         patient, gene            log2 expression, **unscaled**, NaN = missing
``genesets/<c>/names``                 set                      kept set names of collection ``c``
``genesets/<c>/gene_index``            member                   the sets' genes, as positions in ``genes``,
                                                                concatenated (sets sorted by symbol inside)
``genesets/<c>/offsets``               set_edge                 set k is ``gene_index[offsets[k]:offsets[k+1]]``
``genesets/<c>/n_defined``             set                      genes in the set's definition
``genesets/<c>/rank_scores``           patient, set             :data:`~.tokens.RANK_SCORE_DEFINITION`
=====================================  =======================  =============================================

Attributes: ``counts`` (patients requested/matched/missing, genes read/kept, per collection sets kept and
dropped and genes matched), ``collections`` (set names, gene lists by name, dropped sets with reasons),
``files`` (per input: orientation, scale and transform, sample resolutions, duplicates), the settings, and the
provenance (inputs with hashes, including the gene-set tables).

Scaling is *not* done here: it is fitted per fold on the training patients
(:class:`~pathmm_pipeline.genomics.normalize.GeneScaler`), which also imputes the missing values left in the
store with the training median. The only cohort-wide step is :func:`~.io.drop_sparse_genes`, which looks at
which values are missing, never at the values or the labels.

Every check runs before anything is written: a bad input leaves no output (and an earlier output untouched).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pathmm_pipeline.core.errors import InputError
from pathmm_pipeline.core.provenance import build_provenance
from pathmm_pipeline.core.settings import SettingsMixin
from pathmm_pipeline.core.stores import ArraySpec, open_store, write_store
from pathmm_pipeline.genomics.genesets import FilteredCollection, filter_collection, load_collection
from pathmm_pipeline.genomics.io import (
    DUPLICATE_POLICIES,
    MULTI_SAMPLE_POLICIES,
    ORIENTATIONS,
    RAW_THRESHOLD,
    SCALES,
    ExpressionMatrix,
    drop_sparse_genes,
    read_expression,
)
from pathmm_pipeline.genomics.tokens import RANK_SCORE_DEFINITION, flatten_sets, rank_scores, unflatten_sets

log = logging.getLogger(__name__)

STAGE = "genomics"
SCHEMA = "pathmm.genomics/1"
_STR = np.dtypes.StringDType()


@dataclass(frozen=True)
class GenomicsSettings(SettingsMixin):
    """How the genomics stage reads and matches expression (``genomics:`` in config.yaml).

    * ``genesets``: built-in collection names (``survpath``, ``mcat_families``, ``hallmarks``, ``reactome``)
      or paths of gene-set files (GMT, membership or column-per-set tables).
    * ``min_genes_per_set`` (default 1): a set needs this many measured genes to be kept.
      ``min_genes_by_collection`` overrides it per collection. Why 1: the Xena panel shipped with SurvPath
      measures 1,577 genes, and the published SurvPath and MCAT models (the project's reference numbers) use
      every set with at least one measured gene, 331 pathway tokens; the Reactome sets were defined on this
      panel (median 6 measured genes), so a minimum of 5 would drop 112 of the 281 Reactome and 3 of the 50
      Hallmark sets (35 % of the tokens) and no longer match the reference. Raise it for whole-transcriptome
      data, where few measured genes of a set usually mean a symbol mismatch; every dropped set is recorded.
    * ``duplicates``: ``error`` | ``mean`` | ``first`` for duplicated gene symbols.
    * ``multi_sample``: ``primary_then_mean`` | ``mean`` | ``error`` for several samples of one patient.
    * ``max_nan_fraction`` (0.2): genes missing in more than this fraction of the matched patients are dropped;
      the remaining missing values are imputed per fold with the training median.
    * ``orientation``: ``auto`` | ``samples_x_genes`` | ``genes_x_samples``; ``scale``: ``auto`` | ``log2`` |
      ``raw`` (raw values get ``log2(x+1)``); ``raw_threshold``: the ``auto`` cut-off (max above it, no
      negatives: raw).
    """

    settings_name = "genomics"

    genesets: tuple[str, ...] = ("survpath", "mcat_families", "hallmarks")
    min_genes_per_set: int = 1
    min_genes_by_collection: dict[str, int] = field(default_factory=dict)
    duplicates: str = "error"
    multi_sample: str = "primary_then_mean"
    max_nan_fraction: float = 0.2
    orientation: str = "auto"
    scale: str = "auto"
    raw_threshold: float = RAW_THRESHOLD

    def __post_init__(self) -> None:
        object.__setattr__(self, "genesets", tuple(str(g) for g in self.genesets))
        object.__setattr__(self, "min_genes_by_collection", {str(k): int(v) for k, v in
                                                             dict(self.min_genes_by_collection).items()})
        checks = (("duplicates", self.duplicates, DUPLICATE_POLICIES),
                  ("multi_sample", self.multi_sample, MULTI_SAMPLE_POLICIES),
                  ("orientation", self.orientation, ORIENTATIONS), ("scale", self.scale, SCALES))
        for name, value, allowed in checks:
            if value not in allowed:
                raise ValueError(f"genomics.{name} must be one of {allowed}, got {value!r}")
        if not self.genesets:
            raise ValueError("genomics.genesets must name at least one collection")
        if self.min_genes_per_set < 1 or any(v < 1 for v in self.min_genes_by_collection.values()):
            raise ValueError("genomics.min_genes_per_set must be >= 1")
        if not 0.0 <= self.max_nan_fraction < 1.0:
            raise ValueError(f"genomics.max_nan_fraction must be in [0, 1), got {self.max_nan_fraction}")

    def min_genes(self, collection: str) -> int:
        return self.min_genes_by_collection.get(collection, self.min_genes_per_set)


    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        record["genesets"] = list(self.genesets)
        return record


@dataclass
class StoredCollection:
    """One gene-set collection as stored: kept set names, their genes as positions, scores, what was dropped."""

    name: str
    set_names: list[str]
    indices: list[np.ndarray]
    n_defined: np.ndarray
    rank_scores: np.ndarray
    dropped: list[dict[str, Any]]
    summary: dict[str, Any]

    def gene_lists(self, genes: Sequence[str]) -> dict[str, list[str]]:
        return {name: [genes[i] for i in idx] for name, idx in zip(self.set_names, self.indices)}


@dataclass
class GenomicsData:
    """A genomics store read back for training: unscaled log2 ``expression`` (patients x genes, NaN =
    missing), ``patients``, ``genes`` and each collection's sets as index lists into ``genes``."""

    path: Path
    patients: list[str]
    genes: list[str]
    expression: np.ndarray
    collections: dict[str, StoredCollection]
    attrs: dict[str, Any]

    def frame(self) -> pd.DataFrame:
        """The expression as a DataFrame (index: patient ids, columns: genes)."""
        return pd.DataFrame(self.expression, index=pd.Index(self.patients, name="patient_id"),
                            columns=pd.Index(self.genes, name="gene"))

    def rows(self, patients: Sequence[str]) -> np.ndarray:
        """Row positions of ``patients``; a patient without expression raises ``KeyError``."""
        position = {p: i for i, p in enumerate(self.patients)}
        missing = [p for p in patients if p not in position]
        if missing:
            raise KeyError(f"{len(missing)} patient(s) have no expression in {self.path}: {missing[:5]}")
        return np.array([position[p] for p in patients], dtype=np.int64)

    def sets(self, collection: str) -> list[np.ndarray]:
        """The kept sets of ``collection`` as column-index arrays into ``genes``."""
        if collection not in self.collections:
            raise KeyError(f"{self.path}: no gene-set collection '{collection}' (has {sorted(self.collections)})")
        return self.collections[collection].indices


def _unique(items: Sequence[Any]) -> list[Any]:
    return list(dict.fromkeys(items))


def _describe_files(paths: Sequence[Path]) -> str:
    return str(paths[0]) if len(paths) == 1 else ", ".join(str(p) for p in paths)


def _combine(matrices: list[ExpressionMatrix]) -> tuple[pd.DataFrame, dict[str, Path]]:
    """Stack the files' patients (genes: union, missing where a file lacks them); a patient in two files is an error."""
    owner: dict[str, Path] = {}
    for matrix in matrices:
        for patient in matrix.patients:
            if patient in owner:
                raise InputError(matrix.path, f"patient '{patient}' is also in {owner[patient]}",
                                 "give each patient's expression in one file only")
            owner[patient] = matrix.path
    if len(matrices) == 1:
        return matrices[0].data, owner
    return pd.concat([m.data for m in matrices], axis=0, join="outer", sort=False), owner


def build_genomics_store(expression_paths: Sequence[str | os.PathLike[str]], patients: Sequence[str],
                         out_store: str | os.PathLike[str], settings: GenomicsSettings | None = None) -> Path:
    """Write the cohort's genomics store at ``out_store`` (see the module docstring) and return its path.

    ``expression_paths`` may repeat (one per sample sheet row); ``patients`` are the sample sheet's patient
    ids. Patients without expression are recorded, not an error; no patient with expression is.
    """
    settings = settings or GenomicsSettings()
    out_store = Path(out_store)
    paths = _unique([Path(p) for p in expression_paths])
    wanted = _unique([str(p) for p in patients])
    if not paths:
        raise InputError(out_store, "no expression file given", "set expression_path in the sample sheet")
    if not wanted:
        raise InputError(out_store, "no patient given", "the sample sheet has no patients")

    matrices = [read_expression(p, settings.orientation, scale=settings.scale, duplicates=settings.duplicates,
                                multi_sample=settings.multi_sample, patients=wanted,
                                raw_threshold=settings.raw_threshold) for p in paths]
    combined, owner = _combine(matrices)
    matched = [p for p in wanted if p in owner]
    missing = [p for p in wanted if p not in owner]
    extra = [p for p in combined.index if p not in set(wanted)]
    if not matched:
        raise InputError(_describe_files(paths), f"no patient of the sample sheet has expression here: the file "
                         f"has {len(owner)} patients (e.g. {', '.join(list(owner)[:3])}), the sample sheet "
                         f"{len(wanted)} (e.g. {', '.join(wanted[:3])})",
                         "check the ids: TCGA barcodes match patients on their first 12 characters")
    if missing:
        log.warning("%d of %d patients have no expression: %s%s", len(missing), len(wanted),
                    ", ".join(missing[:10]), " ..." if len(missing) > 10 else "")

    frame = combined.loc[matched]
    n_genes_read = int(frame.shape[1])
    frame, dropped_genes = drop_sparse_genes(frame, settings.max_nan_fraction)
    if dropped_genes:
        log.info("dropped %d gene(s) missing in more than %.0f%% of the patients: %s", len(dropped_genes),
                 100 * settings.max_nan_fraction, ", ".join(list(dropped_genes)[:10]))
    if frame.shape[1] == 0:
        raise InputError(_describe_files(paths), f"every gene is missing in more than "
                         f"{settings.max_nan_fraction:.0%} of the patients", "check the matrix or max_nan_fraction")
    empty = frame.index[frame.isna().all(axis=1)].tolist()
    if empty:
        raise InputError(owner[empty[0]], f"all values are missing for patient '{empty[0]}' in the genes kept"
                         + (f" (and {len(empty) - 1} more patients)" if len(empty) > 1 else ""),
                         "remove the patient or fill in its expression")
    genes = [str(g) for g in frame.columns]
    values = frame.to_numpy(dtype=np.float64)

    collections: dict[str, FilteredCollection] = {}
    for spec in settings.genesets:
        raw = load_collection(spec)
        if raw.name in collections:
            raise ValueError(f"gene-set collection '{raw.name}' is configured twice")
        collections[raw.name] = filter_collection(raw, genes, settings.min_genes(raw.name))

    arrays: dict[str, ArraySpec] = {
        "patient_ids": ArraySpec(np.array(matched, dtype=_STR), ("patient",)),
        "genes": ArraySpec(np.array(genes, dtype=_STR), ("gene",)),
        "expression": ArraySpec(values, ("patient", "gene")),
    }
    counts: dict[str, Any] = {
        "patients_requested": len(wanted), "patients_matched": len(matched), "patients_missing": len(missing),
        "patients_not_in_samplesheet": len(extra), "genes_read": n_genes_read, "genes": len(genes),
        "genes_dropped_missing": len(dropped_genes), "missing_values": int(np.isnan(values).sum()),
        "collections": {},
    }
    summaries = {}
    for name, coll in collections.items():
        indices = coll.indices(genes)
        flat, offsets = flatten_sets(indices)
        base = f"genesets/{name}"
        arrays[f"{base}/names"] = ArraySpec(np.array(coll.set_names, dtype=_STR), ("set",))
        arrays[f"{base}/gene_index"] = ArraySpec(flat, ("member",))
        arrays[f"{base}/offsets"] = ArraySpec(offsets, ("set_edge",))
        arrays[f"{base}/n_defined"] = ArraySpec(np.array([coll.n_defined[s] for s in coll.set_names], np.int32),
                                                ("set",))
        arrays[f"{base}/rank_scores"] = ArraySpec(rank_scores(values, indices), ("patient", "set"))
        summaries[name] = coll.summary()
        counts["collections"][name] = {k: summaries[name][k] for k in
                                       ("n_defined", "n_kept", "n_dropped", "genes_in_collection", "genes_matched",
                                        "min_genes")}
        log.info("%s: %d of %d sets kept (%d dropped), %d of %d genes matched", name, len(coll.sets),
                 summaries[name]["n_defined"], len(coll.dropped), coll.genes_matched, coll.genes_in_collection)

    attrs = {
        "schema": SCHEMA, "stage": STAGE, "counts": counts,
        "expression": "log2 scale, unscaled (fit GeneScaler on each fold's training patients); NaN = missing",
        "patients_missing": missing, "patients_not_in_samplesheet": extra,
        "genes_dropped_missing": dropped_genes, "files": [m.summary() for m in matrices],
        "collections": summaries, "rank_score_definition": RANK_SCORE_DEFINITION, "settings": settings.to_dict(),
    }
    inputs: dict[str, str | os.PathLike[str]] = {f"expression_{i}": p for i, p in enumerate(paths)}
    for name, coll in collections.items():
        for j, file in enumerate(coll.files):
            inputs[f"genesets_{name}_{j}"] = file
    provenance = build_provenance(STAGE, inputs, settings.to_dict(), extra={"counts": counts})
    return write_store(out_store, arrays, attrs, provenance)


def _strings(array: Any) -> list[str]:
    return [str(x) for x in np.asarray(array[...]).tolist()]


def load_genomics(store: str | os.PathLike[str]) -> GenomicsData:
    """Read a store written by :func:`build_genomics_store` (refuses incomplete or foreign stores)."""
    path = Path(store)
    group = open_store(path)
    attrs = dict(group.attrs)
    if attrs.get("stage") != STAGE or attrs.get("schema") != SCHEMA:
        raise InputError(path, f"not a genomics store (stage {attrs.get('stage')!r}, schema {attrs.get('schema')!r})",
                         "give the output of the genomics stage")
    genes = _strings(group["genes"])
    collections = {}
    for name, summary in attrs.get("collections", {}).items():
        base = f"genesets/{name}"
        collections[name] = StoredCollection(
            name=name, set_names=_strings(group[f"{base}/names"]),
            indices=unflatten_sets(np.asarray(group[f"{base}/gene_index"][...]),
                                   np.asarray(group[f"{base}/offsets"][...])),
            n_defined=np.asarray(group[f"{base}/n_defined"][...]),
            rank_scores=np.asarray(group[f"{base}/rank_scores"][...]),
            dropped=list(summary.get("dropped", [])), summary=summary)
    return GenomicsData(path=path, patients=_strings(group["patient_ids"]), genes=genes,
                        expression=np.asarray(group["expression"][...], dtype=np.float64),
                        collections=collections, attrs=attrs)
