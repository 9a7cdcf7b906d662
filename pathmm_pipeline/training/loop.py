"""Training one model on one fold: :func:`train_fold`.

* **Data**: for a model that reads genomics, the fold's cohort view has its gene scaler fitted on the
  patients the model is fitted on only (:meth:`~.dataset.MultimodalCohort.for_fold`; other models get none);
  survival time bins come from their uncensored times (:func:`~.losses.make_time_bins`), class weights from
  their labels. **Nothing of the held-out patients (``fold.val``) is read while training**: not their inputs,
  not their outcomes, not for any choice.
* **Selection** (``selection``, :mod:`.selection`): ``last`` trains ``epochs`` epochs and keeps the last;
  ``inner`` takes an inner-validation split out of the fold's *training* patients (the written
  ``inner_<k>.csv`` when the stage passes it, else :func:`~.selection.inner_split`), trains on the rest and
  uses the inner split for early stopping and the best epoch.
* **Patients**: those of the fold that are in the cohort, have the model's required modalities, at least one
  modality the model reads, and the task's target; the others are listed in ``FoldResult.dropped``.
* **Optimisation**: AdamW or RAdam; bag batches of one patient, gradients accumulated over ``grad_accum``
  patients (each patient's loss divided by the window's size, so a window's gradient is the mean); linear
  warm-up then cosine decay, stepped per optimizer step; optional gradient clipping. The Cox loss needs a
  batch: it is computed over each accumulation window (``grad_accum >= 2``).
* **Sampling**: each epoch visits the training patients in a seeded random order; ``weighted_sampling``
  instead draws as many patients with replacement, each with weight inverse to the size of its stratum
  (survival bin x event, or class), as SurvPath's reference code does.
* **Early stopping** (``inner`` only) on the inner split's ``val_loss`` (lower is better) or ``val_metric``
  (C-index for survival, macro AUC for classification, AUC for binary; higher is better), with ``patience``
  epochs and ``min_epochs``; the best epoch's weights are restored at the end and saved.
* **Determinism**: a seeded run on the CPU is bit-for-bit repeatable (model init, patient order per epoch,
  dropout, tile sampling); deterministic algorithms are switched on for the run (warn-only) and the caller's
  RNG state is restored afterwards. CUDA runs the same code (``device="auto"`` picks it), with cuDNN
  deterministic and ``CUBLAS_WORKSPACE_CONFIG`` set.
* **Outputs** (``out_dir``): ``log.csv`` and ``log.json`` rewritten atomically after every epoch (epoch, train
  loss, inner-validation loss and metric (NaN under ``last``), lr, seconds), ``checkpoint.pt`` (+ its
  provenance sidecar, :mod:`.checkpoint`).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import os
import resource
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from ..atomic import write_text_atomic
from ..genomics.normalize import GeneScaler
from ..settings import SettingsMixin
from ..models import MODALITIES, InputDims, MissingModalityError, PathmmModel, TaskSpec, build_model
from .checkpoint import save_checkpoint
from .dataset import CohortItem, MultimodalCohort
from .losses import (binary_bce_with_pos_weight, class_weights, cox_ph_loss, discretize, make_time_bins,
                     nll_survival_loss, pos_weight_from_labels, risk_from_logits, weighted_cross_entropy)
from .selection import SELECTIONS, inner_split, strata_table
from .splits import Fold

MONITORS = ("val_loss", "val_metric")
OPTIMIZERS = ("adamw", "radam")
TASK_NAMES = ("survival", "cox", "classification", "binary")
LOG_COLUMNS = ("epoch", "train_loss", "inner_val_loss", "inner_val_metric", "lr", "seconds", "best")


@dataclass
class TrainConfig(SettingsMixin):
    """How a fold is trained (``training:`` in a config). See the module docstring."""

    settings_name = "training"

    epochs: int = 20
    lr: float = 2e-4
    weight_decay: float = 1e-5
    optimizer: str = "adamw"
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.0
    grad_accum: int = 32
    max_grad_norm: float | None = None
    n_bins: int = 4
    alpha_surv: float = 0.0
    class_weighting: bool = True
    aux_loss_weight: float = 1.0
    weighted_sampling: bool = False
    selection: str = "last"
    inner_fraction: float = 0.2
    inner_seed: int = 0
    monitor: str = "val_loss"
    patience: int | None = 10
    min_delta: float = 0.0
    min_epochs: int = 1
    seed: int = 0
    device: str = "auto"
    deterministic: bool = True
    threads: int | None = None
    progress: bool = True
    model_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = []
        if self.epochs < 1:
            problems.append(f"epochs must be >= 1, got {self.epochs}")
        if self.lr <= 0:
            problems.append(f"lr must be > 0, got {self.lr}")
        if self.optimizer not in OPTIMIZERS:
            problems.append(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.selection not in SELECTIONS:
            problems.append(f"selection must be one of {SELECTIONS}, got {self.selection!r}")
        if not 0 < self.inner_fraction < 1:
            problems.append(f"inner_fraction must be in (0, 1), got {self.inner_fraction}")
        if self.monitor not in MONITORS:
            problems.append(f"monitor must be one of {MONITORS}, got {self.monitor!r}")
        if self.grad_accum < 1:
            problems.append(f"grad_accum must be >= 1, got {self.grad_accum}")
        if self.warmup_epochs < 0 or not 0 <= self.min_lr_ratio <= 1:
            problems.append("warmup_epochs must be >= 0 and min_lr_ratio in [0, 1]")
        if self.patience is not None and self.patience < 1:
            problems.append(f"patience must be >= 1 or None, got {self.patience}")
        if problems:
            raise ValueError("TrainConfig: " + "; ".join(problems))



@dataclass
class FoldResult:
    """One trained fold. ``model`` holds the best epoch's weights (eval mode, on the CPU)."""

    model_name: str
    task_name: str
    task: TaskSpec
    fold_index: int
    model: PathmmModel
    model_options: dict[str, Any]
    dims: InputDims
    history: pd.DataFrame
    best_epoch: int
    stopped_early: bool
    monitor: str
    metric_name: str
    time_bins: np.ndarray | None
    scaler: GeneScaler | None
    train_patients: list[str]
    val_patients: list[str]
    dropped: dict[str, str]
    config: TrainConfig
    seconds: float
    peak_rss_mb: float
    peak_gpu_mb: float | None
    device: str
    label_classes: list[str]
    cancer_types: list[str]
    checkpoint: Path | None = None
    log_csv: Path | None = None
    log_json: Path | None = None
    split_file: str | None = None
    #: ``last`` or ``inner``; the inner-validation patients the epoch was chosen on (empty under ``last``)
    selection: str = "last"
    inner_val_patients: list[str] = field(default_factory=list)
    inner_split_file: str | None = None

    @property
    def best(self) -> dict[str, Any]:
        """The history row of the best epoch."""
        return self.history.loc[self.history.epoch == self.best_epoch].iloc[0].to_dict()


# ------------------------------------------------------------------------------------------- the task
def resolve_task(task: str | TaskSpec, cohort: MultimodalCohort, n_bins: int = 4) -> tuple[TaskSpec, str]:
    """``(TaskSpec, name)`` from a name (``survival``: discrete-time NLL with ``n_bins`` bins, ``cox``,
    ``classification``: the cohort's label classes, ``binary``: a two-class label) or a TaskSpec."""
    if isinstance(task, TaskSpec):
        name = ("cox" if task.is_cox else task.kind)
        return task, name
    if task == "survival":
        return TaskSpec.survival(n_bins), task
    if task == "cox":
        return TaskSpec("survival", 1), task
    if task in ("classification", "binary"):
        k = len(cohort.label_classes)
        if cohort.label_column is None or k < 2:
            raise ValueError(f"task '{task}' needs the cohort built with a label_column of >= 2 classes "
                             f"(label_column={cohort.label_column!r}, classes {cohort.label_classes})")
        if task == "binary":
            if k != 2:
                raise ValueError(f"task 'binary' needs exactly 2 classes, {cohort.label_column!r} has {k}: "
                                 f"{cohort.label_classes}")
            return TaskSpec.binary(), task
        return TaskSpec.classification(k), task
    raise ValueError(f"unknown task {task!r}; tasks are {', '.join(TASK_NAMES)} or a TaskSpec")


def metric_name(task: TaskSpec) -> str:
    return "c_index" if task.kind == "survival" else "macro_auc" if task.kind == "classification" else "auc"


def has_target(task: TaskSpec, item_targets: Any) -> bool:
    return item_targets.has_survival if task.kind == "survival" else item_targets.has_label


class Objective:
    """The task's loss with everything fitted on the training patients (bins, class weights)."""

    def __init__(self, task: TaskSpec, cohort: MultimodalCohort, train: Sequence[str], config: TrainConfig) -> None:
        self.task = task
        self.alpha = config.alpha_surv
        self.edges: np.ndarray | None = None
        self.weights: torch.Tensor | None = None
        self.pos_weight: torch.Tensor | None = None
        if task.kind == "survival":
            times, events = cohort.survival(train)
            if not task.is_cox:
                self.edges = make_time_bins(times, events, task.n_outputs)
        elif config.class_weighting:
            labels = cohort.labels(train)
            if task.kind == "classification":
                self.weights = class_weights(labels, task.n_outputs)
            else:
                self.pos_weight = pos_weight_from_labels(labels)

    @property
    def decomposable(self) -> bool:
        """Whether the loss is a sum over patients (everything but Cox)."""
        return not self.task.is_cox

    def targets(self, cohort: MultimodalCohort, patients: Sequence[str]) -> dict[str, torch.Tensor]:
        if self.task.kind == "survival":
            times, events = cohort.survival(patients)
            out = {"time": torch.as_tensor(times), "event": torch.as_tensor(events)}
            if self.edges is not None:
                out["bin"] = torch.as_tensor(discretize(times, self.edges))
            return out
        return {"label": torch.as_tensor(cohort.labels(patients))}

    def __call__(self, logits: torch.Tensor, y: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean loss of a batch of logits (patients x outputs) against ``targets`` of the same patients."""
        if self.task.kind == "survival":
            if self.task.is_cox:
                return cox_ph_loss(logits.reshape(-1), y["time"], y["event"])
            return nll_survival_loss(logits, y["bin"], y["event"], alpha=self.alpha)
        if self.task.kind == "classification":
            return weighted_cross_entropy(logits, y["label"].to(logits.device), self.weights)
        return binary_bce_with_pos_weight(logits.reshape(-1), y["label"].to(logits.device).float(), self.pos_weight)


def score_metric(task: TaskSpec, logits: np.ndarray, cohort: MultimodalCohort, patients: Sequence[str]) -> float:
    """The validation metric of ``logits`` (NaN when undefined, e.g. no comparable pair or a missing class)."""
    from ..evaluation.metrics import c_index, classification_metrics

    if len(patients) < 2:
        return float("nan")
    try:
        if task.kind == "survival":
            times, events = cohort.survival(patients)
            return c_index(times, events, risk_scores(task, logits))
        return classification_metrics(cohort.labels(patients), probabilities(task, logits), None).macro_auc
    except ValueError:
        return float("nan")


def risk_scores(task: TaskSpec, logits: np.ndarray) -> np.ndarray:
    """Survival risk (higher = earlier event): minus the summed survival for bins, the linear predictor for Cox."""
    t = torch.as_tensor(np.asarray(logits, dtype=np.float64))
    return (t.reshape(-1) if task.is_cox else risk_from_logits(t)).numpy()


def probabilities(task: TaskSpec, logits: np.ndarray) -> np.ndarray:
    """Class probabilities (softmax), or P(class 1) for a binary task."""
    t = torch.as_tensor(np.asarray(logits, dtype=np.float64))
    return torch.sigmoid(t.reshape(-1)).numpy() if task.kind == "binary" else torch.softmax(t, dim=1).numpy()


# ------------------------------------------------------------------------------------------- inference
def model_input(cohort: MultimodalCohort, model: PathmmModel, patient_id: str,
                remove: Sequence[str] = ()) -> CohortItem:
    """The patient as the model reads it: only the modalities it uses, minus ``remove``."""
    item = cohort.get(patient_id, [m for m in model.modalities if m not in remove])
    unused = [m for m in MODALITIES if m not in model.modalities or m in remove]
    item.x = item.x.without(*unused) if unused else item.x
    return item


@torch.no_grad()
def predict_logits(model: PathmmModel, cohort: MultimodalCohort, patients: Sequence[str],
                   device: torch.device | str = "cpu", remove: Sequence[str] = ()
                   ) -> tuple[list[str], np.ndarray, dict[str, str]]:
    """Logits (patients x outputs, float64 on the CPU) of ``patients`` in eval mode, with the modalities in
    ``remove`` withheld. Patients the model cannot take that way (a required modality removed, nothing left)
    are skipped: returns ``(kept ids, logits, {skipped id: reason})``."""
    was_training = model.training
    model.eval()
    kept, rows, skipped = [], [], {}
    try:
        for p in patients:
            item = model_input(cohort, model, p, remove)
            try:
                out = model(item.x.to(device))
            except MissingModalityError as exc:
                skipped[p] = str(exc).split(" -- ")[0]
                continue
            kept.append(p)
            rows.append(out.logits.detach().reshape(-1).to("cpu", torch.float64))
    finally:
        model.train(was_training)
    n_out = model.task.n_outputs
    logits = torch.stack(rows).numpy() if rows else np.zeros((0, n_out))
    return kept, logits, skipped


# ------------------------------------------------------------------------------------------- helpers
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@contextlib.contextmanager
def deterministic_mode(enabled: bool, device: torch.device, threads: int | None = None) -> Iterator[None]:
    """Deterministic algorithms (warn-only), cuDNN settings and the intra-op thread count for the run; the
    previous settings and the caller's RNG state are restored afterwards."""
    prev = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark, torch.get_num_threads())
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        try:
            if enabled:
                if device.type == "cuda":
                    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
                torch.backends.cudnn.deterministic = True
                torch.backends.cudnn.benchmark = False
                torch.use_deterministic_algorithms(True, warn_only=True)
            if threads:
                torch.set_num_threads(int(threads))
            yield
        finally:
            torch.use_deterministic_algorithms(prev[0], warn_only=prev[1])
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = prev[2], prev[3]
            torch.set_num_threads(prev[4])


def cosine_with_warmup(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int,
                       min_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_steps`` optimizer steps, then cosine decay to ``min_ratio`` x lr."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "radam":
        return torch.optim.RAdam(params, lr=config.lr, weight_decay=config.weight_decay, decoupled_weight_decay=True)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def eligible_patients(cohort: MultimodalCohort, model: PathmmModel, task: TaskSpec, patients: Sequence[str]
                      ) -> tuple[list[str], dict[str, str]]:
    """The patients the model can be trained / validated on, and why each other one is dropped."""
    kept, dropped = [], {}
    for p in patients:
        if p not in cohort:
            dropped[p] = "not in the cohort"
            continue
        has = cohort.presence(p)
        missing = sorted(m for m in model.requires if not has[m])
        if missing:
            dropped[p] = f"lacks required {'+'.join(missing)}"
        elif not any(has[m] for m in model.modalities):
            dropped[p] = f"has none of {'+'.join(sorted(model.modalities))}"
        elif not has_target(task, cohort.targets(p)):
            dropped[p] = "no survival time/event" if task.kind == "survival" else "no label"
        else:
            kept.append(p)
    return kept, dropped


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kilobytes


def _write_logs(out_dir: Path, rows: list[dict[str, Any]], header: dict[str, Any]) -> tuple[Path, Path]:
    frame = pd.DataFrame(rows, columns=list(LOG_COLUMNS))
    csv = write_text_atomic(out_dir / "log.csv", frame.to_csv(index=False))
    payload = {**header, "epochs": rows}
    js = write_text_atomic(out_dir / "log.json", json.dumps(payload, indent=2, default=_json_default))
    return csv, js


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(type(value).__name__)


def _fold_hash(fold: Fold) -> str:
    text = json.dumps({"train": list(fold.train), "val": list(fold.val)})
    return hashlib.sha256(text.encode()).hexdigest()


# ------------------------------------------------------------------------------------------- training
def epoch_order(patients: Sequence[str], epoch: int, config: TrainConfig,
                strata: Sequence[Any] | None = None) -> list[str]:
    """The patients of one epoch: a seeded permutation, or (``weighted_sampling``) as many draws with
    replacement, each patient weighted by the inverse size of its stratum (``strata``: one key per patient)."""
    rng = np.random.default_rng([config.seed, epoch])
    if not config.weighted_sampling or strata is None:
        return [patients[i] for i in rng.permutation(len(patients))]
    keys = [str(k) for k in strata]
    counts = {k: keys.count(k) for k in set(keys)}
    weights = np.array([1.0 / counts[k] for k in keys])
    draws = rng.choice(len(patients), size=len(patients), replace=True, p=weights / weights.sum())
    return [patients[int(i)] for i in draws]


def _sampling_strata(objective: "Objective", targets: dict[str, torch.Tensor]) -> list[Any] | None:
    if "bin" in targets:
        return [f"{int(b)}|{int(e)}" for b, e in zip(targets["bin"], targets["event"])]
    if "label" in targets:
        return [int(v) for v in targets["label"]]
    return None


def _selection_split(cohort: MultimodalCohort, fold: Fold, config: TrainConfig,
                     inner: tuple[Sequence[str], Sequence[str]] | None) -> tuple[list[str], list[str]]:
    """``(fit patients, inner-validation patients)`` of a fold under the configured selection protocol."""
    train = [p for p in fold.train if p in cohort]
    if config.selection == "last":
        return train, []
    if inner is not None:
        rest, val = [str(p) for p in inner[0]], [str(p) for p in inner[1]]
        outside = sorted((set(rest) | set(val)) - set(fold.train))
        if outside:
            raise ValueError(f"fold {fold.index}: inner split patient(s) {outside[:5]} are not training patients")
        return [p for p in rest if p in cohort], [p for p in val if p in cohort]
    return inner_split(strata_table(cohort.table), train, config.inner_fraction, config.inner_seed, key=fold.index)


def _fit_direct(model: nn.Module, view: MultimodalCohort, train_ids: list[str], select_ids: list[str],
                objective: Any) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """Fit a closed-form model (``direct_fit``) on the fit patients, its penalty chosen on ``select_ids`` when
    there are any (selection ``inner``); returns its state and one log row per candidate tried (the chosen
    one last, ``best``; the penalty itself is in the model's state)."""
    def part(ids: list[str]) -> tuple[list[Any], np.ndarray, np.ndarray]:
        targets = [view.targets(p) for p in ids]
        return ([model_input(view, model, p).x for p in ids], np.array([t.time for t in targets], float),
                np.array([t.event for t in targets], int))

    t0 = time.perf_counter()
    fit, fit_t, fit_e = part(train_ids)
    check, check_t, check_e = part(select_ids) if select_ids else ([], None, None)
    tried = model.fit_direct(fit, fit_t, fit_e, check, check_t, check_e, edges=objective.edges)
    rows = [{"epoch": i, "train_loss": float("nan"), "inner_val_loss": float("nan"),
             "inner_val_metric": float(r.get("inner_val_metric", float("nan"))), "lr": float("nan"),
             "seconds": time.perf_counter() - t0, "best": bool(r.get("chosen", False))} for i, r in enumerate(tried)]
    state = copy.deepcopy({k: v.detach().to("cpu") for k, v in model.state_dict().items()})
    return state, rows


def train_fold(model_name: str, task: str | TaskSpec, cohort: MultimodalCohort, fold: Fold,
               config: TrainConfig | None = None, *, out_dir: str | os.PathLike[str] | None = None,
               split_file: str | os.PathLike[str] | None = None,
               pretrained: str | os.PathLike[str] | None = None, label: str | None = None,
               inner: tuple[Sequence[str], Sequence[str]] | None = None,
               inner_split_file: str | os.PathLike[str] | None = None) -> FoldResult:
    """Train ``model_name`` for ``task`` on ``fold.train``; ``fold.val`` (the held-out patients) is never read.

    ``cohort`` is the whole cohort (unscaled); the fold's scaler is fitted here on the patients fitted on.
    ``split_file``: the fold's split file (or the folder holding ``splits_<k>.csv``), recorded with its hash.
    ``inner``: ``(inner train, inner val)`` for ``selection="inner"`` (default: carved here by
    :func:`~.selection.inner_split`); ``inner_split_file`` the file they were read from, recorded likewise.
    With ``out_dir``, the epoch logs and the checkpoint are written there. ``pretrained``: a pretraining
    checkpoint (:mod:`.pretrain`) of the same model whose weights initialise everything but the task head; it
    is recorded among the checkpoint's inputs. See the module docstring.
    """
    config = config or TrainConfig()
    device = resolve_device(config.device)
    out = Path(out_dir) if out_dir is not None else None
    if split_file is not None and Path(split_file).is_dir():
        split_file = Path(split_file) / f"splits_{fold.index}.csv"
    start = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    with deterministic_mode(config.deterministic, device, config.threads):
        torch.manual_seed(config.seed)
        spec, task_name = resolve_task(task, cohort, config.n_bins)
        dims = cohort.input_dims()
        model = build_model(model_name, dims, spec, **config.model_options)
        pretrained_info = None
        if pretrained is not None:
            from .pretrain import apply_pretrained  # pretrain imports this module
            pretrained_info = apply_pretrained(model, pretrained)
        fit_ids, inner_ids = _selection_split(cohort, fold, config, inner)
        if "genomics" in model.modalities and cohort.genomics is not None:
            # the gene scaler is fitted on the patients the model is fitted on, never on held-out ones
            view = cohort.for_fold(fit_ids)
        else:
            view = cohort.with_scaler(None)
        train_ids, dropped_train = eligible_patients(view, model, spec, fit_ids)
        select_ids, dropped_inner = eligible_patients(view, model, spec, inner_ids)
        val_ids, dropped_val = eligible_patients(view, model, spec, [p for p in fold.val if p in cohort])
        dropped = {**{p: f"train: {r}" for p, r in dropped_train.items()},
                   **{p: f"inner val: {r}" for p, r in dropped_inner.items()},
                   **{p: f"val: {r}" for p, r in dropped_val.items()}}
        if len(train_ids) < 2:
            raise ValueError(f"fold {fold.index}: only {len(train_ids)} training patient(s) usable by model "
                             f"'{model_name}' for task '{task_name}' (dropped: {dict(list(dropped.items())[:5])})")
        if config.selection == "inner" and not select_ids:
            raise ValueError(f"fold {fold.index}: selection 'inner' but no inner-validation patient is usable by "
                             f"model '{model_name}' (dropped: {dict(list(dropped_inner.items())[:5])}) -- raise "
                             f"inner_fraction or use selection 'last'")
        if spec.is_cox and config.grad_accum < 2:
            raise ValueError("the Cox loss is computed over each accumulation window: set grad_accum >= 2")
        objective = Objective(spec, view, train_ids, config)
        model.to(device)
        optimizer = make_optimizer(model, config)
        steps_per_epoch = math.ceil(len(train_ids) / config.grad_accum)
        scheduler = cosine_with_warmup(optimizer, steps_per_epoch * config.epochs,
                                       round(config.warmup_epochs * steps_per_epoch), config.min_lr_ratio)
        train_targets = objective.targets(view, train_ids)
        strata = _sampling_strata(objective, train_targets)
        index = {p: i for i, p in enumerate(train_ids)}
        select_targets = objective.targets(view, select_ids) if select_ids else {}
        m_name = metric_name(spec)
        header = {"model": model_name, "task": task_name, "fold": fold.index, "selection": config.selection,
                  "monitor": config.monitor if config.selection == "inner" else None, "metric": m_name,
                  "n_train": len(train_ids), "n_inner_val": len(select_ids), "device": str(device)}

        rows: list[dict[str, Any]] = []
        best_value, best_epoch, best_state, since = math.inf, -1, None, 0
        stopped_early = False
        log_csv = log_json = None
        if getattr(model, "direct_fit", False):  # a closed-form model (ridge Cox): fitted, not stepped
            best_state, rows = _fit_direct(model, view, train_ids, select_ids, objective)
            best_epoch = len(rows) - 1
        else:
            epochs = tqdm(range(config.epochs), desc=f"{model_name}/{task_name} fold {fold.index}", unit="epoch",
                          disable=not config.progress, leave=False)
            for epoch in epochs:
                t0 = time.perf_counter()
                lr = optimizer.param_groups[0]["lr"]
                model.train()
                order = epoch_order(train_ids, epoch, config, strata)
                losses: list[float] = []
                optimizer.zero_grad(set_to_none=True)
                for w in range(0, len(order), config.grad_accum):
                    window = order[w:w + config.grad_accum]
                    rows_idx = torch.as_tensor([index[p] for p in window])
                    y = {k: v[rows_idx] for k, v in train_targets.items()}
                    if objective.decomposable:
                        for j, p in enumerate(window):
                            o = model(model_input(view, model, p).x.to(device))
                            loss = objective(o.logits.reshape(1, -1), {k: v[j:j + 1].to(device) for k, v in y.items()})
                            aux = o.extras.get("aux_loss")
                            total = loss + config.aux_loss_weight * aux if aux is not None else loss
                            (total / len(window)).backward()
                            losses.append(float(loss.detach()))
                    else:
                        outs = [model(model_input(view, model, p).x.to(device)) for p in window]
                        logits = torch.cat([o.logits.reshape(1, -1) for o in outs])
                        loss = objective(logits, {k: v.to(device) for k, v in y.items()})
                        aux = [o.extras["aux_loss"] for o in outs if o.extras.get("aux_loss") is not None]
                        total = loss + config.aux_loss_weight * torch.stack(aux).mean() if aux else loss
                        total.backward()
                        losses.append(float(loss.detach()))
                    if config.max_grad_norm:
                        nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                train_loss = float(np.mean(losses))

                inner_loss = inner_metric = float("nan")
                if select_ids:
                    kept, logits, _ = predict_logits(model, view, select_ids, device)
                    with torch.no_grad():
                        inner_loss = float(objective(torch.as_tensor(logits, dtype=torch.float32),
                                                     {k: v for k, v in select_targets.items()}))
                    inner_metric = score_metric(spec, logits, view, kept)
                    monitored = inner_loss if config.monitor == "val_loss" else -inner_metric
                    improved = bool(np.isfinite(monitored) and monitored < best_value - config.min_delta) or best_epoch < 0
                else:
                    monitored, improved = float("nan"), True  # ``last``: every epoch replaces the previous one
                if improved:
                    best_value = monitored if np.isfinite(monitored) else best_value
                    best_epoch, since = epoch, 0
                    best_state = copy.deepcopy({k: v.detach().to("cpu") for k, v in model.state_dict().items()})
                else:
                    since += 1
                rows.append({"epoch": epoch, "train_loss": train_loss, "inner_val_loss": inner_loss,
                             "inner_val_metric": inner_metric, "lr": lr, "seconds": time.perf_counter() - t0,
                             "best": improved})
                epochs.set_postfix(train=f"{train_loss:.3f}", inner_val=f"{inner_loss:.3f}",
                                   **{m_name: f"{inner_metric:.3f}"})
                if out is not None:
                    log_csv, log_json = _write_logs(out, rows, {**header, "best_epoch": best_epoch})
                if (select_ids and config.patience is not None and epoch + 1 >= config.min_epochs
                        and since >= config.patience and epoch + 1 < config.epochs):
                    stopped_early = True
                    break
            epochs.close()

        assert best_state is not None
        model.load_state_dict(best_state)
        model.to("cpu").eval()
        seconds = time.perf_counter() - start
        peak_gpu = (torch.cuda.max_memory_allocated(device) / 2**20) if device.type == "cuda" else None
        history = pd.DataFrame(rows, columns=list(LOG_COLUMNS))
        header.update(best_epoch=best_epoch, stopped_early=stopped_early, seconds=seconds)
        result = FoldResult(
            model_name=model_name, task_name=task_name, task=spec, fold_index=fold.index, model=model,
            model_options=dict(config.model_options), dims=dims, history=history, best_epoch=best_epoch,
            stopped_early=stopped_early, monitor=config.monitor, metric_name=m_name, time_bins=objective.edges,
            scaler=view.scaler, train_patients=train_ids, val_patients=val_ids, dropped=dropped, config=config,
            seconds=seconds, peak_rss_mb=_peak_rss_mb(), peak_gpu_mb=peak_gpu, device=str(device),
            label_classes=[str(c) for c in cohort.label_classes], cancer_types=list(cohort.cancer_types),
            split_file=None if split_file is None else str(split_file), selection=config.selection,
            inner_val_patients=select_ids,
            inner_split_file=None if inner_split_file is None else str(inner_split_file))
        if out is not None:
            result.log_csv, result.log_json = _write_logs(out, rows, header)
            inputs: dict[str, Any] = view.input_paths([*train_ids, *select_ids, *val_ids])
            if split_file is not None and Path(split_file).is_file():
                inputs["split_file"] = split_file
            if inner_split_file is not None and Path(inner_split_file).is_file():
                inputs["inner_split_file"] = inner_split_file
            if pretrained is not None:
                inputs["pretrained"] = pretrained
            fold_record = {"index": fold.index, "train": train_ids, "val": val_ids, "dropped": dropped,
                           "split_file": result.split_file, "split_sha256": _fold_hash(fold),
                           "selection": config.selection, "inner_val": select_ids,
                           "inner_split_file": result.inner_split_file}
            result.checkpoint = save_checkpoint(
                out / "checkpoint.pt", model, model_name=model_name, model_options=config.model_options,
                dims=dims, task=spec, task_name=task_name, train_config=config.to_dict(), fold=fold_record,
                time_bins=objective.edges, scaler=view.scaler, history=rows, best_epoch=best_epoch, inputs=inputs,
                label_classes=result.label_classes, cancer_types=result.cancer_types,
                extra={"label": label or model_name, "selection": config.selection,
                       "trained_on": sorted(set(train_ids) | set(select_ids)),
                       "cohort": view.describe(), "stopped_early": stopped_early, "seconds": seconds,
                       "pretrained": None if pretrained_info is None else
                       {k: pretrained_info[k] for k in ("path", "n_loaded", "missing")},
                       "peak_rss_mb": result.peak_rss_mb, "peak_gpu_mb": peak_gpu, "device": str(device)})
        return result
