"""The task kinds, one registered class each, and the objective a fold is trained with.

A kind knows its head (:meth:`TaskKind.spec`: a :class:`~pathmm_pipeline.models.base.TaskSpec`), which patients
have its target, what it fits on the training patients (time bins, class weights), its loss, its validation
metric, and how its logits become risks or probabilities. Names in config: ``survival`` (discrete-time NLL),
``cox``, ``classification:<column>``, ``binary:<column>``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from pathmm_pipeline.cohort.dataset import MultimodalCohort
from pathmm_pipeline.core.registry import Registry, UnknownEntryError
from pathmm_pipeline.models.base import TaskSpec
from pathmm_pipeline.models.losses import (
    binary_bce_with_pos_weight,
    class_weights,
    cox_ph_loss,
    discretize,
    make_time_bins,
    nll_survival_loss,
    pos_weight_from_labels,
    risk_from_logits,
    weighted_cross_entropy,
)


class UnknownTaskError(UnknownEntryError, ValueError):
    """A task name that is not registered."""


class TaskKind(ABC):
    """One kind of task. Subclasses set ``name``, ``label_column`` (whether the task reads a sample-sheet label
    column) and ``metric`` (the validation metric's name), and implement the methods below."""

    name: ClassVar[str] = ""
    label_column: ClassVar[bool] = False
    metric: ClassVar[str] = ""

    @abstractmethod
    def spec(self, cohort: MultimodalCohort, n_bins: int) -> TaskSpec:
        """The head this task needs on ``cohort`` (``n_bins`` for discrete-time survival)."""

    def has_target(self, targets: Any) -> bool:
        return bool(targets.has_label)

    def fit(self, objective: Objective, cohort: MultimodalCohort, train: Sequence[str]) -> None:
        """Fit what the loss needs on the training patients (never the held-out ones) into ``objective``; by
        default nothing."""
        return None

    def targets(self, objective: Objective, cohort: MultimodalCohort, patients: Sequence[str]
                ) -> dict[str, torch.Tensor]:
        return {"label": torch.as_tensor(cohort.labels(patients))}

    @abstractmethod
    def loss(self, objective: Objective, logits: torch.Tensor, y: dict[str, torch.Tensor]) -> torch.Tensor:
        """The mean loss of a batch of logits against the targets of the same patients."""

    def score(self, spec: TaskSpec, logits: np.ndarray, cohort: MultimodalCohort, patients: Sequence[str]) -> float:
        from pathmm_pipeline.stats.metrics import classification_metrics

        return classification_metrics(cohort.labels(patients), probabilities(spec, logits), None).macro_auc


#: the task kinds by name
TASKS: Registry[TaskKind] = Registry("task", unknown=UnknownTaskError,
                                     hint="; write classification and binary tasks as <kind>:<label column>")


def register_task(cls: type[TaskKind]) -> type[TaskKind]:
    """Class decorator: register one instance of a :class:`TaskKind` under its ``name``."""
    TASKS.register(cls.name, cls())
    return cls


@register_task
class Survival(TaskKind):
    """Discrete-time survival: the hazards of ``n_bins`` time bins (quantiles of the training patients'
    uncensored times), the NLL loss with ``alpha_surv`` weighting the uncensored term, C-index."""

    name, metric = "survival", "c_index"

    def spec(self, cohort: MultimodalCohort, n_bins: int) -> TaskSpec:
        return TaskSpec.survival(n_bins)

    def has_target(self, targets: Any) -> bool:
        return bool(targets.has_survival)

    def fit(self, objective: Objective, cohort: MultimodalCohort, train: Sequence[str]) -> None:
        times, events = cohort.survival(train)
        objective.edges = make_time_bins(times, events, objective.task.n_outputs)

    def targets(self, objective: Objective, cohort: MultimodalCohort, patients: Sequence[str]
                ) -> dict[str, torch.Tensor]:
        times, events = cohort.survival(patients)
        out = {"time": torch.as_tensor(times), "event": torch.as_tensor(events)}
        if objective.edges is not None:
            out["bin"] = torch.as_tensor(discretize(times, objective.edges))
        return out

    def loss(self, objective: Objective, logits: torch.Tensor, y: dict[str, torch.Tensor]) -> torch.Tensor:
        return nll_survival_loss(logits, y["bin"], y["event"], alpha=objective.alpha)

    def score(self, spec: TaskSpec, logits: np.ndarray, cohort: MultimodalCohort, patients: Sequence[str]) -> float:
        from pathmm_pipeline.stats.metrics import c_index

        times, events = cohort.survival(patients)
        return c_index(times, events, risk_scores(spec, logits))


@register_task
class Cox(Survival):
    """Cox proportional hazards: one linear predictor, the partial likelihood over each accumulation window."""

    name = "cox"
    decomposable: ClassVar[bool] = False

    def spec(self, cohort: MultimodalCohort, n_bins: int) -> TaskSpec:
        return TaskSpec("survival", 1)

    def fit(self, objective: Objective, cohort: MultimodalCohort, train: Sequence[str]) -> None:
        return None

    def loss(self, objective: Objective, logits: torch.Tensor, y: dict[str, torch.Tensor]) -> torch.Tensor:
        return cox_ph_loss(logits.reshape(-1), y["time"], y["event"])


def _label_classes(name: str, cohort: MultimodalCohort) -> int:
    k = len(cohort.label_classes)
    if cohort.label_column is None or k < 2:
        raise ValueError(f"task '{name}' needs the cohort built with a label_column of >= 2 classes "
                         f"(label_column={cohort.label_column!r}, classes {cohort.label_classes})")
    return k


@register_task
class Classification(TaskKind):
    """Multi-class classification of a label column: class-weighted cross-entropy, macro AUC."""

    name, label_column, metric = "classification", True, "macro_auc"

    def spec(self, cohort: MultimodalCohort, n_bins: int) -> TaskSpec:
        return TaskSpec.classification(_label_classes(self.name, cohort))

    def fit(self, objective: Objective, cohort: MultimodalCohort, train: Sequence[str]) -> None:
        if objective.class_weighting:
            objective.weights = class_weights(cohort.labels(train), objective.task.n_outputs)

    def loss(self, objective: Objective, logits: torch.Tensor, y: dict[str, torch.Tensor]) -> torch.Tensor:
        return weighted_cross_entropy(logits, y["label"].to(logits.device), objective.weights)


@register_task
class Binary(TaskKind):
    """Two-class classification of a label column: BCE with a positive-class weight, AUC."""

    name, label_column, metric = "binary", True, "auc"

    def spec(self, cohort: MultimodalCohort, n_bins: int) -> TaskSpec:
        k = _label_classes(self.name, cohort)
        if k != 2:
            raise ValueError(f"task 'binary' needs exactly 2 classes, {cohort.label_column!r} has {k}: "
                             f"{cohort.label_classes}")
        return TaskSpec.binary()

    def fit(self, objective: Objective, cohort: MultimodalCohort, train: Sequence[str]) -> None:
        if objective.class_weighting:
            objective.pos_weight = pos_weight_from_labels(cohort.labels(train))

    def loss(self, objective: Objective, logits: torch.Tensor, y: dict[str, torch.Tensor]) -> torch.Tensor:
        return binary_bce_with_pos_weight(logits.reshape(-1), y["label"].to(logits.device).float(),
                                          objective.pos_weight)


def task_kind(task: TaskSpec) -> TaskKind:
    """The registered kind of a built head (``cox`` for a one-output survival head)."""
    return TASKS.get("cox" if task.is_cox else task.kind)


# ------------------------------------------------------------------------------------ the functions callers use
def resolve_task(task: str | TaskSpec, cohort: MultimodalCohort, n_bins: int = 4) -> tuple[TaskSpec, str]:
    """``(TaskSpec, name)`` from a registered name (``survival`` with ``n_bins`` bins, ``cox``,
    ``classification``: the cohort's label classes, ``binary``: a two-class label) or a TaskSpec."""
    if isinstance(task, TaskSpec):
        return task, ("cox" if task.is_cox else task.kind)
    return TASKS.get(task).spec(cohort, n_bins), task


def metric_name(task: TaskSpec) -> str:
    """The validation metric of a head: ``c_index``, ``macro_auc`` or ``auc``."""
    return task_kind(task).metric


def has_target(task: TaskSpec, item_targets: Any) -> bool:
    """Whether a patient's targets hold what the task learns from (time and event, or a label)."""
    return task_kind(task).has_target(item_targets)


class Objective:
    """The task's loss with everything fitted on the training patients (bins, class weights).

    ``alpha``: the survival NLL's weight on uncensored patients (SurvPath's ``alpha_surv``);
    ``class_weighting``: inverse-frequency class weights (or the positive weight of a binary task)."""

    def __init__(self, task: TaskSpec, cohort: MultimodalCohort, train: Sequence[str], *, alpha: float = 0.0,
                 class_weighting: bool = True) -> None:
        self.task = task
        self.kind = task_kind(task)
        self.alpha = alpha
        self.class_weighting = class_weighting
        self.edges: np.ndarray | None = None
        self.weights: torch.Tensor | None = None
        self.pos_weight: torch.Tensor | None = None
        self.kind.fit(self, cohort, train)

    @property
    def decomposable(self) -> bool:
        """Whether the loss is a sum over patients (everything but Cox)."""
        return getattr(self.kind, "decomposable", True)

    def targets(self, cohort: MultimodalCohort, patients: Sequence[str]) -> dict[str, torch.Tensor]:
        return self.kind.targets(self, cohort, patients)

    def __call__(self, logits: torch.Tensor, y: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean loss of a batch of logits (patients x outputs) against ``targets`` of the same patients."""
        return self.kind.loss(self, logits, y)


def score_metric(task: TaskSpec, logits: np.ndarray, cohort: MultimodalCohort, patients: Sequence[str]) -> float:
    """The validation metric of ``logits`` (NaN when undefined, e.g. no comparable pair or a missing class)."""
    if len(patients) < 2:
        return float("nan")
    try:
        return task_kind(task).score(task, logits, cohort, patients)
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
