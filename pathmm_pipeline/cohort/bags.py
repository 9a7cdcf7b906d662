"""Patient bags: all tiles' features of all of a patient's slides, from their feature stores.

Every model downstream reads its WSI input through :func:`load_patient_bag`. Stores made with different
encoders, weights or tile geometry are refused rather than mixed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pathmm_pipeline.core.errors import InputError
from pathmm_pipeline.preprocess.features import load_features

CONSISTENT_ENCODER_KEYS = ("name", "weights_sha256", "embed_dim")
CONSISTENT_TRANSFORM_KEYS = ("tile_px", "input_size")


@dataclass
class PatientBag:
    """A patient's tiles: features (N, D), level-0 coords (N, 2), which slide each tile is from."""

    patient_id: str
    features: np.ndarray
    coords: np.ndarray
    slide_index: np.ndarray
    slide_ids: list[str]
    encoder: str
    tile_mpp: float | None

    @property
    def n_tiles(self) -> int:
        return int(len(self.features))


def load_patient_bag(patient_id: str, feature_stores: list[str | os.PathLike[str]], max_tiles: int | None = None,
                     seed: int = 0) -> PatientBag:
    """Concatenate a patient's slides; with ``max_tiles``, a seeded sample of that many tiles (kept in order)."""
    if not feature_stores:
        raise InputError(patient_id, "patient has no feature store", "check the sample sheet and features stage")
    parts, coords, index, slide_ids = [], [], [], []
    reference = None
    tile_mpp = None
    for i, path in enumerate(feature_stores):
        store = load_features(path)
        signature = ({k: store.encoder.get(k) for k in CONSISTENT_ENCODER_KEYS},
                     {k: store.transform.get(k) for k in CONSISTENT_TRANSFORM_KEYS})
        if reference is None:
            reference, first = signature, Path(path)
        elif signature != reference:
            raise InputError(path, f"made with {signature}, but {first} with {reference}",
                             "extract every slide of a patient with the same encoder, weights and tiling")
        mpp = store.transform.get("tile_mpp")
        if mpp is not None:
            if tile_mpp is not None and abs(mpp - tile_mpp) > 0.01 * tile_mpp:
                raise InputError(path, f"tiles at {mpp:.4f} um/px, other slides at {tile_mpp:.4f}",
                                 "re-tile the cohort at one target mpp")
            tile_mpp = mpp
        parts.append(store.features)
        coords.append(store.coords)
        index.append(np.full(len(store.features), i, np.int32))
        slide_ids.append(store.slide_id)
    features = np.concatenate(parts)
    all_coords = np.concatenate(coords).reshape(-1, 2)
    slide_index = np.concatenate(index)
    if max_tiles is not None and len(features) > max_tiles:
        keep = np.sort(np.random.default_rng(seed).choice(len(features), size=max_tiles, replace=False))
        features, all_coords, slide_index = features[keep], all_coords[keep], slide_index[keep]
    return PatientBag(patient_id, features, all_coords, slide_index, slide_ids,
                      str(reference[0]["name"]), tile_mpp)
