"""Provenance: one module writes it for every store, one function reads it back and verifies it.

A record names the stage, every input (path, size, content sha256), the parameters, the outputs written
beside the store (with their hashes), the code (pathmm version, git commit, a hash of the package source),
the versions of the packages that shaped the result, the host and the time.
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import json
import os
import platform
import socket
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from pathmm_pipeline import __version__
from pathmm_pipeline.core.errors import ProvenanceError

SCHEMA = "pathmm.provenance/1"
PARQUET_KEY = b"pathmm_provenance"
SIDECAR_SUFFIX = ".provenance.json"

TRACKED_PACKAGES = (
    "numpy", "pandas", "pyarrow", "zarr", "numcodecs", "h5py", "tifffile", "tiffslide", "openslide-python",
    "openslide-bin", "opencv-python-headless", "scikit-image", "torch", "torchvision", "timm",
    "scikit-learn", "lifelines", "snakemake", "transformers", "sentence-transformers",
)

_HASH_CHUNK = 8 * 1024 * 1024
_hash_cache: dict[tuple[str, int, int], str] = {}


def hash_file(path: str | os.PathLike[str]) -> str:
    """Content sha256 of a file (hex), cached per (path, size, mtime) within the process."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _hash_cache:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            while chunk := fh.read(_HASH_CHUNK):
                digest.update(chunk)
        _hash_cache[key] = digest.hexdigest()
    return _hash_cache[key]


def hash_tree(path: str | os.PathLike[str]) -> str:
    """Content sha256 of a directory: its sorted relative file paths and each file's sha256."""
    root = Path(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(file.relative_to(root).as_posix().encode())
        digest.update(b"\0")
        digest.update(hash_file(file).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def hash_path(path: str | os.PathLike[str]) -> str:
    """sha256 of a file's content or of a directory tree's content."""
    path = Path(path)
    return hash_tree(path) if path.is_dir() else hash_file(path)


def path_size(path: Path) -> int:
    """Bytes in a file, or in all files of a directory."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def describe_input(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The record of one input: path, kind, size and content hash."""
    path = Path(path)
    if not path.exists():
        raise ProvenanceError(f"{path}: input does not exist, cannot record its provenance")
    entry = {
        "path": str(path.resolve()),
        "given_path": str(path),
        "kind": "dir" if path.is_dir() else "file",
        "size": path_size(path),
        "sha256": hash_path(path),
    }
    if path.is_file():
        entry["mtime_ns"] = path.stat().st_mtime_ns
    return entry


def prime_hash_cache(store: str | os.PathLike[str]) -> int:
    """Trust the file hashes an upstream pathmm store recorded for files whose size and mtime are unchanged.

    A slide hashed by segmentation is not hashed again by tiling and extraction (a multi-GB scan costs seconds
    per hash). ``pathmm audit`` never uses this: it always re-hashes. Returns how many hashes were taken over.
    """
    try:
        record = read_provenance(store)
    except (ProvenanceError, OSError, ValueError):
        return 0
    primed = 0
    for entry in record.get("inputs", {}).values():
        if entry.get("kind") != "file" or "mtime_ns" not in entry:
            continue
        path = Path(entry["path"])
        try:
            st = path.stat()
        except OSError:
            continue
        if st.st_size == entry["size"] and st.st_mtime_ns == entry["mtime_ns"]:
            _hash_cache[(str(path.resolve()), st.st_size, st.st_mtime_ns)] = entry["sha256"]
            primed += 1
    return primed


@functools.lru_cache(maxsize=1)
def code_identity() -> dict[str, Any]:
    """pathmm's version, git commit (when run from a checkout) and a hash of the package source."""
    pkg = Path(__file__).resolve().parents[1]  # the whole package, not only core/
    digest = hashlib.sha256()
    for file in sorted(pkg.rglob("*.py")):
        digest.update(file.relative_to(pkg).as_posix().encode())
        digest.update(file.read_bytes())
    commit, dirty = None, None
    try:
        commit = subprocess.run(["git", "-C", str(pkg), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip() or None
        status = subprocess.run(["git", "-C", str(pkg), "status", "--porcelain", "--", "."], capture_output=True,
                                text=True, timeout=10, check=True).stdout
        dirty = bool(status.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return {"pathmm": __version__, "git_commit": commit, "git_dirty": dirty, "source_sha256": digest.hexdigest()}


@functools.lru_cache(maxsize=1)
def package_versions() -> dict[str, str]:
    """Installed versions of the packages that shape pipeline outputs (missing ones are left out)."""
    versions = {"python": sys.version.split()[0]}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def jsonable(value: Any) -> Any:
    """Turn numpy scalars, paths and tuples into plain JSON types (Zarr attributes need them)."""
    return json.loads(json.dumps(value, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"cannot record {type(value).__name__} in provenance")


def build_provenance(
    stage: str,
    inputs: dict[str, str | os.PathLike[str]],
    params: dict[str, Any],
    outputs: dict[str, str | os.PathLike[str]] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble the provenance record of one stage's output.

    ``inputs`` maps a role ("slide", "mask", ...) to a path that exists now; ``outputs`` maps a name to a
    file written beside the store (a GeoJSON, a thumbnail), recorded with its hash.
    """
    for value in inputs.values():  # upstream stores vouch for the raw files they hashed
        if Path(value).is_dir() and (Path(value) / "zarr.json").is_file():
            prime_hash_cache(value)
    record = {
        "schema": SCHEMA,
        "stage": stage,
        "created_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "inputs": {role: describe_input(p) for role, p in inputs.items()},
        "params": params,
        "outputs": {name: {"path": str(Path(p).resolve()), "given_path": str(p), "sha256": hash_file(p)}
                    for name, p in (outputs or {}).items()},
        "code": code_identity(),
        "packages": package_versions(),
        "host": {"hostname": socket.gethostname(), "platform": platform.platform(),
                 "slurm_job_id": os.environ.get("SLURM_JOB_ID")},
        "extra": extra or {},
    }
    return jsonable(record)


def write_sidecar(path: str | os.PathLike[str], record: dict[str, Any]) -> Path:
    """Write ``record`` as ``<path>.provenance.json`` (for outputs that cannot hold attributes)."""
    from pathmm_pipeline.core.atomic import write_text_atomic

    return write_text_atomic(Path(f"{os.fspath(path)}{SIDECAR_SUFFIX}"), json.dumps(record, indent=2))


def read_provenance(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read the provenance of a Zarr store, a Parquet table or any file with a JSON sidecar."""
    path = Path(path)
    sidecar = Path(f"{path}{SIDECAR_SUFFIX}")
    record: Any = None
    if path.is_dir() and (path / "zarr.json").exists():
        meta = json.loads((path / "zarr.json").read_text())
        record = meta.get("attributes", {}).get("provenance")
    elif path.suffix == ".parquet" and path.is_file():
        import pyarrow.parquet as pq

        raw = (pq.read_schema(path).metadata or {}).get(PARQUET_KEY)
        record = json.loads(raw) if raw else None
    if record is None and sidecar.exists():
        record = json.loads(sidecar.read_text())
    if not path.exists():
        raise ProvenanceError(f"{path}: does not exist")
    if not isinstance(record, dict) or record.get("schema") != SCHEMA:
        raise ProvenanceError(f"{path}: no pathmm provenance found (not written by pathmm, or incomplete)")
    return record


@dataclass(frozen=True)
class Finding:
    """One discrepancy between a store's provenance and the files on disk now."""

    store: str
    kind: str  # "input", "output" or "content" (a file of the store itself)
    role: str
    path: str
    problem: str  # "missing" or "changed" (content: also "altered ...", "not written with the store")

    def __str__(self) -> str:
        return f"{self.store}: {self.kind} '{self.role}' {self.path} is {self.problem}"


def verify_provenance(path: str | os.PathLike[str], check_outputs: bool = True) -> list[Finding]:
    """Re-hash a store's recorded inputs (and side outputs); return what is missing or changed."""
    record = read_provenance(path)
    findings: list[Finding] = []
    groups = [("input", record.get("inputs", {}))]
    if check_outputs:
        groups.append(("output", record.get("outputs", {})))
    for kind, entries in groups:
        for role, entry in entries.items():
            target = Path(entry["path"])
            if not target.exists() and Path(entry.get("given_path", target)).exists():
                target = Path(entry["given_path"])  # the tree was moved: fall back to the path as given
            if not target.exists():
                findings.append(Finding(str(path), kind, role, str(target), "missing"))
            elif hash_path(target) != entry["sha256"]:
                findings.append(Finding(str(path), kind, role, str(target), "changed"))
    return findings
