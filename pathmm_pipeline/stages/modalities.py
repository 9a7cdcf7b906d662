"""The expression and report stages as the rules run them, one function per rule and named as the rule:
``genomics`` (and ``external_genomics``, the same stage on the external pretraining patients),
``clean_report``, ``merge_reports`` and ``embed_reports``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pathmm_pipeline.stages.settings import CleanReportSettings, EmbedReportSettings

PathLike = str | os.PathLike[str]


def genomics(expression: list[PathLike], out: PathLike, settings: dict[str, Any]) -> Path:
    """The cohort's genomics store from its expression files; ``settings``: the genomics settings and
    ``patients``, the patients to keep."""
    from pathmm_pipeline.genomics.stage import GenomicsSettings, build_genomics_store

    settings = dict(settings)
    patients = settings.pop("patients")
    return build_genomics_store(expression, patients, out, GenomicsSettings.from_dict(settings))


external_genomics = genomics


def clean_report(report: PathLike, patient: str, out: PathLike, settings: dict[str, Any]) -> Path:
    """Clean and de-identify one patient's report into a Parquet table."""
    from pathmm_pipeline.reports.stage import clean_reports

    s = CleanReportSettings.from_dict(settings)
    return clean_reports({patient: report}, out, deid=s.deid, max_chars=s.max_chars)


def merge_reports(tables: list[PathLike], out: PathLike) -> Path:
    """The per-patient cleaned tables as one cohort table."""
    from pathmm_pipeline.reports.stage import merge_clean_tables

    return merge_clean_tables(tables, out)


def embed_reports(table: PathLike, out: PathLike, settings: dict[str, Any]) -> Path:
    """Embed the cohort's cleaned reports with a registered text encoder."""
    from pathmm_pipeline.reports.stage import embed_reports as embed

    s = EmbedReportSettings.from_dict(settings)
    return embed(table, out, encoder=s.encoder, pooling=s.pooling, keep_tokens=s.keep_tokens,
                 encoder_options=s.options or None, hidden_dtype=s.hidden_dtype)
