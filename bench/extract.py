"""Feature-extraction throughput against its two floors, measured side by side in one run.

For each encoder: the pipeline (``extract_features``: decode in DataLoader workers + forward) against
(a) the bare model forward on pre-made tensors of the same tiles (compute floor) and
(b) the bare decode of the same tiles through the same DataLoader (I/O floor).
Prints tiles/s and the ratio pipeline / min(floors): 1.0 means the pipeline is as fast as its slower floor.
On a CUDA machine it also runs a UNI-size ViT-L/16 (random weights: same cost) in float16 and bfloat16.

    python bench/extract.py [--encoders efficientnet_lite0] [--tiles 512] [--repeats 3] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


def make_tiles(work: Path, n_tiles: int) -> tuple[Path, Path]:
    """A real-texture slide large enough for ``n_tiles`` tissue tiles, segmented and tiled."""
    import os

    from conftest import compose

    from pathmm_pipeline.preprocess.segmentation import SegmentationSettings, segment_slide
    from pathmm_pipeline.preprocess.slides import open_slide
    from pathmm_pipeline.preprocess.slidewriter import write_pyramidal_tiff
    from pathmm_pipeline.preprocess.tiling import TilingSettings, tile_slide

    source = os.environ.get("PATHMM_SOURCE_SLIDE")
    if not source:
        from pathmm_pipeline.demo.source import ensure_source_slide

        source = ensure_source_slide(REPO / ".cache" / "pathmm")
    with open_slide(source) as reader:
        he = reader.read_region((0, 0), 0, reader.info.dimensions)
    side = int(256 * np.sqrt(n_tiles / 0.3)) // 256 * 256 + 512
    rgb, _ = compose(he, (side, side), seed=7)
    slide = write_pyramidal_tiff(work / "bench.svs", rgb, mpp=0.5)
    segment_slide(slide, work / "seg.zarr", work / "seg.geojson", work / "seg.png", SegmentationSettings())
    tile_slide(slide, work / "seg.zarr", work / "tiles.zarr", TilingSettings())
    return slide, work / "tiles.zarr"


def limit_tiles(tiles_store: Path, n: int, work: Path) -> Path:
    """A copy of the tile store keeping its first ``n`` tiles."""
    from pathmm_pipeline.core.stores import ArraySpec, open_store, write_store

    group = open_store(tiles_store)
    attrs = dict(group.attrs)
    coords = np.asarray(group["coords"][...])[:n]
    frac = np.asarray(group["tissue_fraction"][...])[:n]
    attrs["n_tiles"] = int(len(coords))
    record = attrs.pop("provenance")
    out = work / f"tiles_{n}.zarr"
    write_store(out, {"coords": ArraySpec(coords, ("tile", "xy")), "tissue_fraction": ArraySpec(frac, ("tile",))},
                attrs, record)
    return out


def time_decode(slide: Path, tiles_store: Path, settings, input_size: int, interpolation: str) -> float:
    from pathmm_pipeline.preprocess.features import TileDataset, make_loader
    from pathmm_pipeline.preprocess.tiling import load_tiles

    tiles = load_tiles(tiles_store)
    dataset = TileDataset(slide, tiles.geometry, tiles.coords, input_size, interpolation)
    start = time.perf_counter()
    count = sum(len(b) for b in make_loader(dataset, settings, torch.device("cpu")))
    return count / (time.perf_counter() - start)


def time_forward(encoder, device: torch.device, n: int, batch_size: int, channels_last: bool = False) -> float:
    from pathmm_pipeline.preprocess.features import FeatureExtractor

    extractor = FeatureExtractor(encoder, device, channels_last=channels_last)
    size = encoder.spec.input_size
    batches = [torch.randint(0, 255, (min(batch_size, n - i), 3, size, size), dtype=torch.uint8)
               for i in range(0, n, batch_size)]
    extractor(batches[0])  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for batch in batches:
        extractor(batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - start)


def time_pipeline(slide: Path, tiles_store: Path, out: Path, settings) -> float:
    from pathmm_pipeline.preprocess.features import extract_features

    start = time.perf_counter()
    n = extract_features(slide, tiles_store, out, settings)
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoders", nargs="+", default=["efficientnet_lite0"])
    parser.add_argument("--tiles", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--gpu-tiles", type=int, default=4096)
    parser.add_argument("--device", default="cpu", help="device of the pipeline and forward timings (cpu, cuda)")
    parser.add_argument("--json", type=Path, default=REPO / ".cache" / "bench" / "extract.json")
    args = parser.parse_args()

    from pathmm_pipeline.encoders import load_encoder
    from pathmm_pipeline.preprocess.features import ExtractionSettings

    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        slide, tiles_all = make_tiles(work, args.tiles)
        tiles_store = limit_tiles(tiles_all, args.tiles, work)
        from pathmm_pipeline.preprocess.tiling import load_tiles

        n = len(load_tiles(tiles_store).coords)  # the slide may hold fewer tissue tiles than asked for
        for name in args.encoders:
            settings = ExtractionSettings(encoder=name, batch_size=args.batch_size, num_workers=args.workers,
                                          device=args.device, threads=args.threads)
            encoder = load_encoder(name, "default")
            spec = encoder.spec
            samples = {"pipeline": [], "forward": [], "decode": []}
            for r in range(args.repeats):  # interleaved, so drifting machine load hits all three alike
                samples["decode"].append(time_decode(slide, tiles_store, settings, spec.input_size, spec.interpolation))
                samples["forward"].append(time_forward(encoder, torch.device(args.device), n, args.batch_size))
                samples["pipeline"].append(time_pipeline(slide, tiles_store, work / f"{name}_{r}.zarr", settings))
            med = {k: statistics.median(v) for k, v in samples.items()}
            floor = min(med["forward"], med["decode"])
            rows.append({"encoder": name, "device": args.device, "tiles": n,
                         **{f"{k}_tiles_s": v for k, v in med.items()},
                         "pipeline_vs_slower_floor": med["pipeline"] / floor,
                         "pipeline_vs_forward": med["pipeline"] / med["forward"],
                         "pipeline_vs_decode": med["pipeline"] / med["decode"]})
        if torch.cuda.is_available():
            device = torch.device("cuda")
            for precision in ("float16", "bfloat16"):
                encoder = load_encoder("uni", None)
                encoder.spec = replace(encoder.spec, precision=precision)
                fwd = time_forward(encoder, device, args.gpu_tiles, 256, channels_last=False)
                rows.append({"encoder": f"uni(ViT-L/16, random weights) {precision}", "device": "cuda",
                             "tiles": args.gpu_tiles, "forward_tiles_s": fwd})
    print(f"{'encoder':40s} {'device':6s} {'tiles':>6s} {'pipeline/s':>11s} {'forward/s':>10s} {'decode/s':>9s} "
          f"{'pipe/floor':>10s}")
    for row in rows:
        print(f"{row['encoder']:40s} {row['device']:6s} {row['tiles']:6d} "
              f"{row.get('pipeline_tiles_s', float('nan')):11.1f} "
              f"{row['forward_tiles_s']:10.1f} {row.get('decode_tiles_s', float('nan')):9.1f} "
              f"{row.get('pipeline_vs_slower_floor', float('nan')):10.3f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
