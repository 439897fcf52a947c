r"""Feature-level distillation: the ND loss (feature norm and direction).

Kind ``teacher`` with features instead of logits: ``loss(student_features[N, D],
teacher_features[N, D], *, target[N])``; the teacher's class means are the module's buffer.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from losslab._core import (
    LossModule,
    Reduction,
    check_labels,
    check_matrix,
    check_reduction,
    check_same_device,
    reduce,
    require,
)
from losslab._ops.teacher import check_teacher_pair
from losslab.registry import register

__all__ = ["NDLoss", "nd_loss"]

ND = "Improving Knowledge Distillation via Regularizing Feature Norm and Direction"


def nd_loss(
    student_features: Tensor,
    teacher_features: Tensor,
    *,
    target: Tensor,
    class_means: Tensor,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""ND loss: align the student feature's direction with the teacher's class mean and push
    its norm up.

    With :math:`e_c = \mu_c / \|\mu_c\|` the unit direction of the teacher's mean feature of
    class :math:`c` (over the training set, computed once from the trained teacher):

    .. math::
        \ell_i = 1 - \frac{f^s_i \cdot e_{y_i}}{\max(\|f^s_i\|, \|f^t_i\|)}

    The projection of the student feature on the class direction is normalised by the larger
    of the two norms, so the loss keeps decreasing while the student's norm grows up to the
    teacher's (the "norm" part) and is 0 only when :math:`f^s_i` points along :math:`e_{y_i}`
    with at least the teacher's norm. A row where both features are zero gives 1 with zero
    gradient. Used next to a logit KD loss (the paper's KD++, DKD++: CE + KD + ND, weight 1).

    Args:
        student_features: ``[N, D]`` penultimate-layer student features (the same width as
            the teacher's: the official code adds a linear projection when they differ).
        teacher_features: ``[N, D]`` teacher features of the same inputs.
        target: ``[N]`` class ids in ``[0, K)``.
        class_means: ``[K, D]`` teacher class-mean features (need not be normalised).
        reduction: ``"mean"`` over rows (the official code: sum / N), ``"sum"``, ``"none"``.

    Formula from the official code (github.com/WangYZ1608/Knowledge-Distillation-via-ND,
    ``DirectNormLoss`` in ``CIFAR/utils.py``) and the paper's description.

    Paper: Wang, Cheng, Duan, Wang, Feng, Kong, "Improving Knowledge Distillation via
    Regularizing Feature Norm and Direction", arXiv 2305.17007 (ECCV 2024).
    """
    s, t = check_teacher_pair(student_features, teacher_features,
                              names=("student_features", "teacher_features"))
    if target is None:  # the kind's adapter passes target=None when it is left out
        raise ValueError("nd_loss needs target= (the [N] class ids of the rows)")
    check_matrix("class_means", class_means, dim=s.shape[1])
    target = check_labels("target", target, s.shape[0], of="student_features")
    check_same_device(student_features=student_features, target=target,
                      class_means=class_means)
    k = class_means.shape[0]
    require((target >= 0) & (target < k),  # no graph break under compile
            f"target must hold class ids in [0, {k}) (rows of class_means)")
    mu = class_means.to(s.dtype)
    mu_norm = torch.linalg.vector_norm(mu, dim=1, keepdim=True)
    require(mu_norm != 0, "class_means must have no zero row (a class mean has no direction)")
    e = (mu / mu_norm)[target]
    scale = torch.maximum(torch.linalg.vector_norm(s, dim=1), torch.linalg.vector_norm(t, dim=1))
    nonzero = scale != 0  # (a NaN scale stays NaN)
    safe = torch.where(nonzero, scale, torch.ones_like(scale))
    proj = torch.where(nonzero, (s * e).sum(1) / safe, torch.zeros_like(scale))
    return reduce(1 - proj, reduction)


@register(
    "nd_loss",
    family="distillation",
    kind="teacher",
    paper=ND,
    arxiv="2305.17007",
    summary="1 - f_s . e_y / max(|f_s|, |f_t|), e_y the teacher's unit class-mean direction",
    example_hparams={"class_means": ((1.0, 0.5, 0.0, -0.5), (0.0, 1.0, 0.5, 0.0),
                                     (-1.0, 0.0, 1.0, 0.5), (0.5, -0.5, 0.0, 1.0))},
)
class NDLoss(LossModule, function=nd_loss):
    """Module form of :func:`nd_loss`; ``class_means`` ``[K, D]`` is kept as a buffer (it
    follows ``.to(device)`` and is saved by ``state_dict()``)."""

    def __init__(self, *, class_means: Any, reduction: Reduction = "mean") -> None:
        check_reduction(reduction)
        super().__init__(reduction=reduction)
        means = torch.as_tensor(class_means, dtype=torch.float32)
        check_matrix("class_means", means)
        self.register_buffer("class_means", means.clone())

    def call_kwargs(self) -> dict[str, Any]:
        return {**self.hparams, "class_means": self.class_means}
