r"""Dual-Head Knowledge Distillation (DHKD): the auxiliary classifier head that BinaryKL
trains, as one module holding that head and the combined objective.

Not a registered loss: it owns a learnable head and is called with the backbone's features
as well as both heads' inputs, which no call kind of the registry describes. Its loss terms
are the registered :func:`~losslab.functional.binary_kl_loss`, ``cross_entropy`` and
:func:`~losslab.functional.kd_loss`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from losslab._core import check_labels, check_matrix
from losslab.losses.distillation.classic import binary_kl_loss, kd_loss

__all__ = ["DualHeadKD"]


class DualHeadKD(nn.Module):
    r"""The DHKD objective with its auxiliary head.

    The student's backbone features :math:`f` feed two heads: the model's own classifier
    (``main_logits``, computed by the caller) and this module's auxiliary head
    :math:`a = \mathrm{aux}(f)`. The logit-level BinaryKL trains only the auxiliary head (and,
    through it, the backbone), so it never competes with the probability-level terms on the
    main classifier (the paper's motivation):

    .. math::
        L = \gamma\, \mathrm{CE}(z, y)
            + \lambda\, T_{kd}^2\,\mathrm{KL}(p^t_{T_{kd}} \| p^z_{T_{kd}})
            + \alpha\, \mathrm{BinaryKL}(a, t;\ T, \text{norm})

    The official training code (``train_student.py --distill dhkd``) uses
    :math:`\gamma = 1` (``--gamma``), :math:`\lambda = 0` (no softmax KD term in that mode),
    BinaryKL-Norm at :math:`T = 2` (``--BinaryKL_T``) and a user-chosen :math:`\alpha`
    (``--alpha``, no default); the auxiliary head is a linear layer (``--linear``; the
    non-linear option is ``Linear(d, 200), Dropout(0.1), BatchNorm1d, ReLU, Linear(200, C)``).
    Its optional gradient-alignment optimizer (``--ga``) is a training procedure, not part of
    this loss. At test time only the main head is used.

    Args:
        in_features: width ``d`` of the backbone features.
        num_classes: ``C``.
        binary_kl_weight: :math:`\alpha > 0` (required: the official code has no default).
        ce_weight: :math:`\gamma \ge 0` (default 1.0).
        kd_weight: :math:`\lambda \ge 0` of an optional Hinton KD term on the main head
            (default 0.0, as the official ``dhkd`` mode).
        kd_temperature: :math:`T_{kd}` of that term (default 4.0, the official ``--kd_T``).
        temperature: BinaryKL temperature :math:`T` (default 2.0, official).
        norm: BinaryKL-Norm (default True, the official ``dhkd`` criterion) or BinaryKL.
        aux_linear: a linear auxiliary head (default) or the official non-linear one.

    Paper: Yang, Zong, Huang, Feng, An, "Dual-Head Knowledge Distillation: Enhancing Logits
    Utilization with an Auxiliary Head", arXiv 2411.08937 (code: github.com/penghui-yang/DHKD;
    the combination above is read from its ``helper/loops.py`` and ``train_student.py``).
    """

    def __init__(
        self, *, in_features: int, num_classes: int, binary_kl_weight: float,
        ce_weight: float = 1.0, kd_weight: float = 0.0, kd_temperature: float = 4.0,
        temperature: float = 2.0, norm: bool = True, aux_linear: bool = True,
    ) -> None:
        super().__init__()
        for name, value in (("in_features", in_features), ("num_classes", num_classes)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not binary_kl_weight > 0:
            raise ValueError(f"binary_kl_weight must be > 0, got {binary_kl_weight}")
        for name, value in (("ce_weight", ce_weight), ("kd_weight", kd_weight)):
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        for name, value in (("kd_temperature", kd_temperature), ("temperature", temperature)):
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        self.binary_kl_weight, self.ce_weight, self.kd_weight = (
            float(binary_kl_weight), float(ce_weight), float(kd_weight))
        self.kd_temperature, self.temperature, self.norm = (
            float(kd_temperature), float(temperature), bool(norm))
        self.aux_head: nn.Module = nn.Linear(in_features, num_classes) if aux_linear else \
            nn.Sequential(nn.Linear(in_features, 200), nn.Dropout(p=0.1), nn.BatchNorm1d(200),
                          nn.ReLU(), nn.Linear(200, num_classes))

    def forward(self, features: Tensor, main_logits: Tensor, teacher_logits: Tensor,
                target: Tensor) -> Tensor:
        """``features [N, d]`` of the student's backbone, ``main_logits [N, C]`` of its own
        head, ``teacher_logits [N, C]`` (detached) and ``target [N]``; returns the scalar
        objective (means over the batch)."""
        check_matrix("features", features)
        check_matrix("main_logits", main_logits, min_rows=1)
        if features.shape[0] != main_logits.shape[0]:
            raise ValueError(f"features must have main_logits' {main_logits.shape[0]} rows, got "
                             f"{features.shape[0]}")
        target = check_labels("target", target, main_logits.shape[0], of="main_logits")
        aux = self.aux_head(features)
        loss = self.binary_kl_weight * binary_kl_loss(
            aux, teacher_logits, temperature=self.temperature, norm=self.norm)
        if self.ce_weight:
            loss = loss + self.ce_weight * F.cross_entropy(main_logits.float(), target)
        if self.kd_weight:
            loss = loss + self.kd_weight * kd_loss(main_logits, teacher_logits, alpha=1.0,
                                                   temperature=self.kd_temperature)
        return loss

    @torch.no_grad()
    def aux_logits(self, features: Tensor) -> Tensor:
        """The auxiliary head's logits (for inspection; predictions use the main head)."""
        return self.aux_head(features)
