"""The runs of the training DAG, planned without torch: task names, ``training.models`` resolved against
``training.variants`` and the model cards, each run's own settings checked against the settings dataclasses, and
the refusal, before any job, of a run the cohort cannot feed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from dataclasses import fields as dataclass_fields
from typing import Any

from pathmm_pipeline.core.errors import InputError
from pathmm_pipeline.plan.cards import GENE_SCALINGS, MODEL_CARDS, TASK_CARDS, UnknownModelCardError
from pathmm_pipeline.training.settings import PretrainConfig, TrainConfig


def parse_task(task: str) -> tuple[str, str | None]:
    """``"classification:subtype"`` -> ("classification", "subtype"); ``"survival"`` -> ("survival", None)."""
    kind, _, column = task.partition(":")
    if kind not in TASK_CARDS:
        raise InputError(task, "unknown task", f"use {', '.join(_task_forms())}")
    if TASK_CARDS.get(kind).label_column and not column:
        raise InputError(task, f"a {kind} task needs a label column", f"write it as {kind}:<column>")
    return kind, column or None


def _task_forms() -> list[str]:
    return [f"{n}:<column>" if TASK_CARDS.get(n).label_column else n for n in TASK_CARDS.names()]


@dataclass(frozen=True)
class ModelRun:
    """One entry of ``training.models``: its ``label`` (the name in results and the report), the registered
    ``model``, its build ``options``, whether it is ``pretrained`` before fine-tuning, whether its
    pretraining corpus takes the ``external`` slide-less patients (when configured), and the run's own
    ``settings`` (TrainConfig fields) and ``pretrain_settings`` (PretrainConfig fields) laid over the shared ones
    (a paper's schedule)."""

    label: str
    model: str
    options: dict[str, Any] = field(default_factory=dict)
    pretrained: bool = False
    external: bool = True
    settings: dict[str, Any] = field(default_factory=dict)
    pretrain_settings: dict[str, Any] = field(default_factory=dict)


#: settings that shape the cohort a run reads rather than its training: tiles per slide and which gene-set
#: collections become the ``pathways`` / ``families`` tokens (e.g. ``hallmarks`` for the ridge Cox baseline)
COHORT_KEYS = ("max_tiles", "pathway_collection", "family_collection", "gene_scaling")

#: the keys a run's settings may not override: the evaluation protocol is one for every compared run
SHARED_ONLY = ("selection", "inner_fraction", "inner_seed", "model_options")


def check_run_settings(label: str, key: str, values: dict[str, Any], config_class: type,
                        cohort_keys: tuple[str, ...] | None = None) -> dict[str, Any]:
    """A variant's ``settings``/``pretrain_settings``, refused with the key and the variant named when a key is
    not a field of ``config_class`` or is one of :data:`SHARED_ONLY`; the values are validated by building it."""
    cohort_keys = COHORT_KEYS if cohort_keys is None else cohort_keys

    known = ({f.name for f in dataclass_fields(config_class)} | set(cohort_keys)) - set(SHARED_ONLY)
    unknown = sorted(set(values) - known)
    if unknown:
        shared = [k for k in unknown if k in SHARED_ONLY]
        hint = (f"{', '.join(shared)} is shared by every run (training.selection / training.inner_validation)"
                if shared else f"known: {', '.join(sorted(known))}")
        raise InputError(f"config training.variants.{label}.{key}", f"unknown or per-run-forbidden setting(s) "
                         f"{', '.join(unknown)}", hint)
    if "gene_scaling" in values and values["gene_scaling"] not in GENE_SCALINGS:
        raise InputError(f"config training.variants.{label}.{key}", f"gene_scaling {values['gene_scaling']!r}",
                         f"use one of {', '.join(GENE_SCALINGS)}")
    try:
        config_class(**{k: v for k, v in values.items() if k not in cohort_keys})
    except (TypeError, ValueError) as exc:
        raise InputError(f"config training.variants.{label}.{key}", str(exc)) from None
    return dict(values)


def resolve_runs(models: Sequence[str], variants: dict[str, dict[str, Any]] | None = None,
                 pretraining: bool = True) -> dict[str, ModelRun]:
    """``training.models`` resolved against ``training.variants`` and the registry: label -> :class:`ModelRun`.

    A pretrainable model is pretrained when pretraining is enabled, unless its variant says ``pretrain: false``.
    An unknown name is an error listing the registered models and the variants."""
    variants = variants or {}
    runs: dict[str, ModelRun] = {}
    for label in models:
        spec = variants.get(label, {"model": label})
        try:
            card = MODEL_CARDS.get(spec["model"])
        except UnknownModelCardError:
            where = f"variant '{label}' names model '{spec['model']}'" if label in variants else f"'{label}'"
            raise InputError("config training.models", f"{where}, which is not a registered model",
                             f"registered models: {', '.join(MODEL_CARDS.names())}; variants: "
                             f"{', '.join(variants) or 'none'}") from None
        options = dict(spec.get("options") or {})
        unknown = sorted(set(options) - set(card.options))
        if unknown:
            raise InputError(f"config training.variants.{label}", f"model '{spec['model']}' has no option(s) "
                             f"{', '.join(unknown)}", f"its options: {', '.join(card.options)}")
        runs[label] = ModelRun(label, spec["model"], options,
                               bool(pretraining and card.pretrainable and spec.get("pretrain", True)),
                               bool(spec.get("external", True)),
                               check_run_settings(label, "settings", spec.get("settings") or {}, TrainConfig),
                               check_run_settings(label, "pretrain_settings", spec.get("pretrain_settings") or {},
                                                   PretrainConfig))
    return runs


def check_runs_against_cohort(runs: dict[str, ModelRun], present: set[str] | frozenset[str],
                              counts: dict[str, int] | None = None) -> None:
    """Refuse, before any job, a run whose model requires a modality no patient of the cohort has (a WSI model
    on a cohort without slides) or reads none that any patient has. ``counts``: patients per modality, for the
    message."""
    problems = []
    for label, run in runs.items():
        card = MODEL_CARDS.get(run.model)
        # a model that cannot be built for a subset of its modalities (no ``modalities`` option: MCAT's and
        # SurvPath's co-attention between patch and pathway tokens) needs every one of them in the cohort
        needs = card.requires if card.takes_subsets else card.uses
        lacking = sorted(needs - set(present))
        if lacking:
            problems.append(f"run '{label}' (model {run.model}) requires {' and '.join(lacking)}, which no patient "
                            f"of the cohort has")
        elif not card.uses & set(present):
            problems.append(f"run '{label}' (model {run.model}) reads {', '.join(sorted(card.uses))}, none of which "
                            f"any patient of the cohort has")
    if problems:
        have = ", ".join(f"{m}: {n} patients" for m, n in (counts or {}).items()) or ", ".join(sorted(present))
        raise InputError("config training.models", "; ".join(problems), f"the cohort has {have or 'nothing'}; "
                         "drop these runs or add the modality")


def task_slug(task: str) -> str:
    """A file-name-safe name for a task (``classification:subtype`` -> ``classification-subtype``)."""
    return task.replace(":", "-")
