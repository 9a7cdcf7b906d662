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
  batch: it is computed over each accumulation window (``grad_accum >= 2``). With ``batch_tiles`` a window's
  patients are forwarded together in padded batches (:mod:`.batching`), same losses to float rounding.
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

import copy
import hashlib
import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from pathmm_pipeline.cohort.dataset import MultimodalCohort
from pathmm_pipeline.cohort.selection import inner_split, strata_table
from pathmm_pipeline.cohort.splits import Fold
from pathmm_pipeline.core.atomic import write_text_atomic
from pathmm_pipeline.evaluation.predict import model_input, predict_logits
from pathmm_pipeline.evaluation.run import evaluate_fold
from pathmm_pipeline.evaluation.trained import FoldResult
from pathmm_pipeline.models import ModelOutput, PathmmModel, PatientInput, TaskSpec, build_model
from pathmm_pipeline.models.checkpoint import save_checkpoint
from pathmm_pipeline.tasks.kinds import Objective, has_target, metric_name, resolve_task, score_metric
from pathmm_pipeline.training.batching import bag_size, padded_batches
from pathmm_pipeline.training.engine import Engine, cosine_with_warmup, peak_gpu_mb, peak_rss_mb, run_on
from pathmm_pipeline.training.pretrain import apply_pretrained
from pathmm_pipeline.training.settings import TrainConfig

LOG_COLUMNS = ("epoch", "train_loss", "inner_val_loss", "inner_val_metric", "lr", "seconds", "best")




# ------------------------------------------------------------------------------------------- helpers
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


def _sampling_strata(objective: Objective, targets: dict[str, torch.Tensor]) -> list[Any] | None:
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
    def part(ids: list[str]) -> tuple[list[Any], np.ndarray, np.ndarray, np.ndarray]:
        targets = [view.targets(p) for p in ids]
        return ([model_input(view, model, p).x for p in ids], np.array([t.time for t in targets], float),
                np.array([t.event for t in targets], int), np.array([t.label for t in targets], int))

    t0 = time.perf_counter()
    fit, fit_t, fit_e, fit_y = part(train_ids)
    check, check_t, check_e, check_y = part(select_ids) if select_ids else ([], None, None, None)
    tried = model.fit_direct(fit, fit_t, fit_e, check, check_t, check_e, edges=objective.edges,
                             fit_label=fit_y, check_label=check_y)
    rows = [{"epoch": i, "train_loss": float("nan"), "inner_val_loss": float("nan"),
             "inner_val_metric": float(r.get("inner_val_metric", float("nan"))), "lr": float("nan"),
             "seconds": time.perf_counter() - t0, "best": bool(r.get("chosen", False))} for i, r in enumerate(tried)]
    state = copy.deepcopy({k: v.detach().to("cpu") for k, v in model.state_dict().items()})
    return state, rows


def _window_step(model: PathmmModel, view: MultimodalCohort, window: list[str], y: dict[str, torch.Tensor],
                 objective: Objective, engine: Engine, config: TrainConfig, device: torch.device) -> list[float]:
    """Accumulate the gradient of one window (``y``: its targets, rows in window order); returns its losses.

    A decomposable objective back-propagates each forward call's patients as soon as they are done (each
    patient's loss over the window's size); the Cox loss needs the whole window's logits in one graph. With
    ``batch_tiles`` the window's patients go through :mod:`.batching`'s padded batches, else one at a time."""
    def targets(rows: Sequence[int]) -> dict[str, torch.Tensor]:
        picked = torch.as_tensor(list(rows))
        return {k: v[picked].to(device) for k, v in y.items()}

    def with_aux(loss: torch.Tensor, outs: Sequence[Any]) -> torch.Tensor:
        aux = [o.extras["aux_loss"] for o in outs if o.extras.get("aux_loss") is not None]
        return loss + config.aux_loss_weight * torch.stack(aux).mean() if aux else loss

    if config.batch_tiles is None:
        groups = [[i] for i in range(len(window))]
        loaded: dict[int, PatientInput] = {}
    else:
        loaded = {i: model_input(view, model, p).x for i, p in enumerate(window)}
        groups = padded_batches([bag_size(x) for x in loaded.values()], config.batch_tiles)

    def forward(rows: Sequence[int]) -> list[ModelOutput]:
        xs = [(loaded[i] if i in loaded else model_input(view, model, window[i]).x).to(device) for i in rows]
        return model.forward_batch(xs) if config.batch_tiles is not None else [model(x) for x in xs]

    if not objective.decomposable:
        outs: list[Any] = [None] * len(window)
        with engine.autocast():
            for rows in groups:
                for i, o in zip(rows, forward(rows)):
                    outs[i] = o
        loss = objective(torch.cat([o.logits.reshape(1, -1) for o in outs]), targets(range(len(window))))
        engine.backward(with_aux(loss, outs))
        return [float(loss.detach())]
    losses = []
    for rows in groups:
        with engine.autocast():
            outs = forward(rows)
        total = torch.zeros((), device=device)
        for i, o in zip(rows, outs):
            loss = objective(o.logits.reshape(1, -1), targets([i]))
            total = total + with_aux(loss, [o])
            losses.append(float(loss.detach()))
        engine.backward(total / len(window))
    return losses


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
    out = Path(out_dir) if out_dir is not None else None
    if split_file is not None and Path(split_file).is_dir():
        split_file = Path(split_file) / f"splits_{fold.index}.csv"
    start = time.perf_counter()

    with run_on(config.device, deterministic=config.deterministic, threads=config.threads,
                seed=config.seed) as device:
        spec, task_name = resolve_task(task, cohort, config.n_bins)
        dims = cohort.input_dims()
        model = build_model(model_name, dims, spec, **config.model_options)
        pretrained_info = None
        if pretrained is not None:
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
        objective = Objective(spec, view, train_ids, alpha=config.alpha_surv,
                              class_weighting=config.class_weighting)
        model.to(device)
        steps_per_epoch = math.ceil(len(train_ids) / config.grad_accum)
        engine = Engine(model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                        optimizer=config.optimizer,
                        schedule=cosine_with_warmup(steps_per_epoch * config.epochs,
                                                    round(config.warmup_epochs * steps_per_epoch),
                                                    config.min_lr_ratio),
                        max_grad_norm=config.max_grad_norm, device=device, amp=config.amp)
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
                lr = engine.lr
                model.train()
                order = epoch_order(train_ids, epoch, config, strata)
                losses: list[float] = []
                engine.zero_grad()
                for w in range(0, len(order), config.grad_accum):
                    window = order[w:w + config.grad_accum]
                    rows_idx = torch.as_tensor([index[p] for p in window])
                    y = {k: v[rows_idx] for k, v in train_targets.items()}
                    losses += _window_step(model, view, window, y, objective, engine, config, device)
                    engine.step()
                train_loss = float(np.mean(losses))

                inner_loss = inner_metric = float("nan")
                if select_ids:
                    kept, logits, _ = predict_logits(model, view, select_ids, device)
                    with torch.no_grad():
                        inner_loss = float(objective(torch.as_tensor(logits, dtype=torch.float32),
                                                     {k: v for k, v in select_targets.items()}))
                    inner_metric = score_metric(spec, logits, view, kept)
                    monitored = inner_loss if config.monitor == "val_loss" else -inner_metric
                    improved = (bool(np.isfinite(monitored) and monitored < best_value - config.min_delta)
                                or best_epoch < 0)
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
        peak_gpu = peak_gpu_mb(device)
        history = pd.DataFrame(rows, columns=list(LOG_COLUMNS))
        header.update(best_epoch=best_epoch, stopped_early=stopped_early, seconds=seconds)
        result = FoldResult(
            model_name=model_name, task_name=task_name, task=spec, fold_index=fold.index, model=model,
            model_options=dict(config.model_options), dims=dims, history=history, best_epoch=best_epoch,
            stopped_early=stopped_early, monitor=config.monitor, metric_name=m_name, time_bins=objective.edges,
            scaler=view.scaler, train_patients=train_ids, val_patients=val_ids, dropped=dropped, config=config,
            seconds=seconds, peak_rss_mb=peak_rss_mb(), peak_gpu_mb=peak_gpu, device=str(device),
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


def cross_validate(model_name: str, task: Any, cohort: Any, splits: Any, config: Any = None,
                   out_dir: str | os.PathLike[str] | None = None, folds: Sequence[int] | None = None,
                   **evaluate_options: Any) -> tuple[list[Any], list[Any]]:
    """Train (:func:`train_fold`) and evaluate every fold of ``splits`` (or
    only ``folds``); with ``out_dir`` each fold writes into ``<out_dir>/fold_<k>``."""
    results, evaluations = [], []
    for fold in splits:
        if folds is not None and fold.index not in folds:
            continue
        where = None if out_dir is None else Path(out_dir) / f"fold_{fold.index}"
        source = getattr(splits, "source", "") or None
        result = train_fold(model_name, task, cohort, fold, config, out_dir=where, split_file=source)
        evaluation = evaluate_fold(result, cohort, **evaluate_options)
        if where is not None:
            evaluation.save(where)
        results.append(result)
        evaluations.append(evaluation)
    return results, evaluations
