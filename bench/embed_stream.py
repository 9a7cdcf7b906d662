"""Peak memory of ``embed_reports`` against cohort size: streamed (``reports_per_batch``, the default) against
every report in one batch (the earlier behaviour), for 50 and 500 reports, side by side in one run.

    python bench/embed_stream.py [--reports 50 500] [--batch 32]

Each run is its own process: the MiniLM encoder is built, the table read, then the store written with
``keep_tokens`` (float16 hidden states); its peak RSS (``ru_maxrss``) is reported above the RSS measured just
before embedding. Streamed, the peak should not grow with the cohort; in one batch it grows with it. Writes JSON
to ``.cache/bench/embed_stream.json``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT_JSON = REPO / ".cache" / "bench" / "embed_stream.json"
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _child(n_reports: int, per_batch: int, conn) -> None:
    import pandas as pd
    from text_linear import normal_report

    from pathmm_pipeline.encoders.text import get_text_encoder
    from pathmm_pipeline.reports.stage import embed_reports, process_report

    text = process_report(normal_report())["text"]  # a cleaned demo report: one or two windows
    with tempfile.TemporaryDirectory() as tmp:
        table = Path(tmp) / "reports.parquet"
        pd.DataFrame({"patient_id": [f"P{i:04d}" for i in range(n_reports)],
                      "text": [f"{text} Case {i}." for i in range(n_reports)]}).to_parquet(table)
        model = get_text_encoder("minilm")
        model.encode([text], keep_tokens=True)  # warm: first-call allocations are not the store's
        before = _rss_mb()
        start = time.perf_counter()
        embed_reports(table, Path(tmp) / "e.zarr", encoder=model, reports_per_batch=per_batch)
        seconds = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    conn.send({"seconds": seconds, "rss_before_mb": before, "peak_mb": peak, "above_mb": peak - before})


def measure(n_reports: int, per_batch: int) -> dict:
    receive, send = mp.Pipe(duplex=False)
    proc = mp.get_context("spawn").Process(target=_child, args=(n_reports, per_batch, send))
    proc.start()
    result = receive.recv()
    proc.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reports", type=int, nargs="+", default=[50, 500])
    parser.add_argument("--batch", type=int, default=32, help="reports_per_batch of the streamed runs")
    args = parser.parse_args()
    print("| reports | mode | seconds | peak RSS MB | above pre-embedding RSS MB |")
    print("| --- | --- | --- | --- | --- |")
    results = []
    for n in args.reports:
        for mode, per_batch in ((f"streamed ({args.batch} per batch)", args.batch), ("one batch", n)):
            r = measure(n, per_batch)
            results.append({"reports": n, "mode": mode, **r})
            print(f"| {n} | {mode} | {r['seconds']:.1f} | {r['peak_mb']:.0f} | {r['above_mb']:.0f} |", flush=True)
    OUT_JSON.parent.mkdir(parents=True, exist_ok=True)
    OUT_JSON.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
