"""Parse-time cost of the DAG, this checkout against another (an earlier commit), measured side by side in one
run: for the demo DAG (the repository's config.yaml on the demo cohort, training on) and for bench/dag.py's
generated sample sheets (training off), the no-op dry-run (every output already up to date) and the
DAG-building dry-run, each checkout in its own work folder, alternating so that a noisy machine hits both.

    git worktree add /tmp/before <commit>        # the code to compare against
    python bench/parse_ratio.py --before /tmp/before [--slides 1000 5000] [--repeats 3]

The earlier checkout must be importable from the same environment: it runs with ``PYTHONPATH=<before>``.
Prints seconds for each and the ratio after / before (below 1: this checkout parses faster).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from dag import job_count, make_cohort

REPO = Path(__file__).resolve().parents[1]


def run(repo: Path, root: Path, *args: str) -> tuple[float, str]:
    """One snakemake call of ``repo``'s Snakefile on work folder ``root``; (seconds, output)."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               PYTHONPATH=str(repo))
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(repo / "Snakefile"), "--directory",
                           str(root), "--configfile", str(root / "config.yaml"), "--cores", "1", *args],
                          capture_output=True, text=True, env=env, cwd=root)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{repo}: snakemake {' '.join(args)} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return seconds, proc.stdout + proc.stderr


def mark_complete(repo: Path, root: Path) -> None:
    """Create every planned output empty and let ``repo``'s Snakefile record them as up to date."""
    _, files = run(repo, root, "--summary")
    for line in files.splitlines()[1:]:
        path = line.split("\t", 1)[0].strip()
        if not path or path.startswith(("Building", "Assuming")) or " " in path:
            continue
        target = root / path
        if target.suffix == ".zarr" or path.endswith("/") or re.search(r"_fold\d+$", target.name):
            target.mkdir(parents=True, exist_ok=True)
            (target / "zarr.json").touch()
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.touch()
    run(repo, root, "--touch")


def demo_workdir(parent: Path, cohort: Path) -> Path:
    """A work folder running the repository's config.yaml on the demo cohort at ``cohort``."""
    root = parent / "demo"
    root.mkdir()
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config.update(samplesheet=str(cohort / "samplesheet.csv"), results="results")
    external = config["training"]["pretraining"].get("external")
    if external:
        config["training"]["pretraining"]["external"] = str(cohort / Path(external).relative_to("demo_cohort"))
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    return root


def alternate_dry_runs(repos: dict[str, Path], roots: dict[str, Path], repeats: int
                       ) -> tuple[dict[str, list[float]], dict[str, int]]:
    """``repeats`` dry-runs of each checkout on its own work folder, alternating; (seconds, jobs planned)."""
    seconds: dict[str, list[float]] = {label: [] for label in repos}
    jobs: dict[str, int] = {}
    for _ in range(repeats):
        for label, repo in repos.items():
            elapsed, text = run(repo, roots[label], "--dry-run", "--quiet", "rules")
            seconds[label].append(elapsed)
            jobs[label] = job_count(text)
    return seconds, jobs


def measure(workloads: dict[str, Path], repos: dict[str, Path], repeats: int) -> list[dict]:
    rows = []
    for name, template in workloads.items():
        roots = {}
        for label in repos:  # one work folder per checkout: Snakemake's records are per Snakefile's code
            roots[label] = template.parent / f"{template.name}_{label}"
            shutil.copytree(template, roots[label], symlinks=True)
        build, jobs = alternate_dry_runs(repos, roots, repeats)
        for label, repo in repos.items():
            mark_complete(repo, roots[label])
        noop, left = alternate_dry_runs(repos, roots, repeats)
        row = {"workload": name, "jobs": jobs, "jobs_left_after_touch": left,
               **{f"build_{k}_s": statistics.median(v) for k, v in build.items()},
               **{f"noop_{k}_s": statistics.median(v) for k, v in noop.items()}}
        row["build_ratio"] = row["build_after_s"] / row["build_before_s"]
        row["noop_ratio"] = row["noop_after_s"] / row["noop_before_s"]
        rows.append(row)
        print(f"{name:18s} jobs {jobs['after']:6d} | DAG dry-run before {row['build_before_s']:6.1f} s after "
              f"{row['build_after_s']:6.1f} s (x{row['build_ratio']:.2f}) | no-op before {row['noop_before_s']:6.1f}"
              f" s after {row['noop_after_s']:6.1f} s (x{row['noop_ratio']:.2f}) | left {left}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, required=True, help="a checkout of the code to compare against")
    parser.add_argument("--demo-cohort", type=Path, default=REPO / "demo_cohort")
    parser.add_argument("--slides", nargs="+", type=int, default=[1000, 5000])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--json", type=Path, default=REPO / ".cache" / "bench" / "parse_ratio.json")
    args = parser.parse_args()
    repos = {"before": args.before.resolve(), "after": REPO}
    with tempfile.TemporaryDirectory() as tmp:
        workloads = {}
        if (args.demo_cohort / "samplesheet.csv").is_file():
            workloads["demo DAG"] = demo_workdir(Path(tmp), args.demo_cohort.resolve())
        else:
            print(f"no demo cohort at {args.demo_cohort} (run `pathmm demo-cohort`): demo DAG skipped")
        for n in args.slides:
            workloads[f"{n} slides"] = make_cohort(Path(tmp) / f"sheet{n}", n)
        rows = measure(workloads, repos, args.repeats)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
