"""Region (overlap) losses for semantic segmentation: Dice, Jaccard, Tversky, Focal Tversky,
Lovász-Softmax, Lovász hinge and the soft-label-compatible Jaccard Metric / Dice Semimetric
losses.

Kind ``dense``: ``loss(logits[N, C, *spatial], target)`` with ``target`` either integer class ids
``[N, *spatial]`` (pixels equal to ``ignore_index``, default -100, are left out) or soft labels
(class probabilities ``[N, C, *spatial]``, float, e.g. from label smoothing or a teacher). The
prediction is ``p = softmax(logits)`` over classes.

Binary inputs: a single logit channel (``logits[N, 1, *spatial]``) is a foreground logit,
``p = sigmoid(logits)``, and the loss has the one (foreground) class: the target is 0/1 class
ids ``[N, *spatial]`` (``ignore_index`` allowed) or foreground probabilities
``[N, 1, *spatial]`` in ``[0, 1]`` (soft labels). This is segmentation-models-pytorch's
``mode="binary"`` and monai's ``sigmoid=True`` on one channel; ``classes="present"`` then counts
only groups whose target has foreground mass. Give two channels (``[N, 2, ...]``) for a
softmax loss that also averages over the background class.

Every loss except Lovász-Softmax is built from per-class soft counts over an *aggregation
group* (one image with ``per_image=True``, the whole batch with ``per_image=False``; monai's
``batch=True``), with ``P_c = Σ p_c``, ``Y_c = Σ y_c`` over the non-ignored pixels of the group:

* the classic soft counts: :math:`TP_c = \\sum_i p_{ic} y_{ic}`;
* the metric counts of Wang & Blaschko (arXiv 2302.05666), exact for soft labels:
  :math:`TP_c = (\\|p_c\\|_1 + \\|y_c\\|_1 - \\|p_c - y_c\\|_1) / 2`, identical to the classic
  :math:`TP_c` for hard (0/1) labels;

and :math:`FP_c = P_c - TP_c`, :math:`FN_c = Y_c - TP_c`. The group's loss is the mean of the
per-class losses over its *active* classes:

* ``classes="all"``: every class (monai's convention; an absent class contributes
  ``1 - s / (P_c + s)``, close to 1 unless the prediction of that class is also ~0);
* ``classes="present"``: the classes with target mass in the group (``Y_c > 0``: for hard labels
  the classes that appear), as the Lovász-Softmax code (``classes='present'``) and the
  JDTLosses code (``active_classes_mode_hard="PRESENT"``).

A group without non-ignored pixels (or without an active class) contributes nothing:
``"mean"`` averages over the groups that have one, and a batch whose targets are all ignored
gives 0 with zero gradient. ``reduction="none"`` returns ``[N]`` (per-image loss) with
``per_image=True`` and ``[C]`` (per-class loss, 0 for inactive classes) with
``per_image=False``; ``"sum"`` is the sum of that vector and ``"mean"`` its mean over the
groups/classes that count. fp16/bf16 logits are computed in float32 and the loss is returned
in float32 (:func:`losslab._core.compute_dtype`).

Bad input: soft labels must be distributions over the class dim (non-negative, summing to 1
within ``losslab._core.PROB_ATOL``), else ``ValueError``; class ids may have any integer dtype
(bool is rejected). A NaN logit at a counted pixel gives a NaN loss (never a plausible number);
ignored pixels are not read. An empty batch (``N = 0`` or no pixels) is 0 with zero gradient,
like a batch whose targets are all ignored (the declared degenerate case ``all_ignored``); a
batch of one class is not degenerate (the loss of a non-perfect prediction is positive).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from losslab._core import LossModule, Reduction
from losslab._hparams import Choice, Flag, Int, Real, hparams
from losslab._ops.dense import (
    CLASS_MODES,
    Classes,
    active_classes,
    prepare_dense,
    reduce_groups,
    safe_ratio,
    soft_counts,
)
from losslab._ops.numerics import safe_pow
from losslab.registry import register

__all__ = [
    "DiceLoss",
    "DiceSemimetricLoss",
    "FocalTverskyLoss",
    "JaccardLoss",
    "JaccardMetricLoss",
    "LovaszHingeLoss",
    "LovaszSoftmaxLoss",
    "TverskyLoss",
    "dice_loss",
    "dice_semimetric_loss",
    "focal_tversky_loss",
    "jaccard_loss",
    "jaccard_metric_loss",
    "lovasz_hinge_loss",
    "lovasz_jaccard_weights",
    "lovasz_softmax_loss",
    "tversky_loss",
]

JML_PAPER = "Jaccard Metric Losses: Optimizing the Jaccard Index with Soft Labels"
#: What ``reduction="none"`` returns, for the registry.
_REDUCTION_DOC = "per image (per class with per_image=False)"


# The shared pieces (grouped softmax batch, soft counts, active classes, the reduction over
# groups) are in losslab._ops.dense.
#
# Hyperparameter rules (losslab._hparams): one declaration per group of losses, checked at
# construction (``check=``) and by the function.


def _tversky_weights(**values: Any) -> None:
    """Tversky: ``alpha + beta > 0`` (with both 0 the index is 1 and the loss 0 everywhere).
    Runs after the rules, so ``alpha`` and ``beta`` are finite reals >= 0 when given."""
    if "alpha" in values and "beta" in values and values["alpha"] + values["beta"] <= 0:
        raise ValueError(
            f"alpha + beta must be > 0, got {values['alpha']!r} + {values['beta']!r}")


#: Lovász-Softmax; every other loss adds ``smooth``.
_check_lovasz_softmax = hparams(per_image=Flag(), classes=Choice(*CLASS_MODES),
                                ignore_index=Int())
#: Jaccard, Jaccard Metric and Dice Semimetric.
_check_region = _check_lovasz_softmax | hparams(smooth=Real(ge=0))
_check_dice = _check_region | hparams(squared_denominator=Flag())
_check_tversky = _check_region | hparams(_tversky_weights, alpha=Real(ge=0), beta=Real(ge=0))
_check_focal_tversky = _check_tversky | hparams(gamma=Real(gt=0))


# --------------------------------------------------------------------------------------------
# Dice, Jaccard, Tversky, Focal Tversky (classic soft counts)
# --------------------------------------------------------------------------------------------


def dice_loss(
    logits: Tensor,
    target: Tensor,
    *,
    smooth: float = 1e-5,
    per_image: bool = True,
    squared_denominator: bool = False,
    classes: Classes = "all",
    ignore_index: int = -100,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Soft Dice loss, per class, averaged over classes.

    .. math::
        \ell_c = 1 - \frac{2 \sum_i p_{ic} y_{ic} + s}{\sum_i p_{ic} + \sum_i y_{ic} + s}
        \qquad\text{or, with squared\_denominator,}\qquad
        \ell_c = 1 - \frac{2 \sum_i p_{ic} y_{ic} + s}{\sum_i p_{ic}^2 + \sum_i y_{ic}^2 + s}

    with :math:`p = \operatorname{softmax}(\text{logits})` over classes and :math:`y` the one-hot
    (or soft) target; sums over the pixels of an aggregation group (see the module docstring).

    Args:
        logits: ``[N, C, *spatial]`` scores.
        target: ``[N, *spatial]`` class ids or ``[N, C, *spatial]`` soft labels (with soft
            labels this classic form is not minimised at ``p = y``; see
            :func:`dice_semimetric_loss`).
        smooth: :math:`s`, added to numerator and denominator (default 1e-5: monai's
            ``smooth_nr = smooth_dr``).
        per_image: one Dice per image and class (default, monai ``batch=False``) or one per
            class over the whole batch (``False``; monai ``batch=True``).
        squared_denominator: squares in the denominator (V-Net, Milletari et al.,
            arXiv 1606.04797; monai ``squared_pred=True``).
        classes: ``"all"`` (default, monai) or ``"present"`` (classes in the target).
        ignore_index: class id of pixels to leave out (class-id targets).
        reduction: see the module docstring.

    Peers: ``monai.losses.DiceLoss(softmax=True, to_onehot_y=True)`` (identical with
    ``classes="all"``); ``kornia.losses.dice_loss(average="macro")``: per image with
    ``smooth=0`` (kornia adds its ``eps`` to the denominator only), and the class set depends
    on the kornia release. Up to 0.9.0rc1 kornia averages over every class, i.e.
    ``classes="all"`` (the value its own ``test_averaging_macro`` asserts, a class absent from
    the target counting with loss 1); kornia 0.9.0 averages over the classes present in the
    image's non-ignored target, i.e. ``classes="present"``. kornia counts an image whose pixels
    are all ignored as loss 1; here such an image is left out of the mean.

    Paper: Milletari, Navab, Ahmadi, "V-Net: Fully Convolutional Neural Networks for Volumetric
    Medical Image Segmentation", arXiv 1606.04797.
    """
    _check_dice(smooth=smooth, squared_denominator=squared_denominator, per_image=per_image,
                classes=classes, ignore_index=ignore_index)
    batch = prepare_dense(logits, target, ignore_index=ignore_index, per_image=per_image,
                          loss="dice")
    tp, pc, yc = soft_counts(batch, metric=False, squared=squared_denominator)
    per_class = 1 - safe_ratio(2 * tp + smooth, pc + yc + smooth)
    return reduce_groups(per_class, active_classes(batch, yc, classes), reduction, per_image)


@register(
    "dice",
    family="segmentation",
    kind="dense",
    paper="V-Net: Fully Convolutional Neural Networks for Volumetric Medical Image Segmentation",
    arxiv="1606.04797",
    summary="1 - (2 sum p y + s) / (sum p + sum y + s) per class, mean over classes",
    peers=("monai.losses.DiceLoss", "kornia.losses.dice_loss"),
    reduction=_REDUCTION_DOC,
    degenerate=("all_ignored",),
)
class DiceLoss(LossModule, function=dice_loss, check=_check_dice):
    """Module form of :func:`dice_loss`."""


def _tversky_index(tp: Tensor, pc: Tensor, yc: Tensor, alpha: float, beta: float,
                   smooth: float) -> Tensor:
    fp, fn = pc - tp, yc - tp
    return safe_ratio(tp + smooth, tp + alpha * fp + beta * fn + smooth)


def jaccard_loss(
    logits: Tensor,
    target: Tensor,
    *,
    smooth: float = 1e-5,
    per_image: bool = True,
    classes: Classes = "all",
    ignore_index: int = -100,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Soft Jaccard (IoU) loss, per class, averaged over classes.

    .. math::
        \ell_c = 1 - \frac{\sum_i p_{ic} y_{ic} + s}
        {\sum_i p_{ic} + \sum_i y_{ic} - \sum_i p_{ic} y_{ic} + s}

    Args:
        logits, target: see :func:`dice_loss` (soft labels accepted; with soft labels the
            loss is not zero at ``p = y``: use :func:`jaccard_metric_loss`).
        smooth: :math:`s` (default 1e-5, as :func:`dice_loss`).
        per_image, classes, ignore_index, reduction: as :func:`dice_loss`.

    Peers: ``monai.losses.DiceLoss(jaccard=True)`` (which computes
    :math:`(2\,TP + s)/(2\,(TP+FP+FN) + s)`: equal to ours for ``smooth=0``);
    ``segmentation_models_pytorch.losses.JaccardLoss``.

    Paper: Rahman, Wang, "Optimizing Intersection-Over-Union in Deep Neural Networks for Image
    Segmentation" (ISVC 2016; no arXiv id); the multi-class soft form as in arXiv 2302.05666.
    """
    _check_region(smooth=smooth, per_image=per_image, classes=classes, ignore_index=ignore_index)
    batch = prepare_dense(logits, target, ignore_index=ignore_index, per_image=per_image,
                          loss="jaccard")
    tp, pc, yc = soft_counts(batch, metric=False)
    per_class = 1 - _tversky_index(tp, pc, yc, 1.0, 1.0, smooth)
    return reduce_groups(per_class, active_classes(batch, yc, classes), reduction, per_image)


@register(
    "jaccard",
    family="segmentation",
    kind="dense",
    paper="Optimizing Intersection-Over-Union in Deep Neural Networks for Image Segmentation",
    arxiv="",
    summary="1 - (sum p y + s) / (sum p + sum y - sum p y + s) per class, mean over classes",
    peers=("monai.losses.DiceLoss(jaccard=True)",
           "segmentation_models_pytorch.losses.JaccardLoss"),
    reduction=_REDUCTION_DOC,
    degenerate=("all_ignored",),
)
class JaccardLoss(LossModule, function=jaccard_loss, check=_check_region):
    """Module form of :func:`jaccard_loss`."""


def tversky_loss(
    logits: Tensor,
    target: Tensor,
    *,
    alpha: float = 0.3,
    beta: float = 0.7,
    smooth: float = 1e-5,
    per_image: bool = True,
    classes: Classes = "all",
    ignore_index: int = -100,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Tversky loss: a Dice/Jaccard generalisation weighting false positives and negatives.

    .. math::
        \ell_c = 1 - \frac{TP_c + s}{TP_c + \alpha\, FP_c + \beta\, FN_c + s},\qquad
        TP_c = \sum_i p_{ic} y_{ic},\ FP_c = \sum_i p_{ic} (1 - y_{ic}),\
        FN_c = \sum_i (1 - p_{ic}) y_{ic}

    ``alpha = beta = 0.5`` is Dice, ``alpha = beta = 1`` is Jaccard.

    Args:
        logits, target: see :func:`dice_loss`.
        alpha: weight of false positives (default 0.3) and ``beta`` of false negatives
            (default 0.7): the paper's best setting for lesion segmentation (monai's defaults
            are 0.5/0.5).
        smooth, per_image, classes, ignore_index, reduction: as :func:`dice_loss`.

    Peer: ``monai.losses.TverskyLoss(softmax=True, to_onehot_y=True)`` (same ``alpha``/``beta``
    convention).

    Paper: Salehi, Erdogmus, Gholipour, "Tversky loss function for image segmentation using 3D
    fully convolutional deep networks", arXiv 1706.05721.
    """
    _check_tversky(alpha=alpha, beta=beta, smooth=smooth, per_image=per_image, classes=classes,
                   ignore_index=ignore_index)
    batch = prepare_dense(logits, target, ignore_index=ignore_index, per_image=per_image,
                          loss="tversky")
    tp, pc, yc = soft_counts(batch, metric=False)
    per_class = 1 - _tversky_index(tp, pc, yc, alpha, beta, smooth)
    return reduce_groups(per_class, active_classes(batch, yc, classes), reduction, per_image)


@register(
    "tversky",
    family="segmentation",
    kind="dense",
    paper="Tversky loss function for image segmentation using 3D fully convolutional deep "
    "networks",
    arxiv="1706.05721",
    summary="1 - (TP + s) / (TP + alpha FP + beta FN + s), alpha=0.3 (FP), beta=0.7 (FN)",
    peers=("monai.losses.TverskyLoss",),
    reduction=_REDUCTION_DOC,
    degenerate=("all_ignored",),
)
class TverskyLoss(LossModule, function=tversky_loss, check=_check_tversky):
    """Module form of :func:`tversky_loss`."""


def focal_tversky_loss(
    logits: Tensor,
    target: Tensor,
    *,
    alpha: float = 0.3,
    beta: float = 0.7,
    gamma: float = 4.0 / 3.0,
    smooth: float = 1e-5,
    per_image: bool = True,
    classes: Classes = "all",
    ignore_index: int = -100,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Focal Tversky loss: the Tversky loss raised to the power :math:`1/\gamma`.

    .. math::
        \ell_c = \left(1 - TI_c\right)^{1/\gamma},\qquad
        TI_c = \frac{TP_c + s}{TP_c + \alpha\, FP_c + \beta\, FN_c + s}

    The paper sums :math:`\ell_c` over classes; here it is averaged over the active classes
    (like every loss of this module; the sum is ``C`` times the mean with ``classes="all"``).
    At :math:`TI_c = 1` the value is 0 with a zero gradient (the derivative of
    :math:`x^{1/\gamma}` is infinite at 0 for :math:`\gamma > 1`).

    Args:
        logits, target: see :func:`dice_loss`.
        alpha: weight of false positives (default 0.3), ``beta`` of false negatives (default
            0.7): the paper's :math:`\alpha = 0.7` on false negatives, in the convention of
            :func:`tversky_loss`.
        gamma: :math:`\gamma > 0` (default 4/3, the paper's value; it uses
            :math:`\gamma \in [1, 3]`; exponent ``1/gamma``).
        smooth, per_image, classes, ignore_index, reduction: as :func:`dice_loss`.

    ``gamma=1`` is :func:`tversky_loss`.

    Paper: Abraham, Khan, "A Novel Focal Tversky loss function with improved Attention U-Net for
    lesion segmentation", arXiv 1810.07842.
    """
    _check_focal_tversky(alpha=alpha, beta=beta, gamma=gamma, smooth=smooth,
                         per_image=per_image, classes=classes, ignore_index=ignore_index)
    batch = prepare_dense(logits, target, ignore_index=ignore_index, per_image=per_image,
                          loss="focal_tversky")
    tp, pc, yc = soft_counts(batch, metric=False)
    tversky = 1 - _tversky_index(tp, pc, yc, alpha, beta, smooth)
    # safe_pow treats a base <= 0 as 0, and so a NaN base: keep NaN a NaN.
    per_class = torch.where(tversky.isnan(), tversky, safe_pow(tversky, 1.0 / gamma))
    return reduce_groups(per_class, active_classes(batch, yc, classes), reduction, per_image)


@register(
    "focal_tversky",
    family="segmentation",
    kind="dense",
    paper="A Novel Focal Tversky loss function with improved Attention U-Net for lesion "
    "segmentation",
    arxiv="1810.07842",
    summary="(1 - Tversky index)^(1/gamma), gamma=4/3, alpha=0.3 (FP), beta=0.7 (FN)",
    reduction=_REDUCTION_DOC,
    degenerate=("all_ignored",),
)
class FocalTverskyLoss(LossModule, function=focal_tversky_loss, check=_check_focal_tversky):
    """Module form of :func:`focal_tversky_loss`."""


# --------------------------------------------------------------------------------------------
# Jaccard Metric Loss and Dice Semimetric Loss (soft-label compatible)
# --------------------------------------------------------------------------------------------


def jaccard_metric_loss(
    logits: Tensor,
    target: Tensor,
    *,
    smooth: float = 1e-3,
    per_image: bool = False,
    classes: Classes = "present",
    ignore_index: int = -100,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Jaccard Metric Loss (JML, L1 form): the soft Jaccard loss made exact for soft labels.

    .. math::
        \ell_c = 1 - \frac{\|p_c\|_1 + \|y_c\|_1 - \|p_c - y_c\|_1 + 2s}
        {\|p_c\|_1 + \|y_c\|_1 + \|p_c - y_c\|_1 + 2s}
        = 1 - \frac{TP_c + s}{TP_c + FP_c + FN_c + s}

    with the L1 counts :math:`TP_c = (\|p_c\|_1 + \|y_c\|_1 - \|p_c - y_c\|_1)/2`,
    :math:`FP_c = \|p_c\|_1 - TP_c`, :math:`FN_c = \|y_c\|_1 - TP_c` (norms over the pixels of
    an aggregation group). For hard labels :math:`TP_c = \sum_i p_{ic} y_{ic}` and JML equals
    :func:`jaccard_loss` (same ``smooth``); for soft labels, with ``smooth=0``, it is a metric
    on :math:`[0,1]^n`: zero iff ``p == y``, where the soft Jaccard loss is not.

    Args:
        logits: ``[N, C, *spatial]`` scores.
        target: ``[N, *spatial]`` class ids or ``[N, C, *spatial]`` soft labels.
        smooth: :math:`s` (default 1e-3, the JDTLosses code's ``smooth``, added to
            :math:`TP` as here).
        per_image: default ``False``: counts over the whole batch per class (the official
            code's default ``mIoUD`` / ``per_image=False``).
        classes: default ``"present"`` (the official code's mode for hard labels; for soft
            labels every class with target mass counts, close to its ``"ALL"`` mode).
        ignore_index: class id of pixels to leave out (class-id targets).
        reduction: see the module docstring.

    Peer: ``monai.losses.DiceLoss(jaccard=True, soft_label=True)`` (equal for ``smooth=0``,
    ``classes="all"``). Official code: github.com/zifuwanggg/JDTLosses.

    Paper: Wang, Ning, Blaschko, "Jaccard Metric Losses: Optimizing the Jaccard Index with Soft
    Labels", arXiv 2302.05666.
    """
    _check_region(smooth=smooth, per_image=per_image, classes=classes, ignore_index=ignore_index)
    batch = prepare_dense(logits, target, ignore_index=ignore_index, per_image=per_image,
                          loss="jaccard_metric")
    tp, pc, yc = soft_counts(batch, metric=True)
    per_class = 1 - _tversky_index(tp, pc, yc, 1.0, 1.0, smooth)
    return reduce_groups(per_class, active_classes(batch, yc, classes), reduction, per_image)


@register(
    "jaccard_metric",
    family="segmentation",
    kind="dense",
    paper=JML_PAPER,
    arxiv="2302.05666",
    summary="1 - (|p|+|y|-|p-y|)/(|p|+|y|+|p-y|) (L1 norms) per class; soft-label exact",
    peers=("monai.losses.DiceLoss(jaccard=True, soft_label=True)",),
    reduction=_REDUCTION_DOC,
    degenerate=("all_ignored",),
)
class JaccardMetricLoss(LossModule, function=jaccard_metric_loss, check=_check_region):
    """Module form of :func:`jaccard_metric_loss`."""


def dice_semimetric_loss(
    logits: Tensor,
    target: Tensor,
    *,
    smooth: float = 1e-3,
    per_image: bool = False,
    classes: Classes = "present",
    ignore_index: int = -100,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Dice Semimetric Loss (DML): the soft Dice loss made exact for soft labels.

    .. math::
        \ell_c = 1 - \frac{\|p_c\|_1 + \|y_c\|_1 - \|p_c - y_c\|_1 + s}
        {\|p_c\|_1 + \|y_c\|_1 + s}
        = 1 - \frac{2\,TP_c + s}{2\,TP_c + FP_c + FN_c + s}

    (L1 counts as :func:`jaccard_metric_loss`). For hard labels it equals :func:`dice_loss`
    (same ``smooth``); for soft labels, with ``smooth=0``, it is zero iff ``p == y`` (a
    semimetric: the triangle inequality does not hold).

    Args:
        logits, target, smooth, per_image, classes, ignore_index, reduction: as
            :func:`jaccard_metric_loss` (defaults from the JDTLosses code).

    Peer: ``monai.losses.DiceLoss(soft_label=True)`` (equal with ``smooth`` as
    ``smooth_nr = smooth_dr`` and ``classes="all"``).

    Paper: Wang, Ning, Blaschko, "Jaccard Metric Losses: Optimizing the Jaccard Index with Soft
    Labels", arXiv 2302.05666 (DML: Wang, Popordanoska, Bertels, Lemmens, Blaschko, "Dice
    Semimetric Losses: Optimizing the Dice Score with Soft Labels", arXiv 2303.16296).
    """
    _check_region(smooth=smooth, per_image=per_image, classes=classes, ignore_index=ignore_index)
    batch = prepare_dense(logits, target, ignore_index=ignore_index, per_image=per_image,
                          loss="dice_semimetric")
    tp, pc, yc = soft_counts(batch, metric=True)
    per_class = 1 - safe_ratio(2 * tp + smooth, pc + yc + smooth)
    return reduce_groups(per_class, active_classes(batch, yc, classes), reduction, per_image)


@register(
    "dice_semimetric",
    family="segmentation",
    kind="dense",
    paper=JML_PAPER,
    arxiv="2302.05666",
    summary="1 - (|p|+|y|-|p-y|)/(|p|+|y|) (L1 norms) per class; soft-label exact",
    peers=("monai.losses.DiceLoss(soft_label=True)",),
    reduction=_REDUCTION_DOC,
    degenerate=("all_ignored",),
)
class DiceSemimetricLoss(LossModule, function=dice_semimetric_loss, check=_check_region):
    """Module form of :func:`dice_semimetric_loss`."""


# --------------------------------------------------------------------------------------------
# Lovász-Softmax
# --------------------------------------------------------------------------------------------


def lovasz_jaccard_weights(fg_sorted: Tensor) -> Tensor:
    """Lovász extension weights of the Jaccard loss for errors sorted in decreasing order.

    ``fg_sorted``: ``[..., S]`` 0/1 ground truth of the class in the order of decreasing
    errors. Returns :math:`\\Delta_J(\\{\\pi_1..\\pi_i\\}) - \\Delta_J(\\{\\pi_1..\\pi_{i-1}\\})`
    with :math:`\\Delta_J(M) = |M| / |G \\cup M|` (Berman et al., eq. 8-9).
    """
    gts = fg_sorted.sum(-1, keepdim=True)
    intersection = gts - fg_sorted.cumsum(-1)
    union = gts + (1 - fg_sorted).cumsum(-1)  # >= 1 at every position
    jaccard = 1 - intersection / union
    return torch.cat([jaccard[..., :1], jaccard[..., 1:] - jaccard[..., :-1]], dim=-1)


def lovasz_softmax_loss(
    logits: Tensor,
    target: Tensor,
    *,
    per_image: bool = False,
    classes: Classes = "present",
    ignore_index: int = -100,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Lovász-Softmax loss: the Lovász extension of the per-class Jaccard loss, evaluated at
    the vector of pixel errors :math:`m_i(c) = |[y_i = c] - p_{ic}|`.

    .. math::
        \ell_c = \overline{\Delta_{J_c}}(m(c)) = \sum_{k=1}^{S} m_{\pi_k}(c)\,
        \big(\Delta_{J_c}(\{\pi_1, \dots, \pi_k\}) - \Delta_{J_c}(\{\pi_1, \dots,
        \pi_{k-1}\})\big),\qquad \Delta_{J_c}(M) = \frac{|M|}{|\{y = c\} \cup M|}

    with :math:`\pi` sorting the errors in decreasing order; the loss is the mean of
    :math:`\ell_c` over the active classes of a group. It is piecewise linear in ``p`` and
    equals the discrete Jaccard loss when ``p`` is a 0/1 prediction.

    Args:
        logits: ``[N, C, *spatial]`` scores.
        target: ``[N, *spatial]`` class ids (soft labels are not defined for the Lovász
            extension of the Jaccard set function: ``ValueError``).
        per_image: default ``False``: one Lovász loss per class over the whole batch (the
            official code's default); ``True``: per image, then averaged over images (images
            without non-ignored pixels are left out; the official code counts them as 0).
        classes: default ``"present"`` (the official code's default) or ``"all"``.
        ignore_index: class id of pixels to leave out.
        reduction: see the module docstring.

    Paper: Berman, Rannen Triki, Blaschko, "The Lovász-Softmax loss: A tractable surrogate for
    the optimization of the intersection-over-union measure in neural networks",
    arXiv 1705.08790.
    """
    _check_lovasz_softmax(per_image=per_image, classes=classes, ignore_index=ignore_index)
    batch = prepare_dense(logits, target, ignore_index=ignore_index, per_image=per_image,
                          soft_ok=False, loss="lovasz_softmax")
    errors = (batch.target - batch.probs).abs()  # 0 at ignored pixels
    errors_sorted, order = errors.sort(dim=-1, descending=True)
    fg_sorted = batch.target.gather(-1, order)
    per_class = (errors_sorted * lovasz_jaccard_weights(fg_sorted)).sum(-1)
    active = active_classes(batch, batch.target.sum(-1), classes)
    return reduce_groups(per_class, active, reduction, per_image)


@register(
    "lovasz_softmax",
    family="segmentation",
    kind="dense",
    paper="The Lovász-Softmax loss: A tractable surrogate for the optimization of the "
    "intersection-over-union measure in neural networks",
    arxiv="1705.08790",
    summary="Lovász extension of the per-class Jaccard loss at the errors |[y=c] - p_c|",
    reduction=_REDUCTION_DOC,
    degenerate=("all_ignored",),
)
class LovaszSoftmaxLoss(LossModule, function=lovasz_softmax_loss, check=_check_lovasz_softmax):
    """Module form of :func:`lovasz_softmax_loss`."""


# --------------------------------------------------------------------------------------------
# Lovász hinge (binary)
# --------------------------------------------------------------------------------------------


def lovasz_hinge_loss(
    logits: Tensor,
    target: Tensor,
    *,
    per_image: bool = True,
    classes: Classes = "all",
    ignore_index: int = -100,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Lovász hinge: the Lovász extension of the binary Jaccard loss at the hinge errors.

    .. math::
        \ell = \overline{\Delta_J}(m) = \sum_{k=1}^{S} m_{\pi_k}\,
        \big(\Delta_J(\{\pi_1..\pi_k\}) - \Delta_J(\{\pi_1..\pi_{k-1}\})\big),\qquad
        m_i = \max(0,\ 1 - z_i s_i),\quad s_i = 2 y_i - 1

    with :math:`z_i` the foreground logit, :math:`\pi` sorting :math:`m` in decreasing order
    and :math:`\Delta_J(M) = |M| / |\{y = 1\} \cup M|` (Berman et al., section 3.1 and eq. 10).

    Args:
        logits: ``[N, 1, *spatial]`` foreground logits (the paper's binary case). With
            ``C >= 2`` channels each channel is read as an independent (one-vs-rest) logit of
            its class, the hinge loss is computed per class and averaged over the active
            classes (an extension; the paper's multi-class loss is :func:`lovasz_softmax_loss`).
        target: ``[N, *spatial]`` class ids (0/1 for one channel); no soft labels.
        per_image: default ``True``: one loss per image, averaged over images (the official
            code's default for the hinge; images without non-ignored pixels are left out).
        classes: default ``"all"`` (the official binary code also counts images without
            foreground, where every positive logit is a mistake); ``"present"`` keeps only
            groups/classes with foreground.
        ignore_index, reduction: see the module docstring.

    Paper: Berman, Rannen Triki, Blaschko, "The Lovász-Softmax loss: A tractable surrogate for
    the optimization of the intersection-over-union measure in neural networks",
    arXiv 1705.08790.
    """
    _check_lovasz_softmax(per_image=per_image, classes=classes, ignore_index=ignore_index)
    batch = prepare_dense(logits, target, ignore_index=ignore_index, per_image=per_image,
                          soft_ok=False, loss="lovasz_hinge")
    assert batch.scores is not None
    signs = 2 * batch.target - 1
    hinge = 1 - batch.scores * signs
    # ignored pixels get a non-positive error: sorted after every positive one, weight times
    # relu(error) = 0 (the Lovász value only depends on the order of the positive errors)
    valid = batch.valid.unsqueeze(1)
    hinge = torch.where(valid, hinge, torch.full_like(hinge, -1.0))
    errors_sorted, order = hinge.sort(dim=-1, descending=True)
    fg_sorted = batch.target.gather(-1, order)
    per_class = (torch.relu(errors_sorted) * lovasz_jaccard_weights(fg_sorted)).sum(-1)
    active = active_classes(batch, batch.target.sum(-1), classes)
    return reduce_groups(per_class, active, reduction, per_image)


@register(
    "lovasz_hinge",
    family="segmentation",
    kind="dense",
    paper="The Lovász-Softmax loss: A tractable surrogate for the optimization of the "
    "intersection-over-union measure in neural networks",
    arxiv="1705.08790",
    summary="Lovász extension of the binary Jaccard loss at the hinge errors relu(1 - z s)",
    reduction=_REDUCTION_DOC,
    degenerate=("all_ignored",),
)
class LovaszHingeLoss(LossModule, function=lovasz_hinge_loss, check=_check_lovasz_softmax):
    """Module form of :func:`lovasz_hinge_loss`."""
