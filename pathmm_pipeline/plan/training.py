"""The plan of the training half of the DAG, made once from the validated config and the cohort: which runs
are trained on which encoder, the folds, the mSTAR encoder's per-fold weights, the settings JSON of each job,
which stores each job reads and the downstream tables. ``workflow/rules/training.smk`` holds rules over this
object and nothing else; nothing here mutates the config, reads a file a rule could read, or imports torch.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from pathmm_pipeline.core.errors import ConfigError
from pathmm_pipeline.core.settings import SettingsMixin
from pathmm_pipeline.downstream.settings import GenerationConfig
from pathmm_pipeline.plan.cards import DOWNSTREAM_CARDS, MODEL_CARDS
from pathmm_pipeline.plan.runs import COHORT_KEYS, ModelRun, check_runs_against_cohort, resolve_runs, task_slug
from pathmm_pipeline.preprocess.samplesheet import read_external_patients
from pathmm_pipeline.training.settings import PretrainConfig, SelfTaughtConfig, TrainConfig


def check_settings(section: str, values: Mapping[str, Any], settings: type[SettingsMixin],
                   extra: tuple[str, ...] = ()) -> None:
    """Refuse, while the DAG is parsed, a settings section with a key its dataclass does not have (a typo) or a
    value it refuses, naming the section and the key (``extra``: keys the stage takes out before building)."""
    try:
        settings.from_dict({k: v for k, v in values.items() if k not in extra})
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"config {section}: {exc}") from None


@dataclass(frozen=True)
class CohortModalities:
    """Who has what: the patients with a slide, with expression and with a report, and whether any
    expression file or report exists."""

    slide_patients: frozenset[str]
    expression_patients: frozenset[str]
    report_patients: frozenset[str]

    @property
    def present(self) -> set[str]:
        return {m for m, ids in self.counts().items() if ids}

    def counts(self) -> dict[str, int]:
        return {"wsi": len(self.slide_patients), "genomics": len(self.expression_patients),
                "report": len(self.report_patients)}


class TrainingPlan:
    """Everything ``training.smk`` needs, from ``config`` (validated) and the cohort's ``modalities``.

    ``encoders``: ``features.encoders`` (one feature store per slide each). Raises
    :class:`~pathmm_pipeline.core.errors.PathmmError` subclasses for a configuration the cohort cannot run."""

    def __init__(self, config: Mapping[str, Any], modalities: CohortModalities) -> None:
        self.config = config
        self.results = str(config["results"])
        self.train = config["training"]
        self.pretraining = self.train["pretraining"]
        self.mstar = self.train["mstar"]
        self.modalities = modalities
        self.encoders = list(config["features"]["encoders"])
        self.main_encoder = self.train["encoder"] or self.encoders[0]
        self.task_slugs = {task_slug(t): t for t in self.train["tasks"]}
        self.folds = list(range(self.train["folds"]))
        inner = self.train["inner_validation"]
        #: the evaluation protocol, one for every run: how an epoch or a penalty is chosen (never on the held-out
        #: fold)
        self.protocol = {"selection": self.train["selection"], "inner_fraction": inner["fraction"],
                         "inner_seed": inner["seed"]}
        #: (encoder, run) pairs trained: every run on the main encoder, and the runs listed per compared encoder
        self.trained = [(self.main_encoder, m) for m in self.train["models"]] + [
            (e, m) for e, models in self.train["compare_encoders"].items() for m in models]
        self.per_fold_mstar = self.mstar["mode"] == "per_fold"
        self.mstar_used = (bool(self.train["compare_encoders"].get(self.mstar["encoder"]))
                           or self.mstar["encoder"] in self.encoders)
        check_settings("training.settings", {**self.train["settings"], **self.protocol}, TrainConfig, COHORT_KEYS)
        check_settings("training.pretraining.settings", self.pretraining["settings"], PretrainConfig, COHORT_KEYS)
        check_settings("training.mstar.settings", {**self.mstar["settings"], "backend": config["slide"]["backend"]},
                       SelfTaughtConfig)
        check_settings("training.downstream.report_generation.settings",
                       self.train["downstream"]["report_generation"].get("settings", {}), GenerationConfig)
        if self.per_fold_mstar and self.mstar["encoder"] in self.encoders:
            raise ConfigError(f"training.mstar.mode per_fold: the mSTAR encoder {self.mstar['encoder']} has one "
                              "set of weights per fold, so it cannot be a features.encoders entry (one store per "
                              "slide); list it under training.compare_encoders, or set training.mstar.mode: "
                              "transductive")
        labels = [m for _, m in self.trained] + ([self.mstar["stage1_run"]] if self.mstar_used else [])
        self.runs: dict[str, ModelRun] = resolve_runs(list(dict.fromkeys(labels)), self.train["variants"],
                                                      self.pretraining["enabled"])
        check_runs_against_cohort(self.runs, modalities.present, modalities.counts())
        self.pretrained_runs = [label for label, run in self.runs.items() if run.pretrained]
        #: the run whose pretraining is mSTAR's stage 1 (None when no run reads the mSTAR encoder)
        self.stage1_run = self.runs.get(self.mstar["stage1_run"])
        external = self.pretraining["external"]
        # the external table is read only when some run pretrains on it (its expression files are rule inputs)
        self.external: pd.DataFrame | None = (
            read_external_patients(external)
            if external and any(self.runs[r].external for r in self.pretrained_runs) else None)
        self.downstream_runs = {
            kind: [m for m in self.train["downstream"][kind]["models"] if m in self.runs]
            if not (DOWNSTREAM_CARDS.get(kind).needs_reports_table and not modalities.report_patients) else []
            for kind in DOWNSTREAM_CARDS.names()}

    # ------------------------------------------------------------------------------------------ folders
    @property
    def fold_dir(self) -> str:
        """A trained fold's folder, with ``{encoder}``, ``{model}``, ``{task}`` and ``{fold}`` left to fill."""
        return f"{self.results}/training/{{encoder}}/{{model}}/{{task}}/fold_{{fold}}"

    @property
    def pretrain_dir(self) -> str:
        return f"{self.results}/pretraining/{{encoder}}/{{model}}/fold_{{fold}}"

    def pretrained_checkpoint(self, encoder: str, label: str, fold: int | str) -> str:
        return self.pretrain_dir.format(encoder=encoder, model=label, fold=fold) + "/pretrained.pt"

    @property
    def pretrain_labels(self) -> list[str]:
        """The runs the pretrain rule makes: those pretrained, and mSTAR's stage-1 run per fold."""
        extra = [self.mstar["stage1_run"]] if self.per_fold_mstar and self.mstar_used else []
        return list(dict.fromkeys(self.pretrained_runs + extra))

    # ------------------------------------------------------------------------------------------ encoders
    def fold_encoder(self, encoder: str, fold: int | str) -> str:
        """The feature folder of ``encoder`` for fold ``fold``: the mSTAR encoder in per_fold mode has one per
        fold (``<encoder>_fold<k>``, weights from that fold's stage 2), every other encoder one for all folds."""
        return f"{encoder}_fold{fold}" if self.per_fold_mstar and encoder == self.mstar["encoder"] else encoder

    @property
    def slide_feature_encoders(self) -> list[str]:
        """The feature folders with one store per slide (``features/<encoder>/<slide>.zarr``): the extracted
        encoders, the compared ones, and mSTAR's base encoder; not a per-fold mSTAR encoder (one folder per fold)."""
        names = list(self.encoders)
        if self.trained:
            names += [e for e, _ in self.trained]
        if self.mstar_used:
            names += [self.mstar["base_encoder"], self.mstar["encoder"]]
        return [n for n in dict.fromkeys(names)
                if not (self.per_fold_mstar and self.mstar_used and n == self.mstar["encoder"])]

    def encoder_alias(self, name: str) -> str:
        """The registered encoder a feature-folder name stands for (mSTAR's per-fold encoders)."""
        base = self.mstar["encoder"]
        if self.per_fold_mstar and self.mstar_used and name.startswith(f"{base}_fold"):
            suffix = name[len(base) + 5:]
            if suffix.isdigit() and int(suffix) in self.folds:
                return base
        return name

    def stage2_weights(self, fold: int | str | None = None) -> str:
        """Where mSTAR stage 2 writes the mSTAR encoder's weights (per fold, or once when transductive)."""
        base = f"{self.results}/mstar/stage2/{self.mstar['encoder']}"
        return f"{base}/fold_{fold}.pt" if self.per_fold_mstar else f"{base}.pt"

    def stage2_output(self) -> str:
        """The stage-2 rule's output pattern (``{encoder}``, and ``{fold}`` in per_fold mode, left to fill)."""
        base = f"{self.results}/mstar/stage2/{{encoder}}"
        return f"{base}/fold_{{fold}}.pt" if self.per_fold_mstar else f"{base}.pt"

    def encoder_weights(self, name: str) -> Any:
        """The weights of a feature folder's encoder: ``encoder_weights`` of the config, else (the mSTAR
        encoder) stage 2's output, else ``"default"`` (the registry's)."""
        configured = self.config["encoder_weights"]
        if name in configured:
            return configured[name]
        if self.mstar_used:
            if self.per_fold_mstar and self.encoder_alias(name) != name:
                return self.stage2_weights(name.rsplit("_fold", 1)[1])
            if not self.per_fold_mstar and name == self.mstar["encoder"]:
                return self.stage2_weights()
        return "default"

    def is_pipeline_output(self, weights: Any) -> bool:
        """Whether a weights path is written by a rule of this pipeline (mSTAR stage 2)."""
        return isinstance(weights, str) and weights.startswith(f"{self.results}/mstar/stage2/")

    def features_dir(self, encoder: str, fold: int | str) -> str:
        return f"{self.results}/features/{self.fold_encoder(encoder, fold)}"

    def run_label(self, encoder: str, label: str) -> str:
        """A run's name in the tables: the run, with the encoder when it is not the main one."""
        return label if encoder == self.main_encoder else f"{label}@{encoder}"

    # ------------------------------------------------------------------------------------------ inputs
    def reads(self, label: str, every_modality: bool = False) -> set[str]:
        """The modality stores a job of run ``label`` reads (``every_modality``: genomics and report whatever
        the model reads, as report generation needs)."""
        return {"genomics", "report"} if every_modality else set(MODEL_CARDS.get(self.runs[label].model).uses)

    def reads_every_modality(self, kind: str) -> bool:
        return DOWNSTREAM_CARDS.get(kind).reads_every_modality

    def needs_reports_table(self, kind: str) -> bool:
        return DOWNSTREAM_CARDS.get(kind).needs_reports_table

    # ------------------------------------------------------------------------------------------ settings
    def splits_settings(self) -> str:
        inner = self.train["inner_validation"]
        return _canonical({"k": self.train["folds"], "stratify": self.train["stratify"],
                           "seed": self.train["split_seed"], "published": self.train["published_splits"],
                           "inner_fraction": inner["fraction"], "inner_seed": inner["seed"]})

    def run_settings(self, label: str, base: Mapping[str, Any], pretraining: bool = False) -> str:
        """The settings JSON of one run: the shared settings, the run's own (a paper's schedule, ``settings`` or
        ``pretrain_settings`` of its variant) over them, and the run's model options."""
        run = self.runs[label]
        merged = {**base, **(run.pretrain_settings if pretraining else run.settings)}
        if run.options:
            merged["model_options"] = run.options
        return _canonical(merged)

    def _train_base(self) -> dict[str, Any]:
        return {**self.train["settings"], **self.protocol, "max_tiles": self.train["max_tiles"]}

    def train_settings(self, label: str) -> str:
        return self.run_settings(label, {**self._train_base(), "n_boot": self.train["n_boot"]})

    def pretrain_settings(self, label: str) -> str:
        return self.run_settings(label, self._pretrain_base(), pretraining=True)

    def _pretrain_base(self) -> dict[str, Any]:
        return {"max_tiles": self.train["max_tiles"], "progress": False, **self.pretraining["settings"]}

    def stage1_settings(self) -> str:
        """mSTAR stage 1 on every patient (transductive mode): the pretraining settings and the stage-1 run's
        model options."""
        options = self.stage1_run.options if self.stage1_run is not None else {}
        return _canonical({**self._pretrain_base(), **({"model_options": options} if options else {})})

    @property
    def stage1_model(self) -> str:
        return self.stage1_run.model if self.stage1_run is not None else "mstar"

    def stage2_settings(self) -> str:
        return _canonical({**self.mstar["settings"], "backend": self.config["slide"]["backend"]})

    def downstream_settings(self, label: str, kind: str) -> str:
        """A downstream job's settings: the run's training settings and the evaluation's own options."""
        section = self.train["downstream"][kind]
        options = {k: section[k] for k in DOWNSTREAM_CARDS.get(kind).options if k in section}
        return self.run_settings(label, {**self._train_base(), "downstream": options})

    # ------------------------------------------------------------------------------------------ targets
    def fold_metrics(self) -> list[str]:
        """Every trained fold's ``metrics.csv`` (what the report reads)."""
        return [f"{self.fold_dir}/metrics.csv".format(encoder=e, model=m, task=t, fold=f)
                for e, m in self.trained for t in self.task_slugs for f in self.folds]

    def downstream_tables(self) -> list[str]:
        return [f"{self.fold_dir}/downstream_{kind}.csv".format(encoder=e, model=m, task=t, fold=f)
                for kind, labels in self.downstream_runs.items() for e, m in self.trained if m in labels
                for t in self.task_slugs for f in self.folds]


def _canonical(value: Mapping[str, Any]) -> str:
    """Settings as canonical JSON, passed through ``params`` so that a change re-runs the rule."""
    return json.dumps(value, sort_keys=True)
