"""Dataset-distillation matching losses (trajectory matching and class-mean feature matching)
of AST, "Efficient Dataset Distillation through Alignment with Smooth and High-Quality Expert
Trajectories".

Unlike the rest of the family these distil a *dataset*, not a model: a small synthetic set is
learned so that training on it reproduces what training on the real set does.

- ``trajectory_matching`` (kind ``regression``): ``loss(student[N, P], expert_target[N, P], *,
  start=None)`` on flat parameter vectors (``torch.cat([p.reshape(-1) for p in params])``),
  one row per matched trajectory segment.
- ``feature_mean_matching`` (kind ``embeddings``): ``loss(synthetic_features[N, D],
  labels[N], *, ref_embeddings=real_features[M, D], ref_labels=real_labels[M])``.

AST's other devices shape how the expert trajectories are *trained* and are procedures, not
losses on two sets of statistics: the expert's cross-entropy is scaled by a factor that grows
over its first epochs (0.5 to 0.9 in the official ``buffer.py`` schedule, clipping the large
early moves so that the trajectory is smooth), and the student's start is perturbed by
weight-scaled noise. The gradient penalty on the experts that the seed catalog lists is not in
the official training script (and the paper text was not found), so it is not implemented.

fp16/bf16 inputs are computed in float32 and the loss is returned in float32.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from losslab._core import (
    LossModule,
    Reduction,
    check_float,
    check_labels,
    check_matrix,
    check_same_device,
    compute_dtype,
    reduce,
    require,
)
from losslab.registry import register

__all__ = [
    "FeatureMeanMatchingLoss",
    "TrajectoryMatchingLoss",
    "feature_mean_matching_loss",
    "trajectory_matching_loss",
]

AST_PAPER = ("Efficient Dataset Distillation through Alignment with Smooth and High-Quality "
             "Expert Trajectories")


def _flat_rows(name: str, x: Tensor) -> Tensor:
    check_float(name, x)
    if x.ndim < 1:
        raise ValueError(f"{name} must have one row per trajectory, shape [N, ...], got a "
                         f"scalar")
    return x.reshape(x.shape[0], math.prod(x.shape[1:]))


def trajectory_matching_loss(pred: Tensor, target: Tensor, *, start: Tensor | None = None,
                             reduction: Reduction = "mean") -> Tensor:
    r"""Trajectory matching: the student's parameters after training on the synthetic data,
    against the expert's parameters further along its real-data trajectory, normalised by how
    far the expert moved.

    .. math::
        \ell = \frac{\lVert \hat\theta_{t+N} - \theta^*_{t+M} \rVert_2^2}
        {\lVert \theta^*_t - \theta^*_{t+M} \rVert_2^2}

    with :math:`\theta^*_t` the expert's parameters at epoch ``t`` (``start``; the student
    starts there and takes ``N`` steps on the synthetic set to :math:`\hat\theta_{t+N}`,
    ``pred``) and :math:`\theta^*_{t+M}` the expert ``M`` epochs later (``target``). The
    normalisation makes segments from early (large moves) and late (small moves) epochs
    comparable; the gradient reaches the synthetic images and learning rate through
    :math:`\hat\theta_{t+N}` (unrolled inner loop). AST perturbs the starting point (Gaussian
    noise scaled to the weights) and uses the perturbed :math:`\theta^*_t` in the
    denominator too: pass that as ``start``. Without ``start`` the loss is the unnormalised
    squared distance. AST adds :func:`feature_mean_matching_loss` with weight 0.1.

    Verified against the official code (``distill.py``, shenjiyuan123/AST-Alignment-with-
    Smooth-Expert), which follows MTT (Cazenavette et al., arXiv 2203.11932).

    Args:
        pred: ``[N, ...]`` student parameters at the end of the inner loop, one row per
            trajectory segment (a single model: ``[1, P]``).
        target: expert parameters :math:`\theta^*_{t+M}`, the shape of ``pred``.
        start: optional expert starting parameters :math:`\theta^*_t`, the shape of ``pred``
            (must differ from ``target``).
        reduction: ``"mean"`` over segments, ``"sum"`` or ``"none"`` (``[N]``).

    Returns:
        The loss, float32 for half inputs.

    Paper: Shen, Yang, Shen, Wu, Wang, Zhang, "Efficient Dataset Distillation through
    Alignment with Smooth and High-Quality Expert Trajectories", arXiv 2310.10541.
    """
    p, t = _flat_rows("pred", pred), _flat_rows("target", target)
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have one shape, got {tuple(pred.shape)} and "
                         f"{tuple(target.shape)}")
    check_same_device(pred=pred, target=target)
    dtype = compute_dtype(pred.dtype)
    p, t = p.to(dtype), t.to(dtype)
    num = (p - t).pow(2).sum(1)
    if start is None:
        return reduce(num, reduction)
    s = _flat_rows("start", start)
    if start.shape != pred.shape:
        raise ValueError(f"start must have the shape of pred {tuple(pred.shape)}, got "
                         f"{tuple(start.shape)}")
    check_same_device(pred=pred, start=start)
    den = (s.to(dtype) - t).pow(2).sum(1)
    require(den > 0, "start and target must differ (the expert segment has zero length)")
    return reduce(num / torch.where(den > 0, den, torch.ones_like(den)), reduction)


@register("trajectory_matching", family="distillation", kind="regression", paper=AST_PAPER,
          arxiv="2310.10541", summary="|theta_student - theta*_{t+M}|^2 / |theta*_t - "
          "theta*_{t+M}|^2", reduction="per trajectory")
class TrajectoryMatchingLoss(LossModule, function=trajectory_matching_loss):
    """Module form of :func:`trajectory_matching_loss`: ``forward(pred, target, *,
    start=None)``."""

    function_only = ("start",)

    def forward(self, pred: Tensor, target: Tensor, *, start: Tensor | None = None) -> Tensor:
        return trajectory_matching_loss(pred, target, start=start, **self.call_kwargs())


def feature_mean_matching_loss(embeddings: Tensor, labels: Tensor, *,
                               ref_embeddings: Tensor | None = None,
                               ref_labels: Tensor | None = None,
                               reduction: Reduction = "mean") -> Tensor:
    r"""Class-mean feature matching (AST's intermediate alignment loss): the mean feature of
    each class's synthetic images against the mean feature of real images of that class.

    .. math::
        \mathcal L = \sum_{c} \frac{1}{D} \big\lVert \mu_c(\text{syn}) - \mu_c(\text{real})
        \big\rVert_2^2

    over the classes of the synthetic batch, with features from the student network after the
    inner loop (AST sums it over the network's layers -- call once per layer -- and adds it to
    :func:`trajectory_matching_loss` with weight 0.1). Without ``ref_embeddings`` the batch is
    its own reference (zero loss).

    Verified against the official code (the alignment loss of ``distill.py``,
    shenjiyuan123/AST-Alignment-with-Smooth-Expert).

    Args:
        embeddings: ``[N, D]`` features of the synthetic images (flatten a convolutional
            layer's maps to ``[N, C * H * W]``: the official code's MSE averages over them).
        labels: ``[N]`` their classes.
        ref_embeddings: ``[M, D]`` features of real images; ``ref_labels``: ``[M]`` their
            classes (every class of ``labels`` must occur).
        reduction: ``"mean"`` over the classes, ``"sum"`` (AST's: a sum over classes) or
            ``"none"`` (``[N]``: each synthetic sample's share, its class's term divided by
            the class's count, so that the shares of a class add up to its term).

    Returns:
        The loss, float32 for half inputs.

    Paper: Shen, Yang, Shen, Wu, Wang, Zhang, "Efficient Dataset Distillation through
    Alignment with Smooth and High-Quality Expert Trajectories", arXiv 2310.10541.
    """
    check_matrix("embeddings", embeddings)
    y = check_labels("labels", labels, embeddings.shape[0], of="embeddings")
    if (ref_embeddings is None) != (ref_labels is None):
        raise ValueError("ref_embeddings and ref_labels must be given together")
    dtype = compute_dtype(embeddings.dtype)
    x = embeddings.to(dtype)
    if ref_embeddings is None or ref_labels is None:
        r, ry = x, y
    else:
        check_matrix("ref_embeddings", ref_embeddings, dim=embeddings.shape[1])
        ry = check_labels("ref_labels", ref_labels, ref_embeddings.shape[0],
                          of="ref_embeddings")
        check_same_device(embeddings=embeddings, ref_embeddings=ref_embeddings)
        r = ref_embeddings.to(dtype)
    y, ry = y.to(x.device), ry.to(x.device)
    same = (y.unsqueeze(1) == y.unsqueeze(0)).to(dtype)  # [N, N]
    to_ref = (y.unsqueeze(1) == ry.unsqueeze(0)).to(dtype)  # [N, M]
    n_ref = to_ref.sum(1)
    require(n_ref > 0, "every class of labels must occur in ref_labels (real features of "
            "each synthetic class)")
    n_same = same.sum(1)
    mu_syn = same @ x / n_same.unsqueeze(1)
    mu_ref = to_ref @ r / n_ref.clamp_min(1).unsqueeze(1)
    per_class = (mu_syn - mu_ref).pow(2).mean(1)
    share = per_class / n_same
    return reduce(share, reduction, count=(1.0 / n_same).sum())


@register("feature_mean_matching", family="distillation", kind="embeddings", paper=AST_PAPER,
          arxiv="2310.10541", summary="sum_c mean_d (mu_c(synthetic) - mu_c(real))^2",
          reduction="per sample (its share of its class's term)")
class FeatureMeanMatchingLoss(LossModule, function=feature_mean_matching_loss):
    """Module form of :func:`feature_mean_matching_loss` (``loss(syn, y, ref_embeddings=real,
    ref_labels=y_real)``)."""
