"""The plan of the slide-features stage (``workflow/rules/slide_features.smk``), torch-free: which slide encoders
run, the patch-feature folder each reads, its weights and its job settings. Off (no job) while
``slide_features.encoders`` is empty, the default.

A slide encoder reads the features of the patch encoder it was trained on (the generated catalogue's
``SLIDE_ENCODERS``); one that takes any features (``mean``, ``tiny_slide``) reads ``slide_features.inputs[name]``,
else the first of ``features.encoders``. The folder must be one the DAG makes (``features.encoders`` or
``features.import``): a slide encoder whose patch encoder is not extracted fails at parse, naming the key to add.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pathmm_pipeline.core.errors import ConfigError
from pathmm_pipeline.plan import catalog
from pathmm_pipeline.plan.training import check_settings
from pathmm_pipeline.preprocess.slide_features import SlideFeatureSettings

#: the slide encoders and the patch encoder / width each expects (the registry, through the catalogue)
SLIDE_ENCODER_CARDS: Mapping[str, Mapping[str, Any]] = getattr(catalog, "SLIDE_ENCODERS", {})
#: keys of the config section only the DAG reads; the rest are SlideFeatureSettings fields
DAG_KEYS = ("encoders", "inputs", "weights", "mem_mb", "threads")


class SlideFeaturePlan:
    """``inputs``: slide encoder -> the feature folder it reads; ``weights``: -> local checkpoint or None."""

    def __init__(self, config: Mapping[str, Any], cards: Mapping[str, Mapping[str, Any]] = SLIDE_ENCODER_CARDS
                 ) -> None:
        section = dict(config["slide_features"])
        self.encoders: list[str] = list(dict.fromkeys(section["encoders"]))
        self.job_settings = {k: v for k, v in section.items() if k not in DAG_KEYS}
        check_settings("slide_features", {**self.job_settings, "encoder": "mean"}, SlideFeatureSettings)
        made = list(config["features"]["encoders"]) + sorted(config["features"].get("import", {}))
        for key in ("inputs", "weights"):
            stray = sorted(set(section[key]) - set(self.encoders))
            if stray:
                raise ConfigError(f"config slide_features.{key}: {stray[0]!r} is not listed in "
                                  f"slide_features.encoders")
        self.inputs: dict[str, str] = {}
        self.weights: dict[str, str | None] = {}
        for name in self.encoders:
            if name not in cards:
                raise ConfigError(f"config slide_features.encoders: unknown slide encoder {name!r} -- known: "
                                  f"{', '.join(sorted(cards))}")
            wanted = cards[name].get("patch_encoder")
            folder = section["inputs"].get(name) or wanted or (made[0] if made else None)
            if wanted and folder != wanted:
                raise ConfigError(f"config slide_features.inputs.{name}: slide encoder {name!r} reads {wanted} "
                                  f"features, not {folder!r}")
            if folder not in made:
                raise ConfigError(f"config slide_features: slide encoder {name!r} reads {folder} features, which "
                                  f"this DAG does not make -- add {folder} to features.encoders")
            self.inputs[name] = folder
            self.weights[name] = section["weights"].get(name)

    def settings_json(self, name: str) -> str:
        """One slide encoder's job settings as canonical JSON (a rule's params: a change re-runs it)."""
        return json.dumps({**self.job_settings, "encoder": name, "weights": self.weights[name]}, sort_keys=True)
