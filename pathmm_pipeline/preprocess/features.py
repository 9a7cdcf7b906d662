"""Patch feature extraction: tiles read straight from the slide at their recorded level and resample factor,
through a DataLoader with worker processes, into a per-slide, per-encoder Zarr feature store.

The same code runs on CUDA (autocast in the encoder's precision, pinned memory, non-blocking copies) and on
the CPU. Extraction writes into ``<store>.tmp-partial`` (or, with ``PATHMM_SCRATCH`` set, into a partial store
in that node-local scratch folder, named after the target) and records how many tiles are done after every
flushed chunk; a killed job resumes from there when re-run with the same inputs and settings (otherwise it
restarts), and only a finished store is moved into place.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np
import torch
import zarr
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from pathmm_pipeline.core.atomic import TMP_MARK, move_into_place, scratch_root
from pathmm_pipeline.core.errors import ConfigError
from pathmm_pipeline.core.provenance import build_provenance, hash_path, jsonable
from pathmm_pipeline.core.runtime import resolve_device
from pathmm_pipeline.core.settings import SettingsMixin
from pathmm_pipeline.encoders import LoadedEncoder, load_encoder
from pathmm_pipeline.preprocess.slides import open_slide
from pathmm_pipeline.preprocess.tiling import STATUS_OK, TileGeometry, load_tiles, read_tile

log = logging.getLogger(__name__)

PARTIAL_SUFFIX = f"{TMP_MARK}partial"
CHUNK_ROWS = 2048


@dataclass(frozen=True)
class ExtractionSettings(SettingsMixin):
    """How features are extracted (``features:`` in config.yaml, with the encoder and its weights)."""

    settings_name = "features"

    encoder: str
    weights: str | None = "default"
    batch_size: int = 64
    #: tile-decoding processes; "auto": the CPUs the job was given (SLURM's cpus-per-task, else Snakemake's
    #: ``threads``; within the process's CPU affinity) less one for the main process
    num_workers: int | str = "auto"
    dtype: str = "float16"
    device: str = "auto"
    channels_last: bool = False
    compile: bool = False
    threads: int = 2
    seed: int = 0

    #: what changes a feature (the Snakemake params of the extraction rules, so a change re-runs extraction):
    #: the encoder and its weights, the stored dtype, the device (its compute precision) and the seed; the
    #: tiles, the slide and the weights file are rule inputs. Everything else only changes how fast features are
    #: made: recorded in the store, never a re-run trigger.
    FEATURE_KEYS: ClassVar[tuple[str, ...]] = ("encoder", "weights", "dtype", "device", "seed")
    THROUGHPUT_KEYS: ClassVar[tuple[str, ...]] = ("batch_size", "num_workers", "channels_last", "compile", "threads")

    def __post_init__(self) -> None:
        if not (self.num_workers == "auto" or (isinstance(self.num_workers, int) and self.num_workers >= 0)):
            raise ConfigError(f"features.num_workers must be 'auto' or an integer >= 0, got {self.num_workers!r}")

    def workers(self) -> int:
        """The decoding processes: ``num_workers``, or under "auto" the job's CPUs less the main process."""
        if self.num_workers != "auto":
            return int(self.num_workers)
        return max(0, job_cpus(self.threads) - 1)

    def feature_settings(self) -> dict[str, Any]:
        """The settings that change a feature (see :data:`FEATURE_KEYS`)."""
        return {k: getattr(self, k) for k in self.FEATURE_KEYS}

    def throughput_settings(self) -> dict[str, Any]:
        """The settings that change only the speed, with the workers actually used."""
        return {**{k: getattr(self, k) for k in self.THROUGHPUT_KEYS}, "workers_used": self.workers()}


def job_cpus(threads: int) -> int:
    """The CPUs a job was given: SLURM's ``SLURM_CPUS_PER_TASK`` inside a SLURM job, else ``threads``
    (Snakemake's), within the CPUs the process may run on."""
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
    given = int(slurm) if slurm.isdigit() and int(slurm) > 0 else int(threads)
    return max(1, min(given, available_cpus()))


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity: SLURM's allocation, taskset), else the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1



class TileDataset(Dataset):
    """Tiles of one slide as uint8 (3, S, S) tensors at the encoder's input size; one slide handle per worker."""

    def __init__(self, slide_path: str | os.PathLike[str], geometry: TileGeometry, coords: np.ndarray,
                 input_size: int, interpolation: str = "area", backend: str = "openslide", fallback: bool = True,
                 mpp_override: float | None = None) -> None:
        self.slide_path = str(slide_path)
        self.geometry = geometry
        self.coords = np.asarray(coords, np.int64)
        self.input_size = int(input_size)
        self.interpolation = {"area": cv2.INTER_AREA, "bilinear": cv2.INTER_LINEAR,
                              "bicubic": cv2.INTER_CUBIC}[interpolation]
        self.backend, self.fallback, self.mpp_override = backend, fallback, mpp_override
        self._reader = None

    def __len__(self) -> int:
        return len(self.coords)

    def _open(self):
        if self._reader is None:
            self._reader = open_slide(self.slide_path, backend=self.backend, fallback=self.fallback,
                                      mpp_override=self.mpp_override)
        return self._reader

    def tile(self, index: int) -> np.ndarray:
        """The RGB tile at ``index`` resized to the encoder's input size (uint8, HWC)."""
        x, y = self.coords[index]
        tile = read_tile(self._open(), self.geometry, x, y)
        if tile.shape[0] != self.input_size:
            tile = cv2.resize(tile, (self.input_size, self.input_size), interpolation=self.interpolation)
        return tile

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(self.tile(index).transpose(2, 0, 1)))

    def __getstate__(self) -> dict[str, Any]:  # never pickle an open slide handle into a worker
        return {**self.__dict__, "_reader": None}


def _worker_init(_: int) -> None:
    # One thread per decoding worker. (Never touch OpenCV's thread pool here: after fork it can deadlock.)
    torch.set_num_threads(1)


def make_loader(dataset: TileDataset, settings: ExtractionSettings, device: torch.device) -> DataLoader:
    """Batches in tile order, decoded by ``num_workers`` processes, pinned for the GPU."""
    workers = settings.workers() if len(dataset) > settings.batch_size else 0
    if workers:
        # forked workers inherit OpenCV's pool state: make it sequential before the fork, not in the child
        cv2.setNumThreads(1)
    return DataLoader(dataset, batch_size=settings.batch_size, shuffle=False, num_workers=workers,
                      pin_memory=device.type == "cuda", worker_init_fn=_worker_init if workers else None,
                      persistent_workers=False, prefetch_factor=4 if workers else None)


class FeatureExtractor:
    """An encoder ready for inference: normalisation on the device, autocast on CUDA, optional compile."""

    def __init__(self, encoder: LoadedEncoder, device: torch.device, channels_last: bool = False,
                 compile_model: bool = False) -> None:
        self.encoder = encoder
        self.device = device
        spec = encoder.spec
        self.mean = torch.tensor(spec.mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(spec.std, device=device).view(1, 3, 1, 1)
        self.channels_last = channels_last
        model = encoder.model.to(device).eval()
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = torch.compile(model) if compile_model else model
        dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[spec.precision]
        self.autocast_dtype = dtype if device.type == "cuda" and dtype != torch.float32 else None

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, S, S) -> float32 (B, D) features on the CPU."""
        x = batch.to(self.device, non_blocking=True).float().div_(255.0)
        x = (x - self.mean) / self.std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        context = (torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)
                   if self.autocast_dtype is not None else contextlib.nullcontext())
        with context:
            out = self.model(x)
        return out.float().cpu()


def _resume_key(inputs: dict[str, str], params: dict[str, Any]) -> str:
    text = json.dumps({"inputs": {k: hash_path(v) for k, v in inputs.items()}, "params": params}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _open_partial(partial: Path, key: str, n: int, dim: int, dtype: str,
                  chunk_rows: int) -> tuple[zarr.Group, int]:
    """Reopen a partial store made with the same key (returning tiles done), or start a fresh one."""
    if (partial / "zarr.json").exists():
        try:
            group = zarr.open_group(str(partial), mode="r+", zarr_format=3)
            if group.attrs.get("resume_key") == key and group["features"].shape == (n, dim):
                return group, int(group.attrs.get("n_done", 0))
            log.info("%s: partial store from other inputs or settings, restarting", partial)
        except Exception as exc:  # noqa: BLE001 - a job killed mid-metadata-write: the partial is unreadable
            log.warning("%s: unreadable partial store (%s), restarting", partial, exc)
    if partial.exists():
        shutil.rmtree(partial)
    group = zarr.open_group(str(partial), mode="w", zarr_format=3)
    group.create_array("features", shape=(n, dim), dtype=dtype, chunks=(chunk_rows, dim),
                       dimension_names=("tile", "feature"))
    group.attrs.update({"resume_key": key, "n_done": 0})
    return group, 0


def partial_path(store_path: str | os.PathLike[str]) -> Path:
    """Where the unfinished store of ``store_path`` is written: beside it, or in ``PATHMM_SCRATCH`` when set
    (named after the target's absolute path, so two targets with the same name never share a partial)."""
    store_path = Path(store_path)
    scratch = scratch_root()
    if scratch is None:
        return store_path.with_name(store_path.name + PARTIAL_SUFFIX)
    scratch.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(str(store_path.absolute()).encode()).hexdigest()[:12]
    return scratch / f"{store_path.name}{PARTIAL_SUFFIX}-{key}"


def extract_features(slide_path: str | os.PathLike[str], tiles_store: str | os.PathLike[str],
                     store_path: str | os.PathLike[str], settings: ExtractionSettings, slide_id: str | None = None,
                     backend: str = "openslide", fallback: bool = True, mpp_override: float | None = None) -> int:
    """Extract features of every tile of one slide into ``store_path``; returns the number of tiles."""
    store_path = Path(store_path)
    tiles = load_tiles(tiles_store)
    slide_id = slide_id or tiles.slide_id
    torch.manual_seed(settings.seed)
    torch.set_num_threads(settings.threads)
    device = resolve_device(settings.device)
    encoder = load_encoder(settings.encoder, settings.weights, device="cpu")
    spec = encoder.spec
    inputs: dict[str, str] = {"slide": str(slide_path), "tiles": str(tiles_store)}
    if encoder.weights_source and Path(str(encoder.weights_source)).is_file():
        inputs["weights"] = str(encoder.weights_source)
    params = {"settings": settings.feature_settings(), "backend": backend, "fallback": fallback,
              "mpp_override": mpp_override}
    n, dim = len(tiles.coords), spec.embed_dim
    partial = partial_path(store_path)
    chunk_rows = CHUNK_ROWS
    group, done = _open_partial(partial, _resume_key(inputs, params), n, dim, settings.dtype, chunk_rows)
    if done:
        log.info("%s: resuming at tile %d of %d", slide_id, done, n)

    seconds = 0.0
    if tiles.status == STATUS_OK and done < n:
        dataset = TileDataset(slide_path, tiles.geometry, tiles.coords[done:], spec.input_size, spec.interpolation,
                              backend, fallback, mpp_override)
        extractor = FeatureExtractor(encoder, device, settings.channels_last, settings.compile)
        buffer: list[np.ndarray] = []
        buffered = 0
        start = time.perf_counter()
        with tqdm(total=n, initial=done, unit="tile", desc=f"{slide_id} [{spec.name}]", mininterval=2.0) as bar:
            for batch in make_loader(dataset, settings, device):
                buffer.append(extractor(batch).numpy().astype(settings.dtype))
                buffered += len(batch)
                bar.update(len(batch))
                # flush whole chunks (and the tail), so every zarr write is chunk-aligned
                if buffered >= chunk_rows or done + buffered == n:
                    block = np.concatenate(buffer)
                    take = len(block) if done + buffered == n else (buffered // chunk_rows) * chunk_rows
                    group["features"][done:done + take] = block[:take]
                    done += take
                    group.attrs["n_done"] = done
                    buffer, buffered = ([block[take:]], len(block) - take) if take < len(block) else ([], 0)
        seconds = time.perf_counter() - start
    rate = (len(tiles.coords) / seconds) if seconds > 0 else None

    status = tiles.status if tiles.status != STATUS_OK else "ok"
    attrs = {
        "slide_id": slide_id, "status": status, "reason": tiles.reason, "n_tiles": n,
        "encoder": {"name": spec.name, "version": spec.version, "architecture": spec.architecture,
                    "embed_dim": dim, "weights_source": str(encoder.weights_source) if encoder.weights_source else None,
                    "weights_sha256": encoder.weights_sha256, "precision": spec.precision},
        "transform": {"input_size": spec.input_size, "mean": list(spec.mean), "std": list(spec.std),
                      "interpolation": spec.interpolation, "tile_px": tiles.geometry.tile_px,
                      "tile_mpp": tiles.geometry.achieved_mpp, "read_level": tiles.geometry.level,
                      "read_px": tiles.geometry.read_px},
        "tiles_per_second": rate, "seconds": seconds, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": settings.dtype, "batch_size": settings.batch_size, "coords_unit": "level-0 pixels, top-left",
    }
    record = build_provenance("features", inputs, params, extra={"encoder": attrs["encoder"],
                                                                  "tiles_per_second": rate, "device": str(device),
                                                                  "throughput": settings.throughput_settings()})
    # overwrite: a job killed after creating these arrays, before the store was complete, is resumed here
    coords = group.create_array("coords", shape=tiles.coords.shape, dtype="int64",
                                chunks=(max(1, min(65536, n)), 2), dimension_names=("tile", "xy"), overwrite=True)
    if n:
        coords[...] = tiles.coords
    fractions = group.create_array("tissue_fraction", shape=(n,), dtype="float32", chunks=(max(1, min(65536, n)),),
                                   dimension_names=("tile",), overwrite=True)
    if n:
        fractions[...] = tiles.tissue_fraction
    for key in ("resume_key", "n_done"):
        del group.attrs[key]
    group.attrs.update(jsonable(attrs))
    group.attrs["provenance"] = record
    move_into_place(partial, store_path)
    if rate:
        log.info("%s [%s]: %d tiles in %.1f s (%.1f tiles/s on %s)", slide_id, spec.name, n, seconds, rate, device)
    return n


@dataclass(frozen=True)
class FeatureSet:
    """A feature store as later stages read it."""

    slide_id: str
    features: np.ndarray
    coords: np.ndarray
    status: str
    encoder: dict[str, Any]
    transform: dict[str, Any]


def load_features(store_path: str | os.PathLike[str]) -> FeatureSet:
    """Read a feature store written by :func:`extract_features`."""
    from pathmm_pipeline.core.stores import open_store

    group = open_store(store_path)
    attrs = dict(group.attrs)
    return FeatureSet(attrs["slide_id"], np.asarray(group["features"][...]), np.asarray(group["coords"][...]),
                      attrs["status"], attrs["encoder"], attrs["transform"])


def extract_cohort_features(manifest: str | os.PathLike[str], tiles_dir: str | os.PathLike[str],
                            out_dir: str | os.PathLike[str], settings: ExtractionSettings,
                            backend: str = "openslide", fallback: bool = True) -> Path:
    """Extract every slide of the manifest that has a tile store in ``tiles_dir`` into ``out_dir/<slide>.zarr``
    with one encoder, in one process: the per-fold encoders of mSTAR (one folder per fold, not one job per slide
    and fold). The folder appears whole or not at all."""
    import pandas as pd

    from pathmm_pipeline.core.atomic import atomic_path

    slides = pd.read_parquet(manifest)
    slides = slides[slides.slide_id.notna() & (slides.slide_id.astype(str) != "")]
    with atomic_path(out_dir, use_scratch=False) as tmp:
        tmp.mkdir(parents=True)
        for row in tqdm(list(slides.itertuples()), desc=f"{settings.encoder} features", unit="slide"):
            store = Path(tiles_dir) / f"{row.slide_id}.zarr"
            if not (store / "zarr.json").is_file():
                continue
            mpp = getattr(row, "mpp", None)
            extract_features(row.slide_path, store, tmp / f"{row.slide_id}.zarr", settings, slide_id=row.slide_id,
                             backend=backend, fallback=fallback,
                             mpp_override=None if mpp is None or pd.isna(mpp) else float(mpp))
    return Path(out_dir)
