"""Report text cost against report size: ``clean_report``, ``deidentify`` and the whole ``process_report`` on
adversarial texts of 10 KB, 100 KB and 1 MB, side by side in one run.

    python bench/text_linear.py [--sizes 10000 100000 1000000] [--parts clean_report deidentify process_report]
                                [--timeout 120] [--before /tmp/clean_old.py]

The texts (:func:`adversarial`): prose without a full stop (one wrapped paragraph), ``Case: A1A1A1...`` on one
line, a normal report flattened onto one long line, and a normal report repeated. Each measurement runs in its
own process, stopped after ``--timeout`` seconds (printed as ``>T``). Prints seconds per size and the ratio of
seconds per MB between consecutive sizes: about 1 is linear, about 10 quadratic (sizes 10x apart).
``--before`` times an earlier ``clean.py`` too (``git show <commit>:pathmm_pipeline/reports/clean.py >
/tmp/clean_old.py``), as the part ``clean_report(before)``. Writes JSON to ``.cache/bench/text_linear.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing as mp
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
OUT_JSON = REPO / ".cache" / "bench" / "text_linear.json"
WORDS = ("invasive", "urothelial", "carcinoma", "with", "nests", "and", "cords", "of", "atypical", "cells",
         "within", "a", "chronic", "inflammatory", "stroma", "the", "tumour", "invades", "muscularis", "propria")


def normal_report() -> str:
    """One demo report (fake identifiers, a header, five sections, a footer)."""
    from pathmm_pipeline.demo.reports import PatientFacts, make_report

    facts = PatientFacts("TCGA-XX-0001", "BLCA", "II", "G3", "Papillary", 64, "male")
    return make_report(facts, np.random.default_rng(0)).text


def _fill(unit: str, size: int) -> str:
    return (unit * (size // len(unit) + 1))[:size]


def adversarial(case: str, size: int) -> str:
    """The text of ``case`` (a key of :data:`CASES`) with ``size`` characters."""
    if case == "no full stops":
        words = " ".join(WORDS[i % len(WORDS)] for i in range(size // 5))
        lines, line = [], []
        for word in words.split(" "):  # wrapped at 76 columns, one paragraph
            if sum(len(w) + 1 for w in line) + len(word) > 76:
                lines.append(" ".join(line))
                line = []
            line.append(word)
        return "\n".join([*lines, " ".join(line)])[:size]
    if case == "Case: A1A1A1...":
        return "Case: " + _fill("A1", size - 6)
    if case == "one long line":
        return _fill(" ".join(normal_report().split()) + " ", size)
    if case == "normal report repeated":
        return _fill(normal_report() + "\n", size)
    raise KeyError(case)


CASES = ("no full stops", "Case: A1A1A1...", "one long line", "normal report repeated")


def _part(name: str, before: str | None) -> Callable[[str], object]:
    if name == "clean_report":
        from pathmm_pipeline.reports.clean import clean_report
        return clean_report
    if name == "clean_report(before)":
        spec = importlib.util.spec_from_file_location("clean_before", before)
        module = importlib.util.module_from_spec(spec)
        sys.modules["clean_before"] = module
        spec.loader.exec_module(module)
        return module.clean_report
    if name == "deidentify":
        from pathmm_pipeline.reports.deid import deidentify
        return deidentify
    if name == "process_report":
        from pathmm_pipeline.reports.stage import process_report
        return process_report
    raise KeyError(name)


def _child(part: str, before: str | None, case: str, size: int, repeats: int, conn) -> None:
    fn = _part(part, before)
    text = adversarial(case, size)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn(text)
        best = min(best, time.perf_counter() - start)
    conn.send(best)


def measure(part: str, before: str | None, case: str, size: int, timeout: float) -> float | None:
    """Best of a few runs (one at 1 MB) in a child process; None past ``timeout`` seconds."""
    receive, send = mp.Pipe(duplex=False)
    proc = mp.get_context("fork").Process(target=_child, args=(part, before, case, size,
                                                               3 if size <= 100_000 else 1, send))
    proc.start()
    ready = receive.poll(timeout)
    seconds = receive.recv() if ready else None
    if proc.is_alive():
        proc.kill()
    proc.join()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--parts", nargs="*", default=["clean_report", "deidentify", "process_report"])
    parser.add_argument("--cases", nargs="+", default=list(CASES))
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--before", default=None, help="an earlier clean.py, timed as clean_report(before)")
    args = parser.parse_args()
    parts = list(args.parts) + (["clean_report(before)"] if args.before else [])
    sizes = sorted(args.sizes)
    head = " | ".join(f"{s // 1000} KB s" for s in sizes)
    ratios = " | ".join(f"s/MB {b // 1000}K:{a // 1000}K" for a, b in zip(sizes, sizes[1:]))
    print(f"| part | text | {head} | {ratios} |")
    print("| --- " * (2 + len(sizes) + len(sizes) - 1) + "|")
    results = []
    for part in parts:
        for case in args.cases:
            seconds: list[float | None] = []
            for size in sizes:
                # past a timeout, a larger size would only time out again
                seconds.append(None if seconds and seconds[-1] is None else
                               measure(part, args.before, case, size, args.timeout))
            ratio = [(b / sb) / (a / sa) if a and b else None
                     for (a, sa), (b, sb) in zip(zip(seconds, sizes), zip(seconds[1:], sizes[1:]))]
            cells = [f"{s:.3f}" if s is not None else f">{args.timeout:.0f}" for s in seconds]
            cells += [f"{r:.2f}" if r is not None else "-" for r in ratio]
            print(f"| {part} | {case} | " + " | ".join(cells) + " |", flush=True)
            results.append({"part": part, "case": case, "sizes": sizes, "seconds": seconds, "ratios": ratio})
    OUT_JSON.parent.mkdir(parents=True, exist_ok=True)
    OUT_JSON.write_text(json.dumps({"timeout": args.timeout, "results": results}, indent=1))


if __name__ == "__main__":
    main()
