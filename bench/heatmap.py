"""Seconds per slide of the heatmap stage's work on one slide, at realistic bag sizes: attention (the model's own
weights, one eval forward pass), contribution (gradient x input: one forward and one backward to the input), and
rendering (the two PNG overlays on a 1,024 px QC thumbnail, the QuPath GeoJSON of every tile, and encoding them).

Models at trained size on random 1,024-d features (UNI's width): ABMIL with SurvPath's 256/256 sizes and TransMIL
at its defaults (what ``abmil_survpath_protocol`` and ``transmil`` train). The tile crops (``top_k_tiles`` reads
from the slide) are left out: 16 tile reads, milliseconds beside the rest. The slide's tiles sit on a square grid
of 256 px tiles at 0.5 um/px. Each size is measured ``--repeats`` times after one untimed warm-up; the median is
printed, with the ratio to the 45-60 minutes per slide users report for CLAM's heatmap script (mahmoodlab/CLAM
#298), a peer figure from their tracker, not measured here.

    python bench/heatmap.py [--tiles 10000 50000] [--models abmil transmil] [--repeats 3] [--threads 2]
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

D_WSI, TILE_PX = 1024, 512  # feature width; tile side in level-0 px (256 px at 0.5 um/px from a 0.25 um/px scan)
OPTIONS = {"abmil": {"hidden_dim": 256, "attn_dim": 256, "rho_dim": 256}, "transmil": {}}
PEER_SECONDS = (45 * 60, 60 * 60)  # CLAM #298: 45-60 min per slide


def one_slide(model, n: int, seed: int) -> dict[str, float]:
    import numpy as np

    from pathmm_pipeline.interpret.heatmap import slide_input, tile_weights
    from pathmm_pipeline.interpret.render import overlay, tiles_geojson, write_png

    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(n)))
    cells = rng.permutation(side * side)[:n]
    coords = np.stack([cells % side, cells // side], 1).astype(np.int64) * TILE_PX
    features = rng.normal(size=(n, D_WSI)).astype(np.float32)
    thumb = np.full((1024, 1024, 3), 235, np.uint8)
    scale = (side * TILE_PX / 1024, side * TILE_PX / 1024)
    start = time.perf_counter()
    weights = tile_weights(model, slide_input(features, coords))
    t_weights = time.perf_counter()
    out = Path(REPO / ".cache" / "bench" / "heatmap")
    out.mkdir(parents=True, exist_ok=True)
    write_png(out / "attention.png", overlay(thumb, coords, TILE_PX, weights.attention, scale, "sequential", "a"))
    write_png(out / "contribution.png", overlay(thumb, coords, TILE_PX, weights.contribution, scale, "diverging", "c"))
    geo = tiles_geojson("bench", coords, TILE_PX, {"attention": weights.attention,
                                                   "contribution": weights.contribution}, "attention")
    (out / "tiles.geojson").write_text(json.dumps(geo))
    end = time.perf_counter()
    return {"attention_s": weights.attention_seconds, "contribution_s": weights.contribution_seconds,
            "render_s": end - t_weights, "total_s": end - start}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiles", type=int, nargs="+", default=[10000, 50000])
    parser.add_argument("--models", nargs="+", default=list(OPTIONS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch

    from pathmm_pipeline.models import InputDims, TaskSpec, build_model

    torch.set_num_threads(args.threads)
    rows = []
    for name in args.models:
        torch.manual_seed(0)
        model = build_model(name, InputDims(wsi=D_WSI), TaskSpec.survival(4), **OPTIONS.get(name, {})).eval()
        for n in args.tiles:
            one_slide(model, min(n, 2000), seed=99)  # warm-up
            runs = [one_slide(model, n, seed=r) for r in range(args.repeats)]
            row = {"model": name, "tiles": n, **{k: statistics.median(r[k] for r in runs) for k in runs[0]}}
            row["vs_peer"] = f"{PEER_SECONDS[0] / row['total_s']:.0f}-{PEER_SECONDS[1] / row['total_s']:.0f}x"
            rows.append(row)
            print(f"{name:9s} {n:6d} tiles: attention {row['attention_s']:6.2f} s, contribution "
                  f"{row['contribution_s']:6.2f} s, render {row['render_s']:6.2f} s, total {row['total_s']:6.2f} s "
                  f"per slide ({row['vs_peer']} faster than CLAM's 45-60 min, #298)", flush=True)
    for name in args.models:
        mine = {r["tiles"]: r["total_s"] for r in rows if r["model"] == name}
        if len(mine) > 1:
            small, large = min(mine), max(mine)
            print(f"{name}: {large} / {small} tiles: {mine[large] / mine[small]:.2f}x the time for "
                  f"{large / small:.1f}x the tiles")
    out = REPO / ".cache" / "bench" / "heatmap.json"
    out.write_text(json.dumps({"threads": args.threads, "rows": rows}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
