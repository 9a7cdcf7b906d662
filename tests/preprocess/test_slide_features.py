"""The slide-features stage on real stores: a real slide segmented, tiled and encoded by the project's own code,
its feature store through frozen slide encoders into slide-feature stores with provenance; the CLI; the DAG's
plan; the cohort's embeddings as a patient table and a per-fold ridge-Cox probe on them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from pathmm_pipeline.cli import main
from pathmm_pipeline.core.audit import audit
from pathmm_pipeline.core.config import validate_config
from pathmm_pipeline.core.errors import ConfigError, InputError
from pathmm_pipeline.core.provenance import read_provenance
from pathmm_pipeline.core.stores import ArraySpec, write_store
from pathmm_pipeline.encoders.slide_zoo import PatchFeatureMismatch
from pathmm_pipeline.plan.slide_features import SlideFeaturePlan
from pathmm_pipeline.preprocess.features import ExtractionSettings, extract_features, load_features
from pathmm_pipeline.preprocess.segmentation import SegmentationSettings, segment_slide
from pathmm_pipeline.preprocess.slide_features import (
    SlideFeatureSettings,
    encode_slide,
    load_slide_embedding,
    patient_embeddings,
    probe_folds,
)
from pathmm_pipeline.preprocess.tiling import TilingSettings, load_tiles, tile_slide

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def slide_stores(slide_factory, tmp_path_factory):
    """A real slide's tile store and its vit_tiny_test (192-d) feature store."""
    slide = slide_factory("slidefeat")
    out = tmp_path_factory.mktemp("slidefeat")
    segment_slide(slide.path, out / "seg.zarr", out / "seg.geojson", out / "seg.png", SegmentationSettings(),
                  fallback=False)
    tile_slide(slide.path, out / "seg.zarr", out / "tiles.zarr", TilingSettings(), fallback=False)
    extract_features(slide.path, out / "tiles.zarr", out / "features.zarr",
                     ExtractionSettings(encoder="vit_tiny_test", weights=None, batch_size=8, num_workers=0,
                                        dtype="float32"))
    return out


def test_mean_pooling_store_and_provenance(slide_stores, tmp_path):
    out = encode_slide(slide_stores / "features.zarr", slide_stores / "tiles.zarr", tmp_path / "mean" / "s.zarr",
                       SlideFeatureSettings(encoder="mean"))
    emb = load_slide_embedding(out)
    features = load_features(slide_stores / "features.zarr")
    assert emb.status == "ok" and emb.embedding.shape == (192,) and emb.embedding.dtype == np.float32
    np.testing.assert_allclose(emb.embedding, features.features.astype(np.float32).mean(0), rtol=1e-5, atol=1e-6)
    record = read_provenance(out)
    assert record["stage"] == "slide_features" and set(record["inputs"]) == {"features", "tiles"}
    assert record["inputs"]["features"]["kind"] == "dir" and len(record["inputs"]["features"]["sha256"]) == 64
    assert record["extra"]["slide_encoder"]["weights"] == "none (no parameters)"
    assert record["extra"]["features_provenance"]["encoder"]["name"] == "vit_tiny_test"
    assert record["extra"]["features_provenance"]["stage"] == "features"
    assert emb.slide_encoder["name"] == "mean" and emb.slide_encoder["n_params"] == 0
    stores, stale = audit(tmp_path)
    assert [r.stage for r in stores] == ["slide_features"] and stores[0].ok and not stale
    tiles = load_tiles(slide_stores / "tiles.zarr")
    from pathmm_pipeline.core.stores import open_store

    assert open_store(out).attrs["tile_size_level0"] == pytest.approx(tiles.geometry.tile_size_level0)


def test_seeded_transformer_with_local_weights_records_their_hash(slide_stores, tmp_path, torch_one_thread):
    from pathmm_pipeline.encoders.slide import TinySlideEncoder

    encoder = TinySlideEncoder(192)
    torch.save(encoder.state_dict(), tmp_path / "tiny.pt")
    a = encode_slide(slide_stores / "features.zarr", slide_stores / "tiles.zarr", tmp_path / "a.zarr",
                     SlideFeatureSettings(encoder="tiny_slide", weights=str(tmp_path / "tiny.pt")))
    record = read_provenance(a)
    assert record["inputs"]["weights"]["sha256"] == record["extra"]["slide_encoder"]["weights_sha256"]
    b = encode_slide(slide_stores / "features.zarr", slide_stores / "tiles.zarr", tmp_path / "b.zarr",
                     SlideFeatureSettings(encoder="tiny_slide"))
    assert read_provenance(b)["extra"]["slide_encoder"]["weights"] == "random init"
    ea, eb = load_slide_embedding(a).embedding, load_slide_embedding(b).embedding
    assert ea.shape == (64,) and np.isfinite(ea).all() and not np.allclose(ea, eb)  # the weights were used


def test_features_of_another_patch_encoder_are_refused(slide_stores, tmp_path, capsys):
    with pytest.raises(PatchFeatureMismatch, match="768-d ctranspath features, these are 192-d"):
        encode_slide(slide_stores / "features.zarr", slide_stores / "tiles.zarr", tmp_path / "c.zarr",
                     SlideFeatureSettings(encoder="chief"))
    assert not (tmp_path / "c.zarr").exists()
    code = main(["slide-features", "--encoder", "titan", "--features", str(slide_stores / "features.zarr"),
                 "--tiles", str(slide_stores / "tiles.zarr"), "--out", str(tmp_path / "t.zarr")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "conch_v15" in err and "features.zarr" in err


def test_cli_writes_the_store(slide_stores, tmp_path, capsys):
    out = tmp_path / "cli" / "s.zarr"
    assert main(["slide-features", "--encoder", "mean", "--features", str(slide_stores / "features.zarr"),
                 "--tiles", str(slide_stores / "tiles.zarr"), "--out", str(out),
                 "--settings", json.dumps({"device": "cpu", "weights": None})]) == 0
    assert load_slide_embedding(out).status == "ok"
    assert main(["slide-encoders"]) == 0
    listing = capsys.readouterr().out
    assert "titan" in listing and "48,539,904" in listing


# --------------------------------------------------------------------------------------------- the cohort


def _feature_store(path: Path, slide_id: str, features: np.ndarray, status: str = "ok") -> None:
    """A feature store as extraction writes it (arrays, attributes, provenance), by the project's store writer."""
    n = len(features)
    coords = np.stack([np.arange(n) % 8, np.arange(n) // 8], 1).astype(np.int64) * 512
    write_store(path, {"features": ArraySpec(features.astype(np.float16), ("tile", "dim")),
                       "coords": ArraySpec(coords, ("tile", "xy")),
                       "tissue_fraction": ArraySpec(np.ones(n, np.float32), ("tile",))},
                {"slide_id": slide_id, "status": status, "reason": "", "n_tiles": n,
                 "encoder": {"name": "vit_tiny_test", "embed_dim": features.shape[1]}, "transform": {}},
                {"schema": "pathmm.provenance/1", "stage": "features", "params": {}, "extra": {}})


def test_cohort_embeddings_feed_a_per_fold_probe(slide_stores, tmp_path):
    """A planted signal: each patient's tiles carry ``risk * direction``; survival time falls with risk. The
    mean-pooled slide embeddings, averaged per patient, order held-out patients well in every fold."""
    from pathmm_pipeline.cohort.splits import make_splits

    rng = np.random.default_rng(0)
    direction = rng.normal(size=16)
    rows, outcomes = [], {}
    for i in range(30):
        patient, risk = f"P{i:02d}", rng.normal()
        outcomes[patient] = (float(np.exp(-risk) * 100 + rng.uniform(0, 5)), int(rng.uniform() < 0.8))
        for j in range(2 if i % 3 == 0 else 1):                                 # some patients have two slides
            slide = f"{patient}_S{j}"
            feats = rng.normal(size=(24, 16)) + risk * direction
            _feature_store(tmp_path / "features" / f"{slide}.zarr", slide, feats)
            encode_slide(tmp_path / "features" / f"{slide}.zarr", slide_stores / "tiles.zarr",
                         tmp_path / "slide_features" / "mean" / f"{slide}.zarr", SlideFeatureSettings(encoder="mean"))
            rows.append({"patient_id": patient, "slide_id": slide})
    _feature_store(tmp_path / "features" / "P99_S0.zarr", "P99_S0", np.zeros((0, 16)), status="no_tissue")
    encode_slide(tmp_path / "features" / "P99_S0.zarr", slide_stores / "tiles.zarr",
                 tmp_path / "slide_features" / "mean" / "P99_S0.zarr", SlideFeatureSettings(encoder="mean"))
    assert load_slide_embedding(tmp_path / "slide_features" / "mean" / "P99_S0.zarr").status == "no_tissue"
    rows.append({"patient_id": "P99", "slide_id": "P99_S0"})
    manifest = pd.DataFrame(rows)

    table = patient_embeddings(tmp_path / "slide_features" / "mean", manifest)
    assert table.shape == (30, 16) and "P99" not in table.index                # no tissue: left out
    outcome = pd.DataFrame.from_dict(outcomes, orient="index", columns=["survival_time", "survival_event"])
    folds = make_splits(outcome.rename(columns={"survival_event": "event"}), k=3, stratify=("event",), seed=0)
    result = probe_folds(table, outcome, folds, penalty=1.0)
    assert list(result.fold) == [0, 1, 2] and (result.n_val > 0).all()
    assert result.c_index.min() > 0.7, result

    missing = pd.concat([manifest, pd.DataFrame([{"patient_id": "PX", "slide_id": "nowhere"}])])
    with pytest.raises(InputError, match="slide-feature store missing"):
        patient_embeddings(tmp_path / "slide_features" / "mean", missing)


# --------------------------------------------------------------------------------------------- config and plan


def _config(**section):
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["slide_features"] = {**config.get("slide_features", {}), **section}
    return validate_config(config)


def test_off_by_default_and_the_schema_agrees_with_the_settings():
    import dataclasses

    config = validate_config(yaml.safe_load((REPO / "config.yaml").read_text()))
    assert config["slide_features"]["encoders"] == [] and SlideFeaturePlan(config).encoders == []
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    props = schema["properties"]["slide_features"]["properties"]
    fields = {f.name: f.default for f in dataclasses.fields(SlideFeatureSettings)}
    from pathmm_pipeline.plan.slide_features import DAG_KEYS

    assert set(props) - set(DAG_KEYS) == set(fields) - {"encoder", "weights"}
    assert all(props[k]["default"] == fields[k] for k in set(props) - set(DAG_KEYS))
    with pytest.raises(ConfigError, match="slide_features"):
        _config(encoder=["mean"])                                               # a typo: refused


def test_plan_resolves_each_encoders_feature_folder(tmp_path):
    plan = SlideFeaturePlan(_config(encoders=["mean"]))
    assert plan.inputs == {"mean": "efficientnet_lite0"} and plan.weights == {"mean": None}
    assert json.loads(plan.settings_json("mean")) == {"device": "auto", "encoder": "mean", "weights": None}
    with pytest.raises(ConfigError, match="add conch_v15 to features.encoders"):
        SlideFeaturePlan(_config(encoders=["titan"]))
    config = _config(encoders=["titan"], weights={"titan": str(tmp_path / "titan.safetensors")})
    config["features"]["encoders"] = ["efficientnet_lite0", "conch_v15"]
    plan = SlideFeaturePlan(config)
    assert plan.inputs == {"titan": "conch_v15"} and plan.weights["titan"].endswith("titan.safetensors")
    with pytest.raises(ConfigError, match="reads conch_v15 features"):
        SlideFeaturePlan({**config, "slide_features": {**config["slide_features"], "inputs": {"titan": "uni"}}})
    with pytest.raises(ConfigError, match="unknown slide encoder 'titanx'"):
        SlideFeaturePlan(_config(encoders=["titanx"]))
    with pytest.raises(ConfigError, match="not listed"):
        SlideFeaturePlan(_config(encoders=["mean"], weights={"titan": "x"}))
