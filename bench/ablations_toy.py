"""The methods' central ablations on the tests' toy cohort, over seeds: held-out C-index of each pair of runs,
paired by seed, printed with mean +- sd (the numbers in docs/methods/<method>.md, "Ablation on the toy cohort").

    python bench/ablations_toy.py modaltune --seeds 0 1 2 3 --signal sign --no-genomics --epochs 30
    python bench/ablations_toy.py alter --seeds 0 1 2 --epochs 10
    python bench/ablations_toy.py umeml | mice | mstar [--signal sign]
    python bench/ablations_toy.py mstar --seeds 0 1 2 3 4 5 6 7 --signal sign --n-patients 210 --no-reports \
        --epochs 8 --lr 3e-3 --option genomics_encoder=snn genomics_hidden=[16,16] genomics_dropout=0 w_triplet=0
    python bench/ablations_toy.py alter --seeds 0 1 --n-patients 210 --labelled 30 --epochs 6 --finetune-epochs 4
    python bench/ablations_toy.py mice --seeds 0 1 2 3 --type-shift 1.5 --no-genomics --pretrain --epochs 10

``--signal mean``: tumour tiles shifted by +2 (a slide's mean feature carries the signal); ``sign``: by +-2 at
random (only the tile pattern does). The fold is the toy cohort's first ``--labelled`` (60) patients for
training, patients 60-89 held out; nothing is fitted on the held-out ones. ``--n-patients`` above 90 adds
patients 90.. to the *pretraining* corpus only (alter, modaltune, mstar: an unlabelled corpus larger than the
labelled set; the held-out patients are never in it). ``--type-shift``: cancer type B's latent risk shifted (the
types differ in outcome and modalities); ``--pretrain`` (mice): each arm pretrained on the corpus first.
mstar also prints the probe on its slide encoder at initialisation (the same seed, no pretraining), the control
that the gain over mean pooling is learnt.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from toy_cohort import build_toy_cohort  # noqa: E402

from pathmm_pipeline.cohort.dataset import MultimodalCohort  # noqa: E402
from pathmm_pipeline.cohort.splits import Fold  # noqa: E402
from pathmm_pipeline.evaluation.predict import predict_logits  # noqa: E402
from pathmm_pipeline.stats.metrics import c_index  # noqa: E402
from pathmm_pipeline.tasks.kinds import risk_scores  # noqa: E402
from pathmm_pipeline.training.finetune import train_fold  # noqa: E402
from pathmm_pipeline.training.pretrain import PretrainConfig, pretrain  # noqa: E402
from pathmm_pipeline.training.settings import TrainConfig  # noqa: E402

OPTIONS = {
    "modaltune": {"n_pathway_tokens": 4, "gene_dim": 8, "mixer_depth": 1, "dropout": 0.0,
                  "cancer_type_names": ["A", "B"]},
    "alter": {"dim": 16, "heads": 2, "layers": 1, "n_experts": 2, "top_k": 1, "n_features": 8, "region_size": 2,
              "dropout": 0.0},
    "umeml": {"dim": 16, "heads": 2, "proto_layers": 1, "omic_layers": 1, "decoder_layers": 1, "dropout": 0.0},
    "mice": {"dim": 16, "n_overlap": 2, "top_k": 1, "fusion_layers": 1, "fusion_heads": 2, "dropout": 0.0},
    "mstar": {"dim": 16, "proj_dim": 8, "heads": 2, "dropout": 0.0},
}


def held_out(result, cohort: MultimodalCohort, fold: Fold, withhold: tuple[str, ...] = ()) -> float:
    """Held-out C-index of a trained fold, with ``withhold`` modalities removed at test."""
    view = cohort.with_scaler(result.scaler) if result.scaler is not None else cohort
    kept, logits, _ = predict_logits(result.model, view, fold.val, remove=withhold)
    times, events = view.survival(kept)
    return float(c_index(times, events, risk_scores(result.task, logits)))


def mean_pool_probe(cohort: MultimodalCohort, fold: Fold) -> float:
    """A lifelines Cox (penalizer 0.5) on the standardised mean patch feature of each slide."""
    import pandas as pd
    from lifelines import CoxPHFitter

    view = cohort.for_fold(fold.train)  # the slides only are read; a cohort with genomics needs a scaler

    def pooled(ids):
        kept = [p for p in ids if view.presence(p)["wsi"]]
        return kept, np.stack([view.get(p).x.wsi.float().mean(0).numpy() for p in kept])

    train, x_train = pooled(fold.train)
    val, x_val = pooled(fold.val)
    mean, scale = x_train.mean(0), x_train.std(0) + 1e-8
    frame = pd.DataFrame((x_train - mean) / scale)
    frame["t"], frame["e"] = view.survival(train)
    cox = CoxPHFitter(penalizer=0.5).fit(frame, "t", "e")
    risk = cox.predict_partial_hazard(pd.DataFrame((x_val - mean) / scale)).to_numpy()
    return float(c_index(*view.survival(val), risk))


def run(method: str, seeds: list[int], signal: str, genomics: bool, epochs: int, root: Path, *,
        n_patients: int = 90, labelled: int = 60, reports: bool = True, lr: float = 1e-3,
        finetune_epochs: int | None = None, options: dict | None = None, type_shift: float = 0.0,
        mice_pretrain: bool = False) -> dict[str, list]:
    toy = build_toy_cohort(root / "toy", wsi_signal=signal, n_patients=n_patients, type_shift=type_shift)
    cohort = MultimodalCohort.from_manifest(
        toy.manifest, toy.features_dir, toy.genomics if genomics else None, toy.reports if reports else None,
        pathway_collection="pathways" if genomics else None, family_collection="families" if genomics else None)
    ids = toy.manifest.patient_id.drop_duplicates().tolist()
    fold = Fold(0, tuple(ids[:labelled]), tuple(ids[60:90]))
    corpus = list(ids[:60]) + list(ids[90:])  # pretraining: the training side, plus the pretraining-only patients
    opts = {**OPTIONS[method], **(options or {})}
    out: dict[str, list] = {}
    for seed in seeds:
        pre = PretrainConfig(epochs=epochs, batch_size=12, lr=lr, seed=seed, progress=False, model_options=opts)
        tune = TrainConfig(epochs=finetune_epochs or (8 if method != "alter" else 6), lr=1e-3, grad_accum=8,
                           progress=False, n_bins=4, seed=seed, patience=None, model_options=opts)
        if method in ("modaltune", "alter"):
            pretrain(method, cohort, corpus, pre, out_dir=root / f"{method}{seed}")
            if method == "modaltune":
                tune = TrainConfig(epochs=1, progress=False, n_bins=4, seed=seed, model_options=opts)
            first = "tuned" if method == "modaltune" else "pretrained"
            second = "frozen" if method == "modaltune" else "scratch"
            out.setdefault(first, []).append(held_out(train_fold(
                method, "survival", cohort, fold, tune, pretrained=root / f"{method}{seed}" / "pretrained.pt"),
                cohort, fold))
            out.setdefault(second, []).append(held_out(train_fold(method, "survival", cohort, fold, tune), cohort,
                                                       fold))
        elif method == "umeml":
            for name, o in (("modularity", opts), ("none", {**opts, "use_modularity": False})):
                cfg = TrainConfig(**{**tune.to_dict(), "model_options": o})
                out.setdefault(name, []).append(held_out(train_fold(method, "survival", cohort, fold, cfg), cohort,
                                                         fold))
        elif method == "mice":
            for name, o in (("synthesis", opts), ("none", {**opts, "synthesis": False})):
                start = None
                if mice_pretrain:  # the supervised pan-cancer pretraining on the corpus, then fine-tuning
                    start = root / f"mice_{name}{seed}"
                    pretrain(method, cohort, corpus, PretrainConfig(**{**pre.to_dict(), "model_options": o}),
                             out_dir=start)
                    start = start / "pretrained.pt"
                result = train_fold(method, "survival", cohort, fold, TrainConfig(**{**tune.to_dict(),
                                                                                     "model_options": o}),
                                    pretrained=start)
                out.setdefault(f"{name}, slides withheld", []).append(held_out(result, cohort, fold, ("wsi",)))
                out.setdefault(f"{name}, genomics withheld", []).append(held_out(result, cohort, fold,
                                                                                 ("genomics",)))
        else:  # mstar: the stage-1 slide embedding against mean pooling, both through a Cox probe
            out.setdefault("stage-1 slide embedding", []).append(mstar_probe(pretrain(method, cohort, corpus,
                                                                                      pre).model, cohort, fold))
            out.setdefault("mean pooling", []).append(mean_pool_probe(cohort, fold))
            out.setdefault("slide encoder at initialisation", []).append(
                mstar_probe(untrained_mstar(cohort, seed, opts), cohort, fold))
    return out


def mstar_probe(model, cohort: MultimodalCohort, fold: Fold) -> float:
    """The held-out C-index of the linear (Cox) probe on ``model``'s slide embeddings (fitted on fold.train)."""
    from pathmm_pipeline.downstream.kinds import linear_probe

    return float(linear_probe(model, cohort.for_fold(fold.train), fold, "survival", prompt=None).table.value.iloc[0])


def untrained_mstar(cohort: MultimodalCohort, seed: int, options: dict):
    """mSTAR's slide encoder as initialised with ``seed`` (eval mode): the no-pretraining control."""
    from pathmm_pipeline.models import TaskSpec, build_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model("mstar", cohort.input_dims(), TaskSpec.survival(4), **options).eval()


def option(text: str) -> tuple[str, object]:
    """``key=value`` of --option, the value read as JSON (numbers, lists, booleans) or else kept as text."""
    import json

    key, _, value = text.partition("=")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("method", choices=sorted(OPTIONS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--signal", choices=("mean", "sign"), default="mean")
    parser.add_argument("--no-genomics", action="store_true")
    parser.add_argument("--no-reports", action="store_true")
    parser.add_argument("--epochs", type=int, default=6, help="pretraining epochs (modaltune, alter, mstar)")
    parser.add_argument("--lr", type=float, default=1e-3, help="pretraining learning rate")
    parser.add_argument("--finetune-epochs", type=int, default=None, help="fine-tuning epochs (8; alter 6)")
    parser.add_argument("--n-patients", type=int, default=90, help="toy patients; those past 90 pretrain only")
    parser.add_argument("--labelled", type=int, default=60, help="the first LABELLED patients are fine-tuned on")
    parser.add_argument("--type-shift", type=float, default=0.0,
                        help="latent risk shift of cancer type B (types differ in outcome and modalities)")
    parser.add_argument("--pretrain", action="store_true", help="mice: pretrain each arm on the corpus first")
    parser.add_argument("--option", type=option, nargs="*", default=[], help="model options, key=value (JSON)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        out = run(args.method, args.seeds, args.signal, not args.no_genomics, args.epochs, Path(tmp),
                  n_patients=args.n_patients, labelled=args.labelled, reports=not args.no_reports, lr=args.lr,
                  finetune_epochs=args.finetune_epochs, options=dict(args.option), type_shift=args.type_shift,
                  mice_pretrain=args.pretrain)
    for name, values in out.items():
        print(f"{args.method:10s} {name:32s} {np.mean(values):.3f} +- {np.std(values):.3f}  "
              f"({', '.join(f'{v:.3f}' for v in values)})")
    names = list(out)
    for other in names[1:] if len(names) in (2, 3) else []:
        gain = np.array(out[names[0]]) - np.array(out[other])
        print(f"paired {names[0]} - {other}: {gain.mean():+.3f} +- {gain.std():.3f} "
              f"(min {gain.min():+.3f}; {', '.join(f'{v:+.3f}' for v in gain)})")
    print(f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
