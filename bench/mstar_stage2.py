"""mSTAR stage-2 (self-taught patch encoder) step time and peak memory against the number of tiles per step,
side by side in one run; each configuration in its own process.

A step: teacher forward (no grad) of the tiles, the frozen stage-1 aggregator on the teacher's features, the
student forward + backward in chunks of ``--batch`` tiles, AdamW, and the EMA update of the teacher
(:class:`pathmm_pipeline.training.self_taught.SelfTaughtTrainer`). Random uint8 tiles (the cost does not depend on
the pixels), the stage-1 aggregator at the demo size on the encoder's feature width.

    python bench/mstar_stage2.py [--encoders vit_tiny_test efficientnet_lite0] [--tiles 16 64 256] [--device cuda]
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


def measure(encoder: str, tiles: int, batch: int, steps: int, device: str, threads: int) -> dict:
    import torch

    from pathmm_pipeline.encoders import get_encoder_spec, load_encoder
    from pathmm_pipeline.models import InputDims, TaskSpec, build_model
    from pathmm_pipeline.training.self_taught import SelfTaughtConfig, SelfTaughtTrainer

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    spec = get_encoder_spec(encoder)
    weights = "default" if spec.default_weights else None
    student = load_encoder(encoder, weights).model
    aggregator = build_model("mstar", InputDims(wsi=spec.embed_dim, report=384), TaskSpec.survival(4), dim=128,
                             proj_dim=64)
    trainer = SelfTaughtTrainer(student, aggregator, spec, SelfTaughtConfig(batch_size=batch, progress=False),
                                device)
    x = torch.randint(0, 255, (tiles, 3, spec.input_size, spec.input_size), dtype=torch.uint8)

    def step() -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        trainer.step(x)
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    step()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = [step() for _ in range(steps)]
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"encoder": encoder, "tiles": tiles, "device": device, "seconds_per_step": statistics.median(times),
            "tiles_per_s": tiles / statistics.median(times), "peak_mb": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoders", nargs="+", default=["vit_tiny_test", "efficientnet_lite0"])
    parser.add_argument("--tiles", nargs="+", type=int, default=[16, 64, 256])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, default=REPO / ".cache" / "bench" / "mstar_stage2.json")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]), args.batch, args.steps, args.device, args.threads)))
        return
    rows = []
    print(f"mSTAR stage-2 step (median of {args.steps}), chunks of {args.batch} tiles, {args.device}")
    for encoder in args.encoders:
        for tiles in args.tiles:
            proc = subprocess.run([sys.executable, __file__, "--one", encoder, str(tiles), "--batch", str(args.batch),
                                   "--steps", str(args.steps), "--device", args.device, "--threads",
                                   str(args.threads)], capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"{encoder} {tiles} tiles: failed: {proc.stderr.strip().splitlines()[-1:]}", flush=True)
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            base = next((b for b in rows if b["encoder"] == encoder), r)
            r["time_ratio"] = r["seconds_per_step"] / base["seconds_per_step"]
            rows.append(r)
            print(f"{encoder:18s} {tiles:5d} tiles/step  {r['seconds_per_step']:8.3f} s/step "
                  f"(x{r['time_ratio']:6.2f})  {r['tiles_per_s']:8.1f} tiles/s  peak {r['peak_mb']:8.0f} MB",
                  flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
