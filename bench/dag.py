"""Snakemake DAG scale: building the DAG (a dry-run listing every job) and a no-op dry-run (every output already
up to date) for generated sample sheets of growing size, side by side in one run.

No real image is needed: each generated slide is a zero-byte placeholder file (the sample sheet only checks
that slide files exist; a dry-run opens none). The config is the repository's with training off (as the
slide stages dominate the job count) and no expression or reports. For the no-op dry-run every job's outputs
are first marked complete with ``snakemake --touch`` after creating them empty, so Snakemake has only to
compare timestamps and its metadata: the cost a user pays for "did anything change?" on a big cohort.

    python bench/dag.py [--slides 1000 5000] [--repeats 1]

Prints seconds per dry-run and the growth ratio from the smallest to each larger sheet. Target (issue 8): a
no-op dry-run of 1,000 slides under 30 s on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def make_cohort(root: Path, n_slides: int) -> Path:
    """A sample sheet of ``n_slides`` slides (two per patient) pointing at zero-byte placeholders."""
    slides = root / "slides"
    slides.mkdir(parents=True)
    rows = ["patient_id,slide_id,slide_path,mpp,cancer_type,survival_time,survival_event"]
    for i in range(n_slides):
        name = f"S{i:06d}"
        (slides / f"{name}.svs").touch()
        rows.append(f"P{i // 2:06d},{name},slides/{name}.svs,0.5,{'BLCA' if (i // 2) % 2 else 'STAD'},"
                    f"{10 + (i // 2) % 50},{(i // 2) % 2}")
    sheet = root / "samplesheet.csv"
    sheet.write_text("\n".join(rows) + "\n")
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config.update(samplesheet=str(sheet), results="results")
    config["training"]["models"] = []
    config["training"]["compare_encoders"] = {}
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    return root


def snakemake(root: Path, *args: str) -> tuple[float, str]:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory",
                           str(root), "--configfile", str(root / "config.yaml"), "--cores", "1", *args],
                          capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"snakemake {' '.join(args)} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return seconds, proc.stdout + proc.stderr


def job_count(text: str) -> int:
    match = re.search(r"^total\s+(\d+)", text, re.MULTILINE)
    return int(match.group(1)) if match else 0


def mark_complete(root: Path) -> None:
    """Create every planned output (empty) and let Snakemake record them as up to date (``--touch``)."""
    _, files = snakemake(root, "--summary")
    for line in files.splitlines()[1:]:
        path = line.split("\t", 1)[0].strip()
        if not path or path.startswith(("Building", "Assuming")):
            continue
        target = root / path
        if target.suffix == ".zarr" or path.endswith("/"):
            target.mkdir(parents=True, exist_ok=True)
            (target / "zarr.json").touch()
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.touch()
    snakemake(root, "--touch")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slides", nargs="+", type=int, default=[1000, 5000])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--json", type=Path, default=REPO / ".cache" / "bench" / "dag.json")
    args = parser.parse_args()
    rows = []
    for n in args.slides:
        with tempfile.TemporaryDirectory() as tmp:
            root = make_cohort(Path(tmp), n)
            build = []
            for _ in range(args.repeats):
                seconds, text = snakemake(root, "--dry-run", "--quiet", "rules")
                build.append(seconds)
            jobs = job_count(text)
            mark_complete(root)
            noop = []
            for _ in range(args.repeats):
                seconds, text = snakemake(root, "--dry-run", "--quiet", "rules")
                noop.append(seconds)
            left = job_count(text)
        row = {"slides": n, "jobs": jobs, "build_dry_run_s": statistics.median(build),
               "noop_dry_run_s": statistics.median(noop), "jobs_left_after_touch": left}
        rows.append(row)
        print(f"{n:6d} slides  {jobs:6d} jobs  DAG + dry-run {row['build_dry_run_s']:7.1f} s  no-op dry-run "
              f"{row['noop_dry_run_s']:7.1f} s  (jobs left: {left})", flush=True)
    base = rows[0]
    for r in rows[1:]:
        print(f"x{r['slides'] / base['slides']:.0f} slides: DAG x{r['build_dry_run_s'] / base['build_dry_run_s']:.2f}, "
              f"no-op x{r['noop_dry_run_s'] / base['noop_dry_run_s']:.2f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
