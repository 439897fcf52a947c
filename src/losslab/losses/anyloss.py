"""AnyLoss: confusion-matrix metrics (F-beta, balanced accuracy, G-mean, accuracy) as losses.

A batch-level loss of kind ``logits``: the confusion matrix is summed over the whole batch, so
there is no per-sample term and no ``reduction``.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from losslab._core import LossModule, check_choice, check_positive
from losslab._ops.logits import prepare
from losslab.registry import register

__all__ = ["AnyLoss", "anyloss", "soft_confusion"]

Metric = Literal["f1", "fbeta", "balanced_accuracy", "gmean", "accuracy"]
METRICS = ("f1", "fbeta", "balanced_accuracy", "gmean", "accuracy")

#: Added to every denominator (and under the square root of G-mean) so that an empty class
#: gives a finite value and gradient.
_EPS = 1e-7


def soft_confusion(
    probs: Tensor, positive: Tensor, valid: Tensor, amplifier: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""Differentiable confusion entries from probabilities ``[M, K]`` and 0/1 labels ``[M, K]``.

    :math:`\hat y = A(p) = \sigma(L (p - 0.5))`; :math:`TP = \sum y \hat y`,
    :math:`FN = \sum y (1 - \hat y)`, :math:`FP = \sum (1 - y) \hat y`,
    :math:`TN = \sum (1-y)(1-\hat y)` over the valid rows, one entry per column.
    """
    y_hat = torch.sigmoid(amplifier * (probs - 0.5))
    m = valid.to(probs.dtype).unsqueeze(1)
    y = positive.to(probs.dtype) * m
    tp = (y * y_hat).sum(0)
    fn = (y * (1 - y_hat)).sum(0)
    fp = ((m - y) * y_hat).sum(0)
    tn = ((m - y) * (1 - y_hat)).sum(0)
    return tp, fn, fp, tn


def _metric(tp: Tensor, fn: Tensor, fp: Tensor, tn: Tensor, metric: str, beta: float) -> Tensor:
    if metric in ("f1", "fbeta"):
        b2 = 1.0 if metric == "f1" else beta * beta
        return (1 + b2) * tp / ((1 + b2) * tp + b2 * fn + fp + _EPS)
    if metric == "accuracy":
        return (tp + tn) / (tp + tn + fp + fn + _EPS)
    tpr = tp / (tp + fn + _EPS)
    tnr = tn / (tn + fp + _EPS)
    if metric == "balanced_accuracy":
        return (tpr + tnr) / 2
    return (tpr * tnr + _EPS).sqrt()


def anyloss(
    logits: Tensor,
    target: Tensor,
    *,
    metric: Metric = "f1",
    beta: float = 1.0,
    amplifier: float = 73.0,
    ignore_index: int = -100,
) -> Tensor:
    r"""AnyLoss: ``1 - metric`` of a differentiable confusion matrix.

    .. math::
        \hat y_i = A(p_i) = \frac{1}{1 + e^{-L (p_i - 0.5)}},\quad
        TP = \sum_i y_i \hat y_i,\ FN = \sum_i y_i (1-\hat y_i),\
        FP = \sum_i (1-y_i)\hat y_i,\ TN = \sum_i (1-y_i)(1-\hat y_i)

    and the loss is :math:`1 - M(TP, FN, FP, TN)` with, for ``metric``:

    * ``"f1"`` / ``"fbeta"``: :math:`\frac{(1+\beta^2) TP}{(1+\beta^2) TP + \beta^2 FN + FP}`;
    * ``"balanced_accuracy"``: :math:`\frac12 (\frac{TP}{TP+FN} + \frac{TN}{TN+FP})`;
    * ``"gmean"``: :math:`\sqrt{\frac{TP}{TP+FN} \cdot \frac{TN}{TN+FP}}`;
    * ``"accuracy"``: :math:`\frac{TP+TN}{TP+TN+FP+FN}`.

    A small ``1e-7`` is added to each denominator (and inside the square root).

    Binary: ``logits`` of shape ``[N]`` (or ``[N, 1]``) are positive-class logits,
    :math:`p = \sigma(\text{logit})`, ``target`` is ``[N]`` of 0/1 (class 1 positive).
    Multi-class (``logits[N, C, ...]`` with ``C >= 2``): :math:`p = \operatorname{softmax}`, the
    metric is computed one-vs-rest for every class and macro-averaged (the paper is binary;
    macro averaging is the usual extension). For a binary problem given as 2-class logits this
    averages the metric of both classes; use ``[N]`` logits for the paper's binary loss.

    Args:
        logits: ``[N]``/``[N, 1]`` (binary) or ``[N, C, ...]``; target: ``[N]`` 0/1 or
            ``[N, ...]`` class ids (no soft targets). ``ignore_index`` items are left out.
        metric: ``"f1"`` (default), ``"fbeta"``, ``"balanced_accuracy"``, ``"gmean"``,
            ``"accuracy"``.
        beta: :math:`\beta` of ``"fbeta"`` (default 1).
        amplifier: :math:`L` (default 73, the paper's choice).

    Returns a scalar (batch-level loss; no ``reduction``). No valid item: 0 with zero gradient.

    Paper: Han, Moniz, Chawla, "AnyLoss: Transforming Classification Metrics into Loss
    Functions", arXiv 2405.14745.
    """
    _check(metric, beta, amplifier)
    if isinstance(logits, Tensor) and logits.ndim == 1:
        logits = logits.unsqueeze(1)
    binary = isinstance(logits, Tensor) and logits.ndim == 2 and logits.shape[1] == 1
    if binary:
        batch = prepare(logits, target, ignore_index=ignore_index, loss="anyloss (binary)",
                        id_range=2)
        assert batch.index is not None
        probs = torch.sigmoid(batch.logits)
        positive = batch.index.unsqueeze(1) == 1
    else:
        batch = prepare(logits, target, ignore_index=ignore_index, min_classes=2, loss="anyloss")
        assert batch.index is not None
        probs = torch.softmax(batch.logits, dim=1)
        classes = torch.arange(batch.num_classes, device=probs.device)
        positive = batch.index.unsqueeze(1) == classes
    tp, fn, fp, tn = soft_confusion(probs, positive, batch.valid, amplifier)
    loss = 1 - _metric(tp, fn, fp, tn, metric, beta).mean()
    # No valid item: a zero that stays connected to the graph (zero gradient).
    return torch.where(batch.valid.any(), loss, (probs * 0.0).sum()).to(batch.dtype)


def _check(metric: str, beta: float, amplifier: float) -> None:
    check_choice("metric", metric, METRICS)
    check_positive("beta", beta)
    check_positive("amplifier", amplifier)


@register(
    "anyloss",
    family="classification",
    kind="logits", degenerate=("all_ignored",),
    paper="AnyLoss: Transforming Classification Metrics into Loss Functions",
    arxiv="2405.14745",
    function=anyloss,
    summary="1 - metric(TP, FN, FP, TN), y_hat = sigmoid(73 (p - 0.5)); macro over classes",
    reduction=None,
)
class AnyLoss(LossModule):
    """Module form of :func:`anyloss`."""

    def __init__(
        self,
        *,
        metric: Metric = "f1",
        beta: float = 1.0,
        amplifier: float = 73.0,
        ignore_index: int = -100,
    ) -> None:
        _check(metric, beta, amplifier)
        super().__init__(metric=metric, beta=beta, amplifier=amplifier, ignore_index=ignore_index)
