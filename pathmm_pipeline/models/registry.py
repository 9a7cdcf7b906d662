"""The model registry: model classes by name, and building one from the dims, the task and options."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from pathmm_pipeline.core.registry import NAME, DuplicateEntryError, Registry, UnknownEntryError
from pathmm_pipeline.models.base import MODALITIES, InputDims, ModelConfigError, PathmmModel, TaskSpec

M = TypeVar("M", bound=type[PathmmModel])


class UnknownModelError(UnknownEntryError):
    """A model name that is not registered."""


class DuplicateModelError(DuplicateEntryError):
    """A model registered under a name that is already taken."""


#: the models by name: each a :class:`PathmmModel` subclass (one file of this package each)
MODELS: Registry[type[PathmmModel]] = Registry("model", unknown=UnknownModelError, duplicate=DuplicateModelError,
                                               describe=lambda cls: f"{cls.__module__}.{cls.__qualname__}")


class ModelOptionError(ModelConfigError, TypeError):
    """An option the model does not take."""


def register_model(name: str, *, replace: bool = False) -> Callable[[M], M]:
    """Class decorator: register a :class:`PathmmModel` subclass under ``name`` (and set its ``name``).

    A name already taken raises :class:`DuplicateModelError` unless ``replace=True``.
    """
    if not isinstance(name, str) or not NAME.match(name):
        raise ValueError(f"model name {name!r} must be letters, digits and underscores only")

    def decorate(cls: M) -> M:
        if not (isinstance(cls, type) and issubclass(cls, PathmmModel)):
            raise TypeError(f"register_model('{name}'): {cls!r} is not a PathmmModel subclass")
        problems = []
        if not cls.uses or not cls.uses <= set(MODALITIES):
            problems.append(f"uses {sorted(cls.uses)} must be a non-empty subset of {MODALITIES}")
        if not cls.requires <= cls.uses:
            problems.append(f"requires {sorted(cls.requires)} must be a subset of uses {sorted(cls.uses)}")
        if problems:
            raise ValueError(f"register_model('{name}'): " + "; ".join(problems))
        MODELS.register(name, cls, replace=replace)
        cls.name = name
        return cls

    return decorate


def unregister_model(name: str) -> type[PathmmModel]:
    """Remove a registered model (for tests and plugins); returns its class."""
    return MODELS.remove(name)


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return MODELS.names()


def get_model_class(name: str) -> type[PathmmModel]:
    """The class registered under ``name``; an unknown name raises an error listing the registered ones."""
    return MODELS.get(name)


def model_options(name: str) -> dict[str, Any]:
    """The options ``build_model(name, ...)`` accepts, with their defaults."""
    sig = inspect.signature(get_model_class(name).__init__)
    return {p.name: p.default for p in list(sig.parameters.values())[3:]
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def build_model(name: str, dims: InputDims, task: TaskSpec, **options: Any) -> PathmmModel:
    """Build model ``name`` for these input sizes and this task; ``options`` are the model's keyword options
    (an unknown option raises :class:`ModelOptionError` listing the accepted ones)."""
    cls = get_model_class(name)
    accepted = model_options(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        listing = ", ".join(f"{k}={v!r}" for k, v in accepted.items())
        raise ModelOptionError(f"model '{name}' has no option {', '.join(repr(u) for u in unknown)} -- its options "
                               f"(with defaults): {listing}")
    try:
        return cls(dims, task, **options)
    except ModelConfigError:
        # a cohort that lacks a modality altogether (no slide at all): build for what it has, when the model
        # can be built for a subset of its modalities; otherwise the first error stands
        provided = cls.uses & dims_modalities(dims)
        if ("modalities" not in accepted or options.get("modalities") is not None or not provided
                or provided == cls.uses or not cls.requires <= provided):
            raise
        try:
            return cls(dims, task, **{**options, "modalities": provided})
        except ModelConfigError:
            pass
        raise


def dims_modalities(dims: InputDims) -> frozenset[str]:
    """The modalities some patient of a cohort provides, as its InputDims says."""
    present = {"wsi": dims.wsi is not None, "genomics": dims.genes is not None or dims.pathway_sizes is not None,
               "report": dims.report is not None}
    return frozenset(m for m, ok in present.items() if ok)
