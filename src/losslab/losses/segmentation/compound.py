"""Compound region + pixel losses: Dice + cross-entropy and Dice + focal, soft-label correct.

Both are ``lambda_dice * Dice + lambda_<pixel> * pixel term`` per aggregation group (one image
with ``per_image=True``, the batch otherwise; see :mod:`losslab.losses.segmentation.overlap`
for the ``dense`` conventions, binary single-logit inputs included). The Dice term uses the L1
counts of Wang & Blaschko (arXiv 2302.05666): for hard labels it is the classic soft Dice
(:func:`~losslab.losses.segmentation.overlap.dice_loss`, same ``smooth``), for soft labels it
is the Dice semimetric, zero iff ``p == y``. The cross-entropy term with soft labels is
:math:`-\\sum_c y_c \\log p_c` (binary: :math:`-(y \\log p + (1-y) \\log(1-p))`), minimised at
``p = y``: so ``dice_ce`` is minimised exactly at the soft label, which monai's
``DiceCELoss`` is not (the gap user-demand item 17 records: MONAI PR #8666).

Per group :math:`g` the value is
:math:`L_g = \\lambda_D\\, \\mathrm{Dice}_g + \\lambda_P\\, \\mathrm{P}_g` with
:math:`\\mathrm{P}_g` the mean pixel term over the group's non-ignored pixels.
``reduction="none"`` returns ``[G]`` (``[N]`` per image, ``[1]`` with ``per_image=False``),
``"sum"`` its sum and ``"mean"`` the mean over groups with a non-ignored pixel (a batch whose
targets are all ignored is 0 with zero gradient). With ``per_image=False`` this is monai's
``DiceCELoss(batch=True)`` (CE averaged over every pixel of the batch); with
``per_image=True`` the pixel term is averaged per image, then over images (equal to monai's
batch-mean CE when no pixel is ignored).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from losslab._core import LossModule, Reduction, reduce
from losslab._hparams import Choice, Flag, Int, Real, hparams
from losslab._ops.dense import (
    CLASS_MODES,
    Classes,
    DenseBatch,
    active_classes,
    prepare_dense,
    safe_ratio,
    soft_counts,
)
from losslab._ops.numerics import safe_pow
from losslab.registry import register

__all__ = ["DiceCELoss", "DiceFocalLoss", "dice_ce_loss", "dice_focal_loss", "pixel_log_probs"]

_check_compound = hparams(smooth=Real(ge=0), per_image=Flag(), classes=Choice(*CLASS_MODES),
                          ignore_index=Int(), lambda_dice=Real(ge=0))
_check_dice_ce = _check_compound | hparams(lambda_ce=Real(ge=0))
_check_dice_focal = _check_compound | hparams(lambda_focal=Real(ge=0), gamma=Real(ge=0))


def pixel_log_probs(batch: DenseBatch) -> tuple[Tensor, Tensor]:
    """``(log p, y)`` over the *outcomes* of each pixel, ``[G, K, S]``: the ``C`` classes of a
    softmax input, or the two outcomes (foreground, background) of a single-logit input. Both
    are 0 at ignored pixels."""
    assert batch.scores is not None
    valid = batch.valid.unsqueeze(1)
    if batch.binary:
        z, y = batch.scores, batch.target
        logp = torch.cat([F.logsigmoid(z), F.logsigmoid(-z)], 1)
        y = torch.cat([y, torch.where(valid, 1 - y, torch.zeros_like(y))], 1)
    else:
        logp, y = F.log_softmax(batch.scores, dim=1), batch.target
    return torch.where(valid, logp, torch.zeros_like(logp)), y


def _dice_terms(batch: DenseBatch, smooth: float, classes: str) -> tuple[Tensor, Tensor]:
    """Per-group Dice (mean over active classes, L1 counts) ``[G]`` and the groups that count."""
    tp, pc, yc = soft_counts(batch, metric=True)
    per_class = 1 - safe_ratio(2 * tp + smooth, pc + yc + smooth)
    active = active_classes(batch, yc, classes)
    act = active.to(per_class.dtype)
    per_class = torch.where(active, per_class, torch.zeros_like(per_class))
    n_act = act.sum(1)
    return per_class.sum(1) / n_act.clamp_min(1), batch.valid.any(1)


def _combine(batch: DenseBatch, dice: Tensor, pixel: Tensor, lambda_dice: float,
             lambda_pixel: float, reduction: str) -> Tensor:
    """``[G, S]`` pixel terms -> per-group means; ``lambda_D Dice_g + lambda_P P_g``; reduce."""
    n_pix = batch.valid.sum(1).to(pixel.dtype)
    pixel_mean = pixel.sum(1) / n_pix.clamp_min(1)
    has = n_pix > 0
    values = lambda_dice * dice + lambda_pixel * pixel_mean
    values = torch.where(has, values, torch.zeros_like(values))
    return reduce(values, reduction, count=has.to(values.dtype).sum())


def dice_ce_loss(
    logits: Tensor,
    target: Tensor,
    *,
    lambda_dice: float = 1.0,
    lambda_ce: float = 1.0,
    smooth: float = 1e-5,
    per_image: bool = True,
    classes: Classes = "all",
    ignore_index: int = -100,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Dice + cross-entropy, exact for soft labels.

    .. math::
        L_g = \lambda_D \frac{1}{|A_g|} \sum_{c \in A_g}
        \Big(1 - \frac{\|p_c\|_1 + \|y_c\|_1 - \|p_c - y_c\|_1 + s}{\|p_c\|_1 + \|y_c\|_1 + s}
        \Big) + \lambda_{CE} \frac{1}{|\Omega_g|} \sum_{i \in \Omega_g} \Big(-\sum_k y_{ik}
        \log p_{ik}\Big)

    (:math:`A_g` the active classes, :math:`\Omega_g` the non-ignored pixels of group
    :math:`g`; for hard labels the first term is the classic soft Dice loss).

    Args:
        logits: ``[N, C, *spatial]`` (softmax) or ``[N, 1, *spatial]`` (sigmoid, binary
            cross-entropy on the foreground logit).
        target: class ids ``[N, *spatial]`` or soft labels (``[N, C, ...]`` distributions;
            ``[N, 1, ...]`` foreground probabilities for a single logit).
        lambda_dice, lambda_ce: weights of the two terms (default 1 and 1, monai's).
        smooth: Dice smoothing (default 1e-5, monai's ``smooth_nr = smooth_dr``).
        per_image, classes, ignore_index: the Dice term's conventions (as
            :func:`~losslab.losses.segmentation.overlap.dice_loss`; defaults are monai's
            ``batch=False``, ``include_background=True``); ``ignore_index`` pixels are left out
            of both terms.
        reduction: see the module docstring.

    Peer: ``monai.losses.DiceCELoss(softmax=True, to_onehot_y=True)`` for hard labels
    (equal with ``per_image=False`` and ``batch=True``, and with ``per_image=True`` when no
    pixel is ignored).

    Papers: the Dice loss of Milletari et al. (arXiv 1606.04797) with the soft-label counts of
    Wang, Ning, Blaschko (arXiv 2302.05666); the Dice + CE compound as in nnU-Net (Isensee et
    al., arXiv 1809.10486).
    """
    _check_dice_ce(lambda_dice=lambda_dice, lambda_ce=lambda_ce, smooth=smooth,
                   per_image=per_image, classes=classes, ignore_index=ignore_index)
    batch = prepare_dense(logits, target, ignore_index=ignore_index, per_image=per_image,
                          loss="dice_ce")
    dice, _ = _dice_terms(batch, smooth, classes)
    logp, y = pixel_log_probs(batch)
    ce = -(y * logp).sum(1)
    return _combine(batch, dice, ce, lambda_dice, lambda_ce, reduction)


@register(
    "dice_ce",
    family="segmentation",
    kind="dense",
    paper="nnU-Net: Self-adapting Framework for U-Net-Based Medical Image Segmentation",
    arxiv="1809.10486",
    summary="lambda_dice Dice (L1 counts, soft-label exact) + lambda_ce CE, per group",
    peers=("monai.losses.DiceCELoss",),
    reduction="per image ([1] with per_image=False)",
    degenerate=("all_ignored",),
)
class DiceCELoss(LossModule, function=dice_ce_loss, check=_check_dice_ce):
    """Module form of :func:`dice_ce_loss`."""


def dice_focal_loss(
    logits: Tensor,
    target: Tensor,
    *,
    lambda_dice: float = 1.0,
    lambda_focal: float = 1.0,
    gamma: float = 2.0,
    smooth: float = 1e-5,
    per_image: bool = True,
    classes: Classes = "all",
    ignore_index: int = -100,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Dice + focal loss (Dice term exact for soft labels).

    .. math::
        L_g = \lambda_D\,\mathrm{Dice}_g + \lambda_F \frac{1}{|\Omega_g|}
        \sum_{i \in \Omega_g} \Big(-\sum_k y_{ik} (1 - p_{ik})^{\gamma} \log p_{ik}\Big)

    with the Dice term of :func:`dice_ce_loss`. The focal term sums over the *outcomes* of a
    pixel: the ``C`` classes of a softmax input (the softmax focal loss of Lin et al.), or
    foreground and background of a single logit (the sigmoid focal loss:
    :math:`-y (1-p)^\gamma \log p - (1-y) p^\gamma \log(1-p)`). With soft labels it is the
    expectation of the hard-label focal loss under :math:`y` (linear in the target). It is
    *not* minimised at ``p = y`` for :math:`\gamma > 0` (the focal loss is not a proper scoring
    rule: it prefers less confident predictions); ``gamma=0`` is :func:`dice_ce_loss`.

    Args:
        logits, target, smooth, per_image, classes, ignore_index, reduction: as
            :func:`dice_ce_loss`.
        lambda_dice, lambda_focal: weights (default 1 and 1, monai ``DiceFocalLoss``).
        gamma: focusing exponent :math:`\gamma \ge 0` (default 2, the paper's).

    Peer: ``monai.losses.DiceFocalLoss(sigmoid=True)`` on a single channel with hard labels
    (its sigmoid focal term is the binary form above). For ``C >= 2`` monai applies a sigmoid
    focal loss to every one-hot channel, a different pixel term.

    Papers: Lin, Goyal, Girshick, He, Dollár, "Focal Loss for Dense Object Detection",
    arXiv 1708.02002; Dice as in :func:`dice_ce_loss`; the Dice + focal compound of Zhu et al.,
    "AnatomyNet", arXiv 1808.05238.
    """
    _check_dice_focal(lambda_dice=lambda_dice, lambda_focal=lambda_focal, gamma=gamma,
                      smooth=smooth, per_image=per_image, classes=classes,
                      ignore_index=ignore_index)
    batch = prepare_dense(logits, target, ignore_index=ignore_index, per_image=per_image,
                          loss="dice_focal")
    dice, _ = _dice_terms(batch, smooth, classes)
    logp, y = pixel_log_probs(batch)
    weight = safe_pow(-torch.expm1(logp), gamma)  # (1 - p)^gamma, finite gradient at p = 1
    focal = -(y * weight * logp).sum(1)
    return _combine(batch, dice, focal, lambda_dice, lambda_focal, reduction)


@register(
    "dice_focal",
    family="segmentation",
    kind="dense",
    paper="AnatomyNet: Deep Learning for Fast and Fully Automated Whole-volume Segmentation "
    "of Head and Neck Anatomy",
    arxiv="1808.05238",
    summary="lambda_dice Dice (L1 counts) + lambda_focal focal (gamma=2), per group",
    peers=("monai.losses.DiceFocalLoss",),
    reduction="per image ([1] with per_image=False)",
    degenerate=("all_ignored",),
)
class DiceFocalLoss(LossModule, function=dice_focal_loss, check=_check_dice_focal):
    """Module form of :func:`dice_focal_loss`."""
