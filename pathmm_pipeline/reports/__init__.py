"""The reports stage: pathology report cleaning, de-identification and text embedding.

* :mod:`.clean` -- Unicode/whitespace normalisation, header/footer/signature/disclaimer removal, OCR repair and
  section splitting (:func:`clean_report`).
* :mod:`.deid` -- rule-based de-identification with typed tags (:func:`deidentify`).
* :mod:`.phi_eval` -- scoring any de-identifier on a corpus with annotated identifiers (:func:`score_deid`).
* :mod:`.encoders` -- a registry of local text encoders (``minilm``, ``hf_local``) with chunked embedding.
* :mod:`.stage` -- the pipeline stage functions :func:`clean_reports` (Parquet) and :func:`embed_reports` (Zarr).

Importing this package is cheap: torch and transformers are only imported when an encoder is built.
"""

from __future__ import annotations

from pathmm_pipeline.reports.clean import SECTION_KEYS, CleanReport, clean_report, split_sections
from pathmm_pipeline.reports.deid import PHI_TYPES, DeidResult, PHISpan, deidentify
from pathmm_pipeline.reports.phi_eval import DeidScore, score_deid

__all__ = ["SECTION_KEYS", "CleanReport", "clean_report", "split_sections", "PHI_TYPES", "DeidResult", "PHISpan",
           "deidentify", "DeidScore", "score_deid"]
