"""What the DAG needs to know about each registered model, task kind and downstream evaluation, without
importing torch: typed cards over the generated :mod:`.catalog`, looked up with did-you-mean errors.

The catalogue is written from the registries by ``pathmm catalog --write`` (:mod:`pathmm_pipeline.stages.catalog`)
and a test fails when it is stale, so the registries stay the single source."""

from __future__ import annotations

from dataclasses import dataclass

from pathmm_pipeline.core.registry import Registry, UnknownEntryError
from pathmm_pipeline.core.weights import local_weights_files
from pathmm_pipeline.plan import catalog


class UnknownModelCardError(UnknownEntryError):
    """A model name that is not registered (as the planning floor sees it)."""


class UnknownTaskCardError(UnknownEntryError, ValueError):
    """A task kind that is not registered."""


@dataclass(frozen=True)
class ModelCard:
    """A registered model: the modalities it reads (``uses``) and must have (``requires``), whether it has a
    pretraining objective, and the names of its build options."""

    name: str
    uses: frozenset[str]
    requires: frozenset[str]
    pretrainable: bool
    options: tuple[str, ...]

    @property
    def takes_subsets(self) -> bool:
        """Whether it can be built for a subset of its modalities (it has a ``modalities`` option)."""
        return "modalities" in self.options


@dataclass(frozen=True)
class TaskCard:
    """A registered task kind: whether it names a label column (``<kind>:<column>``)."""

    name: str
    label_column: bool


@dataclass(frozen=True)
class DownstreamCard:
    """A registered downstream evaluation and what its jobs read."""

    name: str
    options: tuple[str, ...]
    reads_every_modality: bool
    needs_reports_table: bool


@dataclass(frozen=True)
class EncoderCard:
    """A registered patch encoder: where its weights are by default (None: random init)."""

    name: str
    default_weights: str | None


MODEL_CARDS: Registry[ModelCard] = Registry("model", unknown=UnknownModelCardError)
TASK_CARDS: Registry[TaskCard] = Registry(
    "task", unknown=UnknownTaskCardError, hint="; write classification and binary tasks as <kind>:<label column>")
DOWNSTREAM_CARDS: Registry[DownstreamCard] = Registry("downstream evaluation")
ENCODER_CARDS: Registry[EncoderCard] = Registry("encoder", hint="; set features.encoders in config.yaml to some "
                                                "of these (`pathmm encoders` describes them)")

for _name, _card in catalog.MODELS.items():
    MODEL_CARDS.register(_name, ModelCard(_name, frozenset(_card["uses"]), frozenset(_card["requires"]),
                                          bool(_card["pretrainable"]), tuple(_card["options"])))
for _name, _card in catalog.TASKS.items():
    TASK_CARDS.register(_name, TaskCard(_name, bool(_card["label_column"])))
for _name, _card in catalog.DOWNSTREAM.items():
    DOWNSTREAM_CARDS.register(_name, DownstreamCard(_name, tuple(_card["options"]), bool(_card["reads_every_modality"]),
                                                    bool(_card["needs_reports_table"])))
for _name, _card in catalog.ENCODERS.items():
    ENCODER_CARDS.register(_name, EncoderCard(_name, _card["default_weights"]))


def weights_files(encoder: str, weights: str | None = "default") -> list[str]:
    """The local weights file(s) of an encoder (for a rule's ``input:``, so that new weights re-run extraction):
    a weights manifest gives every file it lists, hub ids and random init give nothing. ``weights``:
    ``"default"`` (the registry's) or a reference."""
    source = ENCODER_CARDS.get(encoder).default_weights if weights == "default" else weights
    return [str(p) for p in local_weights_files(source or None)]

#: the expression scalings a run may choose (``gene_scaling``): :data:`pathmm_pipeline.genomics.normalize.METHODS`
GENE_SCALINGS: tuple[str, ...] = tuple(getattr(catalog, "GENE_SCALINGS", {}))  # (a stale catalogue fails a test)
#: the extraction settings that change a feature (ExtractionSettings.FEATURE_KEYS): the extraction rules' params
EXTRACTION_FEATURE_KEYS: tuple[str, ...] = tuple(
    k for k, card in getattr(catalog, "EXTRACTION_SETTINGS", {}).items() if card["role"] == "feature")
