"""Feature extraction counted per cohort: N slides through ``snakemake`` with the local profile, every job's
fixed cost included, against the two floors of the same encoder on the same machine, in one run.

For each encoder:

* **cohort tiles/s**: the cohort's tiles divided by the summed wall time of its extraction jobs (Snakemake's own
  ``benchmark:`` files: process start, imports, Snakefile-free CLI start, encoder build and weight load, the
  loop, the store write);
* **fixed cost per job**: a job's wall time minus its extraction loop (the store's ``seconds``), against a bare
  ``python -c "import torch, timm"`` process timed here;
* **forward floor**: the bare model forward on pre-made tensors, same batch size and threads;
* **decode floor**: the bare tile decode of the same tiles through the same DataLoader and workers.

Ratios printed: cohort / forward floor and cohort / decode floor (1.0 = the cohort runs at that floor), for
each ``features.slides_per_job`` given (default 1 and 16: one job per slide, and one job per stable bucket of up
to 16 slides with the encoder loaded once), on the same slides in the same run.

    python bench/extract_cohort.py [--slides 16] [--tiles-per-slide 96] [--encoders efficientnet_lite0]
                                   [--slides-per-job 1 16] [--cores 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from extract import make_tiles, time_decode, time_forward  # noqa: E402


def bare_import_seconds(repeats: int = 3) -> float:
    """Median wall time of a fresh ``python -c "import torch, timm"``."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import torch, timm"], check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def make_cohort(root: Path, slide: Path, n_slides: int, encoder: str, cores: int, per_job: int,
                random_weights: bool = False) -> Path:
    """``n_slides`` copies of one slide as a sample sheet, and a config that stops at the feature stores."""
    slides = root / "slides"
    slides.mkdir(parents=True)
    rows = ["patient_id,slide_id,slide_path,mpp,cancer_type,survival_time,survival_event"]
    for i in range(n_slides):
        name = f"S{i:04d}"
        shutil.copy(slide, slides / f"{name}.svs")
        rows.append(f"P{i:04d},{name},slides/{name}.svs,0.5,{'BLCA' if i % 2 else 'STAD'},{10 + i},{i % 2}")
    (root / "samplesheet.csv").write_text("\n".join(rows) + "\n")
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config.update(samplesheet=str(root / "samplesheet.csv"), results="results")
    config["training"].update(models=[], compare_encoders={})
    config["features"].update(encoders=[encoder], threads=cores, num_workers="auto", slides_per_job=per_job)
    if random_weights:  # throughput only: a published architecture without its (hub) weights
        config["encoder_weights"] = {encoder: None}
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    return root


def run_cohort(root: Path, encoder: str, n_slides: int, cores: int) -> dict[str, float]:
    """Extract every slide through snakemake (local profile): jobs, their summed wall time, tiles, loop time."""
    targets = [f"results/features/{encoder}/S{i:04d}.zarr" for i in range(n_slides)]
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--profile",
                           str(REPO / "profiles" / "local"), "--directory", str(root), "--configfile",
                           str(root / "config.yaml"), "--cores", str(cores), *targets],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"snakemake failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    import zarr

    benchmarks = root / "results" / "benchmarks" / "extract_features" / encoder
    walls = [float(f.read_text().splitlines()[1].split("\t")[0]) for f in sorted(benchmarks.glob("*.tsv"))]
    stores = [zarr.open_group(str(root / "results" / "features" / encoder / f"S{i:04d}.zarr"), mode="r").attrs
              for i in range(n_slides)]
    return {"jobs": len(walls), "job_s": sum(walls), "tiles": sum(int(a["n_tiles"]) for a in stores),
            "loop_s": sum(float(a["seconds"]) for a in stores)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slides", type=int, default=16)
    parser.add_argument("--tiles-per-slide", type=int, default=96)
    parser.add_argument("--slides-per-job", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--random-weights", action="store_true",
                        help="random weights (throughput only; e.g. --encoders uni on a GPU without the hub)")
    parser.add_argument("--encoders", nargs="+", default=["efficientnet_lite0"])
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--json", type=Path, default=REPO / ".cache" / "bench" / "extract_cohort.json")
    args = parser.parse_args()
    from pathmm_pipeline.encoders import load_encoder
    from pathmm_pipeline.preprocess.features import ExtractionSettings

    torch.set_num_threads(args.cores)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        slide, tiles = make_tiles(work, args.tiles_per_slide)
        bare = bare_import_seconds()
        for name in args.encoders:
            settings = ExtractionSettings(encoder=name, batch_size=32, num_workers="auto", threads=args.cores)
            encoder = load_encoder(name, None if args.random_weights else "default")
            spec = encoder.spec
            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # as features.device: auto
            forward = time_forward(encoder, device, args.tiles_per_slide, settings.batch_size)
            decode = time_decode(slide, tiles, settings, spec.input_size, spec.interpolation)
            for per_job in args.slides_per_job:
                root = make_cohort(work / f"{name}-{per_job}", slide, args.slides, name, args.cores, per_job,
                                   args.random_weights)
                run = run_cohort(root, name, args.slides, args.cores)
                cohort = run["tiles"] / run["job_s"]
                fixed = (run["job_s"] - run["loop_s"]) / run["jobs"]
                row = {"encoder": name, "slides": args.slides, "tiles": run["tiles"], "slides_per_job": per_job,
                       "jobs": run["jobs"], "cohort_tiles_per_s": cohort, "forward_floor_tiles_per_s": forward,
                       "decode_floor_tiles_per_s": decode, "cohort_over_forward": cohort / forward,
                       "cohort_over_decode": cohort / decode, "fixed_cost_per_job_s": fixed,
                       "bare_import_torch_timm_s": bare, "fixed_over_bare_import": fixed / bare,
                       "loop_share_of_job": run["loop_s"] / run["job_s"]}
                results.append(row)
                print(f"{name}: {args.slides} slides x {args.tiles_per_slide} tiles, slides_per_job {per_job} "
                      f"({run['jobs']} jobs): cohort {cohort:.1f} tiles/s; forward floor {forward:.1f}, decode "
                      f"floor {decode:.1f}; cohort/forward {row['cohort_over_forward']:.2f}, cohort/decode "
                      f"{row['cohort_over_decode']:.2f}; fixed cost per job {fixed:.1f} s = "
                      f"{row['fixed_over_bare_import']:.1f} x a bare `import torch, timm` ({bare:.1f} s); the "
                      f"loop is {100 * row['loop_share_of_job']:.0f} % of job time", flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
