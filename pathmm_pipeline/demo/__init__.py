"""The offline demo cohort: real TCGA patients with composed H&E slides, reports and a planted signal."""

from pathmm_pipeline.demo.cohort import build_demo_cohort
from pathmm_pipeline.demo.source import ensure_source_slide

__all__ = ["build_demo_cohort", "ensure_source_slide"]
