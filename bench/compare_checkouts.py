"""Same trained weights from two checkouts? Trains the same fold of the toy cohort (tests/toy_cohort.py) with
one checkout and saves every trained tensor and held-out prediction; ``--compare`` then lists what differs.
Used to show that a refactoring changes no number: 12 models x {survival, cox} x {last, inner}, the
pretraining of ALTER, MICE and mSTAR, and the report decoder, all on the CPU.

    PYTHONPATH=/tmp/before python bench/compare_checkouts.py /tmp/before /tmp/before.npz /tmp/work_before
    PYTHONPATH=$PWD        python bench/compare_checkouts.py $PWD /tmp/after.npz /tmp/work_after
    python bench/compare_checkouts.py --compare /tmp/before.npz /tmp/after.npz

It reads either layout of the library (before and after the re-layering of issue 14).
"""

from __future__ import annotations

import importlib
import importlib.util
import pathlib
import sys

import numpy as np

MODELS = ("abmil", "transmil", "snn", "mcat", "survpath", "late_fusion_concat", "late_fusion_kronecker", "alter",
          "mice", "umeml", "ridge_cox", "mstar")
SMALL = {"abmil": {"hidden_dim": 16, "attn_dim": 8, "dropout": 0.0},
         "late_fusion_concat": {"dim": 16, "attn_dim": 8, "snn_hidden": (16, 16), "report_hidden": (16, 16),
                                "dropout": 0.0}}
TEXTS = ["tumour invades the muscularis propria", "no lymph node metastasis", "high grade urothelial carcinoma",
         "adenocarcinoma of the stomach, intestinal type", "margins are free of tumour",
         "lymphovascular invasion present"]


#: each function used: (its module after the re-layering of issue 14, its module before)
API = {
    "train_fold": ("pathmm_pipeline.training.finetune", "pathmm_pipeline.training"),
    "TrainConfig": ("pathmm_pipeline.training.settings", "pathmm_pipeline.training"),
    "PretrainConfig": ("pathmm_pipeline.training.settings", "pathmm_pipeline.training.pretrain"),
    "pretrain": ("pathmm_pipeline.training.pretrain", "pathmm_pipeline.training.pretrain"),
    "make_splits": ("pathmm_pipeline.cohort.splits", "pathmm_pipeline.training"),
    "predict_logits": ("pathmm_pipeline.evaluation.predict", "pathmm_pipeline.training"),
    "GenerationConfig": ("pathmm_pipeline.downstream.report_generation", "pathmm_pipeline.reports.generation"),
    "train_report_decoder": ("pathmm_pipeline.downstream.report_generation", "pathmm_pipeline.reports.generation"),
}


def _api() -> dict:
    """The functions used, from whichever layout the checkout on PYTHONPATH has."""
    layout = 0 if importlib.util.find_spec("pathmm_pipeline.cohort") is not None else 1
    return {name: getattr(importlib.import_module(modules[layout]), name) for name, modules in API.items()}


def train_everything(repo: pathlib.Path, work: pathlib.Path) -> dict[str, np.ndarray]:
    import torch

    sys.path.insert(0, str(repo / "tests"))
    toy_cohort = importlib.import_module("toy_cohort")
    api = _api()
    torch.set_num_threads(1)
    toy = toy_cohort.build_toy_cohort(work)
    cohort = toy.cohort()
    patients = toy.manifest.drop_duplicates("patient_id").set_index("patient_id")
    fold = api["make_splits"](patients.assign(event=patients.survival_event), k=3, stratify=("event",), seed=0)[0]
    arrays: dict[str, np.ndarray] = {}
    for model in MODELS:
        for task in ("survival", "cox"):
            for selection in ("last", "inner"):
                if model == "ridge_cox" and task == "cox":
                    continue
                config = api["TrainConfig"](epochs=2, grad_accum=4, device="cpu", progress=False, selection=selection,
                                            model_options=SMALL.get(model, {}))
                result = api["train_fold"](model, task, cohort, fold, config)
                key = f"{model}/{task}/{selection}"
                for name, value in result.model.state_dict().items():
                    arrays[f"{key}/state/{name}"] = value.detach().cpu().numpy()
                fitted = result.train_patients + result.inner_val_patients
                view = cohort.for_fold(fitted) if result.scaler is not None else cohort.with_scaler(None)
                arrays[f"{key}/logits"] = api["predict_logits"](result.model, view, result.val_patients)[1]
    for model in ("alter", "mice", "mstar"):
        config = api["PretrainConfig"](epochs=2, batch_size=4, device="cpu", progress=False)
        for name, value in api["pretrain"](model, cohort, fold.train, config).model.state_dict().items():
            arrays[f"pretrain/{model}/{name}"] = value.detach().cpu().numpy()
    embeddings = np.random.default_rng(0).normal(size=(len(TEXTS), 16)).astype(np.float32)
    generation = api["GenerationConfig"](epochs=3, d_model=32, n_heads=2, ff_dim=64, progress=False)
    for name, value in api["train_report_decoder"](embeddings, TEXTS, generation).state_dict().items():
        arrays[f"decoder/{name}"] = value.detach().cpu().numpy()
    return arrays


def compare(a_path: str, b_path: str) -> int:
    a, b = np.load(a_path), np.load(b_path)
    differ = [k for k in sorted(set(a.files) & set(b.files))
              if a[k].shape != b[k].shape or not np.array_equal(a[k], b[k], equal_nan=True)]
    only = sorted(set(a.files) ^ set(b.files))
    print(f"{len(a.files)} vs {len(b.files)} arrays; {len(differ)} differ; {len(only)} in one file only")
    print("\n".join(differ[:20] + only[:20]))
    return 1 if differ or only else 0


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--compare":
        return compare(sys.argv[2], sys.argv[3])
    if len(sys.argv) != 4:
        print(__doc__)
        return 2
    arrays = train_everything(pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[3]))
    np.savez(sys.argv[2], **arrays)
    print(f"{len(arrays)} arrays -> {sys.argv[2]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
