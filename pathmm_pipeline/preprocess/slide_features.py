"""Slide features (floor 3, the library of the ``slide_features`` rule): one slide's patch feature store through one
frozen slide encoder
(:mod:`pathmm_pipeline.encoders.slide_zoo`) into ``results/slide_features/<encoder>/<slide>.zarr``, the cohort's
slide embeddings read back as a patient x dim table, and a per-fold linear probe on them.

A slide-feature store holds ``embedding`` (``(dim,)`` float32; NaN for a slide without tissue, status kept) and
records in its attributes the slide encoder (name, architecture, weights file and sha256 or "random init"), the
patch encoder and transform of its input, the tile size at level 0 the positions were computed with, and in its
provenance the input feature and tile stores (content sha256) and the feature store's own provenance summary.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pathmm_pipeline.core.errors import InputError
from pathmm_pipeline.core.settings import SettingsMixin

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]
STAGE = "slide_features"


@dataclass(frozen=True)
class SlideFeatureSettings(SettingsMixin):
    """One slide encoder's job (``slide_features:`` in config.yaml; ``encoder`` and ``weights`` per job)."""

    settings_name = "slide_features"

    encoder: str
    #: a local checkpoint (file or folder) or None: seeded random init, recorded as "random init"
    weights: str | None = None
    device: str = "auto"


def tile_size_level0(tiles_store: PathLike) -> float:
    """The tiles' side in level-0 pixels, as the tile store records it (TITAN's ``patch_size_lv0``)."""
    from pathmm_pipeline.preprocess.tiling import load_tiles

    return float(load_tiles(tiles_store).geometry.tile_size_level0)


def encode_slide(features_store: PathLike, tiles_store: PathLike, out: PathLike,
                 settings: SlideFeatureSettings) -> Path:
    """Run ``settings.encoder`` (frozen, eval, no grad) on one slide's feature store and write ``out``
    atomically with its provenance. Features of another patch encoder than the slide encoder's are refused with
    one line; a slide without tissue gets a NaN embedding and its status."""
    import torch

    from pathmm_pipeline.core.provenance import build_provenance, read_provenance
    from pathmm_pipeline.core.runtime import resolve_device
    from pathmm_pipeline.core.stores import ArraySpec, write_store
    from pathmm_pipeline.encoders.slide_zoo import check_patch_features, get_slide_zoo_spec, load_slide_embedder
    from pathmm_pipeline.preprocess.features import load_features

    spec = get_slide_zoo_spec(settings.encoder)
    fs = load_features(features_store)
    n, d_in = fs.features.shape
    check_patch_features(spec, d_in, fs.encoder.get("name"), where=features_store)
    patch_px = tile_size_level0(tiles_store)
    model, loaded = load_slide_embedder(spec.name, d_in, settings.weights)
    device = resolve_device(settings.device)
    model = model.to(device)
    dim = spec.output_dim(d_in)
    started = time.perf_counter()
    if fs.status == "ok" and n:
        with torch.inference_mode():
            x = torch.from_numpy(np.asarray(fs.features, np.float32)).to(device)
            coords = torch.from_numpy(np.asarray(fs.coords, np.int64)).to(device)
            embedding = model(x, coords, patch_px).float().cpu().numpy()
        status = "ok"
    else:
        embedding = np.full(dim, np.nan, np.float32)
        status = fs.status if fs.status != "ok" else "empty"
    seconds = time.perf_counter() - started
    if embedding.shape != (dim,) or (status == "ok" and not np.isfinite(embedding).all()):
        raise InputError(features_store, f"slide encoder '{spec.name}' gave an embedding of shape "
                         f"{embedding.shape} (expected ({dim},)) or non-finite values",
                         "check the feature store (audit it) and the slide encoder's weights")
    n_params = sum(p.numel() for p in model.parameters())
    encoder_attrs = {"name": spec.name, "architecture": spec.architecture, "embed_dim": dim,
                     "n_params": int(n_params), "weights": loaded["weights"],
                     "weights_sha256": loaded["weights_sha256"], "expects_patch_encoder": spec.patch_encoder}
    attrs = {"slide_id": fs.slide_id, "status": status, "n_tiles": int(n), "slide_encoder": encoder_attrs,
             "patch_encoder": fs.encoder, "transform": fs.transform, "tile_size_level0": patch_px,
             "device": str(device), "seconds": seconds}
    inputs: dict[str, PathLike] = {"features": features_store, "tiles": tiles_store}
    if loaded["weights_sha256"]:
        inputs["weights"] = str(loaded["weights"])
    upstream = read_provenance(features_store)
    record = build_provenance(STAGE, inputs, {"settings": settings.to_dict()}, extra={
        "slide_encoder": encoder_attrs,
        "features_provenance": {"stage": upstream.get("stage"), "created_utc": upstream.get("created_utc"),
                                "params": upstream.get("params"), "code": upstream.get("code"),
                                "encoder": upstream.get("extra", {}).get("encoder")},
        "seconds": seconds, "device": str(device)})
    write_store(out, {"embedding": ArraySpec(np.asarray(embedding, np.float32), ("dim",))}, attrs, record)
    log.info("%s [%s]: %d tiles -> %d-d slide embedding in %.2f s", fs.slide_id, spec.name, n, dim, seconds)
    return Path(out)


@dataclass(frozen=True)
class SlideEmbedding:
    """One slide-feature store as later stages read it."""

    slide_id: str
    status: str
    embedding: np.ndarray
    slide_encoder: dict[str, Any]


def load_slide_embedding(store: PathLike) -> SlideEmbedding:
    """Read a store written by :func:`encode_slide` (content digests verified)."""
    from pathmm_pipeline.core.stores import open_store

    group = open_store(store)
    attrs = dict(group.attrs)
    if "slide_encoder" not in attrs:
        raise InputError(store, "not a slide-feature store (no slide_encoder attribute)",
                         "point at results/slide_features/<encoder>/<slide>.zarr")
    return SlideEmbedding(attrs["slide_id"], attrs["status"], np.asarray(group["embedding"][...]),
                          attrs["slide_encoder"])


def patient_embeddings(folder: PathLike, manifest: PathLike | pd.DataFrame) -> pd.DataFrame:
    """The cohort's slide embeddings of one encoder (``folder`` = ``results/slide_features/<encoder>``) as a
    patient x dim table: the mean over each patient's slides with tissue (late fusion, as TRIDENT's
    patient-level embeddings). ``manifest``: the cohort manifest (``patient_id``, ``slide_id``). Patients with no
    usable slide are left out; a manifest slide whose store is missing is an error (run the stage first); stores
    written by different slide encoders or weights are refused."""
    slides = pd.read_parquet(manifest) if not isinstance(manifest, pd.DataFrame) else manifest
    slides = slides[slides.slide_id.notna() & (slides.slide_id.astype(str) != "")]
    rows: dict[str, list[np.ndarray]] = {}
    seen: set[tuple[str, str | None]] = set()
    for row in slides.itertuples():
        store = Path(folder) / f"{row.slide_id}.zarr"
        if not (store / "zarr.json").is_file():
            raise InputError(store, "slide-feature store missing", "run the slide_features rule for it first")
        emb = load_slide_embedding(store)
        seen.add((emb.slide_encoder["name"], emb.slide_encoder.get("weights_sha256")))
        if emb.status == "ok":
            rows.setdefault(str(row.patient_id), []).append(emb.embedding)
    if len(seen) > 1:
        raise InputError(folder, f"stores of different slide encoders / weights mixed: {sorted(map(str, seen))}",
                         "re-run the slide_features rule of this folder")
    table = pd.DataFrame({p: np.mean(v, axis=0) for p, v in sorted(rows.items())}).T
    table.index.name = "patient_id"
    table.columns = [f"e{i}" for i in range(table.shape[1])]
    return table


def probe_folds(embeddings: pd.DataFrame, outcomes: pd.DataFrame, folds: Iterable[Any],
                penalty: float = 0.1) -> pd.DataFrame:
    """A ridge Cox linear probe (:func:`~pathmm_pipeline.stats.cox.fit_cox_probe`) per fold on frozen slide
    embeddings: fitted on the fold's ``train`` patients, Harrell's C on its ``val`` patients (higher risk =
    shorter survival). ``outcomes``: ``survival_time`` / ``survival_event`` by patient id. Returns one row per
    fold: ``fold``, ``n_train``, ``n_val``, ``c_index``."""
    from pathmm_pipeline.stats.cox import fit_cox_probe
    from pathmm_pipeline.stats.metrics import c_index

    rows = []
    for fold in folds:
        train = [p for p in fold.train if p in embeddings.index and p in outcomes.index]
        val = [p for p in fold.val if p in embeddings.index and p in outcomes.index]
        x_tr, x_va = embeddings.loc[train].to_numpy(np.float64), embeddings.loc[val].to_numpy(np.float64)
        o_tr, o_va = outcomes.loc[train], outcomes.loc[val]
        fitted, _ = fit_cox_probe(x_tr, o_tr.survival_time.to_numpy(), o_tr.survival_event.to_numpy(), penalty)
        risk = ((x_va - fitted["mean"]) / fitted["scale"]) @ fitted["beta"]
        rows.append({"fold": int(fold.index), "n_train": len(train), "n_val": len(val),
                     "c_index": c_index(o_va.survival_time.to_numpy(), o_va.survival_event.to_numpy(), risk)})
    return pd.DataFrame(rows)

