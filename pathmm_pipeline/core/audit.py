"""``pathmm audit``: re-check the recorded inputs of every store under a path and show where it came from."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pathmm_pipeline.core.atomic import TMP_MARK, stale_temporaries
from pathmm_pipeline.core.errors import ProvenanceError
from pathmm_pipeline.core.provenance import SIDECAR_SUFFIX, Finding, read_provenance, verify_provenance
from pathmm_pipeline.core.stores import content_problems, describe_file, recorded_content


@dataclass
class StoreAudit:
    """The audit of one store: its stage, parameters, code, inputs and what no longer matches."""

    path: str
    stage: str | None
    created_utc: str | None
    code: dict[str, Any]
    params: dict[str, Any]
    inputs: dict[str, str]
    input_hashes: dict[str, str] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and not self.findings

    def as_json(self) -> dict[str, Any]:
        return {"path": self.path, "stage": self.stage, "created_utc": self.created_utc, "ok": self.ok,
                "code": self.code, "params": self.params, "inputs": self.inputs,
                "input_sha256": self.input_hashes, "error": self.error,
                "findings": [f.__dict__ for f in self.findings]}


def find_stores(root: str | os.PathLike[str]) -> list[Path]:
    """Every provenance-carrying output under ``root`` (Zarr stores, Parquet tables, sidecar'd files)."""
    root = Path(root)
    if _is_output(root):
        return [root]
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        for name in list(dirnames):
            if TMP_MARK in name:
                dirnames.remove(name)
            elif name.endswith(".zarr"):
                found.append(here / name)
                dirnames.remove(name)  # do not descend into a store
        for name in filenames:
            if TMP_MARK in name:
                continue
            if name.endswith(".parquet"):
                found.append(here / name)
            elif name.endswith(SIDECAR_SUFFIX):
                found.append(here / name[: -len(SIDECAR_SUFFIX)])
    return sorted(set(found))


def _is_output(path: Path) -> bool:
    return (path.is_dir() and (path / "zarr.json").is_file()) or path.suffix == ".parquet" or \
        Path(f"{path}{SIDECAR_SUFFIX}").exists()


def audit_store(path: Path) -> StoreAudit:
    """Read and verify one store's provenance."""
    try:
        record = read_provenance(path)
    except ProvenanceError as exc:
        return StoreAudit(str(path), None, None, {}, {}, {}, error=str(exc))
    findings = verify_provenance(path) + _content_findings(path)
    return StoreAudit(str(path), record.get("stage"), record.get("created_utc"), record.get("code", {}),
                      record.get("params", {}), {role: e["path"] for role, e in record.get("inputs", {}).items()},
                      {role: e.get("sha256", "") for role, e in record.get("inputs", {}).items()}, findings)


def _content_findings(path: Path) -> list[Finding]:
    """A Zarr store's own files against the digests it recorded when written (none for older stores)."""
    if not (path.is_dir() and (path / "zarr.json").is_file()):
        return []
    recorded = recorded_content(path)
    if recorded is None:
        return []
    return [Finding(str(path), "content", describe_file(name), str(path / name), problem)
            for name, problem in content_problems(path, recorded)]


def audit(root: str | os.PathLike[str]) -> tuple[list[StoreAudit], list[Path]]:
    """Audit every store under ``root``; also return left-over temporaries of killed jobs."""
    root = Path(root)
    if not root.exists():
        raise ProvenanceError(f"{root}: nothing to audit, path does not exist")
    stale = stale_temporaries(root) if root.is_dir() else []
    return [audit_store(p) for p in find_stores(root)], stale


def lineage_tree(path: str | os.PathLike[str], seen: set[str] | None = None) -> dict[str, Any]:
    """The chain from ``path`` back to its raw inputs as nested dicts: ``{"stage", "path", "inputs": {role:
    tree}}``; a raw file (no provenance) has stage ``None``; a store reached twice is expanded once."""
    seen = seen if seen is not None else set()
    path = Path(path)
    try:
        record = read_provenance(path)
    except ProvenanceError:
        return {"stage": None, "path": str(path), "inputs": {}}
    node: dict[str, Any] = {"stage": record.get("stage"), "path": str(path), "inputs": {}}
    if str(path) in seen:
        return node
    seen.add(str(path))
    node["inputs"] = {role: lineage_tree(entry["path"], seen) for role, entry in record.get("inputs", {}).items()}
    return node


def lineage(path: str | os.PathLike[str]) -> list[str]:
    """Indented lines of the chain from ``path`` back to its raw inputs (slide, expression, report)."""
    def lines(node: dict[str, Any], depth: int) -> list[str]:
        head = ["  " * depth + f"{node['stage'] or 'raw'}: {node['path']}"]
        return head + [line for child in node["inputs"].values() for line in lines(child, depth + 1)]

    return lines(lineage_tree(path), 0)


def format_table(results: list[StoreAudit], stale: list[Path]) -> str:
    """A human-readable audit table."""
    rows = [("status", "stage", "created (UTC)", "code", "store")]
    for r in results:
        commit = (r.code.get("git_commit") or "")[:10] or (r.code.get("source_sha256") or "")[:10]
        rows.append(("OK" if r.ok else "FAIL", r.stage or "?", r.created_utc or "?",
                     f"{r.code.get('pathmm', '?')}@{commit}", r.path))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in rows]
    problems = [str(f) for r in results for f in r.findings] + [f"{r.path}: {r.error}" for r in results if r.error]
    if problems:
        lines += ["", "Changed or missing:"] + [f"  - {p}" for p in problems]
    if stale:
        lines += ["", "Left-over temporaries of interrupted jobs (safe to delete):"] + [f"  - {p}" for p in stale]
    n_ok = sum(r.ok for r in results)
    lines += ["", f"{n_ok} of {len(results)} store(s) verified"]
    return "\n".join(lines)


def format_details(result: StoreAudit) -> str:
    """One store in full: status, stage, code identity, parameters and every input with its recorded hash."""
    changed = {f.role: f.problem for f in result.findings if f.kind == "input"}
    lines = [f"{'OK' if result.ok else 'FAIL'}  {result.path}",
             f"  stage: {result.stage}  created: {result.created_utc}",
             "  code: " + ", ".join(f"{k}={v}" for k, v in sorted(result.code.items()) if v not in (None, ""))]
    lines.append("  params: " + json.dumps(result.params, sort_keys=True, default=str))
    for role, path in result.inputs.items():
        state = changed.get(role, "same")
        lines.append(f"  input {role}: {path}  sha256={result.input_hashes.get(role, '')[:16]}  [{state}]")
    if result.error:
        lines.append(f"  error: {result.error}")
    return "\n".join(lines)


def audit_json(results: list[StoreAudit], stale: list[Path], with_lineage: bool = False) -> str:
    """The audit as JSON (with each store's lineage tree when ``with_lineage``)."""
    stores = [r.as_json() | ({"lineage": lineage_tree(r.path)} if with_lineage else {}) for r in results]
    return json.dumps({"stores": stores, "stale_temporaries": [str(p) for p in stale],
                       "ok": bool(results) and all(r.ok for r in results)}, indent=2)
