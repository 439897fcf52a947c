"""Region losses for semantic segmentation: Dice, Jaccard, Tversky, Focal Tversky, Lovász-Softmax
and the soft-label-compatible Jaccard Metric / Dice Semimetric losses.

Kind ``dense``: ``loss(logits[N, C, *spatial], target)`` with ``target`` either integer class ids
``[N, *spatial]`` (pixels equal to ``ignore_index``, default -100, are left out) or soft labels
(class probabilities ``[N, C, *spatial]``, float, e.g. from label smoothing or a teacher). The
prediction is ``p = softmax(logits)`` over classes.

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
groups/classes that count. fp16/bf16 logits are computed in float32; the result has the input
dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from losslab._core import LossModule, Reduction, check_choice, check_positive, reduce
from losslab._ops.logits import prepare
from losslab.registry import register

__all__ = [
    "DiceLoss",
    "DiceSemimetricLoss",
    "FocalTverskyLoss",
    "JaccardLoss",
    "JaccardMetricLoss",
    "LovaszSoftmaxLoss",
    "TverskyLoss",
    "dice_loss",
    "dice_semimetric_loss",
    "focal_tversky_loss",
    "jaccard_loss",
    "jaccard_metric_loss",
    "lovasz_softmax_loss",
    "tversky_loss",
]

Classes = Literal["all", "present"]
CLASS_MODES: tuple[str, ...] = ("all", "present")

JML_PAPER = "Jaccard Metric Losses: Optimizing the Jaccard Index with Soft Labels"


# --------------------------------------------------------------------------------------------
# Shared plumbing: validation, soft counts, active classes, reduction
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DenseBatch:
    """Softmax prediction and target of a dense batch, grouped for aggregation.

    Attributes:
        probs: ``[G, C, S]`` softmax probabilities, 0 at ignored pixels (compute dtype).
        target: ``[G, C, S]`` one-hot (hard labels) or soft labels, 0 at ignored pixels.
        valid: ``[G, S]`` bool, False at ignored pixels.
        soft: the target holds soft labels (float input).
        dtype: dtype of the input logits (the dtype of the result).
    """

    probs: Tensor
    target: Tensor
    valid: Tensor
    soft: bool
    dtype: torch.dtype


def prepare_dense(
    logits: Tensor,
    target: Tensor,
    *,
    ignore_index: int,
    per_image: bool,
    soft_ok: bool = True,
    loss: str,
) -> DenseBatch:
    """Validate ``(logits[N, C, *spatial], target)``, apply softmax and group the pixels."""
    if isinstance(logits, Tensor) and logits.ndim < 3:
        raise ValueError(
            f"{loss} needs logits of shape [N, C, *spatial] (at least one spatial dim), "
            f"got {tuple(logits.shape)}"
        )
    b = prepare(logits, target, ignore_index=ignore_index, soft_ok=soft_ok, min_classes=2,
                loss=loss)
    n, c = logits.shape[0], logits.shape[1]
    probs = F.softmax(b.logits, dim=1)  # [M, C], M = N·S in (image, pixel) order
    if b.probs is not None:
        tgt = b.probs
    else:
        assert b.index is not None
        tgt = F.one_hot(b.index, c).to(probs.dtype)
    valid = b.valid.unsqueeze(1)
    probs = torch.where(valid, probs, torch.zeros_like(probs))
    tgt = torch.where(valid, tgt, torch.zeros_like(tgt))
    groups = n if per_image else 1
    probs = probs.reshape(groups, -1, c).transpose(1, 2)
    tgt = tgt.reshape(groups, -1, c).transpose(1, 2)
    return DenseBatch(probs, tgt, b.valid.reshape(groups, -1), b.probs is not None, b.dtype)


def soft_counts(
    batch: DenseBatch, *, metric: bool, squared: bool = False
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-group, per-class ``(TP, P, Y)``, each ``[G, C]``.

    ``metric=False``: :math:`TP = \\sum p y`; ``metric=True``: the L1 decomposition
    :math:`TP = (\\|p\\|_1 + \\|y\\|_1 - \\|p - y\\|_1)/2` of arXiv 2302.05666. ``squared``:
    cardinalities :math:`\\sum p^2`, :math:`\\sum y^2` (V-Net), with :math:`TP = \\sum p y`.
    """
    p, y = batch.probs, batch.target
    if squared:
        return (p * y).sum(2), (p * p).sum(2), (y * y).sum(2)
    pc, yc = p.sum(2), y.sum(2)
    if metric:
        tp = (pc + yc - (p - y).abs().sum(2)) / 2
    else:
        tp = (p * y).sum(2)
    return tp, pc, yc


def safe_ratio(num: Tensor, den: Tensor) -> Tensor:
    """``num / den``, and 1 where ``den == 0`` (an empty class: nothing to get wrong), with
    finite gradients everywhere."""
    ok = den > 0
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.ones_like(num))


def active_classes(batch: DenseBatch, y_mass: Tensor, classes: str) -> Tensor:
    """``[G, C]`` bool: the classes that count in each group (see the module docstring)."""
    has_pixels = batch.valid.any(1, keepdim=True)
    if classes == "all":
        return has_pixels.expand_as(y_mass)
    return (y_mass > 0) & has_pixels


def reduce_groups(
    per_class: Tensor, active: Tensor, batch: DenseBatch, reduction: str, per_image: bool
) -> Tensor:
    """Mean over active classes per group, then the ``reduction`` over groups (``per_image``)
    or over classes (batch aggregation). See the module docstring."""
    per_class = torch.where(active, per_class, torch.zeros_like(per_class))
    act = active.to(per_class.dtype)
    if per_image:
        n_act = act.sum(1)
        values = per_class.sum(1) / n_act.clamp_min(1)
        out = reduce(values, reduction, count=(n_act > 0).to(values.dtype).sum())
    else:
        out = reduce(per_class[0], reduction, count=act.sum())
    return out.to(batch.dtype)


def _check_common(smooth: float, classes: str) -> None:
    check_positive("smooth", smooth, strict=False)
    check_choice("classes", classes, CLASS_MODES)


def _check_tversky(alpha: float, beta: float) -> None:
    check_positive("alpha", alpha, strict=False)
    check_positive("beta", beta, strict=False)
    if alpha + beta <= 0:
        raise ValueError(f"alpha + beta must be > 0, got {alpha!r} + {beta!r}")


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
    ``classes="all"``); ``kornia.losses.dice_loss(average="macro")`` (``smooth=0``,
    ``classes="present"``, per image).

    Paper: Milletari, Navab, Ahmadi, "V-Net: Fully Convolutional Neural Networks for Volumetric
    Medical Image Segmentation", arXiv 1606.04797.
    """
    _check_common(smooth, classes)
    batch = prepare_dense(logits, target, ignore_index=ignore_index, per_image=per_image,
                          loss="dice")
    tp, pc, yc = soft_counts(batch, metric=False, squared=squared_denominator)
    per_class = 1 - safe_ratio(2 * tp + smooth, pc + yc + smooth)
    return reduce_groups(per_class, active_classes(batch, yc, classes), batch, reduction,
                         per_image)


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
    _check_common(smooth, classes)
    batch = prepare_dense(logits, target, ignore_index=ignore_index, per_image=per_image,
                          loss="jaccard")
    tp, pc, yc = soft_counts(batch, metric=False)
    per_class = 1 - _tversky_index(tp, pc, yc, 1.0, 1.0, smooth)
    return reduce_groups(per_class, active_classes(batch, yc, classes), batch, reduction,
                         per_image)


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
    _check_common(smooth, classes)
    _check_tversky(alpha, beta)
    batch = prepare_dense(logits, target, ignore_index=ignore_index, per_image=per_image,
                          loss="tversky")
    tp, pc, yc = soft_counts(batch, metric=False)
    per_class = 1 - _tversky_index(tp, pc, yc, alpha, beta, smooth)
    return reduce_groups(per_class, active_classes(batch, yc, classes), batch, reduction,
                         per_image)


def _safe_pow(base: Tensor, exponent: float) -> Tensor:
    """``base ** exponent`` for ``base >= 0``; where ``base == 0`` the value is 0 with a zero
    (not infinite) gradient, for exponents below 1."""
    base = base.clamp_min(0)
    pos = base > 0
    return torch.where(pos, torch.where(pos, base, torch.ones_like(base)).pow(exponent),
                       torch.zeros_like(base))


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
        gamma: :math:`\gamma \ge 1` (default 4/3, the paper's value; exponent ``1/gamma``).
        smooth, per_image, classes, ignore_index, reduction: as :func:`dice_loss`.

    ``gamma=1`` is :func:`tversky_loss`.

    Paper: Abraham, Khan, "A Novel Focal Tversky loss function with improved Attention U-Net for
    lesion segmentation", arXiv 1810.07842.
    """
    _check_common(smooth, classes)
    _check_tversky(alpha, beta)
    check_positive("gamma", gamma)
    batch = prepare_dense(logits, target, ignore_index=ignore_index, per_image=per_image,
                          loss="focal_tversky")
    tp, pc, yc = soft_counts(batch, metric=False)
    per_class = _safe_pow(1 - _tversky_index(tp, pc, yc, alpha, beta, smooth), 1.0 / gamma)
    return reduce_groups(per_class, active_classes(batch, yc, classes), batch, reduction,
                         per_image)


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
    _check_common(smooth, classes)
    batch = prepare_dense(logits, target, ignore_index=ignore_index, per_image=per_image,
                          loss="jaccard_metric")
    tp, pc, yc = soft_counts(batch, metric=True)
    per_class = 1 - _tversky_index(tp, pc, yc, 1.0, 1.0, smooth)
    return reduce_groups(per_class, active_classes(batch, yc, classes), batch, reduction,
                         per_image)


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
    _check_common(smooth, classes)
    batch = prepare_dense(logits, target, ignore_index=ignore_index, per_image=per_image,
                          loss="dice_semimetric")
    tp, pc, yc = soft_counts(batch, metric=True)
    per_class = 1 - safe_ratio(2 * tp + smooth, pc + yc + smooth)
    return reduce_groups(per_class, active_classes(batch, yc, classes), batch, reduction,
                         per_image)


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
    check_choice("classes", classes, CLASS_MODES)
    batch = prepare_dense(logits, target, ignore_index=ignore_index, per_image=per_image,
                          soft_ok=False, loss="lovasz_softmax")
    errors = (batch.target - batch.probs).abs()  # 0 at ignored pixels
    errors_sorted, order = errors.sort(dim=-1, descending=True)
    fg_sorted = batch.target.gather(-1, order)
    per_class = (errors_sorted * lovasz_jaccard_weights(fg_sorted)).sum(-1)
    active = active_classes(batch, batch.target.sum(-1), classes)
    return reduce_groups(per_class, active, batch, reduction, per_image)


# --------------------------------------------------------------------------------------------
# Module shells and registration
# --------------------------------------------------------------------------------------------

_REDUCTION_DOC = "per image (per class with per_image=False)"


@register(
    "dice",
    family="segmentation",
    kind="dense",
    paper="V-Net: Fully Convolutional Neural Networks for Volumetric Medical Image Segmentation",
    arxiv="1606.04797",
    function=dice_loss,
    summary="1 - (2 sum p y + s) / (sum p + sum y + s) per class, mean over classes",
    peers=("monai.losses.DiceLoss", "kornia.losses.dice_loss"),
    reduction=_REDUCTION_DOC,
    degenerate=("all_ignored",),
)
class DiceLoss(LossModule):
    """Module form of :func:`dice_loss`."""

    def __init__(
        self,
        *,
        smooth: float = 1e-5,
        per_image: bool = True,
        squared_denominator: bool = False,
        classes: Classes = "all",
        ignore_index: int = -100,
        reduction: Reduction = "mean",
    ) -> None:
        _check_common(smooth, classes)
        super().__init__(smooth=smooth, per_image=per_image,
                         squared_denominator=squared_denominator, classes=classes,
                         ignore_index=ignore_index, reduction=reduction)


@register(
    "jaccard",
    family="segmentation",
    kind="dense",
    paper="Optimizing Intersection-Over-Union in Deep Neural Networks for Image Segmentation",
    arxiv="",
    function=jaccard_loss,
    summary="1 - (sum p y + s) / (sum p + sum y - sum p y + s) per class, mean over classes",
    peers=("monai.losses.DiceLoss(jaccard=True)",
           "segmentation_models_pytorch.losses.JaccardLoss"),
    reduction=_REDUCTION_DOC,
    degenerate=("all_ignored",),
)
class JaccardLoss(LossModule):
    """Module form of :func:`jaccard_loss`."""

    def __init__(
        self,
        *,
        smooth: float = 1e-5,
        per_image: bool = True,
        classes: Classes = "all",
        ignore_index: int = -100,
        reduction: Reduction = "mean",
    ) -> None:
        _check_common(smooth, classes)
        super().__init__(smooth=smooth, per_image=per_image, classes=classes,
                         ignore_index=ignore_index, reduction=reduction)


@register(
    "tversky",
    family="segmentation",
    kind="dense",
    paper="Tversky loss function for image segmentation using 3D fully convolutional deep "
    "networks",
    arxiv="1706.05721",
    function=tversky_loss,
    summary="1 - (TP + s) / (TP + alpha FP + beta FN + s), alpha=0.3 (FP), beta=0.7 (FN)",
    peers=("monai.losses.TverskyLoss",),
    reduction=_REDUCTION_DOC,
    degenerate=("all_ignored",),
)
class TverskyLoss(LossModule):
    """Module form of :func:`tversky_loss`."""

    def __init__(
        self,
        *,
        alpha: float = 0.3,
        beta: float = 0.7,
        smooth: float = 1e-5,
        per_image: bool = True,
        classes: Classes = "all",
        ignore_index: int = -100,
        reduction: Reduction = "mean",
    ) -> None:
        _check_common(smooth, classes)
        _check_tversky(alpha, beta)
        super().__init__(alpha=alpha, beta=beta, smooth=smooth, per_image=per_image,
                         classes=classes, ignore_index=ignore_index, reduction=reduction)


@register(
    "focal_tversky",
    family="segmentation",
    kind="dense",
    paper="A Novel Focal Tversky loss function with improved Attention U-Net for lesion "
    "segmentation",
    arxiv="1810.07842",
    function=focal_tversky_loss,
    summary="(1 - Tversky index)^(1/gamma), gamma=4/3, alpha=0.3 (FP), beta=0.7 (FN)",
    reduction=_REDUCTION_DOC,
    degenerate=("all_ignored",),
)
class FocalTverskyLoss(LossModule):
    """Module form of :func:`focal_tversky_loss`."""

    def __init__(
        self,
        *,
        alpha: float = 0.3,
        beta: float = 0.7,
        gamma: float = 4.0 / 3.0,
        smooth: float = 1e-5,
        per_image: bool = True,
        classes: Classes = "all",
        ignore_index: int = -100,
        reduction: Reduction = "mean",
    ) -> None:
        _check_common(smooth, classes)
        _check_tversky(alpha, beta)
        check_positive("gamma", gamma)
        super().__init__(alpha=alpha, beta=beta, gamma=gamma, smooth=smooth,
                         per_image=per_image, classes=classes, ignore_index=ignore_index,
                         reduction=reduction)


@register(
    "jaccard_metric",
    family="segmentation",
    kind="dense",
    paper=JML_PAPER,
    arxiv="2302.05666",
    function=jaccard_metric_loss,
    summary="1 - (|p|+|y|-|p-y|)/(|p|+|y|+|p-y|) (L1 norms) per class; soft-label exact",
    peers=("monai.losses.DiceLoss(jaccard=True, soft_label=True)",),
    reduction=_REDUCTION_DOC,
    degenerate=("all_ignored",),
)
class JaccardMetricLoss(LossModule):
    """Module form of :func:`jaccard_metric_loss`."""

    def __init__(
        self,
        *,
        smooth: float = 1e-3,
        per_image: bool = False,
        classes: Classes = "present",
        ignore_index: int = -100,
        reduction: Reduction = "mean",
    ) -> None:
        _check_common(smooth, classes)
        super().__init__(smooth=smooth, per_image=per_image, classes=classes,
                         ignore_index=ignore_index, reduction=reduction)


@register(
    "dice_semimetric",
    family="segmentation",
    kind="dense",
    paper=JML_PAPER,
    arxiv="2302.05666",
    function=dice_semimetric_loss,
    summary="1 - (|p|+|y|-|p-y|)/(|p|+|y|) (L1 norms) per class; soft-label exact",
    peers=("monai.losses.DiceLoss(soft_label=True)",),
    reduction=_REDUCTION_DOC,
    degenerate=("all_ignored",),
)
class DiceSemimetricLoss(LossModule):
    """Module form of :func:`dice_semimetric_loss`."""

    def __init__(
        self,
        *,
        smooth: float = 1e-3,
        per_image: bool = False,
        classes: Classes = "present",
        ignore_index: int = -100,
        reduction: Reduction = "mean",
    ) -> None:
        _check_common(smooth, classes)
        super().__init__(smooth=smooth, per_image=per_image, classes=classes,
                         ignore_index=ignore_index, reduction=reduction)


@register(
    "lovasz_softmax",
    family="segmentation",
    kind="dense",
    paper="The Lovász-Softmax loss: A tractable surrogate for the optimization of the "
    "intersection-over-union measure in neural networks",
    arxiv="1705.08790",
    function=lovasz_softmax_loss,
    summary="Lovász extension of the per-class Jaccard loss at the errors |[y=c] - p_c|",
    reduction=_REDUCTION_DOC,
    degenerate=("all_ignored",),
)
class LovaszSoftmaxLoss(LossModule):
    """Module form of :func:`lovasz_softmax_loss`."""

    def __init__(
        self,
        *,
        per_image: bool = False,
        classes: Classes = "present",
        ignore_index: int = -100,
        reduction: Reduction = "mean",
    ) -> None:
        check_choice("classes", classes, CLASS_MODES)
        super().__init__(per_image=per_image, classes=classes, ignore_index=ignore_index,
                         reduction=reduction)
