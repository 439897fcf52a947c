"""Topology-aware losses for thin structures: Skeleton Recall and clDice.

Kind ``dense`` (see :mod:`losslab.losses.segmentation.overlap` for the input conventions,
binary single-logit inputs included). Both work on the *foreground* classes: every class but
class 0 of a softmax input (``include_background=True`` keeps it where the paper's code allows
it), or the single channel of a sigmoid input. 2-D and 3-D.

``reduction="none"`` returns one value per image with ``per_image=True`` (``[N]``) and, with
``per_image=False``, one value per foreground class (``skeleton_recall``, ``[K]``) or the single
batch value (``cl_dice``, ``[1]``); ``"mean"`` averages over the images (or classes) that have
a non-ignored pixel and ``"sum"`` adds them. A batch whose pixels are all ignored gives 0 with
zero gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor

from losslab._core import LossModule, Reduction, reduce
from losslab._hparams import Flag, Int, Real, hparams
from losslab._ops.dense import foreground, prepare_dense, safe_ratio, to_spatial
from losslab._ops.morphology import soft_skeleton, tubed_skeleton
from losslab.registry import register

__all__ = ["ClDiceLoss", "SkeletonRecallLoss", "cl_dice_loss", "skeleton_recall_loss"]

_check_skeleton_recall = hparams(smooth=Real(ge=0), tube=Flag(), per_image=Flag(),
                                 ignore_index=Int())
_check_cl_dice = hparams(iterations=Int(ge=0), smooth=Real(ge=0), per_image=Flag(),
                         include_background=Flag(), ignore_index=Int())


def skeleton_recall_loss(
    logits: Tensor,
    target: Tensor,
    *,
    smooth: float = 1.0,
    tube: bool = True,
    per_image: bool = True,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Skeleton Recall loss: one minus the soft recall of the tubed target skeleton.

    .. math::
        \ell_k = 1 - \frac{\sum_i p_{ik}\, T_{ik} + s}{\sum_i T_{ik} + s}

    with :math:`T_k` the tubed skeleton of class :math:`k`: the skeleton of the foreground
    (every class but 0; scikit-image ``skeletonize``, computed on the CPU from the target,
    no gradient) dilated twice with the cross-shaped footprint (a 2-pixel tube), restricted to
    the pixels of class :math:`k` (the official code's ``SkeletonTransform``). The loss is the
    mean of :math:`\ell_k` over the foreground classes (absent classes give
    :math:`\ell_k = 0` for :math:`s > 0`). The official code returns :math:`-\text{recall}`;
    :math:`1 - \text{recall}` differs by a constant (same gradient) and is 0 at a perfect
    prediction. The paper trains it next to Dice + CE (weight 1 in 2-D); combine with
    :func:`losslab.combine` or add :func:`~losslab.losses.segmentation.compound.dice_ce_loss`.

    Args:
        logits: ``[N, C, *spatial]`` (softmax, ``C >= 2``; class 0 is background) or
            ``[N, 1, *spatial]`` (sigmoid).
        target: ``[N, *spatial]`` class ids. Soft labels raise ``ValueError`` (the skeleton is
            defined for a mask).
        smooth: :math:`s` (default 1, the official ``smooth``).
        tube: dilate the skeleton into the 2-pixel tube (default, the paper's); ``False``
            uses the bare skeleton (the paper's ablation).
        per_image: one recall per image and class (default; nnU-Net's ``batch_dice=False``)
            or per class over the batch (``False``).
        ignore_index: pixels left out (they are background for the skeleton and are removed
            from the tube).
        reduction: see the module docstring.

    Needs scikit-image and scipy (the ``seg`` extra). Under ``torch.compile`` the tubed
    skeleton is the custom operator ``losslab::tubed_skeleton`` (same numpy code, run when the
    graph runs; the loss compiles without graph breaks).

    Paper: Kirchhoff, Rokuss, Roy, et al., "Skeleton Recall Loss for Connectivity Conserving
    and Resource Efficient Segmentation of Thin Tubular Structures", arXiv 2404.03010.
    """
    _check_skeleton_recall(smooth=smooth, tube=tube, per_image=per_image,
                           ignore_index=ignore_index)
    batch = prepare_dense(logits, target, ignore_index=ignore_index, per_image=True,
                          soft_ok=False, loss="skeleton_recall")
    probs = foreground(batch, to_spatial(batch, batch.probs), False)
    onehot = foreground(batch, to_spatial(batch, batch.target), False)  # 0 at ignored
    valid = to_spatial(batch, batch.valid)
    with torch.no_grad():
        skel = tubed_skeleton(onehot.sum(1) > 0, tube=tube)
        tubes = (onehot > 0) & skel.unsqueeze(1) & valid.unsqueeze(1)
        tubes = tubes.to(probs.dtype)
    dims = tuple(range(2, probs.ndim))
    inter = (probs * tubes).sum(dims)  # [N, K]
    gt = tubes.sum(dims)
    has = batch.valid.any(1)  # [N]
    if per_image:
        per_class = 1 - safe_ratio(inter + smooth, gt + smooth)
        values = per_class.mean(1)
        values = torch.where(has, values, torch.zeros_like(values))
        return reduce(values, reduction, count=has.to(values.dtype).sum())
    hasf = has.to(probs.dtype).unsqueeze(1)
    per_class = 1 - safe_ratio((inter * hasf).sum(0) + smooth, (gt * hasf).sum(0) + smooth)
    any_valid = has.any()
    per_class = torch.where(any_valid, per_class, torch.zeros_like(per_class))
    return reduce(per_class, reduction,
                  count=any_valid.to(per_class.dtype) * per_class.shape[0])


@register(
    "skeleton_recall",
    family="segmentation",
    kind="dense",
    paper="Skeleton Recall Loss for Connectivity Conserving and Resource Efficient "
    "Segmentation of Thin Tubular Structures",
    arxiv="2404.03010",
    summary="1 - (sum p T + s)/(sum T + s), T = tubed skeleton of the target (CPU)",
    reduction="per image (per foreground class with per_image=False)",
    degenerate=("all_ignored",),
)
class SkeletonRecallLoss(LossModule, function=skeleton_recall_loss,
                         check=_check_skeleton_recall):
    """Module form of :func:`skeleton_recall_loss`."""


def cl_dice_loss(
    logits: Tensor,
    target: Tensor,
    *,
    iterations: int = 3,
    smooth: float = 1.0,
    per_image: bool = False,
    include_background: bool = False,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Soft clDice loss: one minus the harmonic mean of topology precision and sensitivity.

    .. math::
        T_{prec} = \frac{\sum S_P \circ V_L + s}{\sum S_P + s},\quad
        T_{sens} = \frac{\sum S_L \circ V_P + s}{\sum S_L + s},\quad
        \ell = 1 - \frac{2\, T_{prec}\, T_{sens}}{T_{prec} + T_{sens}}

    with :math:`V_P` the predicted probabilities, :math:`V_L` the (one-hot or soft) target,
    :math:`S_P, S_L` their soft skeletons
    (:func:`losslab._ops.morphology.soft_skeleton`, ``iterations`` min/max-pool steps), the
    sums running jointly over the foreground classes and the pixels of a group (the official
    ``soft_cldice``). A 0/1 prediction equal to a 0/1 target gives 0. Soft labels are
    accepted (their soft skeleton is used); the loss at ``p = y`` is then positive (the soft
    skeleton of a soft map is not inside it with weight 1): a soft target is not a minimiser.

    Args:
        logits: ``[N, C, *spatial]`` (softmax) or ``[N, 1, *spatial]`` (sigmoid); 2-D or 3-D.
        target: class ids ``[N, *spatial]`` or soft labels.
        iterations: soft-skeleton iterations (default 3, the official ``iter_``; should exceed
            the half-width of the thickest structure).
        smooth: :math:`s` (default 1, the official ``smooth``).
        per_image: default ``False``: sums over the whole batch (the official code);
            ``True``: one clDice per image.
        include_background: also count class 0 (default ``False``: the official code's
            ``[:, 1:]``; monai's ``SoftclDiceLoss`` defaults to ``True``).
        ignore_index: pixels left out (0 in both maps before skeletonisation, and out of the
            sums).
        reduction: see the module docstring.

    Peer: ``monai.losses.SoftclDiceLoss`` on probabilities (equal with ``smooth_nr =
    smooth_dr = smooth`` and ``per_image=False``). The paper trains
    :math:`(1 - \alpha)\,\mathrm{Dice} + \alpha\,\mathrm{clDice}`; combine with
    :func:`losslab.combine`.

    Paper: Shit, Paetzold, Sekuboyina, et al., "clDice - a Novel Topology-Preserving Loss
    Function for Tubular Structure Segmentation", arXiv 2003.07311.
    """
    _check_cl_dice(iterations=iterations, smooth=smooth, per_image=per_image,
                   include_background=include_background, ignore_index=ignore_index)
    batch = prepare_dense(logits, target, ignore_index=ignore_index, per_image=True,
                          loss="cl_dice")
    if len(batch.shape) - 1 not in (2, 3):
        raise ValueError(f"cl_dice needs 2-D or 3-D inputs ([N, C, H, W] or [N, C, D, H, W]), "
                         f"got logits {tuple(logits.shape)}")
    if batch.probs.numel() == 0:  # no image or no pixel: 0, connected to the graph
        return reduce(batch.probs.sum((1, 2)) * 0.0, reduction, count=0.0)
    probs = foreground(batch, to_spatial(batch, batch.probs), include_background)
    tgt = foreground(batch, to_spatial(batch, batch.target), include_background)
    valid = to_spatial(batch, batch.valid).unsqueeze(1).to(probs.dtype)
    skel_p = soft_skeleton(probs, iterations) * valid
    skel_y = soft_skeleton(tgt, iterations) * valid
    dims = tuple(range(1, probs.ndim))
    sums = torch.stack([(skel_p * tgt).sum(dims), skel_p.sum(dims), (skel_y * probs).sum(dims),
                        skel_y.sum(dims)], 1)  # [N, 4]
    has = batch.valid.any(1)
    if not per_image:
        sums, has = sums.sum(0, keepdim=True), has.any().reshape(1)
    tprec = (sums[:, 0] + smooth) / (sums[:, 1] + smooth).clamp_min(1e-12)
    tsens = (sums[:, 2] + smooth) / (sums[:, 3] + smooth).clamp_min(1e-12)
    values = 1 - safe_ratio(2 * tprec * tsens, tprec + tsens)
    values = torch.where(has, values, torch.zeros_like(values))
    return reduce(values, reduction, count=has.to(values.dtype).sum())


@register(
    "cl_dice",
    family="segmentation",
    kind="dense",
    paper="clDice - a Novel Topology-Preserving Loss Function for Tubular Structure "
    "Segmentation",
    arxiv="2003.07311",
    summary="1 - harmonic mean of topology precision/sensitivity of soft skeletons",
    peers=("monai.losses.SoftclDiceLoss",),
    reduction="per image ([1] with per_image=False)",
    degenerate=("all_ignored",),
)
class ClDiceLoss(LossModule, function=cl_dice_loss, check=_check_cl_dice):
    """Module form of :func:`cl_dice_loss`."""
