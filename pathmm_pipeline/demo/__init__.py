"""The offline demo cohort: real TCGA patients with composed H&E slides, reports and a planted signal."""

from .cohort import build_demo_cohort
from .source import ensure_source_slide

__all__ = ["build_demo_cohort", "ensure_source_slide"]
