"""Model checkpoints: one ``torch.save`` file written atomically, carrying everything needed to rebuild the
model and re-apply the fold's preprocessing, and its provenance.

A checkpoint holds: the model name, options, InputDims and TaskSpec; the weights (the best epoch's); the
training configuration; the fold (its index, training and validation patients, the split file); the time-bin
edges (fitted on the fold's uncensored training times); the :class:`~pathmm_pipeline.genomics.GeneScaler`
state (fitted on the fold's training patients); class vocabulary; the epoch history; and a provenance record
(:func:`~pathmm_pipeline.core.provenance.build_provenance`, stage ``train``) whose inputs are every store the fold
read (feature stores, genomics store, report store, manifest) and the split file, with their sha256.

The same record, plus the checkpoint file's own sha256 under ``outputs``, is written beside it as
``<checkpoint>.provenance.json``, so :func:`~pathmm_pipeline.core.provenance.verify_provenance` (and ``pathmm
audit``) re-hash the inputs and the checkpoint; :func:`verify_checkpoint` also checks that the embedded record
matches the sidecar. Everything but the weights is plain Python data: :func:`load_checkpoint` reads it with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pathmm_pipeline.core.atomic import atomic_path
from pathmm_pipeline.core.errors import ProvenanceError
from pathmm_pipeline.core.provenance import (
    SIDECAR_SUFFIX,
    build_provenance,
    hash_file,
    jsonable,
    read_provenance,
    verify_provenance,
    write_sidecar,
)
from pathmm_pipeline.genomics.normalize import GeneScaler
from pathmm_pipeline.models import InputDims, PathmmModel, TaskSpec, build_model

SCHEMA = "pathmm.checkpoint/1"
STAGE = "train"


@dataclass
class LoadedCheckpoint:
    """A checkpoint read back: the rebuilt model (eval mode, on ``map_location``) and its metadata."""

    path: Path
    model: PathmmModel
    model_name: str
    model_options: dict[str, Any]
    dims: InputDims
    task: TaskSpec
    task_name: str
    time_bins: np.ndarray | None
    scaler: GeneScaler | None
    fold: dict[str, Any]
    train_config: dict[str, Any]
    history: list[dict[str, Any]]
    best_epoch: int
    label_classes: list[str]
    cancer_types: list[str]
    provenance: dict[str, Any]
    payload: dict[str, Any]


def plain_json(value: Any) -> Any:
    """JSON-safe copy (numpy scalars, tuples, paths become plain types; inf/nan are kept as floats)."""
    return jsonable(value)


def save_checkpoint(path: str | os.PathLike[str], model: nn.Module, *, model_name: str,
                    model_options: dict[str, Any], dims: InputDims, task: TaskSpec, task_name: str,
                    train_config: dict[str, Any], fold: dict[str, Any], time_bins: np.ndarray | None,
                    scaler: GeneScaler | None, history: list[dict[str, Any]], best_epoch: int,
                    inputs: dict[str, str | os.PathLike[str]], label_classes: list[str] | None = None,
                    cancer_types: list[str] | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Write the checkpoint at ``path`` atomically, then its provenance sidecar (see the module docstring).

    ``inputs`` maps a role to every file or store the training read; ``fold`` holds ``index``, ``train``,
    ``val`` and optionally ``split_file``."""
    path = Path(path)
    state = {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}
    params = {"model": model_name, "model_options": plain_json(model_options), "dims": plain_json(asdict(dims)),
              "task": plain_json(asdict(task)), "task_name": task_name, "train_config": plain_json(train_config),
              "fold": {"index": fold.get("index"), "split_file": fold.get("split_file"),
                       "n_train": len(fold.get("train", ())), "n_val": len(fold.get("val", ()))}}
    describe = model.describe() if isinstance(model, PathmmModel) else {}
    record = build_provenance(STAGE, dict(inputs), params,
                              extra={"best_epoch": int(best_epoch), "model": plain_json(describe),
                                     "time_bins": None if time_bins is None else [float(x) for x in time_bins],
                                     **plain_json(extra or {})})
    payload = {
        "schema": SCHEMA,
        "model_name": model_name,
        "model_options": plain_json(model_options),
        "dims": plain_json(asdict(dims)),
        "task": plain_json(asdict(task)),
        "task_name": task_name,
        "state_dict": state,
        "train_config": plain_json(train_config),
        "fold": plain_json(fold),
        "time_bins": None if time_bins is None else [float(x) for x in time_bins],
        "scaler": None if scaler is None else plain_json(scaler.to_dict()),
        "history": plain_json(history),
        "best_epoch": int(best_epoch),
        "label_classes": [str(c) for c in (label_classes or [])],
        "cancer_types": [str(c) for c in (cancer_types or [])],
        "provenance": record,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    sidecar = dict(record)
    sidecar["outputs"] = {"checkpoint": {"path": str(path.resolve()), "given_path": str(path),
                                         "sha256": hash_file(path)}}
    write_sidecar(path, sidecar)
    return path


def dims_from_record(record: dict[str, Any]) -> InputDims:
    values = dict(record)
    for key in ("pathway_sizes", "family_sizes"):
        if values.get(key) is not None:
            values[key] = tuple(int(v) for v in values[key])
    return InputDims(**values)


def options_from_record(options: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}


def read_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The raw payload of a checkpoint (weights-only unpickling)."""
    payload = torch.load(Path(path), map_location=map_location, weights_only=True)
    if not isinstance(payload, dict) or payload.get("schema") != SCHEMA:
        schema = payload.get("schema") if isinstance(payload, dict) else None
        raise ProvenanceError(f"{path}: not a pathmm checkpoint (schema {schema!r}, expected {SCHEMA!r})")
    return payload


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu",
                    verify: bool = False) -> LoadedCheckpoint:
    """Rebuild the model of a checkpoint with its weights (eval mode). ``verify=True`` first runs
    :func:`verify_checkpoint` and raises :class:`ProvenanceError` on any problem."""
    if verify:
        problems = verify_checkpoint(path)
        if problems:
            raise ProvenanceError(f"{path}: checkpoint does not verify:\n  - " + "\n  - ".join(problems))
    payload = read_checkpoint(path, map_location)
    dims = dims_from_record(payload["dims"])
    task = TaskSpec(**payload["task"])
    options = options_from_record(payload["model_options"])
    model = build_model(payload["model_name"], dims, task, **options)
    model.load_state_dict(payload["state_dict"])
    model.to(map_location).eval()
    bins = None if payload["time_bins"] is None else np.asarray(payload["time_bins"], dtype=np.float64)
    scaler = None if payload["scaler"] is None else GeneScaler.from_dict(payload["scaler"])
    return LoadedCheckpoint(Path(path), model, payload["model_name"], options, dims, task, payload["task_name"],
                            bins, scaler, payload["fold"], payload["train_config"], payload["history"],
                            int(payload["best_epoch"]), payload["label_classes"], payload["cancer_types"],
                            payload["provenance"], payload)


def verify_checkpoint(path: str | os.PathLike[str]) -> list[str]:
    """Every problem with a checkpoint's provenance: a missing sidecar, an input store or split file that is
    missing or changed since training, a changed checkpoint file, or an embedded record that differs from the
    sidecar. Empty when it verifies."""
    path = Path(path)
    problems: list[str] = []
    if not path.is_file():
        return [f"{path}: checkpoint not found"]
    if not Path(f"{path}{SIDECAR_SUFFIX}").is_file():
        return [f"{path}: no provenance sidecar {path.name}{SIDECAR_SUFFIX}"]
    try:
        sidecar = read_provenance(path)
        problems += [str(f) for f in verify_provenance(path)]
    except ProvenanceError as exc:
        return [str(exc)]
    try:
        payload = read_checkpoint(path)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a problem to report
        return problems + [f"{path}: cannot be read as a checkpoint ({exc})"]
    embedded = dict(payload.get("provenance") or {})
    side = {k: v for k, v in sidecar.items() if k != "outputs"}
    embedded.pop("outputs", None)
    if json.dumps(embedded, sort_keys=True) != json.dumps(side, sort_keys=True):
        problems.append(f"{path}: the provenance inside the checkpoint differs from its sidecar")
    return problems
