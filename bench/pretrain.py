"""Pretraining step time and peak memory of the multimodal methods (ALTER, MICE, ModalTune's tuning, mSTAR
stage 1) against bag size and the number of present
modalities, side by side in one run.

Each (model, bag size, modalities) configuration runs in its own process, so its peak memory is its own: peak
resident memory on CPU (``ru_maxrss``), peak allocated GPU memory on CUDA. A step is one
``pretraining_loss`` on a batch of ``--batch`` patients, backward and an AdamW step; the median over
``--steps`` steps after one warm-up is reported. Inputs have the demo's sizes (1,280-d EfficientNet-Lite0
patches with grid coordinates, the 1,577 Xena genes with SurvPath's 331 pathways, 200 MiniLM report tokens
of 384-d), random values (the cost does not depend on them). Models at the demo sizes of config.yaml
(``--size demo``) or their defaults (``--size default``: ALTER 256-d, 2 layers; MICE 128-d).

    python bench/pretrain.py [--models alter mice] [--bags 256 1024 4096] [--device cpu|cuda]

Printed ratios are relative to the smallest configuration of the same model (one modality, smallest bag).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODALITY_SETS = {"1 (wsi)": ("wsi",), "2 (wsi+genomics)": ("wsi", "genomics"),
                 "3 (all)": ("wsi", "genomics", "report")}
SIZES = {
    "demo": {"alter": {"dim": 64, "layers": 1, "heads": 4, "n_features": 32, "max_regions": 128},
             "mice": {"dim": 64}, "modaltune": {"n_pathway_tokens": 16, "gene_dim": 64, "mixer_depth": 1},
             "mstar": {"dim": 128, "proj_dim": 64}},
    "default": {"alter": {}, "mice": {}, "modaltune": {}, "mstar": {}},
}


def measure(model_name: str, bag: int, modalities: str, batch: int, steps: int, size: str, device: str,
            threads: int) -> dict:
    """One configuration in this process."""
    import numpy as np
    import torch

    from pathmm_pipeline.demo.tcga import load_expression
    from pathmm_pipeline.genomics.genesets import builtin_collection, filter_collection
    from pathmm_pipeline.models import InputDims, PatientInput, PretrainBatch, TaskSpec, build_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    genes = list(load_expression("blca").columns)
    pathways = filter_collection(builtin_collection("survpath"), genes).indices(genes)
    dims = InputDims(wsi=1280, genes=len(genes), pathway_sizes=tuple(len(p) for p in pathways), report=384,
                     n_cancer_types=2, pathway_members=tuple(tuple(int(i) for i in p) for p in pathways))
    model = build_model(model_name, dims, TaskSpec("survival", 4), **SIZES[size][model_name]).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    keep = MODALITY_SETS[modalities]
    side = int(np.ceil(np.sqrt(bag)))

    def patient(i: int) -> PatientInput:
        grid = torch.stack(torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij"), -1).reshape(-1, 2)
        values = torch.randn(len(genes))
        fields = {"wsi": torch.randn(bag, 1280), "wsi_coords": grid[:bag] * 256, "genes": values,
                  "pathways": [values[torch.as_tensor(np.asarray(p))] for p in pathways],
                  "report_tokens": torch.randn(200, 384), "report": torch.randn(384)}
        x = PatientInput(**fields, cancer_type=i % 2)
        drop = [m for m in ("wsi", "genomics", "report") if m not in keep]
        return x.without(*drop).to(device)

    inputs = [patient(i) for i in range(batch)]
    pretrain_batch = PretrainBatch(inputs, torch.arange(batch, device=device) % 2,
                                   torch.arange(batch, device=device) % 4, torch.ones(batch, device=device))
    model.train()

    def step() -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = model.pretraining_loss(pretrain_batch)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    step()  # warm-up
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = [step() for _ in range(steps)]
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"model": model_name, "bag": bag, "modalities": modalities, "batch": batch, "size": size,
            "device": device, "seconds_per_step": statistics.median(times), "peak_mb": peak,
            "params": sum(p.numel() for p in model.parameters())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["alter", "mice"])
    parser.add_argument("--bags", nargs="+", type=int, default=[256, 1024, 4096])
    parser.add_argument("--modalities", nargs="+", default=list(MODALITY_SETS), choices=list(MODALITY_SETS))
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--size", choices=list(SIZES), default="demo")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, default=REPO / ".cache" / "bench" / "pretrain.json")
    args = parser.parse_args()
    if args.one:
        name, bag, mods = args.one
        print(json.dumps(measure(name, int(bag), mods, args.batch, args.steps, args.size, args.device,
                                 args.threads)))
        return
    rows = []
    print(f"pretraining step (batch {args.batch}, median of {args.steps}), {args.size} size, {args.device}")
    for name in args.models:
        for mods in args.modalities:
            for bag in args.bags:
                proc = subprocess.run([sys.executable, __file__, "--one", name, str(bag), mods, "--batch",
                                       str(args.batch), "--steps", str(args.steps), "--size", args.size,
                                       "--device", args.device, "--threads", str(args.threads)],
                                      capture_output=True, text=True)
                if proc.returncode != 0:
                    print(f"{name} bag {bag} {mods}: failed: {proc.stderr.strip().splitlines()[-1:]}", flush=True)
                    continue
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                base = next((b for b in rows if b["model"] == name), r)
                r["time_ratio"] = r["seconds_per_step"] / base["seconds_per_step"]
                r["memory_ratio"] = r["peak_mb"] / base["peak_mb"]
                rows.append(r)
                print(f"{name:6s} modalities {mods:18s} bag {bag:6d}  {r['seconds_per_step'] * 1000:9.1f} ms/step "
                      f"(x{r['time_ratio']:5.2f})  peak {r['peak_mb']:8.0f} MB (x{r['memory_ratio']:4.2f})  "
                      f"{r['params'] / 1e6:5.2f} M params", flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
