"""The pretraining stage of the multimodal methods (ALTER, MICE, ...): a model's own objective
(:meth:`~pathmm_pipeline.models.PathmmModel.pretraining_loss`) over a corpus of patients, each with any subset
of modalities, written as a checkpoint with provenance that fine-tuning starts from.

* **Corpus**: the fold's *training* patients of the cohort (never its validation patients: MICE's pretraining
  is supervised by survival, and even a self-supervised objective should not see the held-out slides), plus,
  optionally, an **external** cohort: patients with expression and clinical data but no slide or report (the
  TCGA patients of the same cancer types that are not in the cohort), the missing-modality case these methods
  claim to exploit. External genes are aligned to the cohort's genomics store (its gene order and gene sets;
  a gene the external store lacks is missing, i.e. imputed by the scaler's median).
* **Scaling**: one GeneScaler fitted on the expression of the whole corpus (cohort training + external).
* **Batches**: ``batch_size`` patients, shuffled per epoch with a seeded generator; a
  :class:`~pathmm_pipeline.models.PretrainBatch` carries the inputs, the cancer-type indices and the
  discrete survival bins (cut at the quantiles of the corpus's uncensored times) for supervised objectives.
* **Optimiser**: AdamW with linear warm-up and cosine decay (as fine-tuning), gradient clipping.
* **Output**: ``pretrained.pt`` (:func:`save_pretrained`): the method, its options and InputDims, the weights
  fine-tuning inherits (:meth:`~pathmm_pipeline.models.PathmmModel.pretrained_state`), the history of every
  loss term per epoch, the corpus; and its provenance (stage ``pretrain``; inputs: every store read, the
  split file, the external patients table), also as the ``.provenance.json`` sidecar. Fine-tuning
  (:func:`~pathmm_pipeline.training.finetune.train_fold` with ``pretrained=``) records this file among its inputs,
  so ``pathmm audit --lineage`` follows a fine-tuned model back to its pretraining and on to the raw data.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from pathmm_pipeline.cohort.dataset import MultimodalCohort
from pathmm_pipeline.core.atomic import atomic_path
from pathmm_pipeline.core.errors import InputError, ProvenanceError
from pathmm_pipeline.core.provenance import build_provenance, hash_file, write_sidecar
from pathmm_pipeline.genomics.normalize import GeneScaler
from pathmm_pipeline.genomics.stage import GenomicsData, load_genomics
from pathmm_pipeline.models import InputDims, PathmmModel, PretrainBatch, TaskSpec, build_model, get_model_class
from pathmm_pipeline.models.checkpoint import dims_from_record, options_from_record, plain_json
from pathmm_pipeline.models.clinical_text import CLINICAL_COLUMNS
from pathmm_pipeline.models.losses import discretize, make_time_bins
from pathmm_pipeline.preprocess.samplesheet import EXTERNAL_COLUMNS, read_external_patients
from pathmm_pipeline.training.engine import Engine, cosine_with_warmup, peak_gpu_mb, peak_rss_mb, run_on
from pathmm_pipeline.training.settings import PretrainConfig

log = logging.getLogger(__name__)

SCHEMA = "pathmm.pretrained/1"
STAGE = "pretrain"


@dataclass
class PretrainResult:
    """A finished pretraining run: the model (CPU, eval mode), the per-epoch history of every loss term and the
    corpus it saw."""

    model_name: str
    model: PathmmModel
    history: pd.DataFrame
    patients: list[str]
    external_patients: list[str]
    seconds: float
    peak_rss_mb: float
    peak_gpu_mb: float | None
    device: str
    checkpoint: Path | None = None


# ------------------------------------------------------------------------------------------------ corpus
def align_genomics(external: GenomicsData, reference: GenomicsData) -> GenomicsData:
    """``external`` re-indexed to the genes (order) and gene sets of ``reference``; genes it lacks are NaN."""
    frame = external.frame().reindex(columns=reference.genes)
    absent = int(frame.isna().all(axis=0).sum())
    if absent == len(reference.genes):
        raise InputError(external.path, "shares no gene with the cohort's genomics store "
                         f"{reference.path}", "use the same expression platform and gene symbols")
    if absent:
        log.warning("%s: %d of the cohort's %d genes are absent (imputed by the scaler's median)", external.path,
                    absent, len(reference.genes))
    return GenomicsData(path=external.path, patients=list(external.patients), genes=list(reference.genes),
                        expression=frame.to_numpy(dtype=np.float64), collections=reference.collections,
                        attrs={**external.attrs, "aligned_to": str(reference.path)})


def external_cohort(patients: pd.DataFrame | str | os.PathLike[str], genomics: str | os.PathLike[str],
                    reference: MultimodalCohort, exclude: Sequence[str] = ()) -> MultimodalCohort:
    """The slide-less patients as a cohort aligned with ``reference`` (same genes, gene sets and cancer-type
    order); patients of ``exclude`` (the cohort's own patients), of another cancer type or without expression
    are left out."""
    if reference.genomics is None:
        raise ValueError("the cohort has no genomics store: external genomics-only patients cannot be aligned")
    table = read_external_patients(patients) if not isinstance(patients, pd.DataFrame) else patients.copy()
    data = align_genomics(load_genomics(genomics), reference.genomics)
    keep = (~table.patient_id.isin(set(exclude)) & table.cancer_type.isin(reference.cancer_types)
            & table.patient_id.isin(set(data.patients)))
    dropped = int((~keep).sum())
    if dropped:
        log.info("external cohort: %d of %d patients left out (in the cohort, another cancer type, or no "
                 "expression)", dropped, len(table))
    table = table[keep]
    clinical = [c for columns in CLINICAL_COLUMNS.values() for c in columns if c in table and c not in
                EXTERNAL_COLUMNS]
    return MultimodalCohort(table[[*EXTERNAL_COLUMNS, *clinical]], {}, data, None,
                            cancer_types=reference.cancer_types,
                            pathway_collection=reference.pathway_collection,
                            family_collection=reference.family_collection)


def _corpus_scaler(parts: list[tuple[MultimodalCohort, list[str]]]) -> GeneScaler | None:
    rows, ids, genes = [], [], None
    for cohort, patients in parts:
        if cohort.genomics is None:
            continue
        have = [p for p in patients if cohort.presence(p)["genomics"]]
        rows.append(cohort.genomics.expression[cohort.genomics.rows(have)])
        ids += have
        genes = cohort.genomics.genes
    if not ids:
        return None
    return GeneScaler().fit(np.vstack(rows), train_patients=ids, genes=genes)


# ------------------------------------------------------------------------------------------------ loop
def pretrain(model_name: str, cohort: MultimodalCohort, patients: Sequence[str], config: PretrainConfig | None = None,
             *, external: MultimodalCohort | None = None, out_dir: str | os.PathLike[str] | None = None,
             split_file: str | os.PathLike[str] | None = None,
             extra_inputs: dict[str, str | os.PathLike[str]] | None = None) -> PretrainResult:
    """Pretrain ``model_name`` on ``patients`` of ``cohort`` (plus every patient of ``external``) with the
    model's own objective; with ``out_dir``, write ``pretrained.pt`` and ``pretrain_log.csv`` there."""
    config = config or PretrainConfig()
    cls = get_model_class(model_name)
    if not cls.pretrainable:
        raise ValueError(f"model '{model_name}' has no pretraining objective -- pretrainable models: "
                         f"{', '.join(n for n in _pretrainable())}")
    start = time.perf_counter()
    own = [p for p in patients if p in cohort]
    parts = [(cohort, own)]
    if external is not None:
        parts.append((external, list(external.patient_ids)))
    scaler = _corpus_scaler(parts)
    views = [(c.with_scaler(scaler) if c.genomics is not None else c, ids) for c, ids in parts]
    corpus = [(view, p) for view, ids in views for p in ids if any(view.presence(p).values())]
    if len(corpus) < config.batch_size:
        raise ValueError(f"pretraining corpus has {len(corpus)} patients, fewer than batch_size "
                         f"{config.batch_size}")
    times = np.array([c.targets(p).time for c, p in corpus])
    events = np.array([c.targets(p).event for c, p in corpus])
    known = np.isfinite(times) & (events >= 0)
    edges = make_time_bins(times[known], events[known], config.n_bins) if known.sum() >= config.n_bins else None
    bins = np.full(len(corpus), -1, dtype=np.int64)
    if edges is not None:
        bins[known] = discretize(times[known], edges)
    events = np.where(known, events, -1)
    types = np.array([c.targets(p).cancer_type for c, p in corpus])
    clinical = [c.clinical(p) for c, p in corpus]

    with run_on(config.device, deterministic=config.deterministic, threads=config.threads,
                seed=config.seed) as device:
        dims = cohort.input_dims()
        model = build_model(model_name, dims, TaskSpec.survival(config.n_bins), **config.model_options)
        model.fit_pretraining_corpus(clinical)  # e.g. ModalTune's rare subtypes: the corpus only
        model.to(device)
        steps_per_epoch = math.ceil(len(corpus) / config.batch_size)
        engine = Engine(model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                        schedule=cosine_with_warmup(steps_per_epoch * config.epochs,
                                                    round(config.warmup_epochs * steps_per_epoch), 0.0),
                        max_grad_norm=config.max_grad_norm, device=device, amp=config.amp)
        rows: list[dict[str, Any]] = []
        epochs = tqdm(range(config.epochs), desc=f"pretrain {model_name}", unit="epoch",
                      disable=not config.progress, leave=False)
        for epoch in epochs:
            t0 = time.perf_counter()
            model.train()
            order = np.random.default_rng([config.seed, epoch]).permutation(len(corpus))
            sums: dict[str, float] = {}
            n_steps = 0
            for b in range(0, len(order), config.batch_size):
                idx = order[b:b + config.batch_size]
                if len(idx) < 2:
                    continue
                batch = PretrainBatch(
                    inputs=[corpus[i][0].get(corpus[i][1]).x.to(device) for i in idx],
                    cancer_type=torch.as_tensor(types[idx], device=device),
                    bins=torch.as_tensor(bins[idx], device=device),
                    events=torch.as_tensor(events[idx], device=device, dtype=torch.float32),
                    time_edges=None if edges is None else [float(v) for v in edges],
                    clinical=[clinical[i] for i in idx])
                with engine.autocast():
                    terms = model.pretraining_loss(batch)
                loss = terms["loss"]
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"pretraining {model_name}: loss is {float(loss)} at epoch {epoch} "
                                             f"(terms {({k: float(v) for k, v in terms.items()})}) -- lower lr")
                engine.zero_grad()
                engine.backward(loss)
                engine.step()
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach())
                n_steps += 1
            row = {"epoch": epoch, **{k: v / max(n_steps, 1) for k, v in sums.items()},
                   "lr": engine.lr, "seconds": time.perf_counter() - t0}
            rows.append(row)
            epochs.set_postfix(loss=f"{row.get('loss', float('nan')):.3f}")
            log.info("pretrain %s epoch %d: %s", model_name, epoch,
                     ", ".join(f"{k}={v:.4f}" for k, v in row.items() if k not in ("epoch",)))
        epochs.close()
        model.to("cpu").eval()
    result = PretrainResult(model_name, model, pd.DataFrame(rows), own,
                            [] if external is None else list(external.patient_ids), time.perf_counter() - start,
                            peak_rss_mb(), peak_gpu_mb(device), str(device))
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(out / "pretrain_log.csv") as tmp:
            result.history.to_csv(tmp, index=False)
        inputs: dict[str, Any] = cohort.input_paths(own)
        if external is not None:
            inputs.update({f"external:{k}": v for k, v in external.input_paths().items()})
        if split_file is not None:
            inputs["split_file"] = split_file
        inputs.update(extra_inputs or {})
        result.checkpoint = save_pretrained(out / "pretrained.pt", result, config, dims, inputs,
                                            edges=edges)
    return result


def _pretrainable() -> list[str]:
    from pathmm_pipeline.models import list_models
    return [n for n in list_models() if get_model_class(n).pretrainable]


# ------------------------------------------------------------------------------------------------ files
def save_pretrained(path: str | os.PathLike[str], result: PretrainResult, config: PretrainConfig, dims: InputDims,
                    inputs: dict[str, Any], edges: np.ndarray | None = None) -> Path:
    """Write the pretraining checkpoint atomically, then its provenance sidecar."""
    path = Path(path)
    params = {"model": result.model_name, "model_options": plain_json(config.model_options),
              "config": plain_json(config.to_dict()), "dims": plain_json(asdict(dims)),
              "n_patients": len(result.patients), "n_external": len(result.external_patients)}
    final = result.history.iloc[-1].to_dict() if len(result.history) else {}
    record = build_provenance(STAGE, inputs, params, extra={
        "trained_on": sorted(result.patients), "external_trained_on": sorted(result.external_patients),
        "final_epoch": plain_json(final), "seconds": result.seconds, "peak_rss_mb": result.peak_rss_mb,
        "peak_gpu_mb": result.peak_gpu_mb, "device": result.device, "model": plain_json(result.model.describe())})
    payload = {
        "schema": SCHEMA, "model_name": result.model_name, "model_options": plain_json(config.model_options),
        "dims": plain_json(asdict(dims)), "config": plain_json(config.to_dict()),
        "state_dict": {k: v.detach().to("cpu").clone() for k, v in result.model.pretrained_state().items()},
        "history": plain_json(result.history.to_dict(orient="records")),
        "corpus": {"patients": result.patients, "external_patients": result.external_patients},
        "time_bins": None if edges is None else [float(x) for x in edges],
        "provenance": record,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    write_sidecar(path, {**record, "outputs": {"checkpoint": {"path": str(path.resolve()), "given_path": str(path),
                                                              "sha256": hash_file(path)}}})
    return path


def read_pretrained(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The payload of a pretraining checkpoint (weights-only unpickling); a foreign file is refused."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "pretraining checkpoint not found", "run the pretraining rule first")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("schema") != SCHEMA:
        raise ProvenanceError(f"{path}: not a pathmm pretraining checkpoint (schema "
                              f"{payload.get('schema') if isinstance(payload, dict) else None!r}, expected {SCHEMA!r})")
    return payload


def apply_pretrained(model: PathmmModel, path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load the pretrained weights at ``path`` into ``model`` (same method, same InputDims, same options that
    shape the weights); returns what was loaded. A checkpoint of another method or of other dims is an error
    naming the file."""
    payload = read_pretrained(path)
    if payload["model_name"] != model.name:
        raise ValueError(f"{path}: pretrained for model '{payload['model_name']}', cannot initialise "
                         f"'{model.name}'")
    dims = dims_from_record(payload["dims"])
    if asdict(dims) != asdict(model.dims):
        changed = [k for k, v in asdict(dims).items() if asdict(model.dims)[k] != v]
        raise ValueError(f"{path}: pretrained on other input dims ({', '.join(changed)} differ) -- re-run "
                         f"pretraining on the stores this fine-tuning reads")
    report = model.load_pretrained(payload["state_dict"])
    log.info("%s: loaded %d pretrained tensors into '%s' (%d new, %d skipped)", path, len(report["loaded"]),
             model.name, len(report["missing"]), len(report["skipped"]))
    return {"path": str(path), "options": options_from_record(payload["model_options"]),
            "n_loaded": len(report["loaded"]), "missing": report["missing"], "skipped": report["skipped"]}


def load_pretrained_model(path: str | os.PathLike[str]) -> PathmmModel:
    """The model of a pretraining checkpoint, rebuilt with its options and dims (eval mode, CPU); its task head
    is untrained (pretraining has none) -- for frozen-feature evaluations (linear probes, zero-shot)."""
    payload = read_pretrained(path)
    dims = dims_from_record(payload["dims"])
    n_bins = int(payload.get("config", {}).get("n_bins", 4))
    model = build_model(payload["model_name"], dims, TaskSpec.survival(n_bins),
                        **options_from_record(payload["model_options"]))
    model.load_pretrained(payload["state_dict"])
    return model.eval()
