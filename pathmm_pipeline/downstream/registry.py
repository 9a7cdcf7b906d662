"""The downstream evaluations by name, one registered function each. Adding one is a function taking a
:class:`DownstreamJob` and returning a :class:`~.kinds.DownstreamResult`, registered with
:func:`register_downstream`; the rule, the CLI's choices and the schema read this registry (through the
torch-free catalogue, :mod:`pathmm_pipeline.plan.catalog`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pathmm_pipeline.cohort.dataset import MultimodalCohort
from pathmm_pipeline.cohort.splits import Fold
from pathmm_pipeline.core.errors import InputError
from pathmm_pipeline.core.registry import Registry, UnknownEntryError
from pathmm_pipeline.downstream.kinds import (
    COX_PENALTY,
    DEFAULT_FRACTIONS,
    DownstreamResult,
    data_efficiency,
    linear_probe,
    out_of_distribution,
    report_generation,
    zero_and_few_shot,
)
from pathmm_pipeline.models.checkpoint import load_checkpoint
from pathmm_pipeline.training.pretrain import load_pretrained_model
from pathmm_pipeline.training.settings import TrainConfig


class UnknownDownstreamError(UnknownEntryError):
    """A downstream evaluation that is not registered."""


@dataclass
class DownstreamJob:
    """Everything one downstream evaluation of one run on one fold may read: the run (``model``, its ``label``,
    its ``task`` kind, its TrainConfig ``config`` whose ``selection`` governs every choice), the cohort and the
    fold, the fold's fine-tuned ``checkpoint`` and ``pretrained`` checkpoint (either may be None), the cleaned
    ``reports_table``, where to write (``out_dir``) and the evaluation's own ``options`` from config."""

    model: str
    label: str | None
    task: str
    config: TrainConfig
    cohort: MultimodalCohort
    fold: Fold
    out_dir: Path
    checkpoint: str | None = None
    pretrained: str | None = None
    reports_table: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DownstreamKind:
    """A registered downstream evaluation: ``run`` it on a job; ``options`` are the keys of its config section
    (``training.downstream.<name>``) it takes besides ``models``; ``reads_every_modality``: its job reads every
    modality store (report generation reads the report texts whatever the model reads); ``needs_reports_table``:
    it needs the cleaned reports table (and is skipped when the cohort has no report)."""

    name: str
    run: Callable[[DownstreamJob], DownstreamResult]
    options: tuple[str, ...] = ()
    reads_every_modality: bool = False
    needs_reports_table: bool = False


DOWNSTREAM: Registry[DownstreamKind] = Registry("downstream evaluation", unknown=UnknownDownstreamError)


def register_downstream(name: str, *, options: tuple[str, ...] = (), reads_every_modality: bool = False,
                        needs_reports_table: bool = False
                        ) -> Callable[[Callable[[DownstreamJob], DownstreamResult]],
                                      Callable[[DownstreamJob], DownstreamResult]]:
    """Decorator: register ``fn(job) -> DownstreamResult`` as the downstream evaluation ``name``."""

    def decorate(fn: Callable[[DownstreamJob], DownstreamResult]) -> Callable[[DownstreamJob], DownstreamResult]:
        DOWNSTREAM.register(name, DownstreamKind(name, fn, tuple(options), reads_every_modality,
                                                 needs_reports_table))
        return fn

    return decorate


def _fine_tuned(job: DownstreamJob) -> tuple[Any, MultimodalCohort]:
    loaded = load_checkpoint(job.checkpoint)
    view = job.cohort.with_scaler(loaded.scaler) if loaded.scaler is not None else job.cohort
    return loaded.model, view


def _frozen(job: DownstreamJob, name: str) -> tuple[Any, MultimodalCohort]:
    """The frozen features the methods evaluate: the pretrained (tuned) model, else the fine-tuned one."""
    if job.pretrained is None and job.checkpoint is None:
        raise InputError(job.out_dir, f"{name} needs the fold's pretraining checkpoint or fine-tuned checkpoint",
                         "pass --pretrained or --checkpoint")
    if job.pretrained is not None:
        net = load_pretrained_model(job.pretrained)
        return net, (job.cohort.for_fold(job.fold.train) if job.cohort.genomics is not None else job.cohort)
    return _fine_tuned(job)


@register_downstream("report_generation", options=("settings",), reads_every_modality=True,
                     needs_reports_table=True)
def run_report_generation(job: DownstreamJob) -> DownstreamResult:
    """ALTER's report generation from the fine-tuned model's embedding computed without the report."""
    if job.checkpoint is None or job.reports_table is None:
        raise InputError(job.out_dir, "report generation needs the fold's checkpoint and the cleaned reports table",
                         "pass --checkpoint and --reports-table")
    model, view = _fine_tuned(job)
    return report_generation(model, view, job.fold, job.reports_table, job.options.get("settings", {}),
                             out_dir=job.out_dir, label=job.label, selection=job.config.selection)


@register_downstream("data_efficiency", options=("fractions", "per_cancer_type"))
def run_data_efficiency(job: DownstreamJob) -> DownstreamResult:
    """MICE's data-efficiency curve: fine-tuning on fractions of the training patients."""
    return data_efficiency(job.model, job.task, job.cohort, job.fold, job.config, pretrained=job.pretrained,
                           fractions=job.options.get("fractions", DEFAULT_FRACTIONS),
                           per_cancer_type=job.options.get("per_cancer_type", True), label=job.label)


@register_downstream("linear_probe")
def run_linear_probe(job: DownstreamJob) -> DownstreamResult:
    """ModalTune's linear / Cox probe on frozen features."""
    net, view = _frozen(job, "linear_probe")
    probe = getattr(net, "probe", None)  # a model with a published probe (ModalTune's) brings its penalty
    return linear_probe(net, view, job.fold, job.task, label=job.label, selection=job.config.selection,
                        penalizer=probe.penalty if probe is not None else COX_PENALTY,
                        inner_fraction=job.config.inner_fraction, inner_seed=job.config.inner_seed)


@register_downstream("out_of_distribution")
def run_out_of_distribution(job: DownstreamJob) -> DownstreamResult:
    """ModalTune's transfer: tuned on one cancer type's training patients, probed on another's."""
    if job.pretrained is None:
        raise InputError(job.out_dir, "out_of_distribution needs the fold's pretraining checkpoint",
                         "pass --pretrained (a pretrainable model with its pretraining stage on)")
    return out_of_distribution(job.pretrained, job.cohort, job.fold, job.task, label=job.label,
                               selection=job.config.selection, inner_fraction=job.config.inner_fraction,
                               inner_seed=job.config.inner_seed)


@register_downstream("zero_shot")
def run_zero_shot(job: DownstreamJob) -> DownstreamResult:
    """mSTAR's zero- and few-shot cancer-type classification in the aligned slide/text space."""
    net, view = _frozen(job, "zero_shot")
    return zero_and_few_shot(net, view, job.fold, label=job.label, selection=job.config.selection)
