"""Evaluation: the units and sign conventions (:mod:`.conventions`), survival and classification metrics
(:mod:`.metrics`) and Kaplan-Meier curves of predicted risk groups (:mod:`.kaplan_meier`)."""

from __future__ import annotations

from .conventions import (EVENT_OBSERVED, RISK_DIRECTION, TIME_UNIT, event_from_censorship, lifelines_score,
                          survival_arrays, survival_at_times)
from .kaplan_meier import KMCurve, RiskGroupCurves, kaplan_meier, km_by_risk_group, risk_cutoffs
from .metrics import (BrierResult, CIndexResult, ClassificationResult, LogRankResult, TimeDependentAUC,
                      bootstrap_c_index, c_index, classification_metrics, default_eval_times,
                      discrete_survival_metrics, fold_summary, integrated_brier_score, logrank,
                      time_dependent_auc)

__all__ = [
    "BrierResult", "CIndexResult", "ClassificationResult", "EVENT_OBSERVED", "KMCurve", "LogRankResult",
    "RISK_DIRECTION", "RiskGroupCurves", "TIME_UNIT", "TimeDependentAUC", "bootstrap_c_index", "c_index",
    "classification_metrics", "default_eval_times", "discrete_survival_metrics", "event_from_censorship",
    "fold_summary", "integrated_brier_score", "kaplan_meier", "km_by_risk_group", "lifelines_score", "logrank",
    "risk_cutoffs", "survival_arrays", "survival_at_times", "time_dependent_auc",
]

# evaluation of trained folds and the HTML report, imported on first use (they import the training package,
# which itself imports this package's conventions)
_LAZY = {
    "FoldEvaluation": ".run", "ResultsTables": ".run", "aggregate_folds": ".run", "cross_validate": ".run",
    "evaluate_fold": ".run", "read_fold_evaluation": ".run", "summarize": ".run",
    "collect_inputs": ".report", "provenance_table": ".report", "read_benchmarks": ".report",
    "write_report": ".report",
}
__all__ += sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
