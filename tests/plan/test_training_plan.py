"""The planning floor: the training half of the DAG planned from config.yaml without torch, without mutating
the config, and refusing a typo in a settings section while the DAG is parsed, naming the key."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import yaml
from conftest import REPO

from pathmm_pipeline.core.errors import ConfigError, InputError
from pathmm_pipeline.plan.training import CohortModalities, TrainingPlan

EVERYONE = frozenset(f"P{i}" for i in range(6))
FULL = CohortModalities(EVERYONE, EVERYONE, EVERYONE)


@pytest.fixture()
def config() -> dict:
    values = yaml.safe_load((REPO / "config.yaml").read_text())
    values["training"]["pretraining"]["external"] = None  # no file is read for this plan
    return values


def test_planning_imports_no_torch():
    code = ("import sys, pathmm_pipeline.plan.training; "
            "print(','.join(m for m in ('torch', 'timm', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


def test_the_plan_does_not_mutate_the_config(config):
    before = copy.deepcopy(config)
    plan = TrainingPlan(config, FULL)
    for encoder, label in plan.trained:
        plan.train_settings(label)
        plan.encoder_weights(plan.fold_encoder(encoder, 0))
    assert config == before


def test_runs_folds_and_targets_follow_the_config(config):
    plan = TrainingPlan(config, FULL)
    train = config["training"]
    assert plan.folds == list(range(train["folds"]))
    assert [label for _, label in plan.trained][: len(train["models"])] == train["models"]
    metrics = plan.fold_metrics()
    assert len(metrics) == len(plan.trained) * len(plan.task_slugs) * len(plan.folds)
    assert all(m.startswith(f"{config['results']}/training/") and m.endswith("/metrics.csv") for m in metrics)
    # the settings JSON of a run: shared settings, the protocol, the run's own settings and options
    label = plan.trained[0][1]
    settings = json.loads(plan.train_settings(label))
    assert settings["selection"] == train["selection"] and settings["n_boot"] == train["n_boot"]
    for key, value in plan.runs[label].settings.items():
        assert settings[key] == value


def test_the_per_fold_mstar_encoder_has_one_weights_file_per_fold(config):
    encoder = config["training"]["mstar"]["encoder"]
    config["training"]["compare_encoders"] = {encoder: [config["training"]["models"][0]]}
    plan = TrainingPlan(config, FULL)
    assert plan.mstar_used
    assert plan.per_fold_mstar
    last = config["training"]["folds"] - 1
    name = plan.fold_encoder(encoder, last)
    assert name == f"{encoder}_fold{last}" and plan.encoder_alias(name) == encoder
    assert plan.encoder_weights(name) == f"{config['results']}/mstar/stage2/{encoder}/fold_{last}.pt"
    assert plan.is_pipeline_output(plan.encoder_weights(name))
    assert plan.fold_encoder(plan.main_encoder, last) == plan.main_encoder
    config["training"]["mstar"]["mode"] = "transductive"
    once = TrainingPlan(config, FULL)
    assert once.fold_encoder(encoder, last) == encoder
    assert once.encoder_weights(encoder) == f"{config['results']}/mstar/stage2/{encoder}.pt"


def test_configured_weights_win_over_the_plans(config):
    config["encoder_weights"] = {"efficientnet_lite0": "/models/mine.pt"}
    assert TrainingPlan(config, FULL).encoder_weights("efficientnet_lite0") == "/models/mine.pt"


def test_downstream_jobs_carry_their_own_options_and_need_reports(config):
    plan = TrainingPlan(config, FULL)
    for kind, labels in plan.downstream_runs.items():
        for label in labels:
            options = json.loads(plan.downstream_settings(label, kind))["downstream"]
            section = config["training"]["downstream"][kind]
            assert set(options) == set(section) - {"models"}
    no_reports = TrainingPlan(config, CohortModalities(EVERYONE, EVERYONE, frozenset()))
    assert no_reports.downstream_runs["report_generation"] == []


@pytest.mark.parametrize("section, path", [
    ("training.settings", ("training", "settings")),
    ("training.pretraining.settings", ("training", "pretraining", "settings")),
    ("training.mstar.settings", ("training", "mstar", "settings")),
    ("training.downstream.report_generation.settings", ("training", "downstream", "report_generation", "settings")),
])
def test_a_typo_in_a_settings_section_fails_while_parsing(config, section, path):
    node = config
    for key in path:
        node = node.setdefault(key, {})
    node["epochz"] = 3
    with pytest.raises(ConfigError) as err:
        TrainingPlan(config, FULL)
    assert section in str(err.value) and "epochz" in str(err.value)


def test_a_run_the_cohort_cannot_feed_is_refused_before_any_job(config):
    config["training"]["models"] = ["abmil"]
    config["training"]["compare_encoders"] = {}
    with pytest.raises(InputError, match="abmil.*requires wsi"):
        TrainingPlan(config, CohortModalities(frozenset(), EVERYONE, frozenset()))


def test_a_run_may_choose_survpaths_gene_scaling_and_a_wrong_one_is_refused(config):
    from pathmm_pipeline.plan.runs import resolve_runs

    runs = resolve_runs(["survpath_published"], config["training"]["variants"])
    assert runs["survpath_published"].settings["gene_scaling"] == "minmax"
    with pytest.raises(InputError, match="gene_scaling"):
        resolve_runs(["x"], {"x": {"model": "snn", "settings": {"gene_scaling": "quantile"}}})
