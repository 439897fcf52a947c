"""Hard Patches Mining (HPM): masked-image-modeling reconstruction plus the auxiliary
loss-prediction objective that learns which patches are hard to reconstruct.

Kind ``regression`` (a set-level objective, one scalar): ``loss(pred[N, L, P],
target[N, L, P], *, loss_pred=None, mask=None)`` with ``N`` images of ``L`` patches of ``P``
values each (``[N, L]``: one value per patch), the reconstruction ``pred`` of the patches,
their pixel ``target``, the loss predictor's per-patch output ``loss_pred[N, L]`` and the bool
``mask[N, L]`` of the masked (reconstructed) patches. fp16/bf16 inputs are computed in float32
and the loss is returned in float32.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from losslab._core import LossModule, check_float, check_same_device, compute_dtype, reduce
from losslab._hparams import Choice, Flag, Real, hparams
from losslab.registry import register

__all__ = ["HPMLoss", "hpm_loss", "hpm_loss_prediction", "hpm_patch_loss"]

PredictionForm = Literal["relative", "absolute"]
_check_hpm = hparams(norm_pix=Flag(), form=Choice("relative", "absolute"),
                     prediction_weight=Real(ge=0))
#: the reference code's variance floor of the per-patch (MAE) and per-image normalisations
NORM_EPS = 1e-6


def _patches(name: str, x: Tensor) -> Tensor:
    check_float(name, x)
    if x.ndim < 2:
        raise ValueError(f"{name} must have shape [N, L, ...] (images x patches), got "
                         f"{tuple(x.shape)}")
    return x.reshape(x.shape[0], x.shape[1], math.prod(x.shape[2:]))


def _patch_mask(mask: Tensor | None, shape: tuple[int, int], like: Tensor) -> Tensor:
    if mask is None:
        return torch.ones(shape, dtype=torch.bool, device=like.device)
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != shape:
        raise ValueError(f"mask must be a bool tensor of shape {list(shape)} (True: a masked, "
                         f"reconstructed patch), got "
                         f"{getattr(mask, 'dtype', type(mask).__name__)} "
                         f"{tuple(getattr(mask, 'shape', ()))}")
    check_same_device(pred=like, mask=mask)
    return mask


def hpm_patch_loss(pred: Tensor, target: Tensor, *, norm_pix: bool = False) -> Tensor:
    r"""The per-patch reconstruction loss of MAE / HPM, ``[N, L]``: the mean squared error over
    each patch's values, :math:`\mathcal L_i = \frac1P \lVert \hat x_i - \tilde x_i \rVert^2`,
    with :math:`\tilde x_i` the target patch, normalised per patch (mean 0, variance 1, the
    unbiased variance plus 1e-6) when ``norm_pix`` (MAE's ``norm_pix_loss``)."""
    p, t = _patches("pred", pred), _patches("target", target)
    if p.shape != t.shape:
        raise ValueError(f"pred and target must have one shape, got {tuple(pred.shape)} and "
                         f"{tuple(target.shape)}")
    check_same_device(pred=pred, target=target)
    dtype = compute_dtype(pred.dtype)
    p, t = p.to(dtype), t.to(dtype)
    if norm_pix:
        if t.shape[2] < 2:
            raise ValueError("norm_pix=True normalises each patch over its values: target "
                             "must have at least 2 values per patch, got 1")
        t = (t - t.mean(-1, keepdim=True)) / (t.var(-1, keepdim=True) + NORM_EPS).sqrt()
    return (p - t).pow(2).mean(-1)


def hpm_loss_prediction(loss_pred: Tensor, patch_loss: Tensor, *, mask: Tensor | None = None,
                        form: PredictionForm = "relative") -> Tensor:
    r"""HPM's loss-prediction objective: the predictor's output :math:`\hat{\mathcal L}` learns
    the *order* of the (detached) reconstruction losses :math:`\mathcal L` of the masked
    patches of each image.

    ``form="relative"`` (the paper's): a binary classification of every ordered pair of masked
    patches of one image with different losses, "is patch ``j`` harder than patch ``i``",

    .. math::
        \mathcal L_{pred} = \frac{1}{|P|} \sum_{(n, i, j) \in P}
        -\log \sigma\big(\hat{\mathcal L}_{nj} - \hat{\mathcal L}_{ni}\big), \qquad
        P = \{(n, i, j) : \mathcal L_{nj} > \mathcal L_{ni}\}

    pooled over the batch (the reference code's ``sum / number of valid pairs``; it also adds
    the reverse pairs with :math:`\log(1 - \sigma)`, the same terms again). Per image this is
    RankNet (:func:`losslab.functional.ranknet_loss`) on the patches (tested); being a ranking,
    it ignores the scale of the losses and does not overfit their exact values. The
    reference code's ``log(sigmoid + 1e-6)`` is computed exactly as ``-softplus(-x)``.

    ``form="absolute"`` (the paper's ablation): the MSE between :math:`\hat{\mathcal L}` and
    the losses standardised per image over its masked patches.

    Args:
        loss_pred: ``[N, L]`` predicted patch losses (any real scale).
        patch_loss: ``[N, L]`` reconstruction losses (:func:`hpm_patch_loss`); detached here.
        mask: optional ``[N, L]`` bool, True for the masked patches (default all).
        form: ``"relative"`` (default) or ``"absolute"``.

    Returns:
        A scalar, float32 for half inputs; 0 (connected, zero gradient) without any pair.
    """
    check_float("loss_pred", loss_pred)
    check_float("patch_loss", patch_loss)
    if loss_pred.ndim != 2 or patch_loss.shape != loss_pred.shape:
        raise ValueError(f"loss_pred must have the shape [N, L] of the patch losses "
                         f"{tuple(patch_loss.shape)}, got {tuple(loss_pred.shape)}")
    check_same_device(loss_pred=loss_pred, patch_loss=patch_loss)
    s = loss_pred.to(compute_dtype(loss_pred.dtype))
    t = patch_loss.detach().to(s.dtype)
    m = _patch_mask(mask, (s.shape[0], s.shape[1]), s)
    if form == "relative":
        harder = (t.unsqueeze(1) > t.unsqueeze(2)) & m.unsqueeze(1) & m.unsqueeze(2)
        diff = s.unsqueeze(1) - s.unsqueeze(2)  # [n, i, j] = s_j - s_i
        terms = torch.where(harder, F.softplus(-diff), torch.zeros_like(diff))
        return reduce(terms, "mean", count=harder.sum().to(s.dtype))
    mf = m.to(s.dtype)
    count = mf.sum(1, keepdim=True)
    mean = (t * mf).sum(1, keepdim=True) / count.clamp_min(1)
    var = ((t - mean).pow(2) * mf).sum(1, keepdim=True) / (count - 1).clamp_min(1)
    z = torch.where(m, (t - mean) / (var + NORM_EPS).sqrt(), torch.zeros_like(t))
    return reduce((s - z).pow(2), "mean", weights=mf)


def hpm_loss(pred: Tensor, target: Tensor, *, loss_pred: Tensor | None = None,
             mask: Tensor | None = None, norm_pix: bool = False,
             form: PredictionForm = "relative", prediction_weight: float = 1.0) -> Tensor:
    r"""Hard Patches Mining: the MIM reconstruction loss plus the loss-prediction objective.

    .. math::
        \mathcal L = \frac{1}{|M|} \sum_{(n, i) \in M} \mathcal L_{ni}
        + \lambda\, \mathcal L_{pred}\big(\hat{\mathcal L}, \operatorname{sg}(\mathcal L)\big)

    with :math:`\mathcal L_{ni}` the per-patch reconstruction MSE of the masked patches ``M``
    (:func:`hpm_patch_loss`), :math:`\hat{\mathcal L}` the loss predictor's output
    (``loss_pred``) and :math:`\mathcal L_{pred}` :func:`hpm_loss_prediction` on the detached
    patch losses (:math:`\operatorname{sg}`: the predictor learns to rank the losses, the
    reconstruction is not pushed by it). Without ``loss_pred`` only the reconstruction term
    (MAE's loss) is computed. HPM then masks, at the next step, the patches with the highest
    predicted losses (an easy-to-hard share growing from 0 to 50% of the masked patches, the
    rest random) -- a masking procedure, not part of the loss. Default weight
    :math:`\lambda = 1` (the reference code adds the two terms).

    Verified against the official code (``forward_loss`` and ``forward_learning_loss`` of
    Haochen-Wang409/HPM).

    Args:
        pred: ``[N, L, ...]`` reconstructed patches (``[N, L]``: one value per patch).
        target: target patches, the shape of ``pred``.
        loss_pred: optional ``[N, L]`` predicted patch losses.
        mask: optional ``[N, L]`` bool, True for the masked (reconstructed) patches (default
            all).
        norm_pix: normalise each target patch (MAE's ``norm_pix_loss``; default False).
        form: ``"relative"`` (default, pairwise ranking) or ``"absolute"`` loss prediction.
        prediction_weight: :math:`\lambda \ge 0` (default 1).

    Returns:
        A scalar (set-level), float32 for half inputs.

    Paper: Wang, Song, Fan, Wang, Xie, Zhang, "Hard Patches Mining for Masked Image Modeling",
    arXiv 2304.05919 (CVPR 2023; extended as "Bootstrap Masked Visual Modeling via Hard
    Patches Mining").
    """
    _check_hpm(norm_pix=norm_pix, form=form, prediction_weight=prediction_weight)
    per = hpm_patch_loss(pred, target, norm_pix=norm_pix)
    m = _patch_mask(mask, (per.shape[0], per.shape[1]), per)
    mf = m.to(per.dtype)
    total = reduce(per, "mean", weights=mf)
    if loss_pred is not None:
        total = total + prediction_weight * hpm_loss_prediction(loss_pred, per, mask=m,
                                                                form=form)
    return total


@register(
    "hpm", family="contrastive-ssl", kind="regression",
    paper="Hard Patches Mining for Masked Image Modeling", arxiv="2304.05919",
    summary="mean_masked MSE(patch) + lambda * mean_{L_j > L_i} -log sigmoid(Lhat_j - Lhat_i) "
    "(patches of one image)", reduction=None,
)
class HPMLoss(LossModule, function=hpm_loss, check=_check_hpm):
    """Module form of :func:`hpm_loss`: ``forward(pred, target, *, loss_pred=None,
    mask=None)``."""

    function_only = ("loss_pred", "mask")

    def forward(self, pred: Tensor, target: Tensor, *, loss_pred: Tensor | None = None,
                mask: Tensor | None = None) -> Tensor:
        return hpm_loss(pred, target, loss_pred=loss_pred, mask=mask, **self.call_kwargs())
