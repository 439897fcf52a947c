"""Evaluation metrics (no gradient needed): few-shot accuracy, ICNN score, and more."""

from losslab.metrics.classification import (
    accuracy,
    adaptive_calibration_error,
    expected_calibration_error,
    plot_reliability_diagram,
    reliability_diagram,
    top_k_accuracy,
)
from losslab.metrics.fewshot import mean_confidence_interval
from losslab.metrics.icnn import icnn_score

__all__ = [
    "accuracy",
    "adaptive_calibration_error",
    "expected_calibration_error",
    "icnn_score",
    "mean_confidence_interval",
    "plot_reliability_diagram",
    "reliability_diagram",
    "top_k_accuracy",
]
