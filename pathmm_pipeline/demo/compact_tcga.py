"""Build the compact TCGA tables committed under ``pathmm_pipeline/data/tcga`` from the SurvPath release.

Run once by a maintainer (``python -m pathmm_pipeline.demo.compact_tcga SOURCE_DIR``); users only read the
outputs through :mod:`pathmm_pipeline.demo.tcga`. Per cohort: one clinical row per case (slide metadata and
clinical fields merged), the expression matrix (patients x genes, float32, zstd Parquet) and the published
5-fold split CSVs copied byte for byte. The pathway tables are the published CSVs, gzipped.
"""

from __future__ import annotations

import argparse
import gzip
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pathmm_pipeline.core.atomic import atomic_path, write_bytes_atomic
from pathmm_pipeline.core.data import TCGA_DATA

log = logging.getLogger(__name__)

COHORTS = ("blca", "stad")
CLINICAL_COLUMNS = (
    "case_id", "age", "site", "survival_months", "survival_months_dss", "survival_months_pfi", "censorship",
    "censorship_dss", "censorship_pfi", "is_female", "oncotree_code", "stage", "grade", "subtype",
)
PATHWAY_FILES = ("hallmarks_comps", "hallmarks_signatures", "xena_comps", "xena_signatures", "gene_families_6")
DEFAULT_OUT = TCGA_DATA


def _write_parquet(frame: pd.DataFrame, path: Path, float_split: bool = False) -> None:
    # no pandas schema metadata and no statistics: with 1,577 gene columns they would dominate the file
    table = pa.Table.from_pandas(frame, preserve_index=False).replace_schema_metadata(None)
    split = [f.name for f in table.schema if pa.types.is_floating(f.type)] if float_split else False
    with atomic_path(path, use_scratch=False) as tmp:
        pq.write_table(table, tmp, compression="zstd", compression_level=19, use_byte_stream_split=split,
                       use_dictionary=not float_split, write_statistics=False)


def clinical_table(cohort_dir: Path) -> pd.DataFrame:
    """One row per case: the slide metadata (survival, age, site, sex) with stage, grade and subtype."""
    meta = pd.read_csv(cohort_dir / "metadata.csv", index_col=0)
    clin = pd.read_csv(cohort_dir / "clinical.csv", index_col=0).drop_duplicates("case_id")
    meta = meta.drop(columns=["slide_id", "train"]).drop_duplicates("case_id")
    merged = meta.merge(clin, on="case_id", how="left", validate="one_to_one")
    merged["age"] = merged["age"].astype("float64")
    merged["is_female"] = merged["is_female"].astype("float64")
    for col in ("censorship", "censorship_dss", "censorship_pfi"):
        merged[col] = merged[col].astype("int8")
    return merged.loc[:, list(CLINICAL_COLUMNS)].sort_values("case_id").reset_index(drop=True)


def expression_table(cohort_dir: Path) -> pd.DataFrame:
    """Patients x genes Xena log2 expression as float32, with the case id as the first column."""
    rna = pd.read_csv(cohort_dir / "rna_xena.csv", index_col=0).astype(np.float32)
    rna.index.name = "case_id"
    return rna.sort_index().reset_index()


def compact_tcga(source: Path, out: Path = DEFAULT_OUT) -> list[Path]:
    """Write the compact tables from the SurvPath release folder ``source`` into ``out``; return their paths."""
    written: list[Path] = []
    for cohort in COHORTS:
        cdir = source / cohort
        path = out / f"{cohort}_clinical.parquet"
        _write_parquet(clinical_table(cdir), path)
        written.append(path)
        path = out / f"{cohort}_expression.parquet"
        _write_parquet(expression_table(cdir), path, float_split=True)
        written.append(path)
        for split in sorted((cdir / "splits_5fold").glob("splits_*.csv")):
            path = out / cohort / "splits_5fold" / split.name
            written.append(write_bytes_atomic(path, split.read_bytes()))
    for name in PATHWAY_FILES:
        raw = (source / "pathways" / f"{name}.csv").read_bytes()
        path = out / "pathways" / f"{name}.csv.gz"
        written.append(write_bytes_atomic(path, gzip.compress(raw, compresslevel=9, mtime=0)))
    total = sum(p.stat().st_size for p in written)
    log.info("wrote %d files, %.2f MB, into %s", len(written), total / 1e6, out)
    return written


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: ``python -m pathmm_pipeline.demo.compact_tcga SOURCE [--out DIR]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="the SurvPath TCGA folder (blca/, stad/, pathways/)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    compact_tcga(args.source, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
