"""The multimodal cohort the training harness reads: one :class:`~pathmm_pipeline.models.PatientInput` and its
targets per patient, from the pipeline's stores.

Per patient:

* **wsi**: the patch features of all the patient's slides (:func:`~pathmm_pipeline.cohort.bags.load_patient_bag`),
  capped at ``max_tiles`` by a seeded sample (the same tiles every epoch); slides with no tile are skipped, a
  patient with no tile at all has no WSI.
* **genomics**: the flat scaled gene vector (``genes``), one vector per pathway of ``pathway_collection``
  (``pathways``, SurvPath's tokens) and per gene family of ``family_collection`` (``families``, MCAT's), all
  from the expression scaled by a :class:`~pathmm_pipeline.genomics.GeneScaler` **fitted on the fold's
  training patients only** and passed in (:meth:`MultimodalCohort.with_scaler`, or :meth:`for_fold`, which
  fits it on the training ids it is given). Without a scaler, asking for genomics is an error.
* **report**: the report embedding and, when the store kept them and ``report_tokens`` is on, the token
  hidden states of every window of the report (padding removed), ``(T, D)``.
* **targets**: survival time (months) and event (1 = observed), the class index of ``label_column``, and the
  cancer-type index.

Any subset of modalities may be missing for a patient; :meth:`MultimodalCohort.presence` is the explicit mask
(known without loading any tensor). Data are read lazily and cached in memory (``cache=True``).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pathmm_pipeline.cohort.bags import load_patient_bag
from pathmm_pipeline.core.errors import InputError
from pathmm_pipeline.core.stores import open_store
from pathmm_pipeline.genomics.normalize import GeneScaler
from pathmm_pipeline.genomics.stage import GenomicsData, load_genomics
from pathmm_pipeline.models.base import MODALITIES, InputDims, PatientInput
from pathmm_pipeline.models.clinical_text import clinical_values

MISSING_LABEL = -1
MISSING_EVENT = -1


@dataclass(frozen=True)
class Targets:
    """What a patient is trained against: ``time`` (months, NaN unknown), ``event`` (1 observed, 0 censored,
    -1 unknown), ``label`` (class index, -1 none) and ``cancer_type`` (index into the cohort's types)."""

    time: float
    event: int
    label: int
    cancer_type: int

    @property
    def has_survival(self) -> bool:
        return bool(np.isfinite(self.time)) and self.event in (0, 1)

    @property
    def has_label(self) -> bool:
        return self.label >= 0


@dataclass
class CohortItem:
    """One patient: its inputs, targets and which modalities it has."""

    patient_id: str
    x: PatientInput
    y: Targets
    present: dict[str, bool]


@dataclass
class _Shared:
    """What every fold view of a cohort shares (and caches)."""

    wsi: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    tokens: dict[str, np.ndarray | None] = field(default_factory=dict)
    n_tiles: dict[str, int] = field(default_factory=dict)
    wsi_dim: int | None = None


class MultimodalCohort:
    """Patients with WSI bags, genomics and report embeddings (each optional) and their targets.

    ``patients``: one row per patient, indexed by patient id (or with a ``patient_id`` column), with
    ``cancer_type``, ``survival_time``, ``survival_event`` and, optionally, ``label_column``.
    ``feature_stores``: patient id -> that patient's feature stores (one per slide). ``genomics``: a genomics
    store (path or loaded :class:`GenomicsData`). ``reports``: a report-embedding store.
    ``label_classes`` fixes the class order (default: the sorted values found); ``cancer_types`` the type
    order (default: sorted). ``scaler``: a GeneScaler fitted on the fold's training patients.
    """

    def __init__(self, patients: pd.DataFrame,
                 feature_stores: Mapping[str, Sequence[str | os.PathLike[str]]] | None = None,
                 genomics: str | os.PathLike[str] | GenomicsData | None = None,
                 reports: str | os.PathLike[str] | None = None, *, label_column: str | None = None,
                 label_classes: Sequence[Any] | None = None, cancer_types: Sequence[str] | None = None,
                 max_tiles: int | None = 4096, seed: int = 0, pathway_collection: str | None = "survpath",
                 family_collection: str | None = "mcat_families", report_tokens: bool = True,
                 scaler: GeneScaler | None = None, cache: bool = True, source: str | os.PathLike[str] | None = None,
                 gene_scaling: str = "zscore") -> None:
        frame = patients.copy()
        if "patient_id" in frame.columns:
            frame = frame.drop_duplicates("patient_id").set_index("patient_id")
        frame.index = frame.index.astype(str)
        if frame.index.has_duplicates:
            raise ValueError(f"duplicated patient ids: {frame.index[frame.index.duplicated()].tolist()[:5]}")
        self.table = frame
        self.patient_ids: list[str] = list(frame.index)
        self.source = None if source is None else str(source)
        self.max_tiles = max_tiles
        self.gene_scaling = gene_scaling
        self.seed = int(seed)
        self.cache = bool(cache)
        self.label_column = label_column

        # targets -------------------------------------------------------------------------------------------
        types = frame["cancer_type"].astype(str) if "cancer_type" in frame else pd.Series("all", index=frame.index)
        self.cancer_types = list(cancer_types) if cancer_types is not None else sorted(types.unique().tolist())
        unknown = sorted(set(types) - set(self.cancer_types))
        if unknown:
            raise ValueError(f"cancer type(s) {unknown} are not among {self.cancer_types}")
        type_index = {t: i for i, t in enumerate(self.cancer_types)}
        times = pd.to_numeric(frame.get("survival_time", pd.Series(np.nan, index=frame.index)), errors="coerce")
        events = pd.to_numeric(frame.get("survival_event", pd.Series(np.nan, index=frame.index)), errors="coerce")
        if label_column is not None:
            if label_column not in frame:
                raise KeyError(f"label column {label_column!r} not in the patients table ({list(frame.columns)})")
            values = frame[label_column]
            known = values.dropna()
            known = known[known.astype(str).str.strip() != ""]
            self.label_classes = (list(label_classes) if label_classes is not None
                                  else sorted(known.unique().tolist(), key=str))
            class_index = {str(c): i for i, c in enumerate(self.label_classes)}
            bad = sorted({str(v) for v in known} - set(class_index))
            if bad:
                raise ValueError(f"label value(s) {bad} of {label_column!r} are not among {self.label_classes}")
            labels = {p: class_index[str(v)] if p in known.index else MISSING_LABEL for p, v in values.items()}
        else:
            self.label_classes = []
            labels = {p: MISSING_LABEL for p in frame.index}
        self._targets = {
            p: Targets(float(times[p]) if pd.notna(times[p]) else float("nan"),
                       int(events[p]) if pd.notna(events[p]) else MISSING_EVENT, int(labels[p]),
                       type_index[str(types[p])])
            for p in frame.index}

        # wsi -----------------------------------------------------------------------------------------------
        self.feature_stores: dict[str, list[str]] = {
            str(p): [str(s) for s in stores] for p, stores in (feature_stores or {}).items()}
        self._shared = _Shared()

        # genomics ------------------------------------------------------------------------------------------
        self.genomics: GenomicsData | None = (genomics if isinstance(genomics, GenomicsData) or genomics is None
                                              else load_genomics(genomics))
        self.pathway_collection = self._collection(pathway_collection)
        self.family_collection = self._collection(family_collection)
        self._genomics_rows = ({p: i for i, p in enumerate(self.genomics.patients)} if self.genomics else {})
        self.scaler: GeneScaler | None = None
        self._scaled: np.ndarray | None = None
        if scaler is not None:
            self._apply_scaler(scaler)

        # reports -------------------------------------------------------------------------------------------
        self.reports_path = None if reports is None else Path(reports)
        self.report_tokens = bool(report_tokens)
        self._report_rows: dict[str, int] = {}
        self._report_embeddings: np.ndarray | None = None
        self._report_has_tokens = False
        if reports is not None:
            group = open_store(reports)
            ids = [str(x) for x in np.asarray(group["patient_ids"][...]).tolist()]
            self._report_rows = {p: i for i, p in enumerate(ids)}
            self._report_embeddings = np.asarray(group["embeddings"][...], dtype=np.float32)
            self._report_has_tokens = "hidden_states" in group and "patient_chunk_offsets" in group
            self._report_group = group

    # ------------------------------------------------------------------------------------------- builders
    @classmethod
    def from_manifest(cls, manifest: str | os.PathLike[str] | pd.DataFrame,
                      features_dir: str | os.PathLike[str] | None = None,
                      genomics: str | os.PathLike[str] | GenomicsData | None = None,
                      reports: str | os.PathLike[str] | None = None, **options: Any) -> MultimodalCohort:
        """A cohort from the pipeline's manifest (one row per slide: ``patient_id``, ``slide_id``, ...) and the
        folder of one encoder's feature stores (``<features_dir>/<slide_id>.zarr``; absent stores are skipped)."""
        source = None
        if isinstance(manifest, pd.DataFrame):
            slides = manifest
        else:
            source = Path(manifest)
            slides = pd.read_parquet(source) if source.suffix == ".parquet" else pd.read_csv(source, dtype=str)
        for column in ("patient_id", "slide_id"):
            if column not in slides:
                raise InputError(source or "<manifest>", f"no '{column}' column")
        stores: dict[str, list[str]] = {}
        if features_dir is not None:
            root = Path(features_dir)
            for pid, sid in zip(slides.patient_id.astype(str), slides.slide_id.astype(str)):
                path = root / f"{sid}.zarr"
                if (path / "zarr.json").is_file():
                    stores.setdefault(pid, []).append(str(path))
        patients = slides.drop_duplicates("patient_id").set_index("patient_id")
        patients = patients.drop(columns=[c for c in ("slide_id", "slide_path", "mpp", "roi_path") if c in patients])
        return cls(patients, stores, genomics, reports, source=source, **options)

    def _collection(self, name: str | None) -> str | None:
        if name is None or self.genomics is None:
            return None
        return name if name in self.genomics.collections else None

    # ------------------------------------------------------------------------------------------- scaling
    def fit_scaler(self, train_patients: Iterable[str], std_floor: float = 0.1,
                   clip: float | None = None) -> GeneScaler:
        """A GeneScaler fitted on the expression of ``train_patients`` only (those with expression)."""
        if self.genomics is None:
            raise ValueError("this cohort has no genomics store: nothing to scale")
        rows = [p for p in train_patients if p in self._genomics_rows]
        if not rows:
            raise ValueError("no training patient has expression: cannot fit the gene scaler")
        values = self.genomics.expression[[self._genomics_rows[p] for p in rows]]
        return GeneScaler(std_floor, clip, method=self.gene_scaling).fit(values, train_patients=rows,
                                                                         genes=self.genomics.genes)

    def with_scaler(self, scaler: GeneScaler | None) -> MultimodalCohort:
        """A view of this cohort whose genomics are scaled by ``scaler`` (the caches are shared)."""
        view = copy.copy(self)
        view.scaler, view._scaled = None, None
        if scaler is not None:
            view._apply_scaler(scaler)
        return view

    def for_fold(self, train_patients: Iterable[str], std_floor: float = 0.1) -> MultimodalCohort:
        """:meth:`with_scaler` of a scaler fitted on ``train_patients`` (a no-op without genomics)."""
        if self.genomics is None:
            return self.with_scaler(None)
        return self.with_scaler(self.fit_scaler(train_patients, std_floor))

    def _apply_scaler(self, scaler: GeneScaler) -> None:
        if self.genomics is None:
            raise ValueError("this cohort has no genomics store: a scaler has nothing to scale")
        if not scaler.fitted:
            raise ValueError("the scaler is not fitted: fit it on the fold's training patients first")
        if list(scaler.genes) != list(self.genomics.genes):
            raise ValueError(f"the scaler was fitted on {len(scaler.genes)} genes that are not this store's "
                             f"{len(self.genomics.genes)} genes (in order)")
        self.scaler = scaler
        self._scaled = np.asarray(scaler.transform(self.genomics.expression), dtype=np.float32)

    # ------------------------------------------------------------------------------------------- presence
    def __len__(self) -> int:
        return len(self.patient_ids)

    def __contains__(self, patient_id: object) -> bool:
        return patient_id in self._targets

    def __iter__(self) -> Iterator[str]:
        return iter(self.patient_ids)

    def _tiles(self, patient_id: str) -> int:
        if patient_id not in self._shared.n_tiles:
            total = 0
            for path in self.feature_stores.get(patient_id, []):
                attrs = open_store(path).attrs
                total += int(attrs.get("n_tiles", 0))
                if self._shared.wsi_dim is None and total:
                    self._shared.wsi_dim = int(attrs["encoder"]["embed_dim"])
            self._shared.n_tiles[patient_id] = total
        return self._shared.n_tiles[patient_id]

    def presence(self, patient_id: str) -> dict[str, bool]:
        """``{"wsi", "genomics", "report"}``: whether the patient has each modality (no tensor is loaded)."""
        self._check(patient_id)
        return {"wsi": self._tiles(patient_id) > 0, "genomics": patient_id in self._genomics_rows,
                "report": patient_id in self._report_rows}

    def presence_table(self, patients: Iterable[str] | None = None) -> pd.DataFrame:
        """Boolean patients x modalities table (plus the number of tiles)."""
        ids = list(self.patient_ids if patients is None else patients)
        frame = pd.DataFrame([self.presence(p) for p in ids], index=pd.Index(ids, name="patient_id"),
                             columns=list(MODALITIES))
        frame["n_tiles"] = [self._tiles(p) for p in ids]
        return frame

    def targets(self, patient_id: str) -> Targets:
        self._check(patient_id)
        return self._targets[patient_id]

    def clinical(self, patient_id: str) -> dict[str, str]:
        """The patient's clinical facts from the patients table (diagnosis, stage, T / N / M, site;
        :func:`~pathmm_pipeline.models.clinical_text.clinical_values`), blanks left out."""
        self._check(patient_id)
        return clinical_values(self.table.loc[patient_id].to_dict())

    def survival(self, patients: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(times, events)`` arrays of ``patients``."""
        ts = [self.targets(p) for p in patients]
        return np.array([t.time for t in ts], dtype=np.float64), np.array([t.event for t in ts], dtype=np.int64)

    def labels(self, patients: Sequence[str]) -> np.ndarray:
        return np.array([self.targets(p).label for p in patients], dtype=np.int64)

    def _check(self, patient_id: str) -> None:
        if patient_id not in self._targets:
            raise KeyError(f"patient '{patient_id}' is not in this cohort ({len(self)} patients)")

    # ------------------------------------------------------------------------------------------- dims
    def input_dims(self, modalities: Iterable[str] | None = None) -> InputDims:
        """The InputDims of what this cohort provides (``modalities`` restricts it)."""
        wanted = set(MODALITIES if modalities is None else modalities)
        wsi = None
        if "wsi" in wanted:
            for p in self.patient_ids:
                if self._tiles(p):
                    wsi = self._shared.wsi_dim
                    break
        genes = pathways = families = members = None
        if "genomics" in wanted and self.genomics is not None and self._genomics_rows:
            genes = len(self.genomics.genes)
            if self.pathway_collection:
                sets = self.genomics.sets(self.pathway_collection)
                pathways = tuple(len(i) for i in sets) or None
                members = tuple(tuple(int(g) for g in i) for i in sets) or None
            if self.family_collection:
                families = tuple(len(i) for i in self.genomics.sets(self.family_collection)) or None
        report = None
        if "report" in wanted and self._report_embeddings is not None and self._report_rows:
            report = int(self._report_embeddings.shape[1])
        return InputDims(wsi=wsi, genes=genes, pathway_sizes=pathways, family_sizes=families, report=report,
                         n_cancer_types=max(1, len(self.cancer_types)), pathway_members=members)

    # ------------------------------------------------------------------------------------------- loading
    def _wsi(self, patient_id: str) -> tuple[np.ndarray, np.ndarray] | None:
        if not self._tiles(patient_id):
            return None
        if patient_id in self._shared.wsi:
            return self._shared.wsi[patient_id]
        stores = [s for s in self.feature_stores[patient_id] if int(open_store(s).attrs.get("n_tiles", 0)) > 0]
        bag = load_patient_bag(patient_id, stores, self.max_tiles, self.seed)
        value = (bag.features, bag.coords)
        if self.cache:
            self._shared.wsi[patient_id] = value
        return value

    def _tokens(self, patient_id: str) -> np.ndarray | None:
        if not (self.report_tokens and self._report_has_tokens):
            return None
        if patient_id in self._shared.tokens:
            return self._shared.tokens[patient_id]
        group = self._report_group
        row = self._report_rows[patient_id]
        offsets = np.asarray(group["patient_chunk_offsets"][row:row + 2])
        a, b = int(offsets[0]), int(offsets[1])
        value = None
        if b > a:
            hidden = np.asarray(group["hidden_states"][a:b], dtype=np.float32)
            mask = np.asarray(group["attention_mask"][a:b]).astype(bool)
            value = hidden[mask]
            if not len(value):
                value = None
        if self.cache:
            self._shared.tokens[patient_id] = value
        return value

    def get(self, patient_id: str, modalities: Iterable[str] | None = None) -> CohortItem:
        """The patient's inputs (only ``modalities``, default all) and targets."""
        self._check(patient_id)
        wanted = set(MODALITIES if modalities is None else modalities)
        unknown = wanted - set(MODALITIES)
        if unknown:
            raise ValueError(f"unknown modality {sorted(unknown)[0]!r}; modalities are {', '.join(MODALITIES)}")
        present = self.presence(patient_id)
        y = self._targets[patient_id]
        fields: dict[str, Any] = {"cancer_type": y.cancer_type}
        if "wsi" in wanted and present["wsi"]:
            features, coords = self._wsi(patient_id)  # type: ignore[misc]
            fields["wsi"] = torch.from_numpy(np.asarray(features, dtype=np.float32))
            fields["wsi_coords"] = torch.from_numpy(np.asarray(coords, dtype=np.int64))
        if "genomics" in wanted and present["genomics"]:
            if self._scaled is None:
                raise RuntimeError("genomics asked for before a gene scaler was given: use cohort.for_fold(train "
                                   "patients) or cohort.with_scaler(scaler fitted on the fold's training patients)")
            row = self._scaled[self._genomics_rows[patient_id]]
            fields["genes"] = torch.from_numpy(row.copy())
            if self.pathway_collection:
                fields["pathways"] = [torch.from_numpy(row[idx]) for idx in self.genomics.sets(self.pathway_collection)]
            if self.family_collection:
                fields["families"] = [torch.from_numpy(row[idx]) for idx in self.genomics.sets(self.family_collection)]
        if "report" in wanted and present["report"]:
            fields["report"] = torch.from_numpy(self._report_embeddings[self._report_rows[patient_id]].copy())
            tokens = self._tokens(patient_id)
            if tokens is not None:
                fields["report_tokens"] = torch.from_numpy(tokens)
        x = PatientInput(**fields)
        shown = {m: present[m] and m in wanted for m in MODALITIES}
        return CohortItem(patient_id, x, y, shown)

    def __getitem__(self, key: str | int) -> CohortItem:
        return self.get(self.patient_ids[key] if isinstance(key, int) else key)

    # ------------------------------------------------------------------------------------------- provenance
    def input_paths(self, patients: Iterable[str] | None = None) -> dict[str, str]:
        """role -> path of every store this cohort reads for ``patients`` (for provenance)."""
        ids = self.patient_ids if patients is None else [p for p in patients if p in self._targets]
        out: dict[str, str] = {}
        if self.source:
            out["manifest"] = self.source
        for p in ids:
            for path in self.feature_stores.get(p, []):
                out[f"features:{Path(path).name}"] = path
        if self.genomics is not None:
            out["genomics"] = str(self.genomics.path)
        if self.reports_path is not None:
            out["reports"] = str(self.reports_path)
        return out

    def describe(self) -> dict[str, Any]:
        """Counts per modality and settings (for logs and provenance)."""
        table = self.presence_table()
        return {"n_patients": len(self), **{f"n_{m}": int(table[m].sum()) for m in MODALITIES},
                "max_tiles": self.max_tiles, "seed": self.seed, "label_column": self.label_column,
                "label_classes": [str(c) for c in self.label_classes], "cancer_types": self.cancer_types,
                "pathway_collection": self.pathway_collection, "family_collection": self.family_collection,
                "report_tokens": self.report_tokens and self._report_has_tokens}
