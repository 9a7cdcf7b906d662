"""mSTAR stage 2, self-taught training: the stage-1 slide aggregator (frozen) teaches the patch encoder (the
student, with an EMA teacher) the whole-slide, multimodal context it learned.

Holds :func:`similarity_loss`, :class:`SelfTaughtTrainer` (one step on a slide's tiles),
:func:`train_patch_encoder` (writes the student's weights and their provenance sidecar) and
:func:`register_mstar_encoder` (registers the result for feature extraction).
Paper: Xu et al., arXiv 2407.15362 (mSTAR).
Paper-to-code mapping and deviations: docs/methods/mstar.md
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from pathmm_pipeline.core.atomic import atomic_path
from pathmm_pipeline.core.provenance import build_provenance, hash_file, write_sidecar
from pathmm_pipeline.encoders import EncoderSpec, get_encoder_spec, load_encoder, register_encoder
from pathmm_pipeline.encoders.weights import TORCH_SUFFIXES
from pathmm_pipeline.models import TaskSpec, build_model
from pathmm_pipeline.models.mstar import MSTAR
from pathmm_pipeline.models.objectives import ema_update_
from pathmm_pipeline.preprocess.features import TileDataset
from pathmm_pipeline.preprocess.tiling import STATUS_OK, load_tiles
from pathmm_pipeline.training.engine import Engine, deterministic_mode, resolve_device
from pathmm_pipeline.training.settings import SIMILARITIES, SelfTaughtConfig

log = logging.getLogger(__name__)

STAGE = "mstar_self_taught"


def similarity_loss(pred: torch.Tensor, target: torch.Tensor, kind: str = "cosine") -> torch.Tensor:
    """Mean over rows of ``1 - cos(pred_i, target_i)`` (``"cosine"``) or of ``||pred_i - target_i||^2 / D``
    (``"mse"``)."""
    if kind == "cosine":
        return (1.0 - F.cosine_similarity(pred, target, dim=-1)).mean()
    if kind == "mse":
        return F.mse_loss(pred, target)
    raise ValueError(f"similarity must be one of {', '.join(SIMILARITIES)}, got {kind!r}")


class SelfTaughtTrainer:
    """The student, its EMA teacher and the frozen aggregator, and one optimisation step on a bag of tiles.

    ``student`` is trained in place (train mode, gradients on); ``teacher`` starts as a copy of it."""

    def __init__(self, student: nn.Module, aggregator: MSTAR, spec: EncoderSpec, config: SelfTaughtConfig,
                 device: torch.device | str = "cpu") -> None:
        if not isinstance(aggregator, MSTAR):
            raise TypeError(f"the aggregator must be the stage-1 mSTAR model, not {type(aggregator).__name__}")
        if aggregator.dims.wsi != spec.embed_dim:
            raise ValueError(f"the stage-1 aggregator takes {aggregator.dims.wsi}-d patch features but encoder "
                             f"'{spec.name}' gives {spec.embed_dim}-d ones -- self-teach the encoder whose "
                             f"features the aggregator was pretrained on")
        self.device = torch.device(device)
        self.config, self.spec = config, spec
        self.student = student.to(self.device).train().requires_grad_(True)
        self.teacher = copy.deepcopy(self.student).eval().requires_grad_(False)
        self.aggregator = aggregator.to(self.device).eval().requires_grad_(False)
        self.engine = Engine(self.student.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                             max_grad_norm=config.max_grad_norm, device=self.device)
        self.optimizer = self.engine.optimizer
        self.mean = torch.tensor(spec.mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(spec.std, device=self.device).view(1, 3, 1, 1)
        self.steps = 0

    def normalise(self, tiles: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, S, S) -> the encoder's normalised float input (as feature extraction)."""
        x = tiles.to(self.device).float().div_(255.0)
        return (x - self.mean) / self.std

    def _chunks(self, n: int) -> list[slice]:
        b = self.config.batch_size
        return [slice(i, min(i + b, n)) for i in range(0, n, b)]

    def step(self, tiles: torch.Tensor) -> dict[str, float]:
        """One step on the uint8 tiles (N, 3, S, S) of one slide; returns the loss terms."""
        cfg = self.config
        x = self.normalise(tiles)
        n = x.shape[0]
        with torch.no_grad():
            teacher_features = torch.cat([self.teacher(x[c]) for c in self._chunks(n)])
            teacher_slide, target = self.aggregator.aggregate(teacher_features)
        self.engine.zero_grad()
        if cfg.w_slide > 0:
            features = torch.cat([self.student(x[c]) for c in self._chunks(n)])
            patch = similarity_loss(self.aggregator.patch_projection(features), target, cfg.similarity)
            slide = 1.0 - F.cosine_similarity(self.aggregator.aggregate(features)[0], teacher_slide, dim=-1).mean()
            loss = cfg.w_patch * patch + cfg.w_slide * slide
            self.engine.backward(loss)
            patch_value, slide_value = float(patch.detach()), float(slide.detach())
        else:
            patch_value, slide_value = 0.0, 0.0
            for c in self._chunks(n):
                part = similarity_loss(self.aggregator.patch_projection(self.student(x[c])), target[c],
                                       cfg.similarity) * ((c.stop - c.start) / n)
                self.engine.backward(cfg.w_patch * part)
                patch_value += float(part.detach())
        if not np.isfinite(patch_value) or not np.isfinite(slide_value):
            raise FloatingPointError(f"self-taught step {self.steps}: loss is not finite (patch {patch_value}, "
                                     f"slide {slide_value}) -- lower lr")
        self.engine.step()
        ema_update_(self.teacher, self.student, cfg.momentum)
        self.steps += 1
        return {"patch": patch_value, "slide": slide_value,
                "loss": cfg.w_patch * patch_value + cfg.w_slide * slide_value}


# ------------------------------------------------------------------------------------------------ inputs


def load_aggregator(source: MSTAR | str | os.PathLike[str]) -> tuple[MSTAR, Path | None]:
    """The stage-1 model: as given, or rebuilt from a pretraining checkpoint (``pretrained.pt``)."""
    if isinstance(source, MSTAR):
        return source, None
    from pathmm_pipeline.models.checkpoint import dims_from_record, options_from_record
    from pathmm_pipeline.training.pretrain import read_pretrained

    path = Path(source)
    payload = read_pretrained(path)
    if payload["model_name"] != MSTAR.name:
        raise ValueError(f"{path}: a pretraining checkpoint of model '{payload['model_name']}', not of "
                         f"'{MSTAR.name}' (stage 1 of mSTAR)")
    n_bins = int((payload.get("config") or {}).get("n_bins", 4))
    model = build_model(MSTAR.name, dims_from_record(payload["dims"]), TaskSpec.survival(n_bins),
                        **options_from_record(payload["model_options"]))
    model.load_pretrained(payload["state_dict"])
    return model.eval(), path  # type: ignore[return-value]


def _state_sha256(module: nn.Module) -> str:
    digest = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().to("cpu").contiguous().numpy().tobytes())
    return digest.hexdigest()


@dataclass
class _Slide:
    index: int
    patient_id: str
    slide_path: str
    tiles_store: str
    dataset: TileDataset


def _open_slides(slides: Sequence[tuple[Any, Any, str]], spec: EncoderSpec, config: SelfTaughtConfig
                 ) -> list[_Slide]:
    opened = []
    for i, entry in enumerate(slides):
        if len(entry) != 3:
            raise ValueError(f"slides[{i}] must be (slide_path, tiles_store, patient_id), got {entry!r}")
        slide_path, tiles_store, patient_id = entry
        tiles = load_tiles(tiles_store)
        if tiles.status != STATUS_OK or len(tiles.coords) == 0:
            log.warning("%s: no tiles (%s), left out of self-taught training", tiles_store,
                        tiles.reason or tiles.status)
            continue
        dataset = TileDataset(slide_path, tiles.geometry, tiles.coords, spec.input_size, spec.interpolation,
                              config.backend, config.fallback)
        opened.append(_Slide(i, str(patient_id), str(slide_path), str(tiles_store), dataset))
    if not opened:
        raise ValueError(f"none of the {len(slides)} slides has tiles to train on")
    return opened


def sample_tiles(n_tiles: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """``min(k, n_tiles)`` distinct tile indices, in tile order."""
    if k >= n_tiles:
        return np.arange(n_tiles)
    return np.sort(rng.choice(n_tiles, size=k, replace=False))


# ------------------------------------------------------------------------------------------------ training


def train_patch_encoder(slides: Sequence[tuple[str | os.PathLike[str], str | os.PathLike[str], str]],
                        aggregator: MSTAR | str | os.PathLike[str], base_encoder_name: str,
                        config: SelfTaughtConfig | None, out_path: str | os.PathLike[str], *,
                        base_weights: str | None = "default",
                        aggregator_checkpoint: str | os.PathLike[str] | None = None) -> Path:
    """Self-teach ``base_encoder_name`` on the tiles of ``slides`` ((slide, tile store, patient id) each) with
    the frozen stage-1 ``aggregator`` (the model, or its pretraining checkpoint); write the student's weights
    to ``out_path`` (``.pth``/``.pt``/``.bin``/``.ckpt``) with a provenance sidecar and return the path.

    ``base_weights``: the student's initial weights (as :func:`~pathmm_pipeline.encoders.load_encoder`:
    "default", None for random init, a file, ...). ``aggregator_checkpoint``: the file the given model came
    from, recorded among the inputs."""
    config = config or SelfTaughtConfig()
    out = Path(out_path)
    if out.suffix.lower() not in TORCH_SUFFIXES:
        raise ValueError(f"{out}: the encoder weights are written with torch.save; name the file "
                         f"{' / '.join(TORCH_SUFFIXES)}")
    model, checkpoint = load_aggregator(aggregator)
    checkpoint = Path(aggregator_checkpoint) if aggregator_checkpoint is not None else checkpoint
    spec = get_encoder_spec(base_encoder_name)
    opened = _open_slides(slides, spec, config)
    device = resolve_device(config.device)
    start = time.perf_counter()
    history: list[dict[str, Any]] = []
    with deterministic_mode(config.deterministic, device, config.threads):
        torch.manual_seed(config.seed)
        loaded = load_encoder(base_encoder_name, base_weights, device="cpu")
        trainer = SelfTaughtTrainer(loaded.model, model, spec, config, device)
        total = config.epochs * len(opened)
        if config.max_steps is not None:
            total = min(total, config.max_steps)
        bar = tqdm(total=total, desc=f"mSTAR self-taught [{spec.name}]", unit="step", disable=not config.progress,
                   leave=False)
        for epoch in range(config.epochs):
            order = np.random.default_rng([config.seed, epoch]).permutation(len(opened))
            for position in order:
                if trainer.steps >= total:
                    break
                slide = opened[int(position)]
                rng = np.random.default_rng([config.seed, epoch, slide.index])
                index = sample_tiles(len(slide.dataset), config.tiles_per_slide, rng)
                tiles = torch.stack([slide.dataset[int(i)] for i in index])
                t0 = time.perf_counter()
                terms = trainer.step(tiles)
                history.append({"step": trainer.steps, "epoch": epoch, "patient_id": slide.patient_id,
                                "slide": Path(slide.slide_path).name, "n_tiles": int(len(index)), **terms,
                                "seconds": time.perf_counter() - t0})
                bar.update(1)
                bar.set_postfix(loss=f"{terms['loss']:.4f}")
                log.info("mSTAR self-taught step %d (epoch %d, %s, %d tiles): %s", trainer.steps, epoch,
                         slide.patient_id, len(index), ", ".join(f"{k}={v:.4f}" for k, v in terms.items()))
        bar.close()
        state = {k: v.detach().to("cpu").clone() for k, v in trainer.student.state_dict().items()}
    seconds = time.perf_counter() - start

    inputs: dict[str, Any] = {}
    for s in opened:
        inputs[f"slide_{s.index}"] = s.slide_path
        inputs[f"tiles_{s.index}"] = s.tiles_store
    if checkpoint is not None:
        inputs["aggregator"] = checkpoint
    if loaded.weights_source and Path(str(loaded.weights_source)).is_file():
        inputs["base_weights"] = loaded.weights_source
    params = {"config": config.to_dict(), "base_encoder": spec.name, "base_encoder_version": spec.version,
              "base_weights": loaded.weights_source, "base_weights_sha256": loaded.weights_sha256,
              "patients": [s.patient_id for s in opened],
              "aggregator": {"model": model.name, "state_sha256": _state_sha256(model),
                             "description": model.describe()}}
    record = build_provenance(STAGE, inputs, params, extra={
        "trained_on": sorted({s.patient_id for s in opened}),
        "n_steps": trainer.steps, "seconds": seconds, "device": str(device),
        "final": history[-1] if history else None, "history": history})
    with atomic_path(out) as tmp:
        torch.save(state, tmp)
    write_sidecar(out, {**record, "outputs": {"weights": {"path": str(out.resolve()), "given_path": str(out),
                                                         "sha256": hash_file(out)}}})
    log.info("mSTAR self-taught: %d steps on %d slides in %.1f s; weights %s", trainer.steps, len(opened), seconds,
             out)
    return out


# ------------------------------------------------------------------------------------------------ registry


def register_mstar_encoder(name: str, base_encoder_name: str, weights_path: str | os.PathLike[str] | None = None,
                           *, replace: bool = False) -> EncoderSpec:
    """Register encoder ``name``: the architecture and transform of ``base_encoder_name`` whose default weights
    are ``weights_path`` (e.g. what :func:`train_patch_encoder` wrote; None: weights must then be passed, as
    ``encoder_weights: {name: <file>}`` in config.yaml). The version records the weights' sha256, so feature
    stores made with other self-taught weights are told apart. Returns the spec."""
    base = get_encoder_spec(base_encoder_name)
    weights = None if weights_path is None else str(Path(weights_path).absolute())
    version = f"mstar-self-taught[{base.version}]"
    if weights is not None:
        version += f"-{hash_file(weights)[:12]}"
    spec = dataclasses.replace(
        base, name=name, default_weights=weights, version=version,
        architecture=f"{base.architecture}; mSTAR self-taught weights",
        description=f"mSTAR stage-2 (self-taught) patch encoder on the {base.name} architecture"
                    + (f"; weights {weights}" if weights else "; pass the weights file"))
    register_encoder(spec, replace=replace)
    return spec
