"""Evaluation metrics (no gradient needed): few-shot accuracy, ICNN score, retrieval, OPIS."""

from losslab.metrics.fewshot import mean_confidence_interval
from losslab.metrics.icnn import icnn_score
from losslab.metrics.retrieval import epsilon_opis, opis, retrieval_metrics

__all__ = [
    "epsilon_opis",
    "icnn_score",
    "mean_confidence_interval",
    "opis",
    "retrieval_metrics",
]
