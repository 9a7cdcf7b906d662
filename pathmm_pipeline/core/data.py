"""Where the package's own data lives: the compact real TCGA tables and the gene-set tables (package data)."""

from __future__ import annotations

from pathlib import Path

#: ``pathmm_pipeline/data``: data files shipped inside the package (see ``data/tcga/ATTRIBUTION.md``)
PACKAGE_DATA = Path(__file__).resolve().parents[1] / "data"
#: the compact TCGA expression, clinical and gene-set tables
TCGA_DATA = PACKAGE_DATA / "tcga"
