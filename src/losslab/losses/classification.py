"""Classification losses that replace or repair cross-entropy.

Kind ``logits``: ``loss(logits[N, C, d1, ...], target)`` with ``target`` integer class ids
``[N, d1, ...]`` or, where a loss says so, class probabilities ``[N, C, d1, ...]`` (soft
targets; other losses raise ``ValueError`` for float targets). Class ids outside ``[0, C)``
other than ``ignore_index`` (default -100) raise ``ValueError``. ``reduction="mean"`` averages
over the non-ignored items (``N·d1·...`` of them); all items ignored gives 0 with zero
gradient (``torch.nn.functional.cross_entropy`` gives NaN there). fp16/bf16 inputs are computed
in float32 and the result has the input dtype.

Soft targets are accepted by: ``cross_entropy``, ``focal``, ``poly1``, ``logit_adjusted``,
``stablemax_ce`` and ``logz_penalty`` (which ignores the target).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from losslab._core import LossModule, Reduction, check_positive
from losslab._ops.logits import (
    LogitsBatch,
    class_vector,
    finish,
    gather_target,
    log_softmax,
    prepare,
    target_log_prob,
)
from losslab.registry import register

__all__ = [
    "CompSumLoss",
    "CrammerSingerLoss",
    "CrossEntropyLoss",
    "FocalLoss",
    "GCELoss",
    "LDAMLoss",
    "LogZPenaltyLoss",
    "LogitAdjustedLoss",
    "MAELoss",
    "Poly1Loss",
    "StableMaxCELoss",
    "WestonWatkinsLoss",
    "ZLoss",
    "comp_sum_loss",
    "crammer_singer_loss",
    "cross_entropy_loss",
    "focal_loss",
    "gce_loss",
    "ldam_loss",
    "logit_adjusted_loss",
    "logz_penalty_loss",
    "mae_loss",
    "one_minus_pt_power",
    "poly1_loss",
    "stablemax_ce_loss",
    "weston_watkins_loss",
    "z_loss",
]

Weights = Sequence[float] | Tensor | None


# --------------------------------------------------------------------------------------------
# Cross-entropy
# --------------------------------------------------------------------------------------------


def _cross_entropy_values(
    batch: LogitsBatch, logp: Tensor, weight: Tensor | None, label_smoothing: float
) -> tuple[Tensor, Tensor | None]:
    """Per-item CE (already weighted) and the ``"mean"`` denominator, as torch defines them."""
    c = batch.num_classes
    if batch.probs is not None:
        probs = batch.probs
        if label_smoothing > 0:
            probs = probs * (1 - label_smoothing) + label_smoothing / c
        wlogp = logp if weight is None else logp * weight
        return -(probs * wlogp).sum(1), None  # mean over items, not weight-normalised (torch)
    nll = -gather_target(logp, batch)
    w_y = None if weight is None else weight[batch.index]
    values = nll if w_y is None else w_y * nll
    if label_smoothing > 0:
        smooth = -(logp if weight is None else logp * weight).sum(1)
        values = (1 - label_smoothing) * values + (label_smoothing / c) * smooth
    count = None if w_y is None else torch.where(batch.valid, w_y, torch.zeros_like(w_y)).sum()
    return values, count


def cross_entropy_loss(
    logits: Tensor,
    target: Tensor,
    *,
    weight: Weights = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Cross-entropy, with the exact semantics of ``torch.nn.functional.cross_entropy``.

    .. math::
        \ell = -(1-\varepsilon)\, w_y \log p_y - \frac{\varepsilon}{C} \sum_c w_c \log p_c,
        \qquad p = \operatorname{softmax}(\text{logits})

    For soft targets ``q``: :math:`\ell = -\sum_c w_c\, \tilde q_c \log p_c` with
    :math:`\tilde q = (1-\varepsilon) q + \varepsilon / C`.

    Args:
        logits: ``[N, C, d1, ...]`` scores.
        target: ``[N, d1, ...]`` class ids or ``[N, C, d1, ...]`` class probabilities (soft).
        weight: optional ``[C]`` class weights :math:`w`.
        ignore_index: class id of items to skip (class-id targets only).
        label_smoothing: :math:`\varepsilon \in [0, 1]`.
        reduction: ``"mean"``: with class ids, :math:`\sum \ell / \sum w_y` over non-ignored
            items (the plain mean without weights); with soft targets, the mean over items
            (not weight-normalised) — both as torch. ``"sum"``, or ``"none"`` (``[N, d1, ...]``).

    All items ignored: 0 (torch: NaN). Peer: ``torch.nn.functional.cross_entropy``.
    """
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing!r}")
    batch = prepare(logits, target, ignore_index=ignore_index, soft_ok=True, loss="cross_entropy")
    w = class_vector("weight", weight, batch)
    values, count = _cross_entropy_values(batch, log_softmax(batch), w, label_smoothing)
    return finish(values, batch, reduction, count=count)


@register(
    "cross_entropy",
    family="classification",
    kind="logits", degenerate=("all_ignored",),
    paper="(standard) softmax cross-entropy",
    arxiv="",
    function=cross_entropy_loss,
    summary="-(1-eps) w_y log p_y - eps/C sum_c w_c log p_c; torch.nn.functional.cross_entropy",
    peers=("torch.nn.functional.cross_entropy",),
)
class CrossEntropyLoss(LossModule):
    """Module form of :func:`cross_entropy_loss` (``weight`` is kept as a buffer)."""

    tensor_hparams = ("weight",)

    def __init__(
        self,
        *,
        weight: Weights = None,
        ignore_index: int = -100,
        label_smoothing: float = 0.0,
        reduction: Reduction = "mean",
    ) -> None:
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing!r}")
        super().__init__(
            weight=weight, ignore_index=ignore_index, label_smoothing=label_smoothing,
            reduction=reduction,
        )


# --------------------------------------------------------------------------------------------
# Focal and Poly-1
# --------------------------------------------------------------------------------------------


def one_minus_pt_power(logp: Tensor, gamma: float) -> Tensor:
    r""":math:`(1 - p)^\gamma` from :math:`\log p`, computed as ``-expm1(log p)``.

    Where :math:`p` rounds to 1 and :math:`0 < \gamma < 1`, the derivative of
    :math:`x^\gamma` at 0 is infinite; there the factor is taken from a detached copy (its
    value is 0 and the loss term it multiplies has a zero derivative), so gradients stay finite.
    """
    base = -torch.expm1(logp)
    if gamma == 0:
        return torch.ones_like(base)
    zero = base <= 0
    safe = torch.where(zero, torch.ones_like(base), base)
    return torch.where(zero, base.detach().clamp_min(0).pow(gamma), safe.pow(gamma))


def _alpha_vector(alpha: float | Weights, batch: LogitsBatch) -> Tensor | None:
    """Focal ``alpha`` as ``[C]``: a float gives ``1 - alpha`` to class 0 and ``alpha`` to the
    other classes (Lin et al.'s binary convention, as kornia); a sequence is per class."""
    if alpha is None:
        return None
    if isinstance(alpha, (int, float)):
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
        a = torch.full((batch.num_classes,), float(alpha), dtype=batch.logits.dtype,
                       device=batch.logits.device)
        a[0] = 1.0 - alpha
        return a
    return class_vector("alpha", alpha, batch)


def _check_alpha(alpha: float | Weights) -> None:
    if isinstance(alpha, (int, float)) and not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")


def _focal_values(batch: LogitsBatch, logp: Tensor, gamma: float, alpha: Tensor | None) -> Tensor:
    """Per-item focal loss (soft targets: the sum over classes weighted by ``q``)."""
    if batch.probs is not None:
        terms = -one_minus_pt_power(logp, gamma) * logp * batch.probs
        if alpha is not None:
            terms = terms * alpha
        return terms.sum(1)
    logpt = gather_target(logp, batch)
    values = -one_minus_pt_power(logpt, gamma) * logpt
    if alpha is not None:
        values = alpha[batch.index] * values
    return values


def focal_loss(
    logits: Tensor,
    target: Tensor,
    *,
    gamma: float = 2.0,
    alpha: float | Weights = None,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Softmax focal loss.

    .. math::
        \ell = -\alpha_y (1 - p_y)^\gamma \log p_y, \qquad p = \operatorname{softmax}(\text{logits})

    Soft targets ``q``: :math:`\ell = -\sum_c q_c \alpha_c (1-p_c)^\gamma \log p_c`.

    Args:
        logits, target: see the module docstring (soft targets accepted).
        gamma: focusing parameter :math:`\gamma \ge 0` (default 2, the paper's choice).
        alpha: ``None`` (default: every class weighted 1, the usual multi-class form), a float
            in ``[0, 1]`` (class 0 gets ``1 - alpha``, the other classes ``alpha``: Lin et al.'s
            binary convention with class 0 the background, as ``kornia.losses.focal_loss``), or
            a ``[C]`` sequence of per-class weights.
        reduction: ``"mean"`` over non-ignored items (not normalised by alpha), ``"sum"``,
            ``"none"``.

    ``gamma=0, alpha=None`` is cross-entropy. Peer: ``kornia.losses.focal_loss`` (its
    ``reduction="none"`` returns ``[N, C, ...]``; summed over classes it equals ours; its
    ``"mean"`` divides by ``C`` times the item count and keeps ignored items).

    Paper: Lin, Goyal, Girshick, He, Dollár, "Focal Loss for Dense Object Detection",
    arXiv 1708.02002.
    """
    check_positive("gamma", gamma, strict=False)
    _check_alpha(alpha)
    batch = prepare(logits, target, ignore_index=ignore_index, soft_ok=True, loss="focal")
    values = _focal_values(batch, log_softmax(batch), gamma, _alpha_vector(alpha, batch))
    return finish(values, batch, reduction)


@register(
    "focal",
    family="classification",
    kind="logits", degenerate=("all_ignored",),
    paper="Focal Loss for Dense Object Detection",
    arxiv="1708.02002",
    function=focal_loss,
    summary="-alpha_y (1 - p_y)^gamma log p_y, gamma=2",
    peers=("kornia.losses.focal_loss",),
)
class FocalLoss(LossModule):
    """Module form of :func:`focal_loss`."""

    def __init__(
        self,
        *,
        gamma: float = 2.0,
        alpha: float | Weights = None,
        ignore_index: int = -100,
        reduction: Reduction = "mean",
    ) -> None:
        check_positive("gamma", gamma, strict=False)
        _check_alpha(alpha)
        if isinstance(alpha, Tensor):
            alpha = alpha.tolist()
        super().__init__(gamma=gamma, alpha=alpha, ignore_index=ignore_index, reduction=reduction)


def poly1_loss(
    logits: Tensor,
    target: Tensor,
    *,
    epsilon: float = 1.0,
    focal: bool = False,
    gamma: float = 2.0,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Poly-1 loss: cross-entropy (or focal loss) plus a first-order polynomial term.

    .. math::
        \ell_{\text{Poly-1}} = -\log p_t + \epsilon (1 - p_t), \qquad
        \ell_{\text{Poly-1 focal}} = -(1-p_t)^\gamma \log p_t + \epsilon (1 - p_t)^{\gamma+1}

    with :math:`p_t = p_y`, or :math:`p_t = \sum_c q_c p_c` and the CE/focal term taken over the
    soft target ``q`` for soft targets.

    Args:
        logits, target: see the module docstring (soft targets accepted).
        epsilon: :math:`\epsilon` (default 1.0, the paper's default for ImageNet
            classification; it may be negative, down to -1).
        focal: use the Poly-1 focal form (the paper's detection variant).
        gamma: focal exponent when ``focal=True`` (default 2).
        reduction: ``"mean"`` over non-ignored items, ``"sum"``, ``"none"``.

    Paper: Leng et al., "PolyLoss: A Polynomial Expansion Perspective of Classification Loss
    Functions", arXiv 2204.12511.
    """
    check_positive("gamma", gamma, strict=False)
    batch = prepare(logits, target, ignore_index=ignore_index, soft_ok=True, loss="poly1")
    logp = log_softmax(batch)
    if batch.probs is not None:
        one_minus_pt = 1.0 - (batch.probs * logp.exp()).sum(1)
    else:
        one_minus_pt = -torch.expm1(gather_target(logp, batch))
    if focal:
        base = _focal_values(batch, logp, gamma, None)
        poly = one_minus_pt.clamp_min(0).pow(gamma + 1)
    else:
        base = target_log_prob(logp, batch)
        poly = one_minus_pt
    return finish(base + epsilon * poly, batch, reduction)


@register(
    "poly1",
    family="classification",
    kind="logits", degenerate=("all_ignored",),
    paper="PolyLoss: A Polynomial Expansion Perspective of Classification Loss Functions",
    arxiv="2204.12511",
    function=poly1_loss,
    summary="CE + epsilon (1 - p_t); focal=True: FL + epsilon (1 - p_t)^(gamma+1)",
)
class Poly1Loss(LossModule):
    """Module form of :func:`poly1_loss`."""

    def __init__(
        self,
        *,
        epsilon: float = 1.0,
        focal: bool = False,
        gamma: float = 2.0,
        ignore_index: int = -100,
        reduction: Reduction = "mean",
    ) -> None:
        check_positive("gamma", gamma, strict=False)
        super().__init__(
            epsilon=epsilon, focal=focal, gamma=gamma, ignore_index=ignore_index,
            reduction=reduction,
        )


# --------------------------------------------------------------------------------------------
# Comp-sum family: comp_sum, gce, mae
# --------------------------------------------------------------------------------------------

#: Largest exponent evaluated exactly in the tau < 1 branch of comp-sum; beyond it exp is
#: continued linearly (value and slope continuous), so the loss stays finite with a positive
#: gradient. exp(60) ~ 1.1e26 is far from float32 overflow (3.4e38); for float16 inputs
#: (max 65504) the cap is 5 (slope e^5 ~ 148), so the gradient stays finite in float16.
_COMP_SUM_MAX_EXPONENT = 60.0
_COMP_SUM_MAX_EXPONENT_FP16 = 5.0


def comp_sum_values(logpt: Tensor, tau: float, *, max_exponent: float = _COMP_SUM_MAX_EXPONENT
                    ) -> Tensor:
    r"""The comp-sum loss as a function of :math:`\log p_y`.

    .. math::
        \ell_\tau = \frac{1 - p_y^{\tau - 1}}{\tau - 1}
        = -\frac{\operatorname{expm1}((\tau-1)\log p_y)}{\tau - 1} \quad (\tau \ne 1),
        \qquad \ell_1 = -\log p_y

    For :math:`\tau < 1` the exponent :math:`u = (1-\tau)(-\log p_y)` is positive; above
    ``u = max_exponent`` (60; 5 for float16 inputs) ``exp`` is continued by its tangent, so an
    extremely wrong prediction gives a large finite loss with a finite positive gradient
    instead of ``inf``. ``1 - p_y`` (``tau=2``) is ``-expm1(log p_y)``, accurate for ``p_y``
    near 1.
    """
    if tau == 1.0:
        return -logpt
    if tau > 1.0:
        return -torch.expm1((tau - 1.0) * logpt) / (tau - 1.0)
    u = (1.0 - tau) * (-logpt)
    top = max_exponent
    expm1_u = torch.expm1(u.clamp(max=top)) + math.exp(top) * (u - top).clamp(min=0)
    return expm1_u / (1.0 - tau)


def _comp_sum_core(
    logits: Tensor, target: Tensor, tau: float, scale: float, ignore_index: int,
    reduction: str, loss: str,
) -> Tensor:
    batch = prepare(logits, target, ignore_index=ignore_index, loss=loss)
    logpt = gather_target(log_softmax(batch), batch)
    top = _COMP_SUM_MAX_EXPONENT_FP16 if batch.dtype == torch.float16 else _COMP_SUM_MAX_EXPONENT
    return finish(scale * comp_sum_values(logpt, tau, max_exponent=top), batch, reduction)


def comp_sum_loss(
    logits: Tensor,
    target: Tensor,
    *,
    tau: float = 1.0,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Comp-sum loss: a composition :math:`\Phi^\tau` applied to the sum of exponentials.

    .. math::
        \ell_\tau = \Phi^\tau\Big(\sum_{k \ne y} e^{h_k - h_y}\Big),\quad
        \Phi^\tau(u) = \begin{cases}\log(1+u) & \tau = 1\\
        \frac{(1+u)^{1-\tau} - 1}{1-\tau} & \tau \ge 0,\ \tau \ne 1\end{cases}
        \;=\; \frac{1 - p_y^{\tau-1}}{\tau - 1}

    ``tau=0``: sum-exponential loss :math:`1/p_y - 1`; ``tau=1``: cross-entropy;
    ``1 < tau < 2``: generalized cross-entropy with ``q = tau - 1`` (:func:`gce_loss`);
    ``tau=2``: :math:`1 - p_y`, half the usual MAE (:func:`mae_loss`). Computed from
    ``log_softmax`` with ``expm1``; stable for ``tau < 1``: beyond an exponent of 60 (5 for
    float16 inputs) the exponential is continued linearly, so extreme logits give a large finite
    loss and a finite gradient (see :func:`comp_sum_values`). With float16 inputs the value of
    a ``tau < 1`` loss can still overflow to ``inf`` (it is genuinely larger than 65504).

    Args:
        logits, target: see the module docstring (class ids only).
        tau: :math:`\tau \ge 0` (default 1: cross-entropy).
        reduction: ``"mean"`` over non-ignored items, ``"sum"``, ``"none"``.

    Paper: Mao, Mohri, Zhong, "Cross-Entropy Loss Functions: Theoretical Analysis and
    Applications", arXiv 2304.07288.
    """
    check_positive("tau", tau, strict=False)
    return _comp_sum_core(logits, target, tau, 1.0, ignore_index, reduction, "comp_sum")


@register(
    "comp_sum",
    family="classification",
    kind="logits", degenerate=("all_ignored",),
    paper="Cross-Entropy Loss Functions: Theoretical Analysis and Applications",
    arxiv="2304.07288",
    function=comp_sum_loss,
    summary="(1 - p_y^(tau-1)) / (tau-1); tau=0 sum-exp, 1 CE, 1+q GCE, 2 (1 - p_y)",
)
class CompSumLoss(LossModule):
    """Module form of :func:`comp_sum_loss`."""

    def __init__(
        self, *, tau: float = 1.0, ignore_index: int = -100, reduction: Reduction = "mean"
    ) -> None:
        check_positive("tau", tau, strict=False)
        super().__init__(tau=tau, ignore_index=ignore_index, reduction=reduction)


def gce_loss(
    logits: Tensor,
    target: Tensor,
    *,
    q: float = 0.7,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Generalized cross-entropy :math:`(1 - p_y^q)/q` (comp-sum with ``tau = 1 + q``).

    ``q → 0`` is cross-entropy, ``q = 1`` is :math:`1 - p_y` (half the MAE).

    Args:
        q: :math:`q \in (0, 1]` (default 0.7, the paper's choice).
        reduction: ``"mean"`` over non-ignored items, ``"sum"``, ``"none"``.

    Paper: Zhang, Sabuncu, "Generalized Cross Entropy Loss for Training Deep Neural Networks
    with Noisy Labels", arXiv 1805.07836 (a member of the comp-sum family, arXiv 2304.07288).
    """
    _check_q(q)
    return _comp_sum_core(logits, target, 1.0 + q, 1.0, ignore_index, reduction, "gce")


def _check_q(q: float) -> None:
    if not 0.0 < q <= 1.0:
        raise ValueError(f"q must be in (0, 1], got {q!r}")


@register(
    "gce",
    family="robust-noisy",
    kind="logits", degenerate=("all_ignored",),
    paper="Generalized Cross Entropy Loss for Training Deep Neural Networks with Noisy Labels",
    arxiv="1805.07836",
    function=gce_loss,
    summary="(1 - p_y^q) / q, q=0.7 (comp_sum with tau = 1 + q)",
)
class GCELoss(LossModule):
    """Module form of :func:`gce_loss`."""

    def __init__(
        self, *, q: float = 0.7, ignore_index: int = -100, reduction: Reduction = "mean"
    ) -> None:
        _check_q(q)
        super().__init__(q=q, ignore_index=ignore_index, reduction=reduction)


def mae_loss(
    logits: Tensor,
    target: Tensor,
    *,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Mean absolute error between the one-hot target and the softmax:
    :math:`\|e_y - p\|_1 = 2(1 - p_y)`.

    Twice comp-sum with ``tau = 2``. (Some released code, e.g. Ma et al.'s, uses
    :math:`1 - p_y`; scale the weight by 2 to compare.)

    Args:
        reduction: ``"mean"`` over non-ignored items, ``"sum"``, ``"none"``.

    Paper: Ghosh, Kumar, Sastry, "Robust Loss Functions under Label Noise for Deep Neural
    Networks", arXiv 1712.09482.
    """
    return _comp_sum_core(logits, target, 2.0, 2.0, ignore_index, reduction, "mae")


@register(
    "mae",
    family="robust-noisy",
    kind="logits", degenerate=("all_ignored",),
    paper="Robust Loss Functions under Label Noise for Deep Neural Networks",
    arxiv="1712.09482",
    function=mae_loss,
    summary="||e_y - softmax||_1 = 2 (1 - p_y)",
)
class MAELoss(LossModule):
    """Module form of :func:`mae_loss`."""

    def __init__(self, *, ignore_index: int = -100, reduction: Reduction = "mean") -> None:
        super().__init__(ignore_index=ignore_index, reduction=reduction)


# --------------------------------------------------------------------------------------------
# Z-loss (spherical) and the log-partition penalty
# --------------------------------------------------------------------------------------------


def z_loss(
    logits: Tensor,
    target: Tensor,
    *,
    a: float = 1.0,
    b: float = 1.0,
    eps: float = 1e-4,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Z-loss: a softplus of the standardised target score; invariant to shift and scale.

    .. math::
        \mu = \tfrac1C \sum_k o_k,\quad \sigma^2 = \tfrac1C \sum_k o_k^2 - \mu^2,\quad
        z_y = \frac{o_y - \mu}{\sigma},\qquad
        \ell = \tfrac1a \operatorname{softplus}\big(a\,(b - z_y)\big)

    Invariant to ``logits * alpha + beta`` for ``alpha > 0``. ``z_y`` lies in
    :math:`[-\sqrt{C-1}, \sqrt{C-1}]`. Not the log-partition penalty of large-LM training (that
    is :func:`logz_penalty_loss`).

    Args:
        logits, target: see the module docstring (class ids only; ``C >= 2``).
        a: sharpness of the softplus (> 0). b: the z-score beyond which the loss flattens.
            The paper tunes ``a`` and ``b`` per task on validation data; we could not read the
            values it reports, so the defaults ``a = 1, b = 1`` are ours (a smooth hinge at
            one standard deviation above the mean score).
        eps: lower bound of :math:`\sigma` (default 1e-4). At constant logits ``z = 0`` and
            the gradient, unbounded in theory, is of order ``1/eps`` (finite in float16).
        reduction: ``"mean"`` over non-ignored items, ``"sum"``, ``"none"``.

    Paper: de Brébisson, Vincent, "The Z-loss: a shift and scale invariant classification loss
    belonging to the Spherical Family", arXiv 1604.08859.
    """
    check_positive("a", a)
    check_positive("eps", eps)
    batch = prepare(logits, target, ignore_index=ignore_index, min_classes=2, loss="z_loss")
    o = batch.logits
    mu = o.mean(1)
    var = (o - mu.unsqueeze(1)).pow(2).mean(1)
    sigma = var.clamp_min(eps * eps).sqrt()
    z = (gather_target(o, batch) - mu) / sigma
    return finish(F.softplus(a * (b - z)) / a, batch, reduction)


@register(
    "z_loss",
    family="classification",
    kind="logits", degenerate=("all_ignored",),
    paper="The Z-loss: a shift and scale invariant classification loss belonging to the "
    "Spherical Family",
    arxiv="1604.08859",
    function=z_loss,
    summary="(1/a) softplus(a (b - z_y)), z = (o - mean(o)) / std(o)",
)
class ZLoss(LossModule):
    """Module form of :func:`z_loss`."""

    def __init__(
        self,
        *,
        a: float = 1.0,
        b: float = 1.0,
        eps: float = 1e-4,
        ignore_index: int = -100,
        reduction: Reduction = "mean",
    ) -> None:
        check_positive("a", a)
        check_positive("eps", eps)
        super().__init__(a=a, b=b, eps=eps, ignore_index=ignore_index, reduction=reduction)


def logz_penalty_loss(
    logits: Tensor,
    target: Tensor,
    *,
    coefficient: float = 1e-4,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Log-partition penalty ("z-loss" of large-LM training): keeps ``log Z`` near 0.

    .. math::
        \ell = c \cdot \Big(\log \sum_k e^{o_k}\Big)^2

    A regulariser added to cross-entropy, not a classification loss on its own; the target is
    used only to skip ``ignore_index`` items (soft targets are accepted and ignored).

    Args:
        coefficient: :math:`c` (default 1e-4, as PaLM).
        reduction: ``"mean"`` over non-ignored items, ``"sum"``, ``"none"``.

    Paper: Chowdhery et al., "PaLM: Scaling Language Modeling with Pathways", arXiv 2204.02311
    (also in Mesh-TensorFlow/T5 code). Not the Z-loss of de Brébisson & Vincent
    (:func:`z_loss`).
    """
    check_positive("coefficient", coefficient, strict=False)
    batch = prepare(logits, target, ignore_index=ignore_index, soft_ok=True, loss="logz_penalty")
    logz = torch.logsumexp(batch.logits, dim=1)
    return finish(coefficient * logz.pow(2), batch, reduction)


@register(
    "logz_penalty",
    family="sequence-lm",
    kind="logits", degenerate=("all_ignored",),
    paper="PaLM: Scaling Language Modeling with Pathways",
    arxiv="2204.02311",
    function=logz_penalty_loss,
    summary="coefficient * logsumexp(logits)^2, coefficient=1e-4",
)
class LogZPenaltyLoss(LossModule):
    """Module form of :func:`logz_penalty_loss`."""

    def __init__(
        self, *, coefficient: float = 1e-4, ignore_index: int = -100,
        reduction: Reduction = "mean",
    ) -> None:
        check_positive("coefficient", coefficient, strict=False)
        super().__init__(coefficient=coefficient, ignore_index=ignore_index, reduction=reduction)


# --------------------------------------------------------------------------------------------
# Long-tail: logit adjustment, LDAM
# --------------------------------------------------------------------------------------------


def logit_adjusted_loss(
    logits: Tensor,
    target: Tensor,
    *,
    class_priors: Weights,
    tau: float = 1.0,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Logit-adjusted cross-entropy: CE on logits shifted by the log class priors.

    .. math::
        \ell = -\log \frac{e^{f_y + \tau \log \pi_y}}{\sum_k e^{f_k + \tau \log \pi_k}}

    At test time predict with the raw logits ``f`` (the adjustment is a training-time margin).

    Args:
        logits, target: see the module docstring (soft targets accepted).
        class_priors: ``[C]`` positive class frequencies :math:`\pi` (counts are fine: a
            common factor does not change the loss).
        tau: :math:`\tau` (default 1, the paper's default).
        reduction: ``"mean"`` over non-ignored items, ``"sum"``, ``"none"``.

    Paper: Menon et al., "Long-tail learning via logit adjustment", arXiv 2007.07314.
    """
    batch = prepare(logits, target, ignore_index=ignore_index, soft_ok=True,
                    loss="logit_adjusted")
    priors = class_vector("class_priors", class_priors, batch, positive=True)
    assert priors is not None
    logp = F.log_softmax(batch.logits + tau * priors.log(), dim=1)
    return finish(target_log_prob(logp, batch), batch, reduction)


@register(
    "logit_adjusted",
    family="classification",
    kind="logits", degenerate=("all_ignored",),
    paper="Long-tail learning via logit adjustment",
    arxiv="2007.07314",
    function=logit_adjusted_loss,
    summary="CE(logits + tau log prior), tau=1",
    example_hparams={"class_priors": (0.4, 0.3, 0.2, 0.1)},
)
class LogitAdjustedLoss(LossModule):
    """Module form of :func:`logit_adjusted_loss` (``class_priors`` kept as a buffer)."""

    tensor_hparams = ("class_priors",)

    def __init__(
        self,
        *,
        class_priors: Weights,
        tau: float = 1.0,
        ignore_index: int = -100,
        reduction: Reduction = "mean",
    ) -> None:
        if class_priors is None:
            raise ValueError("class_priors is required (one positive value per class)")
        super().__init__(
            class_priors=class_priors, tau=tau, ignore_index=ignore_index, reduction=reduction
        )


def ldam_loss(
    logits: Tensor,
    target: Tensor,
    *,
    class_counts: Weights,
    max_margin: float = 0.5,
    scale: float = 30.0,
    weight: Weights = None,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Label-distribution-aware margin (LDAM) loss.

    .. math::
        \ell = -\log \frac{e^{s (f_y - m_y)}}{e^{s (f_y - m_y)} + \sum_{k \ne y} e^{s f_k}},
        \qquad m_c = \frac{C_m}{n_c^{1/4}},\ \ \max_c m_c = C_m

    Args:
        logits, target: see the module docstring (class ids only). The paper feeds cosine
            logits (normalised features and weights); the margin is in logit units.
        class_counts: ``[C]`` positive training-set counts :math:`n_c`.
        max_margin: the largest margin :math:`C_m` (default 0.5, the paper's code).
        scale: :math:`s` (default 30, the paper's code).
        weight: optional ``[C]`` class weights (e.g. the deferred re-weighting schedule, DRW),
            with torch CE's weighted mean.
        reduction: ``"mean"`` (:math:`\sum w_y \ell / \sum w_y`), ``"sum"``, ``"none"``.

    Paper: Cao, Wei, Gaidon, Arechiga, Ma, "Learning Imbalanced Datasets with
    Label-Distribution-Aware Margin Loss", arXiv 1906.07413.
    """
    check_positive("max_margin", max_margin, strict=False)
    check_positive("scale", scale)
    batch = prepare(logits, target, ignore_index=ignore_index, loss="ldam")
    counts = class_vector("class_counts", class_counts, batch, positive=True)
    assert counts is not None
    margins = counts.pow(-0.25)
    margins = margins * (max_margin / margins.max())
    onehot = F.one_hot(batch.index, batch.num_classes).to(batch.logits.dtype)
    shifted = scale * (batch.logits - onehot * margins)
    w = class_vector("weight", weight, batch)
    values, count = _cross_entropy_values(batch, F.log_softmax(shifted, dim=1), w, 0.0)
    return finish(values, batch, reduction, count=count)


@register(
    "ldam",
    family="classification",
    kind="logits", degenerate=("all_ignored",),
    paper="Learning Imbalanced Datasets with Label-Distribution-Aware Margin Loss",
    arxiv="1906.07413",
    function=ldam_loss,
    summary="CE(s (f - m_y e_y)), m_c = C_m n_c^(-1/4) scaled to max C_m=0.5, s=30",
    example_hparams={"class_counts": (500, 100, 50, 10)},
)
class LDAMLoss(LossModule):
    """Module form of :func:`ldam_loss` (``class_counts`` and ``weight`` kept as buffers)."""

    tensor_hparams = ("class_counts", "weight")

    def __init__(
        self,
        *,
        class_counts: Weights,
        max_margin: float = 0.5,
        scale: float = 30.0,
        weight: Weights = None,
        ignore_index: int = -100,
        reduction: Reduction = "mean",
    ) -> None:
        if class_counts is None:
            raise ValueError("class_counts is required (one positive count per class)")
        check_positive("max_margin", max_margin, strict=False)
        check_positive("scale", scale)
        super().__init__(
            class_counts=class_counts, max_margin=max_margin, scale=scale, weight=weight,
            ignore_index=ignore_index, reduction=reduction,
        )


# --------------------------------------------------------------------------------------------
# Multi-class hinge losses
# --------------------------------------------------------------------------------------------


def _margin_violations(batch: LogitsBatch, margin: float) -> tuple[Tensor, Tensor]:
    """``margin + f_k - f_y`` for every class and the mask of ``k != y``."""
    f_y = gather_target(batch.logits, batch).unsqueeze(1)
    others = ~F.one_hot(batch.index, batch.num_classes).bool()
    return margin + batch.logits - f_y, others


def crammer_singer_loss(
    logits: Tensor,
    target: Tensor,
    *,
    margin: float = 1.0,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Crammer–Singer multi-class hinge loss.

    .. math::
        \ell = \max\big(0,\ m + \max_{k \ne y} f_k - f_y\big)

    Args:
        logits, target: see the module docstring (class ids only; ``C >= 2``).
        margin: :math:`m` (default 1).
        reduction: ``"mean"`` over non-ignored items, ``"sum"``, ``"none"``.

    Paper: Crammer, Singer, "On the Algorithmic Implementation of Multiclass Kernel-based
    Vector Machines", JMLR 2001 (no arXiv id).
    """
    batch = prepare(logits, target, ignore_index=ignore_index, min_classes=2,
                    loss="crammer_singer")
    v, others = _margin_violations(batch, margin)
    worst = v.masked_fill(~others, float("-inf")).amax(1)
    return finish(F.relu(worst), batch, reduction)


@register(
    "crammer_singer",
    family="classification",
    kind="logits", degenerate=("all_ignored",),
    paper="On the Algorithmic Implementation of Multiclass Kernel-based Vector Machines",
    arxiv="",
    function=crammer_singer_loss,
    summary="max(0, margin + max_{k!=y} f_k - f_y), margin=1",
)
class CrammerSingerLoss(LossModule):
    """Module form of :func:`crammer_singer_loss`."""

    def __init__(
        self, *, margin: float = 1.0, ignore_index: int = -100, reduction: Reduction = "mean"
    ) -> None:
        super().__init__(margin=margin, ignore_index=ignore_index, reduction=reduction)


def weston_watkins_loss(
    logits: Tensor,
    target: Tensor,
    *,
    margin: float = 1.0,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Weston–Watkins multi-class hinge loss.

    .. math::
        \ell = \sum_{k \ne y} \max(0,\ m + f_k - f_y)

    ``torch.nn.functional.multi_margin_loss(p=1, margin=m)`` is this divided by ``C``.

    Args:
        logits, target: see the module docstring (class ids only; ``C >= 2``).
        margin: :math:`m` (default 1).
        reduction: ``"mean"`` over non-ignored items, ``"sum"``, ``"none"``.

    Paper: Weston, Watkins, "Support Vector Machines for Multi-Class Pattern Recognition",
    ESANN 1999 (no arXiv id).
    """
    batch = prepare(logits, target, ignore_index=ignore_index, min_classes=2,
                    loss="weston_watkins")
    v, others = _margin_violations(batch, margin)
    values = (F.relu(v) * others).sum(1)
    return finish(values, batch, reduction)


@register(
    "weston_watkins",
    family="classification",
    kind="logits", degenerate=("all_ignored",),
    paper="Support Vector Machines for Multi-Class Pattern Recognition",
    arxiv="",
    function=weston_watkins_loss,
    summary="sum_{k!=y} max(0, margin + f_k - f_y), margin=1",
    peers=("torch.nn.functional.multi_margin_loss",),
)
class WestonWatkinsLoss(LossModule):
    """Module form of :func:`weston_watkins_loss`."""

    def __init__(
        self, *, margin: float = 1.0, ignore_index: int = -100, reduction: Reduction = "mean"
    ) -> None:
        super().__init__(margin=margin, ignore_index=ignore_index, reduction=reduction)


# --------------------------------------------------------------------------------------------
# StableMax cross-entropy
# --------------------------------------------------------------------------------------------


def log_stablemax(x: Tensor, dim: int = 1) -> Tensor:
    r"""``log StableMax(x)``: :math:`\log s(x_i) - \log \sum_j s(x_j)` with
    :math:`s(x) = x + 1` for :math:`x \ge 0` and :math:`1/(1-x)` for :math:`x < 0`.

    :math:`\log s(x) = \operatorname{log1p}(\max(x,0)) - \operatorname{log1p}(\max(-x,0))`,
    and the normaliser is a ``logsumexp`` of those logs, so nothing overflows.
    """
    log_s = torch.log1p(x.clamp_min(0)) - torch.log1p((-x).clamp_min(0))
    return log_s - torch.logsumexp(log_s, dim=dim, keepdim=True)


def stablemax_ce_loss(
    logits: Tensor,
    target: Tensor,
    *,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Cross-entropy on StableMax instead of softmax.

    .. math::
        \operatorname{StableMax}(x)_i = \frac{s(x_i)}{\sum_j s(x_j)},\quad
        s(x) = \begin{cases} x + 1 & x \ge 0 \\ \frac{1}{1 - x} & x < 0 \end{cases},\qquad
        \ell = -\log \operatorname{StableMax}(x)_y

    ``s`` grows linearly instead of exponentially, which avoids the "softmax collapse" (float
    absorption) the paper identifies in grokking. Not shift-invariant, unlike softmax.

    Args:
        logits, target: see the module docstring (soft targets accepted:
            :math:`-\sum_c q_c \log \operatorname{StableMax}_c`).
        reduction: ``"mean"`` over non-ignored items, ``"sum"``, ``"none"``.

    Paper: Prieto, Barsbey, Mediano, Birdal, "Grokking at the Edge of Numerical Stability",
    arXiv 2501.04697.
    """
    batch = prepare(logits, target, ignore_index=ignore_index, soft_ok=True, loss="stablemax_ce")
    return finish(target_log_prob(log_stablemax(batch.logits), batch), batch, reduction)


@register(
    "stablemax_ce",
    family="classification",
    kind="logits", degenerate=("all_ignored",),
    paper="Grokking at the Edge of Numerical Stability",
    arxiv="2501.04697",
    function=stablemax_ce_loss,
    summary="-log s(x_y)/sum_j s(x_j), s(x) = x+1 (x>=0), 1/(1-x) (x<0)",
)
class StableMaxCELoss(LossModule):
    """Module form of :func:`stablemax_ce_loss`."""

    def __init__(self, *, ignore_index: int = -100, reduction: Reduction = "mean") -> None:
        super().__init__(ignore_index=ignore_index, reduction=reduction)
