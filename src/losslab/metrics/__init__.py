"""Evaluation metrics (no gradient needed): few-shot accuracy, ICNN score, retrieval, OPIS,
ranking (NDCG@k, MRR, MAP, recall@k, precision@k, AUC over padded lists)."""

from losslab.metrics.classification import (
    accuracy,
    adaptive_calibration_error,
    expected_calibration_error,
    reliability_diagram,
    top_k_accuracy,
)
from losslab.metrics.fewshot import mean_confidence_interval
from losslab.metrics.icnn import icnn_score
from losslab.metrics.ranking import (
    auc_per_list,
    average_precision,
    has_relevant,
    ndcg_at_k,
    precision_at_k,
    ranking_metrics,
    recall_at_k,
    reciprocal_rank,
)
from losslab.metrics.regression import balanced_mae, bin_edges, concordance_index
from losslab.metrics.retrieval import epsilon_opis, opis, retrieval_metrics

__all__ = [
    "accuracy",
    "adaptive_calibration_error",
    "auc_per_list",
    "average_precision",
    "balanced_mae",
    "bin_edges",
    "concordance_index",
    "epsilon_opis",
    "expected_calibration_error",
    "has_relevant",
    "icnn_score",
    "mean_confidence_interval",
    "ndcg_at_k",
    "opis",
    "precision_at_k",
    "ranking_metrics",
    "recall_at_k",
    "reciprocal_rank",
    "reliability_diagram",
    "retrieval_metrics",
    "top_k_accuracy",
]
