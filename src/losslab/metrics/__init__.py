"""Evaluation metrics (no gradient needed): few-shot accuracy, ICNN score, retrieval, OPIS,
representation quality (RankMe, alignment, uniformity), segmentation (Dice, IoU, boundary F,
clDice, Betti errors, HD95), ranking (NDCG@k, MRR, MAP, recall@k, precision@k, AUC over padded
lists)."""

from losslab.metrics.classification import (
    accuracy,
    adaptive_calibration_error,
    expected_calibration_error,
    false_head_rate,
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
from losslab.metrics.representation import alignment, rankme, uniformity
from losslab.metrics.retrieval import epsilon_opis, opis, retrieval_metrics
from losslab.metrics.segmentation import (
    betti_errors,
    betti_matching_error,
    betti_numbers,
    boundary_f_score,
    cl_dice_score,
    dice_score,
    hausdorff_95,
    iou_score,
)

__all__ = [
    "accuracy",
    "adaptive_calibration_error",
    "alignment",
    "auc_per_list",
    "average_precision",
    "balanced_mae",
    "betti_errors",
    "betti_matching_error",
    "betti_numbers",
    "bin_edges",
    "boundary_f_score",
    "cl_dice_score",
    "concordance_index",
    "dice_score",
    "epsilon_opis",
    "expected_calibration_error",
    "false_head_rate",
    "has_relevant",
    "hausdorff_95",
    "icnn_score",
    "iou_score",
    "mean_confidence_interval",
    "ndcg_at_k",
    "opis",
    "precision_at_k",
    "ranking_metrics",
    "rankme",
    "recall_at_k",
    "reciprocal_rank",
    "reliability_diagram",
    "retrieval_metrics",
    "top_k_accuracy",
    "uniformity",
]
