r"""Multi-granularity distillation (MGD) for lightweight semi-supervised segmentation: the
image-level semantic-sensitive loss and the region-level content-aware loss.

``mgd_semantic`` is of kind ``teacher`` with dense inputs: ``loss(student_logits[N, C,
*spatial], teacher_logits[N, C, *spatial])``. :func:`mgd_content_loss` compares feature maps
of different widths (``[N, C_s, H, W]`` and ``[N, C_t, H', W']``), which no registry kind
describes, so it is a plain function. MGD's pixel-level consistency term is the standard
cross-entropy against the other branch's argmax pseudo-labels (``cross_entropy``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from losslab._core import (
    LossModule,
    Reduction,
    check_float,
    check_same_device,
    compute_dtype,
    reduce,
)
from losslab._ops.teacher import masked_difference
from losslab.registry import register

__all__ = ["MGDSemanticLoss", "mgd_content_loss", "mgd_semantic_loss"]

MGD = ("Multi-Granularity Distillation Scheme Towards Lightweight Semi-Supervised Semantic "
       "Segmentation")


def _check_dense_pair(student: Tensor, teacher: Tensor, s_name: str, t_name: str,
                      *, same_channels: bool = True, min_ndim: int = 2) -> None:
    check_float(s_name, student)
    check_float(t_name, teacher)
    if student.ndim < min_ndim:
        raise ValueError(f"{s_name} must have shape [N, C, ...] with at least {min_ndim} dims, "
                         f"got {tuple(student.shape)}")
    if same_channels and teacher.shape != student.shape:
        raise ValueError(f"{t_name} must have the shape of {s_name} {tuple(student.shape)}, got "
                         f"{tuple(teacher.shape)}")
    if not same_channels and (teacher.ndim != student.ndim or teacher.shape[0] !=
                              student.shape[0]):
        raise ValueError(f"{t_name} must have {s_name}'s batch size {student.shape[0]} and "
                         f"{student.ndim} dims, got {tuple(teacher.shape)}")
    check_same_device(**{s_name: student, t_name: teacher})


def mgd_semantic_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    target: Tensor | None = None,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""MGD's image-level semantic-sensitive loss: L1 distance of the image-level class
    scores (the spatially averaged logits) of student and teacher.

    .. math::
        \ell_i = \sum_c \Big| \tfrac{1}{|\Omega|} \textstyle\sum_{u \in \Omega} s_{icu}
                 - \tfrac{1}{|\Omega|} \sum_{u \in \Omega} t_{icu} \Big|

    over the pixels :math:`\Omega` (a ``[N, C]`` input has one "pixel": the L1 distance of the
    logits; a class masked with ``-inf`` in both contributes 0). The official code sums over
    the batch (``reduction="sum"``) and weights the sum by ``lambda_1``; ``"mean"`` (the
    default) divides by ``N``.

    Args:
        student_logits: ``[N, C, *spatial]`` student segmentation logits.
        teacher_logits: the teacher's, same shape (MGD: the other branch on the same mixed
            image; the official code does not detach it).
        target: unused (must be ``None``).
        reduction: ``"mean"`` over images, ``"sum"`` (official), or ``"none"`` (``[N]``).

    Formula from the official code (github.com/JayQine/MGD-SSSS, ``train.py``, "image-level
    semantic-sensitive loss"); the paper's text was not available here.

    Paper: Qin, Wang, Chen, Li, Wang, Liu, "Multi-Granularity Distillation Scheme Towards
    Lightweight Semi-Supervised Semantic Segmentation", arXiv 2208.10169 (ECCV 2022).
    """
    if target is not None:
        raise ValueError("mgd_semantic takes no target; got a target")
    _check_dense_pair(student_logits, teacher_logits, "student_logits", "teacher_logits")
    cd = compute_dtype(student_logits.dtype)
    s, t = student_logits.to(cd), teacher_logits.to(cd)
    dims = tuple(range(2, s.ndim))
    ps = s.mean(dims) if dims else s
    pt = t.mean(dims) if dims else t
    # a class masked (-inf) in both contributes 0, not inf - inf
    return reduce(masked_difference(ps, pt).abs().sum(1), reduction)


@register(
    "mgd_semantic",
    family="distillation",
    kind="teacher",
    paper=MGD,
    arxiv="2208.10169",
    summary="sum_c |mean_pixels s_c - mean_pixels t_c|: image-level class-score L1 (MGD)",
)
class MGDSemanticLoss(LossModule, function=mgd_semantic_loss):
    """Module form of :func:`mgd_semantic_loss`."""


def mgd_content_loss(
    student_features: Tensor,
    teacher_features: Tensor,
    *,
    grid: int = 7,
    eps: float = 1e-12,
) -> Tensor:
    r"""MGD's region-level content-aware loss: match the region-to-region cosine-similarity
    matrices of the student's and the teacher's feature maps.

    Each map ``[N, C, H, W]`` is average-pooled to a ``grid x grid`` map of region vectors
    (``adaptive_avg_pool2d``); :math:`A_{imn} = \cos(q_{im}, q_{in})` over the channels for
    the :math:`R = \text{grid}^2` regions, and

    .. math::
        L = \frac{1}{N R^2} \sum_{i, m, n} \big(A^s_{imn} - A^t_{imn}\big)^2

    (``F.mse_loss`` of the two matrices, as the official code). The widths may differ: only
    the ``R x R`` similarities are compared. A zero region vector has no direction: its norm
    is clamped at ``eps`` (the official code divides by the norm unguarded, NaN there).

    Args:
        student_features: ``[N, C_s, H, W]`` student features (MGD: the ASPP output).
        teacher_features: ``[N, C_t, H', W']`` teacher features.
        grid: regions per side (default 7, official).
        eps: smallest region-vector norm (default 1e-12).

    Returns the scalar mean. Formula from the official code (github.com/JayQine/MGD-SSSS,
    ``train.py`` "region-level content-aware loss" and ``criterion.py``); paper: arXiv
    2208.10169.
    """
    _check_dense_pair(student_features, teacher_features, "student_features",
                      "teacher_features", same_channels=False, min_ndim=4)
    if student_features.ndim != 4:
        raise ValueError(f"student_features must be [N, C, H, W], got "
                         f"{tuple(student_features.shape)}")
    if not isinstance(grid, int) or grid < 1:
        raise ValueError(f"grid must be a positive int, got {grid!r}")
    cd = compute_dtype(student_features.dtype)

    def similarity(f: Tensor) -> Tensor:
        q = F.adaptive_avg_pool2d(f.to(cd), (grid, grid)).flatten(2)  # [N, C, R]
        q = q / torch.linalg.vector_norm(q, dim=1, keepdim=True).clamp_min(eps)
        return q.transpose(1, 2) @ q  # [N, R, R]

    return F.mse_loss(similarity(student_features), similarity(teacher_features))
