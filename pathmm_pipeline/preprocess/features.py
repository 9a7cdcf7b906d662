"""Patch feature extraction: tiles read straight from the slide at their recorded level and resample factor,
through a DataLoader with worker processes, into a per-slide, per-encoder Zarr feature store.

The same code runs on CUDA (autocast in the encoder's precision, pinned memory, non-blocking copies) and on
the CPU. One job may extract many slides (``extract_slides``: the encoder loaded once, the tiles of all slides
through one loader). Extraction writes into ``<store>.tmp-partial`` (or, with ``PATHMM_SCRATCH`` set, into a
partial store in that node-local scratch folder, named after the target) and records how many tiles are done
after every flushed chunk; a killed job resumes from there when re-run with the same inputs and settings
(otherwise it restarts), and only a finished store is moved into place.
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
from pathmm_pipeline.core.locks import WorkLock, owner_tag
from pathmm_pipeline.core.provenance import (
    build_provenance,
    code_identity,
    hash_path,
    jsonable,
    package_versions,
    prime_hash_cache,
)
from pathmm_pipeline.core.runtime import resolve_device
from pathmm_pipeline.core.settings import SettingsMixin
from pathmm_pipeline.core.stores import CONTENT_KEY, content_digests
from pathmm_pipeline.encoders import LoadedEncoder, load_encoder
from pathmm_pipeline.preprocess.jpeg_tiles import (
    JpegLevel,
    JpegRegions,
    decode_regions,
    jpeg_level,
    region_position,
    resize_batch,
)
from pathmm_pipeline.preprocess.slides import SlideLimits, open_slide
from pathmm_pipeline.preprocess.tiling import STATUS_OK, TileGeometry, load_tiles, read_tile

log = logging.getLogger(__name__)

PARTIAL_SUFFIX = f"{TMP_MARK}partial"
CHUNK_ROWS = 2048
DECODERS = ("auto", "cpu", "device")


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
    #: where tiles are decoded: "cpu" (OpenSlide / tiffslide, OpenCV resize), "device" (the compressed JPEG
    #: tiles read with tifffile and decoded, assembled and resized on the extraction device:
    #: pathmm_pipeline.preprocess.jpeg_tiles; CPU decoding where a level is not JPEG-tiled), "auto": device on
    #: CUDA, else cpu
    decode: str = "auto"

    #: what changes a feature (the Snakemake params of the extraction rules, so a change re-runs extraction):
    #: the encoder and its weights, the stored dtype, the device (its compute precision) and the seed; the
    #: tiles, the slide and the weights file are rule inputs. Everything else only changes how fast features are
    #: made: recorded in the store, never a re-run trigger.
    FEATURE_KEYS: ClassVar[tuple[str, ...]] = ("encoder", "weights", "dtype", "device", "seed", "decode")
    THROUGHPUT_KEYS: ClassVar[tuple[str, ...]] = ("batch_size", "num_workers", "channels_last", "compile", "threads")

    def __post_init__(self) -> None:
        if not (self.num_workers == "auto" or (isinstance(self.num_workers, int) and self.num_workers >= 0)):
            raise ConfigError(f"features.num_workers must be 'auto' or an integer >= 0, got {self.num_workers!r}")
        if self.decode not in DECODERS:
            raise ConfigError(f"features.decode must be one of {DECODERS}, got {self.decode!r}")

    def decodes_on_device(self, device: torch.device) -> bool:
        """Whether tiles are decoded on the extraction device (``decode``, ``auto``: on CUDA)."""
        return self.decode == "device" or (self.decode == "auto" and device.type == "cuda")

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
                 mpp_override: float | None = None, jpeg: JpegLevel | None = None) -> None:
        self.slide_path = str(slide_path)
        self.interpolation_name = interpolation
        #: set: items are the compressed JPEG tiles under each tile, decoded on the device (jpeg_tiles)
        self.regions = JpegRegions(jpeg) if jpeg is not None else None
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

    def __getitem__(self, index: int) -> torch.Tensor | dict[str, Any]:
        if self.regions is not None:
            x, y = self.coords[index]
            lx, ly = region_position(x, y, self.geometry.level_downsample)
            item = self.regions.region_tiles(lx, ly, self.geometry.read_px)
            if item is not None:
                level = self.regions.level
                return {**item, "tile_h": level.tile_h, "tile_w": level.tile_w, "tile_px": self.geometry.tile_px,
                        "input_size": self.input_size, "interpolation": self.interpolation_name}
        pixels = torch.from_numpy(np.ascontiguousarray(self.tile(index).transpose(2, 0, 1)))
        return pixels if self.regions is None else {"pixels": pixels}

    def close(self) -> None:
        """Close the slide handle (reopened on the next read)."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def __getstate__(self) -> dict[str, Any]:  # never pickle an open slide handle into a worker
        return {**self.__dict__, "_reader": None}


def collate_tiles(items: list[Any]) -> torch.Tensor | list[Any]:
    """Decoded tiles stacked into a batch; compressed ones (device decoding) kept as a list."""
    if isinstance(items[0], torch.Tensor):
        return torch.stack(items)
    return list(items)


def device_batch(batch: torch.Tensor | list[dict[str, Any]], device: torch.device) -> torch.Tensor:
    """uint8 (B, 3, S, S) on ``device``: a decoded batch moved there, or the compressed tiles decoded, assembled
    and resized there (tiles that fell back to CPU decoding moved in their place)."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    out: list[torch.Tensor | None] = [None] * len(batch)
    groups: dict[tuple, list[int]] = {}
    for i, item in enumerate(batch):
        if "pixels" in item:
            out[i] = item["pixels"].to(device, non_blocking=True)
        else:
            key = (item["tile_h"], item["tile_w"], item["size"], item["tile_px"], item["input_size"],
                   item["interpolation"])
            groups.setdefault(key, []).append(i)
    for (tile_h, tile_w, read_px, tile_px, input_size, interpolation), index in groups.items():
        regions = decode_regions([batch[i] for i in index], tile_h, tile_w, device)
        tiles = resize_batch(regions, tile_px, "area" if read_px > tile_px else "bilinear")  # as read_tile
        tiles = resize_batch(tiles, input_size, interpolation)  # as TileDataset.tile
        for k, i in enumerate(index):
            out[i] = tiles[k]
    return torch.stack(out)


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
                      collate_fn=collate_tiles, pin_memory=device.type == "cuda",
                      worker_init_fn=_worker_init if workers else None,
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
        """uint8 (B, 3, S, S) (or compressed tiles, see :func:`device_batch`) -> float32 (B, D) on the CPU."""
        x = device_batch(batch, self.device).float().div_(255.0)
        x = (x - self.mean) / self.std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        context = (torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)
                   if self.autocast_dtype is not None else contextlib.nullcontext())
        with context:
            out = self.model(x)
        return out.float().cpu()


def _resume_key(inputs: dict[str, str], params: dict[str, Any]) -> str:
    for value in inputs.values():  # the tile store vouches for the slide's hash: a multi-GB scan is hashed once
        if (Path(value) / "zarr.json").is_file():
            prime_hash_cache(value)
    # the code and the packages too: features computed by another pathmm or torch are never resumed into
    code = {k: v for k, v in code_identity().items() if k != "git_dirty"}
    text = json.dumps({"inputs": {k: hash_path(v) for k, v in inputs.items()}, "params": params, "code": code,
                       "packages": package_versions()}, sort_keys=True)
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


@dataclass(frozen=True)
class SlideJob:
    """One slide of an extraction job: the slide file, its tile store, the feature store to write, the id to
    record (default: the tile store's) and an mpp override."""

    slide: str
    tiles: str
    store: str
    slide_id: str | None = None
    mpp_override: float | None = None

    FIELDS: ClassVar[tuple[str, ...]] = ("slide", "tiles", "store", "slide_id", "mpp_override")

    @classmethod
    def from_dict(cls, entry: dict[str, Any]) -> SlideJob:
        """A job from its JSON form; an unknown or missing key fails naming it."""
        unknown = sorted(set(entry) - set(cls.FIELDS))
        missing = [k for k in ("slide", "tiles", "store") if not entry.get(k)]
        if unknown or missing:
            raise ConfigError(f"extraction job {entry!r}: " + (f"unknown keys {unknown}" if unknown else
                                                                f"missing {missing}"))
        mpp = entry.get("mpp_override")
        return cls(str(entry["slide"]), str(entry["tiles"]), str(entry["store"]), entry.get("slide_id") or None,
                   None if mpp in (None, "") else float(mpp))


class ConcatTiles(Dataset):
    """The tiles of several slides as one sequence, so that the decoding workers run on into the next slide
    while the encoder works on the current one. At most two slides are open per worker."""

    def __init__(self, parts: list[TileDataset]) -> None:
        self.parts = parts
        self.offsets = np.cumsum([0] + [len(p) for p in parts])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, index: int) -> torch.Tensor:
        k = int(np.searchsorted(self.offsets, index, side="right")) - 1
        for part in self.parts[:max(0, k - 1)]:
            part.close()
        return self.parts[k][index - int(self.offsets[k])]


class _SlideOutput:
    """One slide's features as they are made: a partial store written chunk by chunk (resumable after a kill),
    finished in place (arrays, attrs, provenance), and moved onto the target only when the whole job is done."""

    def __init__(self, job: SlideJob, encoder: LoadedEncoder, settings: ExtractionSettings, backend: str,
                 fallback: bool) -> None:
        self.job, self.encoder, self.settings = job, encoder, settings
        self.backend, self.fallback = backend, fallback
        self.tiles = load_tiles(job.tiles)
        self.slide_id = job.slide_id or self.tiles.slide_id
        self.inputs: dict[str, str] = {"slide": job.slide, "tiles": job.tiles}
        if encoder.weights_source and Path(str(encoder.weights_source)).is_file():
            self.inputs["weights"] = str(encoder.weights_source)
        self.params = {"settings": settings.feature_settings(), "backend": backend, "fallback": fallback,
                       "mpp_override": job.mpp_override}
        self.n, self.dim = len(self.tiles.coords), encoder.spec.embed_dim
        self.partial = partial_path(job.store)
        self.lock = WorkLock(self.partial)
        if not self.lock.acquire():  # another copy of this job works in the shared partial: never touch it
            shared, self.partial = self.partial, self.partial.with_name(f"{self.partial.name}-{owner_tag()}")
            log.warning("%s: another copy of this job (%s) is extracting into %s; this copy works in %s (no "
                        "resume) and the last to finish replaces the store atomically", self.slide_id,
                        self.lock.describe_holder(), shared, self.partial)
        self.group, self.done = _open_partial(self.partial, _resume_key(self.inputs, self.params), self.n, self.dim,
                                              settings.dtype, CHUNK_ROWS)
        self.seconds = float(self.group.attrs.get("seconds") or 0.0) if self.done == self.n else 0.0
        if 0 < self.done < self.n:
            log.info("%s: resuming at tile %d of %d", self.slide_id, self.done, self.n)
        self._buffer: list[np.ndarray] = []
        self._buffered = 0
        self.finished = False
        self.decoder = "cpu"

    @property
    def remaining(self) -> int:
        """Tiles still to extract (none for a slide without tissue)."""
        return self.n - self.done - self._buffered if self.tiles.status == STATUS_OK else 0

    def dataset(self, on_device: bool) -> TileDataset:
        """The slide's remaining tiles; ``on_device``: as compressed JPEG tiles where the level allows it."""
        spec, geometry = self.encoder.spec, self.tiles.geometry
        jpeg = None
        if on_device:
            with open_slide(self.job.slide, backend=self.backend, fallback=self.fallback,
                            mpp_override=self.job.mpp_override) as reader:
                dimensions = reader.info.level_dimensions[geometry.level]
            jpeg = jpeg_level(self.job.slide, dimensions)
            if jpeg is None:
                log.info("%s: level %d is not JPEG-tiled, decoding on the CPU", self.slide_id, geometry.level)
        self.decoder = "device" if jpeg is not None else "cpu"
        return TileDataset(self.job.slide, geometry, self.tiles.coords[self.done:], spec.input_size,
                           spec.interpolation, self.backend, self.fallback, self.job.mpp_override, jpeg)

    def add(self, rows: np.ndarray, seconds: float) -> None:
        """Append the next rows; whole chunks (and the tail) are written, so every zarr write is chunk-aligned."""
        self._buffer.append(rows)
        self._buffered += len(rows)
        self.seconds += seconds
        last = self.done + self._buffered == self.n
        if self._buffered >= CHUNK_ROWS or last:
            block = np.concatenate(self._buffer)
            take = len(block) if last else (len(block) // CHUNK_ROWS) * CHUNK_ROWS
            self.group["features"][self.done:self.done + take] = block[:take]
            self.done += take
            self.group.attrs["n_done"] = self.done
            self._buffer, self._buffered = ([block[take:]], len(block) - take) if take < len(block) else ([], 0)

    def finish(self, device: torch.device) -> None:
        """Write coords, tissue fractions, attrs and provenance into the partial (kept resumable: a job killed
        after this finds the slide done)."""
        spec, tiles, n = self.encoder.spec, self.tiles, self.n
        rate = n / self.seconds if self.seconds > 0 else None
        attrs = {
            "slide_id": self.slide_id, "status": tiles.status if tiles.status != STATUS_OK else "ok",
            "reason": tiles.reason, "n_tiles": n,
            "encoder": {"name": spec.name, "version": spec.version, "architecture": spec.architecture,
                        "embed_dim": self.dim,
                        "weights_source": str(self.encoder.weights_source) if self.encoder.weights_source else None,
                        "weights_sha256": self.encoder.weights_sha256, "precision": spec.precision},
            "transform": {"input_size": spec.input_size, "mean": list(spec.mean), "std": list(spec.std),
                          "interpolation": spec.interpolation, "tile_px": tiles.geometry.tile_px,
                          "tile_mpp": tiles.geometry.achieved_mpp, "read_level": tiles.geometry.level,
                          "read_px": tiles.geometry.read_px},
            "tiles_per_second": rate, "seconds": self.seconds, "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "dtype": self.settings.dtype, "batch_size": self.settings.batch_size,
            "coords_unit": "level-0 pixels, top-left",
        }
        record = build_provenance("features", self.inputs, self.params, extra={
            "encoder": attrs["encoder"], "tiles_per_second": rate, "device": str(device),
            "throughput": self.settings.throughput_settings(), "decoded_on": self.decoder})
        # overwrite: a job killed after creating these arrays, before the store was complete, is resumed here
        chunk = max(1, min(65536, n))
        coords = self.group.create_array("coords", shape=tiles.coords.shape, dtype="int64", chunks=(chunk, 2),
                                         dimension_names=("tile", "xy"), overwrite=True)
        fractions = self.group.create_array("tissue_fraction", shape=(n,), dtype="float32", chunks=(chunk,),
                                            dimension_names=("tile",), overwrite=True)
        if n:
            coords[...] = tiles.coords
            fractions[...] = tiles.tissue_fraction
        self.group.attrs.update({**jsonable(attrs), CONTENT_KEY: content_digests(self.partial)})
        self.group.attrs["provenance"] = record
        self.finished = True
        if rate:
            log.info("%s [%s]: %d tiles in %.1f s (%.1f tiles/s on %s)", self.slide_id, spec.name, n, self.seconds,
                     rate, device)

    def move(self) -> None:
        """The finished store onto its target."""
        for key in ("resume_key", "n_done"):
            self.group.attrs.pop(key, None)
        move_into_place(self.partial, self.job.store)
        self.close()

    def close(self) -> None:
        """Release the claim on the partial (it stays on disk for a re-run to resume)."""
        self.lock.release()


def check_job_limits(job: SlideJob, limits: SlideLimits) -> None:
    """Refuse a slide whose tile store (its attributes: the slide's dimensions and the tile count, as tiling
    recorded them) is above ``limits``, before the encoder is loaded or any tile read."""
    from pathmm_pipeline.core.stores import open_store

    attrs = open_store(job.tiles).attrs
    if attrs.get("slide_dimensions"):
        limits.check_dimensions(job.slide, tuple(attrs["slide_dimensions"]))
    limits.check_tiles(job.tiles, int(attrs.get("n_tiles", 0)), f"tiles in the tile store of {job.slide}")


def extract_slides(jobs: list[SlideJob], settings: ExtractionSettings, backend: str = "openslide",
                   fallback: bool = True, limits: SlideLimits | None = None) -> dict[str, int]:
    """Extract features of every tile of each slide of ``jobs`` with one encoder, loaded once: the tiles of all
    slides stream through one loader (decoding runs ahead into the next slide), and each slide gets its own
    store and provenance. Every store is finished in its partial and moved into place once all slides are
    done, so a killed job keeps the slides it finished (and the chunks of the one it was on) for its re-run,
    even where the workflow manager deletes the job's outputs before re-running it. Returns slide -> tiles.

    A slide above ``limits`` (default: :class:`SlideLimits`'s) fails first, before the encoder is loaded
    (:func:`check_job_limits`)."""
    for job in jobs:
        check_job_limits(job, limits or SlideLimits())
    torch.manual_seed(settings.seed)
    torch.set_num_threads(settings.threads)
    device = resolve_device(settings.device)
    encoder = load_encoder(settings.encoder, settings.weights, device="cpu")
    outputs: list[_SlideOutput] = []
    try:
        for job in jobs:
            outputs.append(_SlideOutput(job, encoder, settings, backend, fallback))
        _extract_into(outputs, encoder, settings, device)
    finally:
        for out in outputs:
            out.close()
    return {out.slide_id: out.n for out in outputs}


def _extract_into(outputs: list[_SlideOutput], encoder: LoadedEncoder, settings: ExtractionSettings,
                  device: torch.device) -> None:
    """Stream the remaining tiles of ``outputs`` through the encoder, finish every store and move it in place."""
    jobs = [o.job for o in outputs]
    pending = [o for o in outputs if o.remaining]
    if pending:
        extractor = FeatureExtractor(encoder, device, settings.channels_last, settings.compile)
        on_device = settings.decodes_on_device(device)
        dataset = ConcatTiles([o.dataset(on_device) for o in pending])
        desc = pending[0].slide_id if len(jobs) == 1 else f"{len(jobs)} slides"
        cursor = 0
        with tqdm(total=len(dataset), unit="tile", desc=f"{desc} [{encoder.spec.name}]", mininterval=2.0) as bar:
            last = time.perf_counter()
            for batch in make_loader(dataset, settings, device):
                rows = extractor(batch).numpy().astype(settings.dtype)
                # the loop's time, the wait for decoded tiles included, shared among the batch's slides
                seconds, last = time.perf_counter() - last, time.perf_counter()
                offset = 0
                while offset < len(rows):  # a batch may span the end of one slide and the start of the next
                    out = pending[cursor]
                    take = min(out.remaining, len(rows) - offset)
                    out.add(rows[offset:offset + take], seconds * take / len(rows))
                    offset += take
                    if out.remaining == 0:
                        out.finish(device)
                        cursor += 1
                bar.update(len(rows))
    for out in outputs:
        if not out.finished:
            out.finish(device)
    for out in outputs:
        out.move()


def extract_features(slide_path: str | os.PathLike[str], tiles_store: str | os.PathLike[str],
                     store_path: str | os.PathLike[str], settings: ExtractionSettings, slide_id: str | None = None,
                     backend: str = "openslide", fallback: bool = True, mpp_override: float | None = None,
                     limits: SlideLimits | None = None) -> int:
    """Extract features of every tile of one slide into ``store_path``; returns the number of tiles."""
    job = SlideJob(str(slide_path), str(tiles_store), str(store_path), slide_id, mpp_override)
    return next(iter(extract_slides([job], settings, backend, fallback, limits).values()))


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
                            backend: str = "openslide", fallback: bool = True,
                            limits: SlideLimits | None = None) -> Path:
    """Extract every slide of the manifest that has a tile store in ``tiles_dir`` into ``out_dir/<slide>.zarr``
    with one encoder, in one process: the per-fold encoders of mSTAR (one folder per fold, not one job per slide
    and fold). The folder appears whole or not at all."""
    import pandas as pd

    from pathmm_pipeline.core.atomic import atomic_path

    slides = pd.read_parquet(manifest)
    slides = slides[slides.slide_id.notna() & (slides.slide_id.astype(str) != "")]
    with atomic_path(out_dir, use_scratch=False) as tmp:
        tmp.mkdir(parents=True)
        jobs = []
        for row in slides.itertuples():
            store = Path(tiles_dir) / f"{row.slide_id}.zarr"
            if (store / "zarr.json").is_file():
                mpp = getattr(row, "mpp", None)
                jobs.append(SlideJob(str(row.slide_path), str(store), str(tmp / f"{row.slide_id}.zarr"),
                                     row.slide_id, None if mpp is None or pd.isna(mpp) else float(mpp)))
        if jobs:
            extract_slides(jobs, settings, backend, fallback, limits)
    return Path(out_dir)
