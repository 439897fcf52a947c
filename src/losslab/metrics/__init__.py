"""Evaluation metrics (no gradient needed): few-shot accuracy, ICNN score, and more."""

from losslab.metrics.fewshot import mean_confidence_interval
from losslab.metrics.icnn import icnn_score

__all__ = ["icnn_score", "mean_confidence_interval"]
