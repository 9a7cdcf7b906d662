"""The plan of the heatmap stage (``workflow/rules/heatmaps.smk``), torch-free: which trained runs and folds get
heatmaps, each job's settings JSON and output folder. ``heatmaps.runs`` null means every trained run whose model
weighs tiles (an attention extractor is registered: the generated catalogue's ``ATTENTION``)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pathmm_pipeline.core.errors import ConfigError
from pathmm_pipeline.interpret.settings import HeatmapSettings
from pathmm_pipeline.plan import catalog
from pathmm_pipeline.plan.cards import MODEL_CARDS
from pathmm_pipeline.plan.training import TrainingPlan, check_settings

#: the models with an attention extractor (the registry, through the generated catalogue)
WEIGHS_TILES: frozenset[str] = frozenset(getattr(catalog, "ATTENTION", {}))
#: keys of the config section only the DAG reads; the rest are HeatmapSettings fields
DAG_KEYS = ("enabled", "runs", "folds")


class HeatmapPlan:
    """The heatmap jobs of a validated ``config`` over the training ``plan``: ``jobs`` holds one
    ``(encoder, run, task slug, fold)`` per job (none when ``heatmaps.enabled`` is false)."""

    def __init__(self, config: Mapping[str, Any], plan: TrainingPlan) -> None:
        section = dict(config["heatmaps"])
        self.enabled = bool(section["enabled"])
        self.results = plan.results
        self.job_settings = {k: v for k, v in section.items() if k not in DAG_KEYS}
        self.job_settings["backend"] = config["slide"]["backend"]
        check_settings("heatmaps", self.job_settings, HeatmapSettings)
        trained = [(e, r) for e, r in plan.trained]
        if section["runs"] is None:
            chosen = [(e, r) for e, r in trained if plan.runs[r].model in WEIGHS_TILES]
        else:
            unknown = [r for r in section["runs"] if r not in {r for _, r in trained}]
            if unknown:
                raise ConfigError(f"config heatmaps.runs: {unknown[0]!r} is not a trained run (training.models / "
                                  f"compare_encoders: {', '.join(sorted({r for _, r in trained}))})")
            blind = [r for r in section["runs"] if "wsi" not in MODEL_CARDS.get(plan.runs[r].model).uses]
            if blind:
                raise ConfigError(f"config heatmaps.runs: run {blind[0]!r} does not read the slide, so it has no "
                                  "heatmap")
            chosen = [(e, r) for e, r in trained if r in section["runs"]]
        folds = plan.folds if section["folds"] is None else list(section["folds"])
        outside = [f for f in folds if f not in plan.folds]
        if outside:
            raise ConfigError(f"config heatmaps.folds: fold {outside[0]} is not one of training.folds' "
                              f"{plan.folds}")
        self.jobs: list[tuple[str, str, str, int]] = [
            (e, r, t, f) for e, r in chosen for t in plan.task_slugs for f in folds] if self.enabled else []

    @property
    def out_dir(self) -> str:
        """A job's folder, with ``{encoder}``, ``{model}``, ``{task}`` and ``{fold}`` left to fill (the training
        layout under ``heatmaps/``): one ``<slide>/`` per drawn slide and ``index.json``."""
        return f"{self.results}/heatmaps/{{encoder}}/{{model}}/{{task}}/fold_{{fold}}"

    def outputs(self) -> list[str]:
        """Every job's folder (what ``rule all`` and the evaluation report ask for)."""
        return [self.out_dir.format(encoder=e, model=r, task=t, fold=f) for e, r, t, f in self.jobs]

    def settings(self) -> str:
        """The jobs' settings as canonical JSON (params: a change re-runs them)."""
        return json.dumps(self.job_settings, sort_keys=True)
