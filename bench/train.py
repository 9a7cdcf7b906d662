"""Training cost per model against bag size: seconds per epoch and peak memory, printed as a table.

Each (model, bag size) runs in its own process (so the peak resident memory is that configuration's own): an
"epoch" of ``--patients`` patients, each a forward and backward pass with all modalities present, at the
published model dimensions and the demo's input sizes (EfficientNet-Lite0 1280-d patches, the 1,577 Xena genes,
SurvPath's 331 pathways and MCAT's 6 families measured on them, 384-d MiniLM report embeddings).

    python bench/train.py [--models abmil transmil ...] [--bags 256 1024 4096] [--patients 8]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODELS = ["abmil", "transmil", "snn", "mcat", "survpath", "late_fusion_concat", "late_fusion_kronecker"]


def measure(model_name: str, bag: int, patients: int, threads: int) -> dict:
    """One configuration, in this process: seconds per epoch and peak RSS."""
    import numpy as np
    import torch

    from pathmm_pipeline.demo.tcga import load_expression
    from pathmm_pipeline.genomics.genesets import builtin_collection, filter_collection
    from pathmm_pipeline.models import InputDims, PatientInput, TaskSpec, build_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    genes = list(load_expression("blca").columns)
    pathways = filter_collection(builtin_collection("survpath"), genes).indices(genes)
    families = filter_collection(builtin_collection("mcat_families"), genes).indices(genes)
    dims = InputDims(wsi=1280, genes=len(genes), pathway_sizes=tuple(len(p) for p in pathways),
                     family_sizes=tuple(len(f) for f in families), report=384)
    model = build_model(model_name, dims, TaskSpec("survival", 4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    gene_values = torch.randn(len(genes))

    def patient() -> PatientInput:
        return PatientInput(wsi=torch.randn(bag, 1280), wsi_coords=torch.randint(0, 50000, (bag, 2)).float(),
                            pathways=[gene_values[torch.as_tensor(np.asarray(p))] for p in pathways],
                            families=[gene_values[torch.as_tensor(np.asarray(f))] for f in families],
                            genes=gene_values, report=torch.randn(384))

    inputs = [patient() for _ in range(patients)]
    model.train()
    model(inputs[0]).logits.sum().backward()  # warm-up
    start = time.perf_counter()
    for x in inputs:
        loss = model(x).logits.float().pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - start
    n_params = sum(p.numel() for p in model.parameters())
    return {"model": model_name, "bag": bag, "seconds_per_epoch": seconds, "seconds_per_patient": seconds / patients,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "params": n_params}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--bags", nargs="+", type=int, default=[256, 1024, 4096])
    parser.add_argument("--patients", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, default=REPO / ".cache" / "bench" / "train.json")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]), args.patients, args.threads)))
        return
    rows = []
    for name in args.models:
        for bag in args.bags:
            proc = subprocess.run([sys.executable, __file__, "--one", name, str(bag), "--patients",
                                   str(args.patients), "--threads", str(args.threads)],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"{name} bag {bag}: failed: {proc.stderr.strip().splitlines()[-1:]}")
                continue
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"{r['model']:22s} bag {r['bag']:5d}  {r['seconds_per_epoch']:8.2f} s/epoch "
                  f"({r['seconds_per_patient'] * 1000:7.1f} ms/patient)  peak {r['peak_rss_mb']:7.0f} MB  "
                  f"{r['params'] / 1e6:6.2f} M params", flush=True)
    print("\ngrowth from the smallest to the largest bag (time x, memory x):")
    for name in args.models:
        mine = [r for r in rows if r["model"] == name]
        if len(mine) >= 2:
            a, b = mine[0], mine[-1]
            print(f"  {name:22s} time x{b['seconds_per_epoch'] / a['seconds_per_epoch']:5.2f}  "
                  f"memory x{b['peak_rss_mb'] / a['peak_rss_mb']:5.2f}  (bag {a['bag']} -> {b['bag']})")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
