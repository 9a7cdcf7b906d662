"""The torch-free catalogue the planning floor reads is the registries' own: current, and complete for every
registered model, patch encoder, task kind and downstream evaluation (parametrised over the registries)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO

from pathmm_pipeline.downstream.registry import DOWNSTREAM
from pathmm_pipeline.encoders import get_encoder_spec, list_encoders
from pathmm_pipeline.models import get_model_class, list_models, model_options
from pathmm_pipeline.plan.cards import DOWNSTREAM_CARDS, ENCODER_CARDS, MODEL_CARDS, TASK_CARDS
from pathmm_pipeline.tasks.kinds import TASKS


def test_the_catalogue_file_is_current():
    # rendered in a fresh process: the registries as the package alone fills them (no test's own entries)
    proc = subprocess.run([sys.executable, "-m", "pathmm_pipeline.cli", "catalog"], capture_output=True, text=True,
                          cwd=REPO)
    assert proc.returncode == 0, proc.stderr + "\n(run `pathmm catalog --write` after registering a new entry)"


@pytest.mark.parametrize("name", list_models())
def test_every_model_has_its_card(name):
    cls, card = get_model_class(name), MODEL_CARDS.get(name)
    assert card.uses == cls.uses and card.requires == cls.requires and card.pretrainable == cls.pretrainable
    assert card.options == tuple(model_options(name))


@pytest.mark.parametrize("name", list_encoders())
def test_every_patch_encoder_has_its_card(name):
    if name not in ENCODER_CARDS:
        pytest.skip(f"{name} is registered at run time by a test or a stage, not by the package")
    assert ENCODER_CARDS.get(name).default_weights == get_encoder_spec(name).default_weights


@pytest.mark.parametrize("name", TASKS.names())
def test_every_task_kind_has_its_card(name):
    assert TASK_CARDS.get(name).label_column == TASKS.get(name).label_column


@pytest.mark.parametrize("name", DOWNSTREAM.names())
def test_every_downstream_evaluation_has_its_card(name):
    kind, card = DOWNSTREAM.get(name), DOWNSTREAM_CARDS.get(name)
    assert (card.options, card.reads_every_modality, card.needs_reports_table) == (
        kind.options, kind.reads_every_modality, kind.needs_reports_table)


def test_no_card_without_a_registered_entry():
    assert set(MODEL_CARDS.names()) == set(list_models())
    assert set(TASK_CARDS.names()) == set(TASKS.names())
    assert set(DOWNSTREAM_CARDS.names()) == set(DOWNSTREAM.names())


def test_the_schema_lists_every_downstream_evaluation_with_its_options():
    import yaml

    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    sections = schema["properties"]["training"]["properties"]["downstream"]["properties"]
    assert set(sections) == set(DOWNSTREAM_CARDS.names())
    for name, section in sections.items():
        assert set(section["properties"]) == {"models", *DOWNSTREAM_CARDS.get(name).options}, name
