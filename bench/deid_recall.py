"""Recall of de-identifiers on the independent Faker corpus of planted Safe Harbor identifiers.

    python bench/deid_recall.py [--reports 300] [--seeds 0 1] [--setup-peers | --no-peers]

Builds :func:`pathmm_pipeline.demo.safe_harbor.build_safe_harbor_corpus` for each seed and scores, with
:func:`pathmm_pipeline.reports.phi_eval.score_deid`, pathmm's ``deidentify`` and the peers philter-lite and
presidio-analyzer. The peers run in their own venv (``.cache/deid-peer-venv``, built by ``--setup-peers`` from
bench/requirements-deid-peers.txt) through bench/_peer_deid.py; a peer that cannot run prints why. Prints one
recall table per tool and seed (planted, removed, recall, partial per category) and the false-removal rate of
clinical terms; writes JSON to .cache/bench/deid_recall.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from pathmm_pipeline.demo.safe_harbor import build_safe_harbor_corpus
from pathmm_pipeline.reports.deid import deidentify
from pathmm_pipeline.reports.phi_eval import DeidScore, score_deid

REPO = Path(__file__).resolve().parents[1]
OUT_JSON = REPO / ".cache" / "bench" / "deid_recall.json"
PEER_VENV = REPO / ".cache" / "deid-peer-venv"
PEER_SCRIPT = Path(__file__).resolve().parent / "_peer_deid.py"
PEER_REQUIREMENTS = Path(__file__).resolve().parent / "requirements-deid-peers.txt"
PEERS = ("philter", "presidio")


class _Span:
    def __init__(self, start: int, end: int) -> None:
        self.start, self.end = start, end


def setup_peers(venv: Path) -> None:
    """Build the peer virtualenv (separate from the project's, so its pins are untouched)."""
    python = venv / "bin" / "python"
    if not python.is_file():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q", "-r",
                    str(PEER_REQUIREMENTS)], check=True)


def run_peer(tool: str, texts: list[str], venv: Path) -> tuple[list[list[_Span]] | None, str]:
    """The peer's spans per text, or None and the reason it did not run."""
    python = venv / "bin" / "python"
    if not python.is_file():
        return None, f"no peer venv at {venv}: run `python bench/deid_recall.py --setup-peers`"
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.json", Path(tmp) / "out.json"
        src.write_text(json.dumps({"texts": texts}))
        proc = subprocess.run([str(python), str(PEER_SCRIPT), tool, str(src), str(dst)], capture_output=True,
                              text=True, timeout=1800, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        if not dst.is_file():
            return None, f"peer process failed (rc {proc.returncode}): {proc.stderr.strip()[-600:]}"
        result = json.loads(dst.read_text())
    if "error" in result:
        return None, result["error"]
    return [[_Span(s, e) for s, e in spans] for spans in result["spans"]], result["config"]


def _record(score: DeidScore, seconds: float) -> dict:
    return {"table": score.table().to_dict(orient="records"), "false_removal_rate": score.false_removal_rate,
            "false_removals": len(score.false_removals), "clinical_terms": score.clinical_total,
            "seconds": round(seconds, 2),
            "leak_examples": [[leak.category, leak.value, list(leak.surviving)] for leak in score.leaks[:40]]}


def _print(tool: str, seed: int, score: DeidScore, seconds: float, note: str = "") -> None:
    print(f"\n== {tool}, seed {seed}{f' ({note})' if note else ''}: {seconds:.1f} s")
    with pd.option_context("display.float_format", "{:.3f}".format):
        print(score.table().to_string(index=False))
    print(f"false removals: {len(score.false_removals)} of {score.clinical_total} clinical terms "
          f"(rate {score.false_removal_rate:.4f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reports", type=int, default=300)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--setup-peers", action="store_true", help="build/refresh the peer venv, then run")
    parser.add_argument("--no-peers", action="store_true", help="score pathmm's deidentify only")
    parser.add_argument("--peer-venv", type=Path, default=PEER_VENV)
    args = parser.parse_args()
    if args.setup_peers:
        setup_peers(args.peer_venv)
    results: dict = {"reports": args.reports, "seeds": args.seeds, "tools": {}}
    for seed in args.seeds:
        corpus = build_safe_harbor_corpus(args.reports, seed)
        t0 = time.perf_counter()
        score = score_deid(corpus, deidentify)
        seconds = time.perf_counter() - t0
        _print("pathmm deidentify", seed, score, seconds)
        results["tools"].setdefault("pathmm", {})[str(seed)] = _record(score, seconds)
        for tool in () if args.no_peers else PEERS:
            texts = [r.text for r in corpus]
            t0 = time.perf_counter()
            spans, note = run_peer(tool, texts, args.peer_venv)
            seconds = time.perf_counter() - t0
            if spans is None:
                print(f"\n== {tool}, seed {seed}: DID NOT RUN - {note}")
                results["tools"].setdefault(tool, {})[str(seed)] = {"error": note}
                continue
            by_text = dict(zip(texts, spans))
            score = score_deid(corpus, by_text.__getitem__)
            _print(tool, seed, score, seconds, note)
            results["tools"].setdefault(tool, {})[str(seed)] = {**_record(score, seconds), "config": note}
    OUT_JSON.parent.mkdir(parents=True, exist_ok=True)
    OUT_JSON.write_text(json.dumps(results, indent=1, default=float))
    print(f"\nwrote {OUT_JSON.relative_to(REPO)}")


if __name__ == "__main__":
    main()
