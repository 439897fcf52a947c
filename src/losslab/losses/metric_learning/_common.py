"""Pieces shared by the modules of the metric-learning package (no loss of its own)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from losslab._core import check_reduction

#: How a pair/triplet loss's ``"mean"`` counts its terms: all valid ones, or the non-zero ones
#: (pytorch-metric-learning's ``AvgNonZeroReducer``).
MeanOver = Literal["all", "nonzero"]
MEAN_OVER: tuple[str, ...] = ("all", "nonzero")
#: The metrics of the losses defined on similarities only.
SimilarityName = Literal["cosine", "dot"]
SIMILARITIES: tuple[str, ...] = ("cosine", "dot")
#: The peer's losses package (pytorch-metric-learning), for ``peers=``.
PML = "pytorch_metric_learning.losses"


def reduce_per_anchor(per_anchor: Tensor, mean: Tensor, reduction: str) -> Tensor:
    """The reduction of a loss whose ``"mean"`` is not ``per_anchor.mean()``: ``"none"`` ->
    the per-anchor values, ``"sum"`` -> their sum, ``"mean"`` -> ``mean`` (computed by the
    loss with its own denominator)."""
    check_reduction(reduction)
    if reduction == "none":
        return per_anchor
    if reduction == "sum":
        return per_anchor.sum()
    return mean


def as_count(c: Tensor | float, like: Tensor) -> Tensor:
    """A count as a tensor in the dtype and on the device of ``like`` (a ``reduce`` count)."""
    return torch.as_tensor(c, dtype=like.dtype, device=like.device)
