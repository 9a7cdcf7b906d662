"""Peer timing for bench/preprocess.py: LazySlide's tissue detection + tiling, run in the peer's own venv.

Runs under the peer virtualenv's Python (``.cache/bench-venv``, built by ``bench/preprocess.py --setup-peer``),
never under the project's: it imports nothing from ``pathmm_pipeline``.

Configured as close as possible to the pipeline: tissue found at the pyramid level nearest (not coarser than)
``tissue_mpp`` um/px (8 by default), tiles of ``tile_px`` px at ``mpp`` um/px, whole tiles only (``edge=False``),
a tile kept when at most ``1 - min_tissue_fraction`` of it is background. The slide is opened with OpenSlide,
like the pipeline, and nothing is written to disk (``store=None``).

Two modes:

    python bench/_peer_lazyslide.py SLIDE [SLIDE ...]    # one JSON line per slide
    python bench/_peer_lazyslide.py --serve               # JSON requests on stdin, one JSON answer per line

In ``--serve`` mode the first line written is ``{"ready": true, "peer": ..., "versions": {...}}``; each
request is ``{"slide": PATH, ...settings}``, each answer ``{"seconds": {...}, "n_tiles": N, ...}`` or
``{"error": "..."}``. Imports happen once, before ``ready``, so they are never timed.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import warnings

DEFAULTS = {"tissue_mpp": 8.0, "tile_px": 256, "mpp": 0.5, "min_tissue_fraction": 0.5, "reader": "openslide"}


def versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": sys.version.split()[0]}
    for name in ("lazyslide", "wsidata", "openslide-python", "openslide-bin", "opencv-python-headless", "shapely",
                 "geopandas", "numpy", "numba", "torch", "spatialdata"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def pick_level(level_downsample: list[float], mpp: float, target_mpp: float) -> int:
    """The coarsest level whose mpp does not exceed ``target_mpp`` (the pipeline's rule; LazySlide has no
    resize, so it segments at that level's own mpp)."""
    best = 0
    for level, ds in enumerate(level_downsample):
        if ds * mpp <= target_mpp * (1 + 1e-3):
            best = level
    return best


def run_one(slide: str, settings: dict) -> dict:
    import lazyslide as zs
    from wsidata import open_wsi

    s = {**DEFAULTS, **settings}
    t0 = time.perf_counter()
    wsi = open_wsi(slide, store=None, reader=s["reader"])
    props = wsi.properties
    level = pick_level(list(props.level_downsample), float(props.mpp), s["tissue_mpp"])
    t1 = time.perf_counter()
    found = zs.pp.find_tissues(wsi, level=level)
    t2 = time.perf_counter()
    n_tiles = 0
    if found is not False:
        zs.pp.tile_tissues(wsi, s["tile_px"], mpp=s["mpp"], edge=False, background_filter=True,
                           background_fraction=1.0 - s["min_tissue_fraction"])
        n_tiles = int(len(wsi.shapes["tiles"])) if "tiles" in wsi.shapes else 0
    t3 = time.perf_counter()
    n_tissues = int(len(wsi.shapes["tissues"])) if "tissues" in wsi.shapes else 0
    try:
        wsi.reader.detach_reader()
    except Exception:  # older/newer wsidata: closing is best effort, it is outside the timed span anyway
        pass
    return {"slide": slide, "seconds": {"open": t1 - t0, "find_tissues": t2 - t1, "tile_tissues": t3 - t2,
                                        "total": t3 - t0},
            "n_tiles": n_tiles, "n_tissues": n_tissues, "level": level,
            "level_mpp": float(props.mpp) * float(props.level_downsample[level])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("slides", nargs="*")
    parser.add_argument("--serve", action="store_true")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)
    import lazyslide  # noqa: F401  (import once, untimed)
    import wsidata  # noqa: F401

    out = sys.stdout
    if not args.serve:
        for slide in args.slides:
            print(json.dumps(run_one(slide, {})), flush=True)
        return
    print(json.dumps({"ready": True, "peer": "lazyslide", "versions": versions()}), file=out, flush=True)
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        request = json.loads(line)
        if request.get("quit"):
            break
        try:
            answer = run_one(request.pop("slide"), request)
        except Exception as exc:  # report, keep serving
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(answer), file=out, flush=True)


if __name__ == "__main__":
    main()
