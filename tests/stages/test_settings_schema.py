"""One source of defaults: each stage's settings dataclass and the config schema's section for it list the same
keys with the same defaults (the schema refuses unknown keys, so a typo fails at DAG parse); the sections the
schema leaves open are checked against their dataclasses by the planning floor (tests/plan)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import yaml
from conftest import REPO

from pathmm_pipeline.genomics.stage import GenomicsSettings
from pathmm_pipeline.preprocess.features import ExtractionSettings
from pathmm_pipeline.preprocess.quality import QCSettings
from pathmm_pipeline.preprocess.roi import RoiSettings
from pathmm_pipeline.preprocess.segmentation import SegmentationSettings
from pathmm_pipeline.preprocess.slides import SlideLimits
from pathmm_pipeline.preprocess.tiling import TilingSettings
from pathmm_pipeline.stages.settings import CleanReportSettings, EmbedReportSettings

SCHEMA = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())["properties"]

#: section (dotted when nested) -> its dataclasses, the keys only the DAG reads (schema-only) and the keys the DAG
#: fills in per job
SECTIONS = {
    "slide": ((SlideLimits,), ("backend", "fallback"), ()),
    "segmentation": ((SegmentationSettings,), (), ()),
    "tiling": ((TilingSettings,), (), ()),
    "tiling.roi": ((RoiSettings,), (), ()),
    "qc": ((QCSettings,), (), ()),
    "features": ((ExtractionSettings,), ("encoders", "mem_mb", "slides_per_job", "export", "import"),
                 ("encoder", "weights")),
    "genomics": ((GenomicsSettings,), (), ()),
    "reports": ((CleanReportSettings, EmbedReportSettings), (), ()),
}


def _schema(section: str) -> dict:
    """The schema of a (dotted) config section."""
    head, *rest = section.split(".")
    node = SCHEMA[head]
    for key in rest:
        node = node["properties"][key]
    return node


def _plain(value):
    """A default as the schema writes it: nested settings as mappings, tuples as lists."""
    return json.loads(json.dumps(dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value))


def _defaults(classes) -> dict:
    out = {}
    for cls in classes:
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                out[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                out[f.name] = f.default_factory()
            else:
                out[f.name] = dataclasses.MISSING
    return out


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_schema_and_dataclass_agree(section):
    classes, schema_only, job_only = SECTIONS[section]
    props = _schema(section)["properties"]
    fields = _defaults(classes)
    assert _schema(section).get("additionalProperties") is False, f"{section}: unknown keys must be refused"
    assert set(props) - set(schema_only) == set(fields) - set(job_only)
    for key in set(props) & set(fields):
        if "default" in props[key]:
            value = _plain(fields[key])
            assert props[key]["default"] == value, f"{section}.{key}: schema {props[key]['default']!r}, {value!r}"


@pytest.mark.parametrize("cls", [SlideLimits, SegmentationSettings, TilingSettings, RoiSettings, ExtractionSettings,
                                 GenomicsSettings, CleanReportSettings, EmbedReportSettings])
def test_unknown_settings_are_refused_naming_the_key(cls):
    with pytest.raises(ValueError, match="nonsense_key"):
        cls.from_dict({"nonsense_key": 1})


def test_nested_settings_are_built_from_their_mapping():
    settings = TilingSettings.from_dict({"roi": {"include_classes": ["Tumor"], "min_overlap": 0.8}})
    assert settings.roi == RoiSettings(include_classes=("Tumor",), min_overlap=0.8)
    with pytest.raises(ValueError, match="nonsense_key"):
        TilingSettings.from_dict({"roi": {"nonsense_key": 1}})
