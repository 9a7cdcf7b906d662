"""The genomics stage: expression matrices in, one audited cohort Zarr store out.

* :mod:`.io` reads an expression matrix (CSV, TSV or Parquet, either orientation) into a patients x genes
  log-scale table, with every decision (orientation, scale, sample resolution, duplicates) recorded.
* :mod:`.normalize` holds :class:`GeneScaler`, fitted per fold on training patients only.
* :mod:`.genesets` reads gene-set collections (GMT, membership tables, column-per-set tables, built-ins).
* :mod:`.tokens` turns a scaled matrix and gene sets into per-pathway gene vectors and pathway scores.
* :mod:`.stage` writes the cohort store (:func:`build_genomics_store`) and reads it back (:func:`load_genomics`).
"""

from __future__ import annotations

from pathmm_pipeline.genomics.genesets import (
    FilteredCollection,
    GeneSetCollection,
    filter_collection,
    load_collection,
    read_gmt,
)
from pathmm_pipeline.genomics.io import ExpressionMatrix, read_expression
from pathmm_pipeline.genomics.normalize import GeneScaler
from pathmm_pipeline.genomics.stage import GenomicsData, GenomicsSettings, build_genomics_store, load_genomics
from pathmm_pipeline.genomics.tokens import family_vectors, mean_pathway_scores, pathway_gene_vectors, rank_scores

__all__ = [
    "ExpressionMatrix", "FilteredCollection", "GeneScaler", "GeneSetCollection", "GenomicsData",
    "GenomicsSettings", "build_genomics_store", "family_vectors", "filter_collection", "load_collection",
    "load_genomics", "mean_pathway_scores", "pathway_gene_vectors", "rank_scores", "read_expression", "read_gmt",
]
