"""Feature extraction on real TIFF slides with real forward passes; stores, resume, bags, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pathmm_pipeline.cohort.bags import load_patient_bag
from pathmm_pipeline.core.audit import audit
from pathmm_pipeline.core.errors import InputError
from pathmm_pipeline.core.provenance import read_provenance
from pathmm_pipeline.preprocess import features as features_module
from pathmm_pipeline.preprocess.features import ExtractionSettings, extract_features, load_features
from pathmm_pipeline.preprocess.segmentation import SegmentationSettings, segment_slide
from pathmm_pipeline.preprocess.slidewriter import write_pyramidal_tiff
from pathmm_pipeline.preprocess.tiling import TilingSettings, tile_slide


def prepare(slide_path, out, backend="openslide"):
    segment_slide(slide_path, out / "seg.zarr", out / "seg.geojson", out / "seg.png", SegmentationSettings(),
                  backend=backend, fallback=False)
    tile_slide(slide_path, out / "seg.zarr", out / "tiles.zarr", TilingSettings(), backend=backend, fallback=False)
    return out / "tiles.zarr"


@pytest.fixture(scope="module")
def tiled(slide_factory, tmp_path_factory):
    slide = slide_factory("s")
    out = tmp_path_factory.mktemp("feat")
    return slide.path, prepare(slide.path, out), out


def tiny(**kw):
    options = dict(encoder="vit_tiny_test", weights=None, batch_size=8, num_workers=0, dtype="float32")
    options.update(kw)
    return ExtractionSettings(**options)


def test_demo_encoder_real_forward(tiled):
    slide, tiles, out = tiled
    settings = ExtractionSettings(encoder="efficientnet_lite0", batch_size=16, num_workers=2)
    n = extract_features(slide, tiles, out / "eff.zarr", settings)
    store = load_features(out / "eff.zarr")
    assert store.features.shape == (n, 1280) and store.features.dtype == np.float16
    assert np.isfinite(store.features).all() and store.features.std(axis=0).mean() > 0.01
    record = read_provenance(out / "eff.zarr")
    assert set(record["inputs"]) == {"slide", "tiles", "weights"}
    assert record["extra"]["encoder"]["weights_sha256"] == record["inputs"]["weights"]["sha256"]
    assert record["extra"]["encoder"]["name"] == "efficientnet_lite0" and record["extra"]["tiles_per_second"] > 0
    np.testing.assert_array_equal(store.coords, np.asarray(__import__("zarr").open_group(str(tiles))["coords"]))


def test_deterministic_and_worker_count_does_not_matter(tiled):
    slide, tiles, out = tiled
    extract_features(slide, tiles, out / "a.zarr", tiny())
    extract_features(slide, tiles, out / "b.zarr", tiny(num_workers=2, batch_size=5))
    a, b = load_features(out / "a.zarr"), load_features(out / "b.zarr")
    np.testing.assert_array_equal(a.features, b.features)
    assert a.features.shape[1] == 192
    # the speed settings are recorded beside the feature settings, not among them
    ra, rb = read_provenance(out / "a.zarr"), read_provenance(out / "b.zarr")
    assert ra["params"]["settings"] == rb["params"]["settings"] == tiny().feature_settings()
    assert set(ra["params"]["settings"]) == {"encoder", "weights", "dtype", "device", "seed", "decode"}
    assert rb["extra"]["throughput"]["batch_size"] == 5 and rb["extra"]["throughput"]["workers_used"] == 2


def test_workers_default_to_the_cpus_the_job_was_given(monkeypatch):
    import os

    from pathmm_pipeline.cli import build_parser
    from pathmm_pipeline.core.errors import ConfigError
    from pathmm_pipeline.preprocess import features

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    assert tiny(num_workers="auto", threads=8).workers() == 3      # the affinity (SLURM's allocation) caps it
    assert tiny(num_workers="auto", threads=2).workers() == 1      # Snakemake's threads for the job
    assert tiny(num_workers="auto", threads=1).workers() == 0 and tiny(num_workers=5).workers() == 5
    assert features.available_cpus() == 4
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "3")                 # inside a SLURM job: its allocation
    assert tiny(num_workers="auto", threads=1).workers() == 2
    monkeypatch.delenv("SLURM_CPUS_PER_TASK")
    with pytest.raises(ConfigError, match="num_workers"):
        tiny(num_workers="many")
    # the rules pass the speed settings as arguments beside the feature settings' JSON
    args = build_parser().parse_args(["extract-features", "s.svs", "--tiles", "t.zarr", "--store", "f.zarr",
                                      "--settings", '{"encoder": "vit_tiny_test", "dtype": "float32"}',
                                      "--batch-size", "7", "--num-workers", "-1", "--channels-last", "1",
                                      "--compile", "0", "--threads", "3"])
    from pathmm_pipeline.cli import with_throughput

    merged = ExtractionSettings.from_dict(with_throughput(args.settings, args))
    assert (merged.batch_size, merged.num_workers, merged.channels_last, merged.compile, merged.threads) == \
        (7, "auto", True, False, 3)
    assert merged.dtype == "float32"


def test_backends_give_identical_features_on_lossless_slide(he_texture, tmp_path):
    from conftest import compose

    rgb, _ = compose(he_texture, (2048, 1792), seed=1)
    path = write_pyramidal_tiff(tmp_path / "lossless.tiff", rgb, mpp=0.5, style="generic", compression="deflate")
    results = {}
    for backend in ("openslide", "tiffslide"):
        tiles = prepare(path, tmp_path / backend, backend=backend)
        extract_features(path, tiles, tmp_path / backend / "f.zarr", tiny(), backend=backend, fallback=False)
        results[backend] = load_features(tmp_path / backend / "f.zarr")
    assert len(results["openslide"].features) > 5
    np.testing.assert_array_equal(results["openslide"].coords, results["tiffslide"].coords)
    np.testing.assert_array_equal(results["openslide"].features, results["tiffslide"].features)


def test_jpeg_slide_features_agree_across_backends(tiled, tmp_path):
    slide, tiles, _ = tiled
    extract_features(slide, tiles, tmp_path / "o.zarr", tiny(), backend="openslide", fallback=False)
    extract_features(slide, tiles, tmp_path / "t.zarr", tiny(), backend="tiffslide", fallback=False)
    a, b = load_features(tmp_path / "o.zarr").features, load_features(tmp_path / "t.zarr").features
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() > 0.995


def test_killed_extraction_resumes(tiled, tmp_path, monkeypatch, caplog):
    slide, tiles, _ = tiled
    monkeypatch.setattr(features_module, "CHUNK_ROWS", 8)
    calls = {"n": 0}
    original = features_module.FeatureExtractor.__call__

    def dying(self, batch):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return original(self, batch)

    monkeypatch.setattr(features_module.FeatureExtractor, "__call__", dying)
    target = tmp_path / "f.zarr"
    with pytest.raises(KeyboardInterrupt):
        extract_features(slide, tiles, target, tiny())
    assert not target.exists()
    partial = tmp_path / ("f.zarr" + features_module.PARTIAL_SUFFIX)
    assert partial.exists()
    results, stale = audit(tmp_path)
    assert results == [] and stale  # nothing looks complete; the partial is reported as left-over
    monkeypatch.setattr(features_module.FeatureExtractor, "__call__", original)
    with caplog.at_level("INFO"):
        extract_features(slide, tiles, target, tiny())
    assert "resuming at tile 16" in caplog.text
    assert not partial.exists()
    extract_features(slide, tiles, tmp_path / "clean.zarr", tiny())
    np.testing.assert_array_equal(load_features(target).features, load_features(tmp_path / "clean.zarr").features)


def test_corrupt_weights_and_missing_tiles_fail_clearly(tiled, tmp_path):
    from pathmm_pipeline.encoders.weights import WeightsError

    slide, tiles, _ = tiled
    bad = tmp_path / "weights.pth"
    bad.write_bytes(b"\x80\x02 definitely not a checkpoint")
    with pytest.raises(WeightsError) as err:
        extract_features(slide, tiles, tmp_path / "x.zarr", tiny().__class__(encoder="vit_tiny_test", weights=str(bad)))
    assert str(bad) in str(err.value)
    with pytest.raises(InputError, match="no Zarr store"):
        extract_features(slide, tmp_path / "missing.zarr", tmp_path / "y.zarr", tiny())
    assert not (tmp_path / "x.zarr").exists() and not (tmp_path / "y.zarr").exists()


def test_patient_bag_concatenates_slides_and_refuses_mixing(tiled, tmp_path):
    slide, tiles, out = tiled
    extract_features(slide, tiles, tmp_path / "s1.zarr", tiny())
    extract_features(slide, tiles, tmp_path / "s2.zarr", tiny(seed=0))
    bag = load_patient_bag("P1", [tmp_path / "s1.zarr", tmp_path / "s2.zarr"])
    n = len(load_features(tmp_path / "s1.zarr").features)
    assert bag.n_tiles == 2 * n and bag.slide_index.tolist() == [0] * n + [1] * n
    sampled = load_patient_bag("P1", [tmp_path / "s1.zarr", tmp_path / "s2.zarr"], max_tiles=n // 2, seed=3)
    again = load_patient_bag("P1", [tmp_path / "s1.zarr", tmp_path / "s2.zarr"], max_tiles=n // 2, seed=3)
    assert sampled.n_tiles == n // 2
    np.testing.assert_array_equal(sampled.features, again.features)
    extract_features(slide, tiles, tmp_path / "eff.zarr",
                     ExtractionSettings(encoder="efficientnet_lite0", batch_size=16, num_workers=0))
    with pytest.raises(InputError, match="same encoder"):
        load_patient_bag("P1", [tmp_path / "s1.zarr", tmp_path / "eff.zarr"])


def test_skipped_slide_gives_empty_store(slide_factory, tmp_path):
    slide = slide_factory("blank", blank=True)
    tiles = prepare(slide.path, tmp_path)
    assert extract_features(slide.path, tiles, tmp_path / "f.zarr", tiny()) == 0
    store = load_features(tmp_path / "f.zarr")
    assert store.status == "skipped" and store.features.shape == (0, 192)


def test_one_job_for_many_slides_matches_one_job_per_slide_and_resumes_after_a_kill(tiled, slide_factory, tmp_path,
                                                                                 monkeypatch):
    """extract_slides (features.slides_per_job > 1): one encoder load for three slides (one without tissue),
    batches that span slide boundaries, features equal to one job per slide, each store with its own provenance.
    Killed on the second slide, the finished first slide and the second's flushed chunks survive (nothing is on
    the targets yet), and the re-run forwards only the second slide's missing tiles."""
    from pathmm_pipeline.preprocess.features import SlideJob, extract_slides

    slide, tiles, _ = tiled
    other = slide_factory("s2", seed=1)
    blank = slide_factory("blank", blank=True)
    paths = [(slide, tiles)] + [(s.path, prepare(s.path, tmp_path / s.path.stem)) for s in (other, blank)
                                if (tmp_path / s.path.stem).mkdir() is None]
    loads = {"n": 0}
    load = features_module.load_encoder
    monkeypatch.setattr(features_module, "load_encoder", lambda *a, **k: (loads.__setitem__("n", loads["n"] + 1),
                                                                          load(*a, **k))[1])
    reference = {}
    for k, (path, tile_store) in enumerate(paths):
        extract_features(path, tile_store, tmp_path / f"one{k}.zarr", tiny(), slide_id=f"S{k}")
        reference[k] = load_features(tmp_path / f"one{k}.zarr")
    jobs = [SlideJob(str(p), str(t), str(tmp_path / f"bucket{k}.zarr"), f"S{k}") for k, (p, t) in enumerate(paths)]
    loads["n"] = 0
    assert extract_slides(jobs, tiny(batch_size=5)) == {f"S{k}": len(reference[k].coords) for k in range(3)}
    assert loads["n"] == 1
    for k in range(3):
        store = load_features(tmp_path / f"bucket{k}.zarr")
        np.testing.assert_array_equal(store.features, reference[k].features)
        assert store.slide_id == f"S{k}" and store.status == reference[k].status
        assert read_provenance(tmp_path / f"bucket{k}.zarr")["inputs"]["slide"]["path"].endswith(
            paths[k][0].name)
    n0, n1 = len(reference[0].coords), len(reference[1].coords)
    assert reference[2].status == "skipped" and n1 > 16

    monkeypatch.setattr(features_module, "CHUNK_ROWS", 8)
    seen = {"tiles": 0}
    original = features_module.FeatureExtractor.__call__

    def dying(self, batch):
        if seen["tiles"] >= n0 + 16:  # the second slide has two chunks flushed
            seen["killed_at"] = seen["tiles"]
            raise KeyboardInterrupt("killed")
        seen["tiles"] += len(batch)
        return original(self, batch)

    monkeypatch.setattr(features_module.FeatureExtractor, "__call__", dying)
    killed = [SlideJob(j.slide, j.tiles, str(tmp_path / f"killed{k}.zarr"), j.slide_id) for k, j in enumerate(jobs)]
    with pytest.raises(KeyboardInterrupt):
        extract_slides(killed, tiny(batch_size=4))
    assert not any(Path(j.store).exists() for j in killed)

    def counting(self, batch):
        seen["tiles"] += len(batch)
        return original(self, batch)

    seen["tiles"] = 0
    monkeypatch.setattr(features_module.FeatureExtractor, "__call__", counting)
    extract_slides(killed, tiny(batch_size=4))
    done_before = (seen["killed_at"] - n0) // 8 * 8  # the second slide's tiles flushed in chunks of 8 before
    assert seen["tiles"] == n1 - done_before, (seen, n0, n1)
    for k in range(3):
        np.testing.assert_array_equal(load_features(killed[k].store).features, reference[k].features)
        assert not Path(killed[k].store + features_module.PARTIAL_SUFFIX).exists()


@pytest.mark.parametrize("mpp", [0.5, 0.3])
def test_device_decoding_of_compressed_jpeg_tiles_matches_the_cpu_path(slide_factory, tmp_path, mpp):
    """features.decode: device, run here on the CPU device (torchvision's libjpeg-turbo in place of nvjpeg, the
    same code path): the JPEG tiles read raw with tifffile, decoded in a batch, assembled across tile
    boundaries and resized with torch. At 0.5 um/px a tile is read 1:1; at 0.3 um/px 427 px are read across
    several TIFF tiles and shrunk. Pixels within JPEG-decoder noise of OpenSlide + OpenCV; features within
    cosine 0.999 per tile. A lossless (deflate) slide falls back to CPU decoding, recorded in the provenance."""
    import torch

    from pathmm_pipeline.preprocess.features import ConcatTiles, collate_tiles, device_batch
    from pathmm_pipeline.preprocess.jpeg_tiles import jpeg_level

    slide = slide_factory(f"jpeg{mpp}", mpp=mpp, seed=2)
    tiles = prepare(slide.path, tmp_path)
    extract_features(slide.path, tiles, tmp_path / "cpu.zarr", tiny(decode="cpu"))
    extract_features(slide.path, tiles, tmp_path / "dev.zarr", tiny(decode="device"))
    cpu, dev = load_features(tmp_path / "cpu.zarr").features, load_features(tmp_path / "dev.zarr").features
    assert len(cpu) >= 5
    cosine = (cpu * dev).sum(1) / np.linalg.norm(cpu, axis=1) / np.linalg.norm(dev, axis=1)
    assert cosine.min() > 0.999, cosine.min()
    assert read_provenance(tmp_path / "dev.zarr")["extra"]["decoded_on"] == "device"
    assert read_provenance(tmp_path / "cpu.zarr")["extra"]["decoded_on"] == "cpu"

    from pathmm_pipeline.preprocess.features import TileDataset
    from pathmm_pipeline.preprocess.slides import open_slide
    from pathmm_pipeline.preprocess.tiling import load_tiles

    store = load_tiles(tiles)
    with open_slide(slide.path) as reader:
        level = jpeg_level(slide.path, reader.info.level_dimensions[store.geometry.level])
    assert level is not None and (store.geometry.read_px > level.tile_w) == (mpp < 0.5)
    plain = TileDataset(slide.path, store.geometry, store.coords[:8], 224)
    raw = TileDataset(slide.path, store.geometry, store.coords[:8], 224, jpeg=level)
    a = torch.stack([plain[i] for i in range(8)]).float()
    b = device_batch(collate_tiles([ConcatTiles([raw])[i] for i in range(8)]), torch.device("cpu")).float()
    assert (a - b).abs().mean() < 1.5, (a - b).abs().mean()

    lossless = write_pyramidal_tiff(tmp_path / "lossless.tiff", np.asarray(plain.tile(0)).repeat(8, 0).repeat(8, 1),
                                    mpp=0.5, compression="deflate")
    with open_slide(lossless) as reader:
        assert jpeg_level(lossless, reader.info.level_dimensions[0]) is None


def test_extraction_takes_the_slide_hash_from_the_tile_store(tiled, tmp_path, monkeypatch):
    """A multi-GB scan is hashed once per cohort (by segmentation); extraction, like tiling, trusts the hash
    the tile store recorded for the unchanged file and never reads the slide's bytes to hash them."""
    import builtins

    from pathmm_pipeline.core import provenance

    slide, tiles, _ = tiled
    provenance._hash_cache.clear()  # a fresh job process
    hashed = []

    def spy(path, *args, **kwargs):
        if Path(path).resolve() == Path(slide).resolve():
            hashed.append(path)
        return builtins.open(path, *args, **kwargs)

    monkeypatch.setattr(provenance, "open", spy, raising=False)  # what hash_file reads files with
    extract_features(slide, tiles, tmp_path / "f.zarr", tiny())
    assert not hashed
    recorded = read_provenance(tmp_path / "f.zarr")["inputs"]["slide"]["sha256"]
    assert recorded == read_provenance(tiles)["inputs"]["slide"]["sha256"]
