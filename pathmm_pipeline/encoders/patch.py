"""The patch-encoder registry: specs by name, and loading an encoder with its weights."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar, overload

import torch

from pathmm_pipeline.core.provenance import hash_file
from pathmm_pipeline.core.registry import DuplicateEntryError, Registry, UnknownEntryError
from pathmm_pipeline.encoders.weights import (
    StateDictMismatch,
    WeightsError,
    describe_mismatch,
    download_hub_weights,
    read_state_dict,
    resolve_weights,
    strip_prefixes,
)

PRECISIONS = ("float16", "bfloat16", "float32")
INTERPOLATIONS = ("area", "bilinear", "bicubic")
_NAME = re.compile(r"^[A-Za-z0-9_]+$")  # the Snakemake wildcard constraint of {encoder}

StateDict = dict[str, torch.Tensor]
#: adapter(checkpoint state dict, the model's own state dict) -> state dict in the model's key names
StateDictAdapter = Callable[[StateDict, Mapping[str, torch.Tensor]], StateDict]


class UnknownEncoderError(UnknownEntryError):
    """A patch-encoder name that is not registered."""


class DuplicateEncoderError(DuplicateEntryError):
    """An encoder registered under a name that is already taken."""


@dataclass(frozen=True)
class EncoderSpec:
    """What an encoder is: architecture, input transform, precision, and where its weights come from."""

    name: str                      # registry key, e.g. "uni"
    architecture: str              # human text, e.g. "ViT-L/16 (timm vit_large_patch16_224)"
    embed_dim: int
    input_size: int                # square input in px (tiles are resized to it)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    precision: str                 # autocast dtype on CUDA: "float16" | "bfloat16" | "float32"
    default_weights: str | None    # "hf_hub:<repo>", "package:<module>", a path, or None (random init)
    version: str                   # recorded in provenance, e.g. "uni-v1"
    builder: Callable[[], torch.nn.Module]  # random-init architecture; (B,3,S,S) normalised -> (B, embed_dim)
    interpolation: str = "area"    # how tiles are resized to input_size: "area" | "bilinear" | "bicubic"
    description: str = ""
    #: optional: maps a published checkpoint's keys onto the architecture's (raise StateDictMismatch if it can't)
    adapt_state_dict: StateDictAdapter | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        problems = []
        if not _NAME.match(self.name):
            problems.append(f"name '{self.name}' must be letters, digits and underscores only")
        if self.precision not in PRECISIONS:
            problems.append(f"precision '{self.precision}' is not one of {', '.join(PRECISIONS)}")
        if self.interpolation not in INTERPOLATIONS:
            problems.append(f"interpolation '{self.interpolation}' is not one of {', '.join(INTERPOLATIONS)}")
        if len(self.mean) != 3 or len(self.std) != 3 or any(s <= 0 for s in self.std):
            problems.append("mean and std need three values each (std > 0)")
        if self.embed_dim <= 0 or self.input_size <= 0:
            problems.append("embed_dim and input_size must be positive")
        if not callable(self.builder):
            problems.append("builder must be callable")
        if problems:
            raise ValueError(f"encoder spec '{self.name}': " + "; ".join(problems))


@dataclass
class LoadedEncoder:
    """An encoder ready to run: the model (eval, frozen, on the device) and what weights it holds."""

    spec: EncoderSpec
    model: torch.nn.Module         # eval mode, requires_grad False, on the requested device
    weights_source: str | None     # what was loaded: resolved path or hub id or None (random init)
    weights_sha256: str | None     # sha256 of the weights file (None for random init)


#: the patch encoders by name (:mod:`.zoo` registers the built-in ones)
PATCH_ENCODERS: Registry[EncoderSpec] = Registry(
    "encoder", unknown=UnknownEncoderError, duplicate=DuplicateEncoderError,
    hint="; set features.encoders in config.yaml to some of these (`pathmm encoders` describes them)",
    describe=lambda spec: f"{spec.architecture}, version {spec.version}", same_again=False)

F = TypeVar("F", bound=Callable[[], EncoderSpec])


@overload
def register_encoder(spec_or_factory: EncoderSpec, *, replace: bool = False) -> EncoderSpec: ...
@overload
def register_encoder(spec_or_factory: F, *, replace: bool = False) -> F: ...


def register_encoder(spec_or_factory, *, replace: bool = False):
    """Register an :class:`EncoderSpec`, or (as a decorator) the spec a zero-argument factory returns.

    Returns what it was given. A name that is already registered raises :class:`DuplicateEncoderError`
    unless ``replace=True``.
    """
    if isinstance(spec_or_factory, EncoderSpec):
        spec = spec_or_factory
    elif callable(spec_or_factory):
        spec = spec_or_factory()
        if not isinstance(spec, EncoderSpec):
            raise TypeError(f"register_encoder: {getattr(spec_or_factory, '__name__', spec_or_factory)!r} "
                            f"returned {type(spec).__name__}, not an EncoderSpec")
    else:
        raise TypeError(f"register_encoder takes an EncoderSpec or a factory returning one, not "
                        f"{type(spec_or_factory).__name__}")
    PATCH_ENCODERS.register(spec.name, spec, replace=replace)
    return spec_or_factory


def unregister_encoder(name: str) -> EncoderSpec:
    """Remove a registered encoder (for tests and plugins); returns its spec."""
    return PATCH_ENCODERS.remove(name)


def list_encoders() -> list[str]:
    """Registered encoder names, sorted."""
    return PATCH_ENCODERS.names()


def get_encoder_spec(name: str) -> EncoderSpec:
    """The spec registered under ``name``; an unknown name raises an error listing the registered ones."""
    return PATCH_ENCODERS.get(name)


def load_encoder(name: str, weights: str | None = "default",
                 device: str | torch.device = "cpu") -> LoadedEncoder:
    """Build encoder ``name`` and load its weights.

    ``weights``: ``"default"`` (the spec's ``default_weights``), ``None`` (random init, recorded as such), a
    local file or folder, ``package:<module>``, or ``hf_hub:<owner>/<repo>`` (hub access only when online;
    offline it raises :class:`WeightsError` saying to pass a local file). Checkpoints are loaded strictly
    after stripping wrapper prefixes; a checkpoint that does not fit raises :class:`WeightsError` naming
    the file, the encoder and the first offending keys.
    """
    spec = get_encoder_spec(name)
    source = spec.default_weights if (isinstance(weights, str) and weights == "default") else weights
    if source is None:
        model = spec.builder()
        weights_source, sha256 = None, None
    else:
        resolved = resolve_weights(source)
        if isinstance(resolved, Path):
            path, weights_source = resolved, str(resolved)
        else:
            path, weights_source = download_hub_weights(resolved, spec.name), resolved
        sha256 = hash_file(path)
        model = _build_with_weights(spec, read_state_dict(path), path)
    model.eval()
    model.requires_grad_(False)
    model.to(device)
    return LoadedEncoder(spec, model, weights_source, sha256)


def fit_state_dict(spec: EncoderSpec, state: StateDict, expected: Mapping[str, torch.Tensor],
                   path: object) -> StateDict:
    """The checkpoint in the architecture's key names and dtypes, or WeightsError naming what does not fit."""
    state = strip_prefixes(state, expected)
    if spec.adapt_state_dict is not None:
        try:
            state = spec.adapt_state_dict(state, expected)
        except StateDictMismatch as exc:
            raise WeightsError(path, f"weights do not fit encoder '{spec.name}' ({spec.architecture}): {exc}",
                               _fit_hint(spec)) from exc
    problem = describe_mismatch(state, expected)
    if problem:
        raise WeightsError(path, f"weights do not fit encoder '{spec.name}' ({spec.architecture}): {problem}",
                           _fit_hint(spec))
    return {k: v.to(expected[k].dtype) if v.dtype != expected[k].dtype else v for k, v in state.items()}


def _fit_hint(spec: EncoderSpec) -> str:
    published = f" (published: {spec.default_weights})" if spec.default_weights else ""
    return (f"pass the weights of this architecture{published}, or choose the encoder these weights belong to "
            f"(`pathmm encoders` lists them)")


def _build_with_weights(spec: EncoderSpec, state: StateDict, path: Path) -> torch.nn.Module:
    # Build on the meta device and adopt the checkpoint's tensors (no random init, no second copy in memory);
    # fall back to an ordinary build when the architecture keeps tensors outside its state dict.
    with torch.device("meta"):
        model = spec.builder()
    state = fit_state_dict(spec, state, model.state_dict(), path)
    model.load_state_dict(state, strict=True, assign=True)
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        model = spec.builder()
        model.load_state_dict(state, strict=True)
    return model
