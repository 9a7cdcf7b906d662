"""The validated sample sheet, checked once per DAG: the Snakefile is parsed again in every cluster job, and
validating a 20,000-row sheet (every file's existence on a shared filesystem) in each of them costs the cluster
more than the jobs' own work. The main Snakemake process validates in full and caches the result under
``.snakemake/pathmm/`` keyed by the sheet's content, the cancer types and labels, the sample-sheet schema and the
pipeline version; a job on a node reads that cache when its key matches (else it validates too)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import pandas as pd

from pathmm_pipeline import __version__
from pathmm_pipeline.core.atomic import atomic_path
from pathmm_pipeline.core.config import load_schema
from pathmm_pipeline.preprocess.samplesheet import load_samplesheet

log = logging.getLogger(__name__)

#: where the cache lives, relative to Snakemake's working directory
CACHE_DIR = Path(".snakemake") / "pathmm"


def samplesheet_key(path: str | os.PathLike[str], cancer_types: list[str], labels: list[str]) -> str:
    """SHA-256 of what decides the validated sheet: its bytes and location (relative paths resolve against its
    folder), the cancer types and labels, the schema and the pipeline version."""
    path = Path(path)
    digest = hashlib.sha256()
    digest.update(path.read_bytes())
    digest.update(json.dumps({"at": str(path.resolve().parent), "cancer_types": sorted(cancer_types),
                              "labels": sorted(labels), "schema": load_schema("samplesheet"),
                              "pathmm": __version__}, sort_keys=True).encode())
    return digest.hexdigest()


def validated_samplesheet(path: str | os.PathLike[str], cancer_types: list[str], labels: list[str],
                          trust_cache: bool, cache_dir: str | os.PathLike[str] = CACHE_DIR) -> pd.DataFrame:
    """The sample sheet at ``path`` validated by :func:`load_samplesheet`. ``trust_cache`` (a cluster job, whose
    main process has validated the same content): read the cache of this content when there is one. Otherwise
    validate in full and (re)write the cache."""
    if not Path(path).is_file():
        return load_samplesheet(path, cancer_types, labels)  # the one-line "file not found" error
    cache = Path(cache_dir) / f"samplesheet-{samplesheet_key(path, cancer_types, labels)}.pkl"
    if trust_cache and cache.is_file():
        try:
            return pd.read_pickle(cache)
        except Exception as exc:  # a damaged cache is a cache miss, never a failure
            log.warning("%s: unreadable sample-sheet cache (%s): validating again", cache, exc)
    frame = load_samplesheet(path, cancer_types, labels)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cache, use_scratch=False) as tmp:
            frame.to_pickle(tmp)
    except OSError as exc:  # a read-only working directory: validate in every job instead
        log.warning("%s: cannot write the sample-sheet cache (%s)", cache, exc)
    return frame
