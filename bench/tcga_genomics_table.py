"""The real-data genomics benchmark's table: per-fold C-index mean +- sd (ddof 1) of every run, from the
evaluation folders the DAG wrote (``<results>/evaluation/folds.csv``), one column per results folder.

    .venv/bin/python bench/tcga_genomics_table.py results_tcga_blca_last results_tcga_blca_inner ...
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd


def table(results_dirs: list[str]) -> pd.DataFrame:
    columns = {}
    for folder in results_dirs:
        folds = pd.read_csv(Path(folder) / "evaluation" / "folds.csv")
        pooled = folds[(folds.metric == "c_index") & (folds.subset == "all") & (folds.cancer_type == "all")]
        stats = pooled.groupby("model").value.agg(["mean", "std", "count"])
        columns[Path(folder).name] = {m: f"{r['mean']:.3f} ± {r['std']:.3f} ({int(r['count'])})"
                                      for m, r in stats.iterrows()}
    return pd.DataFrame(columns)


if __name__ == "__main__":
    print(table(sys.argv[1:]).to_markdown() if len(sys.argv) > 1 else __doc__)
