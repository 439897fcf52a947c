"""Boundary-aware losses: the distance-map boundary loss, the Hausdorff distance-transform
loss and BASNet's hybrid (BCE + SSIM + IoU) loss.

Kind ``dense`` (see :mod:`losslab.losses.segmentation.overlap` for the input conventions,
binary single-logit inputs included). Distance maps are computed on the CPU with scipy
(``scipy.ndimage.distance_transform_edt``) from masks, without gradient: from the target (and,
for ``hausdorff_dt``, from the thresholded prediction at every call); under ``torch.compile``
the transforms are the custom operators ``losslab::signed_distance`` and
``losslab::distance_to_boundary`` (:mod:`losslab._ops.morphology`), so a compiled model around
these losses is one graph. Input contract: logits, activated inside the loss (softmax over
``C >= 2`` channels, sigmoid for one channel); the boundary and Hausdorff losses count the
foreground classes (1..C-1, or the single sigmoid channel) unless ``include_background=True``.

``reduction="none"`` returns one value per image (``[N]``), ``"mean"`` the mean over images
with a non-ignored pixel, ``"sum"`` their sum; a batch whose pixels are all ignored gives 0
with zero gradient. Ignored pixels are outside every class mask for the distance maps and
left out of the means.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from losslab._core import LossModule, Reduction, reduce
from losslab._hparams import Flag, Int, Real, hparams
from losslab._ops.dense import DenseBatch, foreground, prepare_dense, safe_ratio, to_spatial
from losslab._ops.morphology import distance_to_boundary, signed_distance
from losslab.losses.segmentation.compound import pixel_log_probs
from losslab.registry import register

__all__ = [
    "BASNetHybridLoss",
    "BoundaryLoss",
    "HausdorffDTLoss",
    "basnet_hybrid_loss",
    "boundary_loss",
    "gaussian_ssim_map",
    "hausdorff_dt_loss",
]

_check_boundary = hparams(include_background=Flag(), ignore_index=Int())
_check_hausdorff = _check_boundary | hparams(alpha=Real(gt=0))
_check_basnet = hparams(window_size=Int(ge=1), sigma=Real(gt=0), ignore_index=Int())


def _per_image_mean(values: Tensor, batch: DenseBatch, reduction: str) -> Tensor:
    """``values[N, K, *spatial]`` (0 at ignored pixels) -> mean over classes and non-ignored
    pixels per image -> reduction over images with a pixel."""
    valid = to_spatial(batch, batch.valid)
    n_pix = valid.flatten(1).sum(1).to(values.dtype) * values.shape[1]
    per_image = values.flatten(1).sum(1) / n_pix.clamp_min(1)
    has = n_pix > 0
    per_image = torch.where(has, per_image, torch.zeros_like(per_image))
    return reduce(per_image, reduction, count=has.to(per_image.dtype).sum())


def _class_masks(batch: DenseBatch, include_background: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(fg probabilities, fg targets, valid) in the input layout ``[N, K, *spatial]``."""
    probs = foreground(batch, to_spatial(batch, batch.probs), include_background)
    tgt = foreground(batch, to_spatial(batch, batch.target), include_background)
    valid = to_spatial(batch, batch.valid).unsqueeze(1)
    return probs, tgt, valid


def boundary_loss(
    logits: Tensor,
    target: Tensor,
    *,
    include_background: bool = False,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Boundary loss: the predicted probabilities weighted by the target's signed distance map.

    .. math::
        \mathcal{L}_B = \frac{1}{K |\Omega|} \sum_{k} \sum_{q \in \Omega} \phi_{G_k}(q)\,
        s_k(q)

    with :math:`\phi_{G_k}` the signed distance to the boundary of class :math:`k`'s target
    region (positive outside, :math:`\le 0` inside: the official ``one_hot2dist``, see
    :func:`losslab._ops.morphology.signed_distance`; an absent class has :math:`\phi = 0`) and
    :math:`s_k` the predicted probability. It is minimised by predicting exactly the target
    region (the integral of :math:`\phi` over it) and can be negative. The paper schedules it
    with a regional loss, :math:`\alpha\, \mathcal{L}_{GDL} + (1 - \alpha)\, \mathcal{L}_B`;
    combine with :func:`losslab.combine`.

    Args:
        logits: ``[N, C, *spatial]`` (softmax) or ``[N, 1, *spatial]`` (sigmoid); 2-D or 3-D.
        target: ``[N, *spatial]`` class ids (soft labels raise ``ValueError``: the distance
            map is defined for a mask).
        include_background: also weight class 0 (default ``False``: the paper's foreground
            classes).
        ignore_index, reduction: see the module docstring.

    Needs scipy. Paper: Kervadec, Bouchtiba, Desrosiers, Granger, Dolz, Ben Ayed, "Boundary
    loss for highly unbalanced segmentation", arXiv 1812.07032.
    """
    _check_boundary(include_background=include_background, ignore_index=ignore_index)
    batch = prepare_dense(logits, target, ignore_index=ignore_index, per_image=True,
                          soft_ok=False, loss="boundary")
    probs, tgt, valid = _class_masks(batch, include_background)
    with torch.no_grad():
        k = tgt.shape[1]
        masks = (tgt > 0.5).movedim(1, 0).reshape(-1, *tgt.shape[2:])
        phi = signed_distance(masks, dtype=probs.dtype)
        phi = phi.reshape(k, *tgt.shape[:1], *tgt.shape[2:]).movedim(0, 1)
    values = torch.where(valid, phi * probs, torch.zeros_like(probs))
    return _per_image_mean(values, batch, reduction)


@register(
    "boundary",
    family="segmentation",
    kind="dense",
    paper="Boundary loss for highly unbalanced segmentation",
    arxiv="1812.07032",
    summary="mean of phi_G(q) s(q): probabilities times the target's signed distance map",
    reduction="per image",
    degenerate=("all_ignored",),
)
class BoundaryLoss(LossModule, function=boundary_loss, check=_check_boundary):
    """Module form of :func:`boundary_loss`."""


def hausdorff_dt_loss(
    logits: Tensor,
    target: Tensor,
    *,
    alpha: float = 2.0,
    include_background: bool = False,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Hausdorff distance loss from distance transforms (the paper's :math:`\mathrm{Loss}_{DT}`).

    .. math::
        \mathcal{L}_{DT} = \frac{1}{K |\Omega|} \sum_k \sum_{\Omega}
        (p_k - q_k)^2 \circ \big(d_{p_k}^{\alpha} + d_{q_k}^{\alpha}\big)

    with :math:`d_{q_k}` the unsigned distance to the boundary of the target mask of class
    :math:`k` and :math:`d_{p_k}` that of the predicted mask :math:`p_k > 0.5` (recomputed at
    every call, no gradient; :func:`losslab._ops.morphology.distance_to_boundary`: pixels next
    to the boundary are at distance 1, a mask without boundary gives 0).

    Args:
        logits: ``[N, C, *spatial]`` (softmax) or ``[N, 1, *spatial]`` (sigmoid); 2-D or 3-D.
        target: class ids, or soft labels (the distance map of a soft target is that of
            ``q > 0.5``, as monai; the squared error uses ``q`` itself, so the loss is 0 at
            ``p = q``).
        alpha: :math:`\alpha` (default 2, the paper's).
        include_background: also count class 0 (default ``False``, monai's default).
        ignore_index, reduction: see the module docstring.

    Peer: ``monai.losses.HausdorffDTLoss`` (equal without ignored pixels).

    Needs scipy. Paper: Karimi, Salcudean, "Reducing the Hausdorff Distance in Medical Image
    Segmentation with Convolutional Neural Networks", arXiv 1904.10030.
    """
    _check_hausdorff(alpha=alpha, include_background=include_background,
                     ignore_index=ignore_index)
    batch = prepare_dense(logits, target, ignore_index=ignore_index, per_image=True,
                          loss="hausdorff_dt")
    probs, tgt, valid = _class_masks(batch, include_background)
    with torch.no_grad():
        k = tgt.shape[1]

        def dist(x: Tensor) -> Tensor:
            m = ((x > 0.5) & valid).movedim(1, 0).reshape(-1, *x.shape[2:])
            d = distance_to_boundary(m, dtype=x.dtype)
            return d.reshape(k, x.shape[0], *x.shape[2:]).movedim(0, 1)

        weight = dist(probs) ** alpha + dist(tgt) ** alpha
    values = torch.where(valid, (probs - tgt) ** 2 * weight, torch.zeros_like(probs))
    return _per_image_mean(values, batch, reduction)


@register(
    "hausdorff_dt",
    family="segmentation",
    kind="dense",
    paper="Reducing the Hausdorff Distance in Medical Image Segmentation with Convolutional "
    "Neural Networks",
    arxiv="1904.10030",
    summary="mean of (p - q)^2 (d_p^alpha + d_q^alpha), distance transforms, alpha=2",
    peers=("monai.losses.HausdorffDTLoss",),
    reduction="per image",
    degenerate=("all_ignored",),
)
class HausdorffDTLoss(LossModule, function=hausdorff_dt_loss, check=_check_hausdorff):
    """Module form of :func:`hausdorff_dt_loss`."""


def gaussian_ssim_map(x: Tensor, y: Tensor, *, window_size: int = 11,
                      sigma: float = 1.5) -> Tensor:
    r"""Per-pixel SSIM of ``x`` and ``y`` (``[N, K, H, W]``, values in [0, 1]) with a
    normalised Gaussian window and zero padding (the ``pytorch_ssim`` module the BASNet code
    uses), :math:`C_1 = 0.01^2`, :math:`C_2 = 0.03^2`:

    .. math::
        \mathrm{SSIM} = \frac{(2\mu_x\mu_y + C_1)(2\sigma_{xy} + C_2)}
        {(\mu_x^2 + \mu_y^2 + C_1)(\sigma_x^2 + \sigma_y^2 + C_2)}
    """
    k = x.shape[1]
    coords = torch.arange(window_size, dtype=x.dtype, device=x.device) - (window_size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    window = (g[:, None] * g[None, :]).expand(k, 1, window_size, window_size).contiguous()
    pad = window_size // 2

    def blur(t: Tensor) -> Tensor:
        out = F.conv2d(t, window, padding=pad, groups=k)
        if window_size % 2 == 0:  # even windows: keep the input size
            out = out[..., : t.shape[-2], : t.shape[-1]]
        return out

    mu_x, mu_y = blur(x), blur(y)
    sxx = blur(x * x) - mu_x**2
    syy = blur(y * y) - mu_y**2
    sxy = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    return ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)
            / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2)))


def basnet_hybrid_loss(
    logits: Tensor,
    target: Tensor,
    *,
    window_size: int = 11,
    sigma: float = 1.5,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""BASNet's hybrid loss: pixel-level BCE + patch-level SSIM + map-level IoU.

    .. math::
        \ell = \ell_{bce} + \ell_{ssim} + \ell_{iou},\quad
        \ell_{ssim} = 1 - \overline{\mathrm{SSIM}}(p, y),\quad
        \ell_{iou} = 1 - \frac{\sum_i p_i y_i}{\sum_i (p_i + y_i - p_i y_i)}

    per image (:math:`\overline{\mathrm{SSIM}}` the mean of :func:`gaussian_ssim_map`,
    11 x 11 Gaussian window with :math:`\sigma = 1.5`). The paper applies it to every
    side output of the network (deep supervision): call it once per output and add.

    Args:
        logits: ``[N, 1, H, W]`` foreground logits (the paper's binary saliency maps); 2-D
            only. With ``C >= 2`` softmax channels (an extension): cross-entropy as the pixel
            term, SSIM and IoU per class channel against the one-hot target, averaged over
            classes.
        target: ``[N, H, W]`` class ids or soft labels (foreground probabilities in [0, 1]
            for one channel: every term is defined for them; BCE and SSIM are minimised at
            ``p = y``, IoU is not, as for the soft Jaccard loss).
        window_size, sigma: the SSIM window (defaults 11 and 1.5, the BASNet code's).
        ignore_index: ignored pixels are 0 in both maps for SSIM and left out of every mean.
        reduction: see the module docstring.

    Peer (SSIM term): ``kornia.metrics.ssim(padding="valid")`` equals the interior of the
    SSIM map (kornia pads by reflection, BASNet with zeros).

    Paper: Qin, Fan, Zhang, et al., "Boundary-Aware Segmentation Network for Mobile and Web
    Applications", arXiv 2101.04704 (BASNet, CVPR 2019).
    """
    _check_basnet(window_size=window_size, sigma=sigma, ignore_index=ignore_index)
    if isinstance(logits, Tensor) and logits.ndim != 4:
        raise ValueError(f"basnet_hybrid needs 2-D inputs: logits of shape [N, C, H, W], got "
                         f"{tuple(logits.shape)}")
    batch = prepare_dense(logits, target, ignore_index=ignore_index, per_image=True,
                          loss="basnet_hybrid")
    logp, y = pixel_log_probs(batch)
    pixel = -(y * logp).sum(1)  # [N, S], 0 at ignored
    n_pix = batch.valid.sum(1).to(pixel.dtype)
    has = n_pix > 0
    bce = pixel.sum(1) / n_pix.clamp_min(1)
    probs = to_spatial(batch, batch.probs)
    tgt = to_spatial(batch, batch.target)
    valid = to_spatial(batch, batch.valid).unsqueeze(1).to(probs.dtype)
    if probs.shape[0] == 0 or math.prod(probs.shape[2:]) == 0:
        return reduce(bce * 0.0, reduction, count=0.0)
    ssim = gaussian_ssim_map(probs, tgt, window_size=window_size, sigma=sigma)
    ssim_mean = (ssim * valid).sum((2, 3)) / valid.sum((2, 3)).clamp_min(1)  # [N, K]
    inter = (probs * tgt).sum((2, 3))
    union = (probs + tgt - probs * tgt).sum((2, 3))
    iou = safe_ratio(inter, union)
    values = bce + (1 - ssim_mean).mean(1) + (1 - iou).mean(1)
    values = torch.where(has, values, torch.zeros_like(values))
    return reduce(values, reduction, count=has.to(values.dtype).sum())


@register(
    "basnet_hybrid",
    family="segmentation",
    kind="dense",
    paper="Boundary-Aware Segmentation Network for Mobile and Web Applications",
    arxiv="2101.04704",
    summary="BCE + (1 - SSIM) + (1 - IoU) per image (pixel, patch and map levels)",
    peers=("kornia.metrics.ssim",),
    reduction="per image",
    degenerate=("all_ignored",),
)
class BASNetHybridLoss(LossModule, function=basnet_hybrid_loss, check=_check_basnet):
    """Module form of :func:`basnet_hybrid_loss`."""
