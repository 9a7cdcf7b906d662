"""Genomics-only survival baselines on real TCGA data: the check that losses, splits and metrics add up.

On TCGA-BLCA and TCGA-STAD expression (Xena log2, 1,577 genes, shipped with the package), with the published
SurvPath 5-fold splits and the disease-specific survival endpoint (``survival_months_dss``,
``censorship_dss``: 1 = censored), per fold:

* **cox_hallmarks**: lifelines ``CoxPHFitter`` (ridge: ``l1_ratio = 0``; lifelines standardises the covariates
  before the penalty) on the 50 MSigDB Hallmark mean pathway scores (``mean_pathway_scores`` of the expression
  z-scored by a ``GeneScaler`` fitted on the fold's training patients). The penalizer is chosen per fold from
  ``--penalizers`` by an inner stratified 3-fold CV on the training patients (C-index).
* **snn_genes**: the SNN (``pathmm_pipeline.models`` ``snn`` when importable, else the same network inline:
  1577 -> 256 -> 256 SELU blocks with AlphaDropout 0.25 -> 4 logits) on the flat z-scored gene vector, trained
  with the discrete-time NLL (4 bins from the training fold's uncensored DSS times), batch size 1 as SurvPath,
  Adam (SurvPath's script uses RAdam), ``--epochs`` epochs, no early stopping: the last epoch is evaluated, as
  SurvPath does. Defaults follow SurvPath's ``scripts/snn.sh`` otherwise (lr 5e-4, weight decay 1e-4,
  ``alpha_surv`` 0.5, 5 epochs; no weighted sampling, constant learning rate). Averaged over ``--seeds``.

Prints per-fold validation C-index and mean +- std (ddof = 1) per cohort and model, and writes
``.cache/bench/genomics_baselines.json``.

    python bench/genomics_baselines.py [--cohorts blca stad] [--epochs 5] [--seeds 0 1 2]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # a shared 2-core machine

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from pathmm_pipeline.cohort.splits import read_splits  # noqa: E402
from pathmm_pipeline.core.atomic import write_text_atomic  # noqa: E402
from pathmm_pipeline.core.provenance import package_versions  # noqa: E402
from pathmm_pipeline.demo import tcga  # noqa: E402
from pathmm_pipeline.genomics import GeneScaler, filter_collection, load_collection, mean_pathway_scores  # noqa: E402
from pathmm_pipeline.models.losses import discretize, make_time_bins, nll_survival_loss, risk_from_logits  # noqa: E402
from pathmm_pipeline.stats.conventions import event_from_censorship  # noqa: E402
from pathmm_pipeline.stats.kaplan_meier import assign_risk_groups, risk_cutoffs  # noqa: E402
from pathmm_pipeline.stats.metrics import c_index, discrete_survival_metrics, fold_summary, logrank  # noqa: E402  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / ".cache" / "bench" / "genomics_baselines.json"
TIME_COL, CENSOR_COL = "survival_months_dss", "censorship_dss"


# ------------------------------------------------------------------------------------------------ data
def load_cohort(cohort: str) -> dict[str, Any]:
    clinical = tcga.load_clinical(cohort)
    expression = tcga.load_expression(cohort)
    splits = read_splits(tcga.splits_dir(cohort), known_patients=clinical.index)  # checks the published files
    splits, dropped = splits.restrict(expression.index)  # patients without expression cannot be used
    patients = splits.patients
    times = clinical.loc[patients, TIME_COL].to_numpy(dtype=np.float64)
    events = event_from_censorship(clinical.loc[patients, CENSOR_COL].to_numpy())
    return {"splits": splits, "dropped": dropped, "expression": expression.loc[patients],
            "times": pd.Series(times, index=patients), "events": pd.Series(events, index=patients)}


# ------------------------------------------------------------------------------------------------ Cox
def _fit_cox(x: np.ndarray, t: np.ndarray, e: np.ndarray, penalizer: float):
    from lifelines import CoxPHFitter

    frame = pd.DataFrame(x, columns=[f"p{i}" for i in range(x.shape[1])])
    frame["T"], frame["E"] = t, e
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CoxPHFitter(penalizer=penalizer, l1_ratio=0.0).fit(frame, "T", "E")


def _cox_risk(model, x: np.ndarray) -> np.ndarray:
    frame = pd.DataFrame(x, columns=[f"p{i}" for i in range(x.shape[1])])
    return model.predict_log_partial_hazard(frame).to_numpy(dtype=np.float64)  # higher = earlier event


def choose_penalizer(x: np.ndarray, t: np.ndarray, e: np.ndarray, grid: list[float], seed: int
                     ) -> tuple[float, dict[str, float]]:
    from sklearn.model_selection import StratifiedKFold

    scores: dict[str, list[float]] = {str(p): [] for p in grid}
    for tr, va in StratifiedKFold(3, shuffle=True, random_state=seed).split(x, e):
        for p in grid:
            try:
                model = _fit_cox(x[tr], t[tr], e[tr], p)
                scores[str(p)].append(c_index(t[va], e[va], _cox_risk(model, x[va])))
            except Exception:  # lifelines ConvergenceError and friends: this value does not count
                scores[str(p)].append(np.nan)
    means = {p: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan") for p, v in scores.items()}
    best = max((p for p in grid if np.isfinite(means[str(p)])), key=lambda p: means[str(p)])
    return best, means


def run_cox(data: dict[str, Any], fold, hallmarks, grid: list[float]) -> dict[str, Any]:
    expr, times, events = data["expression"], data["times"], data["events"]
    train, val = list(fold.train), list(fold.val)
    scaler = GeneScaler().fit(expr, train_patients=train)
    scores = mean_pathway_scores(scaler.transform(expr), hallmarks)
    index = {p: i for i, p in enumerate(expr.index)}
    xtr, xva = scores[[index[p] for p in train]], scores[[index[p] for p in val]]
    ttr, etr = times[train].to_numpy(), events[train].to_numpy()
    penalizer, inner = choose_penalizer(xtr, ttr, etr, grid, seed=fold.index)
    model = _fit_cox(xtr, ttr, etr, penalizer)
    risk_val, risk_train = _cox_risk(model, xva), _cox_risk(model, xtr)
    return {"c_index": c_index(times[val], events[val], risk_val), "penalizer": penalizer,
            "inner_cv_c_index": inner, "risk_val": risk_val, "risk_train": risk_train}


# ------------------------------------------------------------------------------------------------ SNN
class InlineSNN(nn.Module):
    """The SNN of PORPOISE/SurvPath ("small"), for when ``pathmm_pipeline.models`` is not available."""

    def __init__(self, n_genes: int, n_bins: int = 4, hidden: tuple[int, ...] = (256, 256), dropout: float = 0.25):
        super().__init__()
        dims = [n_genes, *hidden]
        self.fc = nn.Sequential(*[nn.Sequential(nn.Linear(a, b), nn.SELU(), nn.AlphaDropout(dropout))
                                  for a, b in zip(dims[:-1], dims[1:])])
        self.head = nn.Linear(hidden[-1], n_bins)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 1.0 / np.sqrt(m.weight.shape[1]))
                nn.init.zeros_(m.bias)

    def forward(self, genes: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc(genes.reshape(1, -1)))


def build_snn(n_genes: int, n_bins: int) -> tuple[nn.Module, Any, str]:
    """(model, forward(genes) -> (1, n_bins) logits, which implementation)."""
    try:
        from pathmm_pipeline.models import InputDims, PatientInput, TaskSpec, build_model

        model = build_model("snn", InputDims(genes=n_genes), TaskSpec.survival(n_bins))
        return model, (lambda g: model(PatientInput(genes=g)).logits), "pathmm_pipeline.models.snn"
    except ImportError:
        model = InlineSNN(n_genes, n_bins)
        return model, model, "inline"


def run_snn(data: dict[str, Any], fold, args, seed: int) -> dict[str, Any]:
    expr, times, events = data["expression"], data["times"], data["events"]
    train, val = list(fold.train), list(fold.val)
    scaler = GeneScaler().fit(expr, train_patients=train)
    xtr = torch.as_tensor(scaler.transform(expr.loc[train]).to_numpy(), dtype=torch.float32)
    xva = torch.as_tensor(scaler.transform(expr.loc[val]).to_numpy(), dtype=torch.float32)
    ttr, etr = times[train].to_numpy(), events[train].to_numpy()
    edges = make_time_bins(ttr, etr, args.bins)
    ytr = torch.as_tensor(discretize(ttr, edges))
    etr_t = torch.as_tensor(etr)
    torch.manual_seed(seed)
    model, forward, impl = build_snn(xtr.shape[1], args.bins)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    order_rng = np.random.default_rng(seed)
    model.train()
    for _ in range(args.epochs):
        for i in order_rng.permutation(len(train)):
            optimizer.zero_grad()
            loss = nll_survival_loss(forward(xtr[i]), ytr[i:i + 1], etr_t[i:i + 1], alpha=args.alpha)
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        logits_va = torch.cat([forward(x) for x in xva])
        logits_tr = torch.cat([forward(x) for x in xtr])
    risk_val = risk_from_logits(logits_va).numpy().astype(np.float64)
    surv_val = torch.cumprod(1 - torch.sigmoid(logits_va), dim=1).numpy().astype(np.float64)
    out = {"c_index": c_index(times[val], events[val], risk_val), "implementation": impl,
           "edges": edges[1:-1].tolist(), "risk_val": risk_val,
           "risk_train": risk_from_logits(logits_tr).numpy().astype(np.float64)}
    try:
        extra = discrete_survival_metrics(ttr, etr, times[val].to_numpy(), events[val].to_numpy(), surv_val, edges)
        out.update(ibs=extra["ibs"], mean_auc=extra["mean_auc"])
    except ValueError as exc:  # e.g. too few evaluation times in a small fold
        out.update(ibs=float("nan"), mean_auc=float("nan"), metrics_error=str(exc))
    return out


# ------------------------------------------------------------------------------------------------ main
def pooled_logrank(data: dict[str, Any], folds: list[dict[str, Any]]) -> float:
    """Validation patients of all folds split at their fold's *training* median risk; log-rank p (high vs low)."""
    t, e, g = [], [], []
    for fold, rec in zip(data["splits"], folds):
        val = list(fold.val)
        t.append(data["times"][val].to_numpy())
        e.append(data["events"][val].to_numpy())
        g.append(assign_risk_groups(rec["risk_val"], risk_cutoffs(rec["risk_train"])))
    return logrank(np.concatenate(t), np.concatenate(e), np.concatenate(g)).p_value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cohorts", nargs="+", default=list(tcga.COHORTS))
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--alpha", type=float, default=0.5, help="NLL weight on uncensored patients")
    parser.add_argument("--bins", type=int, default=4)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--penalizers", type=float, nargs="+", default=[0.01, 0.1, 1.0, 10.0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    started = time.perf_counter()
    hallmarks_raw = load_collection("hallmarks")
    report: dict[str, Any] = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                              "endpoint": {"time": TIME_COL, "censorship": CENSOR_COL, "unit": "months"},
                              "packages": package_versions(), "cohorts": {}}
    print(f"{'cohort':6s} {'model':14s} {'fold C-index':42s} {'mean +- std':>15s}")
    for cohort in args.cohorts:
        data = load_cohort(cohort)
        hallmarks = filter_collection(hallmarks_raw, [str(g) for g in data["expression"].columns], 1)
        cox, snn = [], []
        for fold in data["splits"]:
            cox.append(run_cox(data, fold, hallmarks, args.penalizers))
            per_seed = [run_snn(data, fold, args, seed) for seed in args.seeds]
            snn.append({"c_index": float(np.mean([r["c_index"] for r in per_seed])),
                        "c_index_per_seed": [r["c_index"] for r in per_seed],
                        "ibs": float(np.nanmean([r["ibs"] for r in per_seed])),
                        "mean_auc": float(np.nanmean([r["mean_auc"] for r in per_seed])),
                        "implementation": per_seed[0]["implementation"], "edges": per_seed[0]["edges"],
                        "risk_val": np.mean([r["risk_val"] for r in per_seed], axis=0),
                        "risk_train": np.mean([r["risk_train"] for r in per_seed], axis=0)})
        entry: dict[str, Any] = {
            "n_patients": len(data["splits"].patients), "n_events": int(data["events"].sum()),
            "patients_dropped_no_expression": data["dropped"], "n_hallmark_sets": len(hallmarks.sets),
            "folds": [{"index": f.index, "n_train": len(f.train), "n_val": len(f.val),
                       "val_events": int(data["events"][list(f.val)].sum())} for f in data["splits"]],
            "models": {}}
        for name, recs in (("cox_hallmarks", cox), ("snn_genes", snn)):
            values = [r["c_index"] for r in recs]
            summary = fold_summary(values)
            entry["models"][name] = {
                "c_index_per_fold": values, **{f"c_index_{k}": v for k, v in summary.items()},
                "pooled_logrank_p_train_median_split": pooled_logrank(data, recs),
                "folds": [{k: v for k, v in r.items() if k not in ("risk_val", "risk_train")} for r in recs]}
            if name == "snn_genes":
                entry["models"][name]["ibs_mean"] = fold_summary([r["ibs"] for r in recs])["mean"]
                entry["models"][name]["td_auc_mean"] = fold_summary([r["mean_auc"] for r in recs])["mean"]
            folds_txt = " ".join(f"{v:.3f}" for v in values)
            print(f"{cohort:6s} {name:14s} {folds_txt:42s} {summary['mean']:.3f} +- {summary['std']:.3f}")
        entry["models"]["cox_hallmarks"]["penalizer_per_fold"] = [r["penalizer"] for r in cox]
        report["cohorts"][cohort] = entry
    report["seconds"] = round(time.perf_counter() - started, 1)
    write_text_atomic(args.out, json.dumps(report, indent=2, default=float))
    print(f"{report['seconds']} s; wrote {args.out}")


if __name__ == "__main__":
    main()
