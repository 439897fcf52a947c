"""Evaluation metrics (no gradient needed): few-shot accuracy, ICNN score, retrieval, OPIS,
representation quality (RankMe, alignment, uniformity)."""

from losslab.metrics.classification import (
    accuracy,
    adaptive_calibration_error,
    expected_calibration_error,
    reliability_diagram,
    top_k_accuracy,
)
from losslab.metrics.fewshot import mean_confidence_interval
from losslab.metrics.icnn import icnn_score
from losslab.metrics.regression import balanced_mae, bin_edges, concordance_index
from losslab.metrics.representation import alignment, rankme, uniformity
from losslab.metrics.retrieval import epsilon_opis, opis, retrieval_metrics

__all__ = [
    "accuracy",
    "adaptive_calibration_error",
    "alignment",
    "balanced_mae",
    "bin_edges",
    "concordance_index",
    "epsilon_opis",
    "expected_calibration_error",
    "icnn_score",
    "mean_confidence_interval",
    "opis",
    "rankme",
    "reliability_diagram",
    "retrieval_metrics",
    "top_k_accuracy",
    "uniformity",
]
