"""The slide-features rule as it runs: one slide's feature and tile stores, the slide-feature store to write and
the rule's settings (a JSON object, refused on an unknown key); the library is
:mod:`pathmm_pipeline.preprocess.slide_features`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

PathLike = str | os.PathLike[str]


def slide_features(features: PathLike, tiles: PathLike, out: PathLike, settings: dict[str, Any]) -> Path:
    """Encode one slide with the slide encoder ``settings["encoder"]`` (its ``weights``, ``device``)."""
    from pathmm_pipeline.preprocess.slide_features import SlideFeatureSettings, encode_slide

    return encode_slide(features, tiles, out, SlideFeatureSettings.from_dict(settings))
