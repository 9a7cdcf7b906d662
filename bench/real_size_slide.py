"""Segmentation, tiling and extraction of one real-size 40x slide: peak memory and time of each stage.

The slide is TCGA-like: 100,000 x 80,000 px at 0.25 um/px (AppMag 40), Aperio-layout pyramidal JPEG BigTIFF
(levels at 1, 4, 16, 64x, quality 85), about 42 % tissue with H&E-like texture
(``pathmm_pipeline.preprocess.synthetic``), written tile by tile by ``write_tiled_slide`` (no level is ever in
memory). It is made once into ``.cache/bench/real_size/`` and reused (``--regenerate`` to make it again).

Every stage runs in its own Python process (as each Snakemake rule does), which reports its wall time (imports
excluded), its RSS after the imports and its peak RSS (``VmHWM``; for extraction also the peak RSS of its
decoding workers, which are separate processes):

* ``generate``   - writing the slide (``write_synthetic_slide``), only when it is not cached;
* ``segment``    - ``segment_slide`` with config.yaml's ``segmentation:`` (open, read the level for 8 um/px,
  mask, contours, GeoJSON, QC thumbnail, mask store with provenance: a SHA-256 of the whole slide);
* ``seg floor``  - ``openslide.OpenSlide(path).read_region`` of the whole level segmentation reads: its decode
  floor (as in ``bench/preprocess.py``);
* ``tile``       - ``tile_slide`` with config.yaml's ``tiling:`` (tiling reads no pixels: its cost is the grid and
  the provenance, a second SHA-256 of the slide);
* ``sha256``     - hashing the slide file alone, the part of each stage's time that grows with the file;
* ``extract N``  - ``extract_features`` (``--encoder``, CPU, config.yaml's batch size, ``num_workers: auto``) on N
  tiles taken evenly over the slide's tile list, so the reads span the whole file; at two or more N, to show
  that memory is bounded by the batch and the prefetch, not by the slide or the tiles read;
* ``decode N``   - the decode floor of the same N tiles: the same ``TileDataset`` and ``make_loader`` (same backend,
  workers, batch, resize to the encoder's input), no forward;
* ``forward``    - the forward floor: the encoder on pre-made batches, no decoding (after each extraction);
* ``caps``       - the same slide with caps below it (``slide.max_side_px``, ``slide.max_tiles``): segmentation and
  tiling fail at once, before reading a pixel.

Ratios: extraction tiles/s / decode floor (1.0: extraction as fast as decoding its tiles) and / forward floor.
Results go to ``.cache/bench/real_size_slide.json``.

    python bench/real_size_slide.py [--size 100000x80000] [--max-tiles 500 2000] [--encoder efficientnet_lite0]
    python bench/real_size_slide.py --report [RUN.json]     # the table of an earlier run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache" / "bench"
WORK = CACHE / "real_size"
OUT_JSON = CACHE / "real_size_slide.json"
RECIPE = "v1"  # bump when the slide's content or layout changes, so a stale cached slide is not reused


def _rss_mb(field: str) -> float:
    """``VmRSS`` / ``VmHWM`` of this process in MB (from /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _pss_kb(pid: int) -> int:
    """Proportional set size of ``pid`` in kB (shared pages split among their users), 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _descendants(pid: int) -> list[int]:
    """The live descendants of ``pid`` (from /proc/<pid>/task/*/children)."""
    out: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return out
    for task in tasks:
        try:
            children = [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
        for c in children:
            out += [c, *_descendants(c)]
    return out


class TreeMemory(threading.Thread):
    """Samples the summed PSS of this process and its descendants (the decoding workers) every ``interval`` s:
    the memory the whole stage holds, pages shared after fork counted once. Its peak is a sampled lower bound."""

    def __init__(self, interval: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.interval, self.peak_kb, self.max_processes = interval, 0, 1
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            pids = [os.getpid(), *_descendants(os.getpid())]
            self.peak_kb = max(self.peak_kb, sum(_pss_kb(p) for p in pids))
            self.max_processes = max(self.max_processes, len(pids))
            self._stop_event.wait(self.interval)

    def stop(self) -> float:
        """Stop sampling; the peak in MB."""
        self._stop_event.set()
        self.join()
        return self.peak_kb / 1024


def _config() -> dict[str, Any]:
    import yaml

    return yaml.safe_load((REPO / "config.yaml").read_text())


# ----------------------------------------------------------------------------------- one stage, in a child
#: what each stage imports before its baseline RSS and its clock (each rule pays them too, untimed here)
STAGE_IMPORTS = {
    "generate": ("pathmm_pipeline.preprocess.synthetic", "pathmm_pipeline.preprocess.slidewriter", "imagecodecs"),
    "segment": ("pathmm_pipeline.preprocess.segmentation", "openslide", "tiffslide"),
    "seg_floor": ("openslide",),
    "tile": ("pathmm_pipeline.preprocess.tiling", "openslide", "tiffslide"),
    "sha256": ("pathmm_pipeline.core.provenance",),
    "caps": ("pathmm_pipeline.preprocess.tiling", "openslide", "tiffslide"),
    "extract": ("torch", "pathmm_pipeline.preprocess.features", "pathmm_pipeline.encoders", "openslide"),
    "decode": ("torch", "pathmm_pipeline.preprocess.features", "pathmm_pipeline.encoders", "openslide"),
    "forward": ("torch", "pathmm_pipeline.preprocess.features", "pathmm_pipeline.encoders"),
}


def run_stage(stage: str, job: dict[str, Any]) -> dict[str, Any]:
    """Run one stage in this process; imports first, then the timed work. Returns what it measured."""
    import importlib

    from pathmm_pipeline.preprocess.slides import SlideLimits

    for module in STAGE_IMPORTS.get(stage, ()):  # imports before the baseline and the clock
        importlib.import_module(module)
    slide = job.get("slide")
    after_imports = _rss_mb("VmRSS")
    out: dict[str, Any] = {}
    memory = TreeMemory()
    memory.start()
    start = time.perf_counter()
    if stage == "generate":
        from pathmm_pipeline.preprocess.synthetic import write_synthetic_slide

        width, height = job["size"]
        write_synthetic_slide(slide, (width, height), seed=job["seed"], quality=job["quality"], workers=job["workers"])
        out["bytes"] = os.path.getsize(slide)
    elif stage == "segment":
        from pathmm_pipeline.preprocess.segmentation import SegmentationSettings, segment_slide

        work = Path(job["work"])
        result = segment_slide(slide, work / "seg.zarr", work / "seg.geojson", work / "seg.png",
                               SegmentationSettings.from_dict(job["settings"]), backend=job["backend"])
        out.update(level_read=result.level, mask_shape=list(result.mask.shape), status=result.status,
                   tissue_mm2=result.tissue_area_um2 / 1e6, pieces=len(result.contours))
    elif stage == "seg_floor":
        import openslide

        handle = openslide.OpenSlide(slide)
        level = job["level"]
        region = handle.read_region((0, 0), level, handle.level_dimensions[level])
        out.update(level=level, level_dims=list(handle.level_dimensions[level]), mode=region.mode)
    elif stage == "tile":
        from pathmm_pipeline.preprocess.tiling import TilingSettings, tile_slide

        work = Path(job["work"])
        out["n_tiles"] = tile_slide(slide, work / "seg.zarr", work / "tiles.zarr",
                                    TilingSettings.from_dict(job["settings"]), backend=job["backend"])
    elif stage == "sha256":
        from pathmm_pipeline.core.provenance import hash_file

        out["sha256"] = hash_file(slide)
    elif stage == "extract":
        from pathmm_pipeline.core.stores import open_store
        from pathmm_pipeline.preprocess.features import ExtractionSettings, extract_features

        settings = ExtractionSettings.from_dict(job["settings"])
        n = extract_features(slide, job["tiles"], job["store"], settings, backend=job["backend"])
        attrs = open_store(job["store"]).attrs
        out.update(n_tiles=n, loop_tiles_per_s=attrs["tiles_per_second"], workers=settings.workers())
    elif stage == "decode":
        import torch

        from pathmm_pipeline.encoders import get_encoder_spec
        from pathmm_pipeline.preprocess.features import ExtractionSettings, TileDataset, make_loader
        from pathmm_pipeline.preprocess.tiling import load_tiles

        settings = ExtractionSettings.from_dict(job["settings"])
        torch.set_num_threads(settings.threads)
        spec = get_encoder_spec(settings.encoder)
        tiles = load_tiles(job["tiles"])
        dataset = TileDataset(slide, tiles.geometry, tiles.coords, spec.input_size, spec.interpolation,
                              backend=job["backend"])
        out["n_tiles"] = sum(len(batch) for batch in make_loader(dataset, settings, torch.device("cpu")))
        out["workers"] = settings.workers()
    elif stage == "forward":
        import torch

        from pathmm_pipeline.encoders import load_encoder
        from pathmm_pipeline.preprocess.features import ExtractionSettings, FeatureExtractor

        settings = ExtractionSettings.from_dict(job["settings"])
        torch.set_num_threads(settings.threads)
        encoder = load_encoder(settings.encoder, settings.weights, device="cpu")
        extractor = FeatureExtractor(encoder, torch.device("cpu"))
        size = encoder.spec.input_size
        batch = torch.randint(0, 256, (settings.batch_size, 3, size, size), dtype=torch.uint8)
        extractor(batch)  # warm-up
        start = time.perf_counter()
        for _ in range(job["batches"]):
            extractor(batch)
        out["n_tiles"] = job["batches"] * settings.batch_size
    elif stage == "caps":
        from pathmm_pipeline.core.errors import SlideTooLargeError
        from pathmm_pipeline.preprocess.segmentation import SegmentationSettings, segment_slide
        from pathmm_pipeline.preprocess.tiling import TilingSettings, tile_slide

        work = Path(job["work"])
        messages = []
        side, tiles = job["max_side_px"], job["max_tiles"]
        for name, call in (
                ("segment", lambda: segment_slide(slide, work / "cap_seg.zarr", work / "cap.geojson", work / "cap.png",
                                                  SegmentationSettings(), limits=SlideLimits(max_side_px=side))),
                ("tile", lambda: tile_slide(slide, work / "seg.zarr", work / "cap_tiles.zarr", TilingSettings(),
                                            limits=SlideLimits(max_tiles=tiles)))):
            t0 = time.perf_counter()
            try:
                call()
                messages.append({"stage": name, "failed": False})
            except SlideTooLargeError as exc:
                messages.append({"stage": name, "failed": True, "seconds": time.perf_counter() - t0,
                                 "message": str(exc)})
        out["refusals"] = messages
        out["outputs_written"] = sorted(p.name for p in work.glob("cap*"))
    else:
        raise SystemExit(f"unknown stage {stage!r}")
    out["seconds"] = time.perf_counter() - start
    out["tree_peak_pss_mb"] = memory.stop()
    out["max_processes"] = memory.max_processes
    out["loadavg_at_end"] = list(os.getloadavg())  # another process on the machine shows here
    out["rss_after_imports_mb"] = after_imports
    out["peak_rss_mb"] = _rss_mb("VmHWM")
    # decoding workers (extraction, decode floor) are children of this process, already joined; a forked worker's
    # RSS counts the pages it shares with its parent, so tree_peak_pss_mb is the memory of the two together
    out["children_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return out


def child(stage: str, job: dict[str, Any]) -> dict[str, Any]:
    """Run ``stage`` in a fresh Python process; its stderr (progress, logs) goes to ours."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--stage", stage, "--job", json.dumps(job)],
                          stdout=subprocess.PIPE, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"stage {stage} failed ({proc.returncode}); see the log above")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_seconds"] = time.perf_counter() - start
    print(f"  {stage:9s} {result['seconds']:8.1f} s  peak RSS {result['peak_rss_mb']:7.0f} MB"
          f"  (after imports {result['rss_after_imports_mb']:.0f} MB), process tree peak PSS "
          f"{result['tree_peak_pss_mb']:.0f} MB", file=sys.stderr, flush=True)
    return result


# ----------------------------------------------------------------------------------------------- the run
def subset_tiles(tiles_store: Path, n: int, out: Path) -> Path:
    """A copy of the tile store with ``n`` tiles taken evenly over its list (so reads span the whole slide)."""
    import numpy as np

    from pathmm_pipeline.core.stores import ArraySpec, open_store, write_store

    group = open_store(tiles_store)
    attrs = dict(group.attrs)
    coords = np.asarray(group["coords"][...])
    fractions = np.asarray(group["tissue_fraction"][...])
    index = np.unique(np.linspace(0, len(coords) - 1, min(n, len(coords))).round().astype(int))
    attrs["n_tiles"] = int(len(index))
    record = attrs.pop("provenance")
    write_store(out, {"coords": ArraySpec(coords[index], ("tile", "xy")),
                      "tissue_fraction": ArraySpec(fractions[index], ("tile",))}, attrs, record)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    parser.add_argument("--job", help=argparse.SUPPRESS)
    parser.add_argument("--size", default="100000x80000", help="level-0 WIDTHxHEIGHT")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quality", type=int, default=85, help="JPEG quality of the slide")
    parser.add_argument("--max-tiles", type=int, nargs="+", default=[500, 2000],
                        help="extract this many tiles, taken evenly over the slide (one run per value)")
    parser.add_argument("--encoder", default="efficientnet_lite0")
    parser.add_argument("--forward-batches", type=int, default=8)
    parser.add_argument("--backend", default=None, help="slide backend (default: config.yaml's)")
    parser.add_argument("--regenerate", action="store_true", help="write the slide again even when cached")
    parser.add_argument("--report", type=Path, nargs="?", const=OUT_JSON, default=None,
                        help="only print the table of an earlier run's JSON (default: the last run's)")
    args = parser.parse_args()
    if args.stage:
        print(json.dumps(run_stage(args.stage, json.loads(args.job))))
        return
    if args.report:
        report(json.loads(args.report.read_text()))
        return

    config = _config()
    backend = args.backend or config["slide"]["backend"]
    width, height = (int(v) for v in args.size.lower().split("x"))
    WORK.mkdir(parents=True, exist_ok=True)
    slide = WORK / f"tcga_like_{width}x{height}_s{args.seed}_q{args.quality}_{RECIPE}.svs"
    record_path = slide.with_suffix(".generate.json")
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "machine": {
        "cpus": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)), "platform": platform.platform(),
        "python": platform.python_version()}, "slide": str(slide), "size": [width, height], "backend": backend}
    print(f"slide {slide.name}", file=sys.stderr)
    made_now = args.regenerate or not slide.is_file() or not record_path.is_file()
    if made_now:
        generated = child("generate", {"slide": str(slide), "size": [width, height], "seed": args.seed,
                                       "quality": args.quality, "workers": len(os.sched_getaffinity(0))})
        record_path.write_text(json.dumps({**generated, "date": results["date"]}))
    results["generate"] = {**json.loads(record_path.read_text()), "reused": not made_now}
    results["file_bytes"] = os.path.getsize(slide)

    work = WORK / "run"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    base = {"slide": str(slide), "work": str(work), "backend": backend}
    results["segment"] = child("segment", {**base, "settings": config["segmentation"]})
    results["seg_floor"] = child("seg_floor", {**base, "level": results["segment"]["level_read"]})
    results["tile"] = child("tile", {**base, "settings": config["tiling"]})
    results["sha256"] = child("sha256", base)
    results["caps"] = child("caps", {**base, "max_side_px": max(width, height) // 2,
                                     "max_tiles": results["tile"]["n_tiles"] // 2})

    features = {k: config["features"][k] for k in ("batch_size", "num_workers", "threads", "dtype", "seed")}
    settings = {**features, "encoder": args.encoder, "device": "cpu", "decode": "cpu"}
    results["extraction_settings"] = settings
    results["extract"], results["decode"], results["forward"] = {}, {}, {}
    for n in args.max_tiles:  # each extraction between its two floors, so a busy machine shows in all three
        tiles = subset_tiles(work / "tiles.zarr", n, work / f"tiles_{n}.zarr")
        job = {**base, "tiles": str(tiles), "settings": settings}
        results["decode"][n] = child("decode", job)
        results["extract"][n] = child("extract", {**job, "store": str(work / f"features_{n}.zarr")})
        results["forward"][n] = child("forward", {**base, "settings": settings, "batches": args.forward_batches})
    OUT_JSON.parent.mkdir(parents=True, exist_ok=True)
    OUT_JSON.write_text(json.dumps(results, indent=2, default=str))
    report(results)


def report(r: dict[str, Any]) -> None:
    """Print the table of figures and ratios."""
    gen, seg, floor, tile, sha = r["generate"], r["segment"], r["seg_floor"], r["tile"], r["sha256"]
    width, height = r["size"]
    print(f"\nslide: {width:,} x {height:,} px, {r['file_bytes'] / 1e9:.2f} GB, written in {gen['seconds']:.0f} s "
          f"(peak RSS {gen['peak_rss_mb']:.0f} MB{', on ' + gen['date'] + ', reused' if gen['reused'] else ''}); "
          f"backend {r['backend']}; {r['machine']['affinity']} CPUs")
    print(f"segmentation read level {seg['level_read']} {floor['level_dims']}; {tile['n_tiles']:,} tiles; "
          f"SHA-256 of the slide alone {sha['seconds']:.1f} s")
    print("\n| stage | tiles | seconds | peak RSS MB (after imports) | process tree peak PSS MB | tiles/s | "
          "/ decode floor | / forward floor | load (1 min) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")

    def row(name: str, m: dict[str, Any], tiles: str = "", rate: str = "", dec: str = "", fwd: str = "") -> None:
        tree = f"{m['tree_peak_pss_mb']:.0f}" + (f" ({m['max_processes']} processes)" if m["max_processes"] > 1 else "")
        print(f"| {name} | {tiles} | {m['seconds']:.2f} | {m['peak_rss_mb']:.0f} ({m['rss_after_imports_mb']:.0f}) "
              f"| {tree} | {rate} | {dec} | {fwd} | {m['loadavg_at_end'][0]:.1f} |")

    row("segment", seg, dec=f"{seg['seconds'] / floor['seconds']:.2f} x the floor's time")
    row("seg floor (read level)", floor)
    row("tile", tile, tiles=f"{tile['n_tiles']:,}")
    row("sha256 of the slide", sha)
    for n in r["extract"]:
        ext, dec, fwd = r["extract"][n], r["decode"][n], r["forward"][n]
        floor_rate = dec["n_tiles"] / dec["seconds"]
        forward = fwd["n_tiles"] / fwd["seconds"]
        rate = ext["n_tiles"] / ext["seconds"]
        row(f"decode {n}", dec, tiles=str(dec["n_tiles"]), rate=f"{floor_rate:.1f}")
        loop = ext["loop_tiles_per_s"]
        row(f"extract {n}", ext, tiles=str(ext["n_tiles"]), rate=f"{rate:.1f} (loop {loop:.1f})",
            dec=f"{rate / floor_rate:.2f} (loop {loop / floor_rate:.2f})",
            fwd=f"{rate / forward:.2f} (loop {loop / forward:.2f})")
        row(f"forward floor {n}", fwd, tiles=str(fwd["n_tiles"]), rate=f"{forward:.1f}")
    for refusal in r["caps"]["refusals"]:
        print(f"\ncap, {refusal['stage']}: " + (f"refused in {refusal['seconds'] * 1e3:.0f} ms: {refusal['message']}"
                                              if refusal["failed"] else "NOT refused"))
    print(f"outputs written by the refused stages: {r['caps']['outputs_written'] or 'none'}")
    print(f"\nresults: {OUT_JSON}")


if __name__ == "__main__":
    main()
