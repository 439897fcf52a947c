r"""KD-Loss with assistive losses for facial-landmark regression from two teachers (a
Tough-Teacher trained on the ground truth and a Tolerant-Teacher trained on soft landmarks).

A plain function, not a registered loss: it takes the student's prediction, the ground truth
and both teachers' predictions, which no call kind of the registry describes.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from losslab._core import check_float, check_same_device, compute_dtype

__all__ = ["LandmarkKD", "landmark_kd_loss"]


class LandmarkKD(NamedTuple):
    """The total and its three parts (each a scalar)."""

    total: Tensor
    main: Tensor
    tough_assist: Tensor
    tolerant_assist: Tensor


def _assist_map(pred: Tensor, target: Tensor, teacher: Tensor, beyond: float, between: float,
                near: float) -> tuple[Tensor, Tensor]:
    """``(reflected teacher, weight map)`` of one teacher, per coordinate."""
    side = torch.sign(pred - target)
    dist = (teacher - target).abs()
    reflected = target + side * dist  # the teacher moved to the student's side of the truth
    bound = target + side * dist * near
    # beyond the teacher (farther from the truth): pulled towards it with weight `beyond`;
    # between the bound and the teacher: weight `between` (negative: pushed past it)
    zero = torch.zeros((), dtype=pred.dtype, device=pred.device)  # (scalars would be float32)
    w = torch.where(torch.sign(pred - reflected) * torch.sign(reflected - target) > 0,
                    zero + beyond, zero)
    w = w + torch.where(torch.sign(reflected - pred) * torch.sign(pred - bound) >= 0,
                        zero + between, zero)
    return reflected, w


def landmark_kd_loss(
    pred: Tensor,
    target: Tensor,
    tough: Tensor,
    tolerant: Tensor,
    *,
    main_weight: float = 1.0,
    tough_weight: float = 1.0,
    tolerant_weight: float = 1.0,
    tough_beyond: float = 1.9,
    tough_between: float = -0.45,
    tolerant_beyond: float = 1.8,
    tolerant_between: float = -0.4,
    near: float = 0.15,
) -> LandmarkKD:
    r"""KD-Loss + ALoss for landmark regression, per coordinate and averaged over all.

    With :math:`x` the student's coordinate, :math:`y` the ground truth and a teacher's
    prediction :math:`t` *reflected* to the student's side of the truth,
    :math:`\tilde t = y + \operatorname{sign}(x - y)\,|t - y|` (and the bound
    :math:`b = y + \operatorname{sign}(x - y)\,0.15\,|t - y|`):

    * main term (the Tolerant-Teacher's distance :math:`\delta = |t_{tol} - y|` splits it):
      :math:`3|y - x|` where :math:`|y - x| \le \delta`, else
      :math:`(y - x)^2 + 3\delta - \delta^2` (continuous at :math:`\delta`);
    * assistive term of each teacher: :math:`w\,|\tilde t - x|` with :math:`w = a^+` where
      the student is beyond the teacher (farther from the truth), plus :math:`w = a^-`
      (negative) where it lies between :math:`b` and :math:`\tilde t`, else 0.

    :math:`L = \lambda_m \overline{\text{main}} + \lambda_{tough} \overline{\text{assist}_{tough}}
    + \lambda_{tol} \overline{\text{assist}_{tol}}`, each a mean over every coordinate of the
    batch. The region weights are constants (gradients flow through the distances only).

    Args:
        pred: ``[N, 2K]`` (or any shape) student landmark coordinates.
        target: ground-truth coordinates, same shape.
        tough: the Tough-Teacher's predictions (trained on the ground truth), same shape.
        tolerant: the Tolerant-Teacher's predictions (trained on soft landmarks), same shape.
        main_weight, tough_weight, tolerant_weight: :math:`\lambda`s (default 1.0 each; the
            official ``main.py`` passes them as arguments, its values were not checked here).
        tough_beyond, tough_between: :math:`a^\pm` of the Tough-Teacher (defaults 1.9, -0.45).
        tolerant_beyond, tolerant_between: those of the Tolerant-Teacher (1.8, -0.4): the
            values of the official ``student_train.py`` (another file of the same repository
            uses 0.9 / 0.8 for the positive weights).
        near: the bound's fraction of the teacher's distance (default 0.15, official).

    Returns:
        :class:`LandmarkKD` ``(total, main, tough_assist, tolerant_assist)``.

    Formula from the official code (github.com/aliprf/KD-Loss, ``custom_Losses.kd_loss``);
    the paper's text was not available here.

    Paper: Fard, Mahoor, "Facial Landmark Points Detection Using Knowledge Distillation-Based
    Neural Networks", arXiv 2111.07047 (Computer Vision and Image Understanding, 2022).
    """
    for name, x in (("pred", pred), ("target", target), ("tough", tough),
                    ("tolerant", tolerant)):
        check_float(name, x)
        if x.shape != pred.shape:
            raise ValueError(f"{name} must have pred's shape {tuple(pred.shape)}, got "
                             f"{tuple(x.shape)}")
    check_same_device(pred=pred, target=target, tough=tough, tolerant=tolerant)
    if pred.numel() == 0:
        raise ValueError("pred must hold at least one coordinate")
    if not 0 <= near <= 1:
        raise ValueError(f"near must be in [0, 1], got {near}")
    cd = compute_dtype(pred.dtype)
    x, y = pred.to(cd), target.to(cd)
    t_tough, t_tol = tough.detach().to(cd), tolerant.detach().to(cd)
    delta = (y - t_tol).abs()
    err = (y - x).abs()
    main = torch.where(err <= delta, 3 * err, (y - x).square() + 3 * delta - delta.square())
    r_tough, w_tough = _assist_map(x, y, t_tough, tough_beyond, tough_between, near)
    r_tol, w_tol = _assist_map(x, y, t_tol, tolerant_beyond, tolerant_between, near)
    main_m = main.mean() * main_weight
    tough_m = (w_tough * (r_tough - x).abs()).mean() * tough_weight
    tol_m = (w_tol * (r_tol - x).abs()).mean() * tolerant_weight
    return LandmarkKD(main_m + tough_m + tol_m, main_m, tough_m, tol_m)
