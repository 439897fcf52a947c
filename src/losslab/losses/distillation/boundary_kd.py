r"""Boundary-privileged knowledge distillation (BPKD) for semantic segmentation: separate
distillation terms for the edge pixels and the body (interior) pixels of the ground truth.

Kind ``teacher`` with dense inputs: ``loss(student_logits[N, C, *spatial],
teacher_logits[N, C, *spatial], *, target[N, *spatial])``; ``target`` (class ids, or
``ignore_index``) is required: it defines the edges. A ``[N, C]`` input is a batch of
one-pixel images: no pixel has a neighbour, so there are no edges and the body term of a
single pixel is 0.
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
    require,
)
from losslab._hparams import Int, Real, hparams
from losslab._ops.teacher import kl_terms
from losslab.registry import register

__all__ = ["BPKDLoss", "bpkd_edge_mask", "bpkd_loss"]

_POOLS = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}


def bpkd_edge_mask(target: Tensor, *, edge_width: int = 2, ignore_index: int = 255) -> Tensor:
    r"""The edge pixels of a label map: valid pixels with a valid pixel of another class
    within Chebyshev distance ``edge_width`` (a ``(2r+1)^k`` window, clipped at the image
    border; ignored pixels neither are edges nor make them).

    Args:
        target: ``[N, *spatial]`` class ids (1 to 3 spatial dims, or none: no edges).
        edge_width: :math:`r \ge 1`, the half-width of the edge band (default 2).
        ignore_index: label of unlabelled pixels (default 255, the segmentation convention).

    Returns:
        ``[N, *spatial]`` bool mask. The body is ``valid & ~edge``.
    """
    k = target.ndim - 1
    valid = target != ignore_index
    if k == 0:
        return torch.zeros_like(valid)
    if k not in _POOLS:
        raise ValueError(f"target must have 1 to 3 spatial dims, got shape {tuple(target.shape)}")
    lab = target.to(torch.float64).unsqueeze(1)
    big = float(2**52)
    # max and min of the valid labels in each window (ignored pixels neutral for both)
    hi = _POOLS[k](torch.where(valid.unsqueeze(1), lab, -big), 2 * edge_width + 1, 1,
                   edge_width)
    lo = -_POOLS[k](torch.where(valid.unsqueeze(1), -lab, -big), 2 * edge_width + 1, 1,
                    edge_width)
    return (valid & (hi != lo).squeeze(1))


_check_bpkd = hparams(edge_width=Int(ge=1), edge_temperature=Real(gt=0),
                      body_temperature=Real(gt=0), edge_weight=Real(ge=0),
                      body_weight=Real(ge=0), ignore_index=Int())


def bpkd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    target: Tensor,
    edge_width: int = 2,
    edge_temperature: float = 1.0,
    body_temperature: float = 4.0,
    edge_weight: float = 1.0,
    body_weight: float = 1.0,
    ignore_index: int = 255,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""BPKD: an edge loss on the ground truth's boundary band plus a body loss on the
    interior, distilled separately.

    With student logits :math:`s`, teacher logits :math:`t` (``[C]`` per pixel), the edge
    pixels :math:`E_i` of image :math:`i` (:func:`bpkd_edge_mask`) and its body pixels
    :math:`B_i` (valid, not edge):

    * edge loss, pixel-level (separates the ambiguous classes at each edge pixel):
      :math:`\ell^E_i = \frac{1}{|E_i|}\sum_{u\in E_i} T_e^2\,\mathrm{KL}\big(
      \sigma(t_u/T_e)\,\|\,\sigma(s_u/T_e)\big)` over the classes (0 when
      :math:`E_i = \varnothing`);
    * body loss, a shape constraint per class channel (channel-wise distillation restricted
      to the body): :math:`\ell^B_i = \frac{T_b^2}{C}\sum_c \mathrm{KL}\big(
      \sigma_{B_i}(t_c/T_b)\,\|\,\sigma_{B_i}(s_c/T_b)\big)`, the softmax taken over the body
      pixels of channel :math:`c` (the spatial distribution of the class; 0 when
      :math:`B_i = \varnothing`);

    :math:`\ell_i = \lambda_E \ell^E_i + \lambda_B \ell^B_i`.

    Formula from the abstract, not verified against the paper: the abstract fixes the two
    terms (a pixel-level edge loss, a body loss with shape constraints, teacher knowledge of
    edges and body distilled separately) and the paper's text and training code were not
    available here (the official repository holds evaluation code only). The edge band from
    the ground truth, the pixel KL, the channel-wise spatial KL of the body (Shu et al.,
    "Channel-wise Knowledge Distillation for Dense Prediction", arXiv 2011.13256, which uses
    :math:`T = 4`) and every default are this implementation's choices.

    Args:
        student_logits: ``[N, C, *spatial]`` student segmentation logits.
        teacher_logits: the teacher's, same shape (pass it detached; not detached here).
        target: ``[N, *spatial]`` ground-truth class ids or ``ignore_index``.
        edge_width: half-width :math:`r \ge 1` of the edge band in pixels (default 2).
        edge_temperature: :math:`T_e > 0` (default 1).
        body_temperature: :math:`T_b > 0` (default 4, CWD's).
        edge_weight, body_weight: :math:`\lambda_E, \lambda_B \ge 0` (default 1 each).
        ignore_index: unlabelled pixels, in neither region (default 255).
        reduction: ``"mean"`` over images, ``"sum"`` or ``"none"`` (``[N]``).

    Paper: Liu, Wang, Phan, Zhang, Ge, Liu, "BPKD: Boundary Privileged Knowledge Distillation
    For Semantic Segmentation", arXiv 2306.08075 (WACV 2024).
    """
    _check_bpkd(edge_width=edge_width, edge_temperature=edge_temperature,
                body_temperature=body_temperature, edge_weight=edge_weight,
                body_weight=body_weight, ignore_index=ignore_index)
    check_float("student_logits", student_logits)
    check_float("teacher_logits", teacher_logits)
    if student_logits.ndim < 2 or student_logits.shape[1] < 1:
        raise ValueError(f"student_logits must have shape [N, C, *spatial], got "
                         f"{tuple(student_logits.shape)}")
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(f"teacher_logits must have the shape of student_logits "
                         f"{tuple(student_logits.shape)}, got {tuple(teacher_logits.shape)}")
    if not isinstance(target, Tensor) or target.is_floating_point() or target.is_complex() \
            or target.dtype == torch.bool:
        raise ValueError(f"target must be an integer tensor of class ids, got "
                         f"{getattr(target, 'dtype', type(target).__name__)}")
    n, c = student_logits.shape[:2]
    spatial = tuple(student_logits.shape[2:])
    if tuple(target.shape) != (n, *spatial):
        raise ValueError(f"target must have shape {(n, *spatial)} ([N, *spatial] of "
                         f"student_logits), got {tuple(target.shape)}")
    check_same_device(student_logits=student_logits, teacher_logits=teacher_logits,
                      target=target)
    valid = target != ignore_index
    bad = valid & ((target < 0) | (target >= c))
    require(~bad, lambda: f"target has value(s) {sorted(set(target[bad].tolist()))[:5]} "
            f"outside [0, {c}) that are not ignore_index={ignore_index}")
    cd = compute_dtype(student_logits.dtype)
    s = student_logits.to(cd).reshape(n, c, -1)  # [N, C, P]
    t = teacher_logits.to(cd).reshape(n, c, -1)
    edge = bpkd_edge_mask(target, edge_width=edge_width, ignore_index=ignore_index).reshape(n, -1)
    body = valid.reshape(n, -1) & ~edge

    # edge: per-pixel KL over the classes, averaged over each image's edge pixels (a class
    # masked with -inf in the teacher contributes 0: kl_terms' 0 log 0 = 0)
    te, tb = edge_temperature, body_temperature
    kl_pix = kl_terms(torch.log_softmax(t / te, 1), torch.log_softmax(s / te, 1)).sum(1)
    kl_pix = kl_pix * te**2  # [N, P]
    n_edge = edge.sum(1)
    edge_term = torch.where(edge, kl_pix, 0.0).sum(1) / n_edge.clamp(min=1)

    # body: per-channel KL of the spatial softmax over the body pixels (pixels outside the
    # body at -inf; a channel with no finite body logit, e.g. a masked class, contributes 0)
    mask = body.unsqueeze(1)
    zt = torch.where(mask, t / tb, -torch.inf)
    zs = torch.where(mask, s / tb, -torch.inf)
    ok = ((~torch.isneginf(zt)).any(2) & (~torch.isneginf(zs)).any(2)).unsqueeze(2)
    zt = torch.where(ok, zt, 0.0)
    zs = torch.where(ok, zs, 0.0)
    kl_ch = torch.where(ok, kl_terms(torch.log_softmax(zt, 2), torch.log_softmax(zs, 2)),
                        0.0).sum(2)  # [N, C]
    body_term = kl_ch.sum(1) * tb**2 / c
    return reduce(edge_weight * edge_term + body_weight * body_term, reduction)


@register(
    "bpkd",
    family="distillation",
    kind="teacher",
    paper="BPKD: Boundary Privileged Knowledge Distillation For Semantic Segmentation",
    arxiv="2306.08075",
    summary="pixel KL on the ground truth's edge band + channel-wise spatial KL on the body "
    "(formula from the abstract)",
)
class BPKDLoss(LossModule, function=bpkd_loss, check=_check_bpkd):
    """Module form of :func:`bpkd_loss`."""
