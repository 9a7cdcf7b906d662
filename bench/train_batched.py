"""Training epochs with one patient per forward pass against padded patient batches (``batch_tiles``), on the CPU
and on CUDA, side by side in one run: seconds per epoch for ABMIL, TransMIL, ALTER and MICE at several bag sizes.

An epoch is ``--patients`` synthetic patients (1,024-d patch features, UNI's width; bags drawn between half
and the whole of the nominal size, so batches carry real padding; MICE and ALTER also get expression and a
report) in accumulation windows of ``--window``: forward, the discrete-time survival NLL, backward, one AdamW
step per window -- the fine-tuning loop's step (:func:`pathmm_pipeline.training.finetune._window_step` without
the cohort). The first epoch warms up and is not timed; the median of ``--epochs`` timed epochs is printed.
Ratios: batched / loop on each device, and CUDA / CPU for each mode.

    python bench/train_batched.py [--models abmil transmil alter mice] [--bags 1024 4096 16384]
        [--devices cpu cuda] [--threads 16] [--patients 16] [--window 8] [--batch-tiles 65536]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

#: the models' default sizes, except ALTER's regions (its default 512 regions at 16,384 tiles)
OPTIONS: dict[str, dict] = {"abmil": {}, "transmil": {}, "alter": {}, "mice": {}}
D_WSI, N_GENES, D_TEXT, N_BINS = 1024, 512, 384, 4


def _patients(name: str, n: int, bag: int, seed: int) -> list:
    import torch

    from pathmm_pipeline.models import PatientInput

    g = torch.Generator().manual_seed(seed)
    multimodal = name in ("alter", "mice")
    out = []
    for i in range(n):
        size = int(torch.randint(bag // 2, bag + 1, (1,), generator=g))
        side = int(size ** 0.5) + 2
        cells = torch.randperm(side * side, generator=g)[:size]
        out.append(PatientInput(
            wsi=torch.randn(size, D_WSI, generator=g), wsi_coords=torch.stack([cells % side, cells // side], 1) * 512.0,
            genes=torch.randn(N_GENES, generator=g) if multimodal else None,
            report_tokens=torch.randn(32, D_TEXT, generator=g) if multimodal else None, cancer_type=i % 2))
    return out


def epoch_seconds(name: str, device: str, bag: int, batch_tiles: int | None, args: argparse.Namespace) -> float:
    """The median seconds of a training epoch (after one untimed warm-up epoch)."""
    import torch

    from pathmm_pipeline.models import InputDims, TaskSpec, build_model
    from pathmm_pipeline.models.losses import nll_survival_loss
    from pathmm_pipeline.training.batching import bag_size, padded_batches

    torch.manual_seed(0)
    members = tuple(tuple(range(p * 32, p * 32 + 32)) for p in range(N_GENES // 32))
    dims = InputDims(wsi=D_WSI, genes=N_GENES, report=D_TEXT, n_cancer_types=2,
                     pathway_sizes=tuple(len(m) for m in members), pathway_members=members)
    model = build_model(name, dims, TaskSpec.survival(N_BINS), **OPTIONS[name]).to(device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    patients = [x.to(device) for x in _patients(name, args.patients, bag, seed=1)]
    bins = torch.arange(len(patients), device=device) % N_BINS
    events = (torch.arange(len(patients), device=device) % 3 != 0).long()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def epoch() -> float:
        sync()
        t0 = time.perf_counter()
        for w in range(0, len(patients), args.window):
            window = list(range(w, min(w + args.window, len(patients))))
            if batch_tiles is None:
                groups = [[i] for i in window]
            else:
                groups = [[window[j] for j in g]
                          for g in padded_batches([bag_size(patients[i]) for i in window], batch_tiles)]
            for rows in groups:
                outs = (model.forward_batch([patients[i] for i in rows]) if batch_tiles is not None
                        else [model(patients[rows[0]])])
                total = sum(nll_survival_loss(o.logits, bins[i:i + 1], events[i:i + 1])
                            + (o.extras.get("aux_loss") if o.extras.get("aux_loss") is not None else 0.0)
                            for i, o in zip(rows, outs))
                (total / len(window)).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        sync()
        return time.perf_counter() - t0

    epoch()
    return statistics.median(epoch() for _ in range(args.epochs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(OPTIONS), choices=list(OPTIONS))
    parser.add_argument("--bags", nargs="+", type=int, default=[1024, 4096, 16384])
    parser.add_argument("--devices", nargs="+", default=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=16, help="CPU threads (the issue compares with 16)")
    parser.add_argument("--patients", type=int, default=16, help="patients per epoch")
    parser.add_argument("--window", type=int, default=8, help="patients per optimiser step (grad_accum)")
    parser.add_argument("--batch-tiles", type=int, default=65536, help="padded rows per batched forward pass")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs (after one warm-up)")
    parser.add_argument("--json", type=Path, default=REPO / ".cache" / "bench" / "train_batched.json")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    devices = [d for d in args.devices if d != "cuda" or torch.cuda.is_available()]
    skipped = sorted(set(args.devices) - set(devices))
    if skipped:
        print(f"not measured (not available here): {', '.join(skipped)}")
    rows = []
    for name in args.models:
        for bag in args.bags:
            for device in devices:
                for mode, tiles in (("loop", None), ("batched", args.batch_tiles)):
                    seconds = epoch_seconds(name, device, bag, tiles, args)
                    rows.append({"model": name, "bag": bag, "device": device, "mode": mode, "epoch_s": seconds,
                                 "threads": args.threads, "patients": args.patients, "window": args.window,
                                 "batch_tiles": tiles})
                    print(f"{name:8s} bag {bag:6d} {device:4s} {mode:7s} {seconds:8.2f} s/epoch", flush=True)
    print("\nratios (seconds per epoch; < 1 is faster)")
    for name in args.models:
        for bag in args.bags:
            t = {(r["device"], r["mode"]): r["epoch_s"] for r in rows if r["model"] == name and r["bag"] == bag}
            parts = [f"{d} batched/loop {t[(d, 'batched')] / t[(d, 'loop')]:.2f}" for d in devices]
            if "cuda" in devices and "cpu" in devices:
                parts += [f"cuda/cpu loop {t[('cuda', 'loop')] / t[('cpu', 'loop')]:.3f}",
                          f"cuda batched / cpu loop {t[('cuda', 'batched')] / t[('cpu', 'loop')]:.3f}"]
            print(f"{name:8s} bag {bag:6d}: " + ", ".join(parts))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
