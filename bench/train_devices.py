"""Pretraining + fine-tuning of the multimodal methods on CPU and on CUDA, side by side in one run: seconds and
the held-out C-index on the toy cohort of tests/toy_cohort.py (90 patients, planted signal), so a GPU run
can be checked to reach the same quality as the CPU run, and how much faster it is.

    python bench/train_devices.py [--models alter mice] [--devices cpu cuda]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

SIZES = {"alter": {"dim": 64, "layers": 1, "n_features": 32}, "mice": {"dim": 64}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(SIZES))
    parser.add_argument("--devices", nargs="+", default=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=REPO / ".cache" / "bench" / "train_devices.json")
    args = parser.parse_args()

    import torch
    from toy_cohort import build_toy_cohort

    from pathmm_pipeline.cohort.splits import Fold
    from pathmm_pipeline.evaluation.predict import predict_logits
    from pathmm_pipeline.stats.metrics import c_index
    from pathmm_pipeline.tasks.kinds import risk_scores
    from pathmm_pipeline.training.finetune import train_fold
    from pathmm_pipeline.training.pretrain import PretrainConfig, pretrain
    from pathmm_pipeline.training.settings import TrainConfig

    torch.set_num_threads(args.threads)
    devices = [d for d in args.devices if d != "cuda" or torch.cuda.is_available()]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        toy = build_toy_cohort(Path(tmp) / "toy")
        cohort = toy.cohort()
        ids = toy.manifest.patient_id.drop_duplicates().tolist()
        fold = Fold(0, ids[:60], ids[60:])
        for name in args.models:
            for device in devices:
                out = Path(tmp) / f"{name}_{device}"
                t0 = time.perf_counter()
                pre = pretrain(name, cohort, fold.train, PretrainConfig(
                    epochs=5, batch_size=12, lr=1e-3, device=device, progress=False, model_options=SIZES[name]),
                    out_dir=out)
                t1 = time.perf_counter()
                result = train_fold(name, "survival", cohort, fold, TrainConfig(
                    epochs=8, lr=1e-3, grad_accum=8, device=device, progress=False, patience=None,
                    model_options=SIZES[name]), pretrained=out / "pretrained.pt")
                t2 = time.perf_counter()
                view = cohort.with_scaler(result.scaler)
                kept, logits, _ = predict_logits(result.model, view, fold.val)
                times, events = view.survival(kept)
                rows.append({"model": name, "device": device, "pretrain_s": t1 - t0, "finetune_s": t2 - t1,
                             "pretrain_final_loss": float(pre.history.loss.iloc[-1]),
                             "held_out_c_index": c_index(times, events, risk_scores(result.task, logits)),
                             "peak_gpu_mb": result.peak_gpu_mb})
                r = rows[-1]
                print(f"{name:6s} {device:5s} pretrain {r['pretrain_s']:7.1f} s  fine-tune {r['finetune_s']:7.1f} s  "
                      f"final pretraining loss {r['pretrain_final_loss']:.4f}  held-out C-index "
                      f"{r['held_out_c_index']:.3f}", flush=True)
    for name in args.models:
        mine = {r["device"]: r for r in rows if r["model"] == name}
        if "cpu" in mine and "cuda" in mine:
            cpu, gpu = mine["cpu"], mine["cuda"]
            print(f"{name}: cuda/cpu time pretrain x{gpu['pretrain_s'] / cpu['pretrain_s']:.2f}, fine-tune "
                  f"x{gpu['finetune_s'] / cpu['finetune_s']:.2f}; C-index cpu {cpu['held_out_c_index']:.3f} vs cuda "
                  f"{gpu['held_out_c_index']:.3f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
