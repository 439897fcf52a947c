"""Classification losses that replace or repair cross-entropy (family ``classification``).

Kind ``logits``: ``loss(logits[N, C, d1, ...], target)`` with ``target`` integer class ids
``[N, d1, ...]`` or, where a loss says so, class probabilities ``[N, C, d1, ...]`` (soft
targets; other losses raise ``ValueError`` for float targets). Class ids outside ``[0, C)``
other than ``ignore_index`` (default -100) raise ``ValueError``. ``reduction="mean"`` averages
over the non-ignored items (``N·d1·...`` of them); all items ignored gives 0 with zero
gradient (``torch.nn.functional.cross_entropy`` gives NaN there). fp16/bf16 inputs are computed
in float32 and the loss is returned in float32 (:func:`losslab._core.compute_dtype`). Class ids
of any integer dtype are accepted (bool targets are a ``ValueError``); soft targets must be
distributions over classes (non-negative, summing to 1 within ``losslab._core.PROB_ATOL``).
A ``-inf`` logit masks its class for that row (probability 0; Z-loss leaves it out of the mean
and deviation of the scores). Hyperparameters are declared with :mod:`losslab._hparams` and
checked at construction and by every functional call.

Soft targets are accepted by: ``cross_entropy``, ``focal``, ``poly1``, ``logit_adjusted`` and
``stablemax_ce``. ``anyloss`` is a batch-level loss (one value per batch, no ``reduction``).

Submodules (the long tail of the seed catalog): :mod:`~.polyloss` (Poly-N),
:mod:`~.ebv` (Equiangular Basis Vectors),
:mod:`~.multilabel` (multi-label cluster discrimination, LDAM for multi-label targets),
:mod:`~.hyperbolic` (Hyp-OC's hyperbolic pairwise confusion, kind ``paired``, and
hyperbolic cross-entropy, kind ``embeddings``), :mod:`~.rationale` (rationale invariance of
a linear classifier, kind ``linear``), :mod:`~.reject` (the surrogate rejection loss of a
rejector for a fixed predictor, kind ``regression``), :mod:`~.adversarial` (the PMA
probability-margin attack objective and the smooth adversarial comp-sum losses),
:mod:`~.legendre` (LegendreTron: the log loss through a learned monotone link),
:mod:`~.longtail_risk` (the integrated-risk objective with a decision utility for long-tailed
classification; its False Head Rate metric is :func:`losslab.metrics.false_head_rate`),
:mod:`~.profit` (the profit-driven churn regret, kind ``regression``), :mod:`~.levin` (the
Levin Tree Search loss over solution paths, kind ``tokens``), :mod:`~.forward_forward`
(Scalable Forward-Forward's block-local goodness loss), :mod:`~.concept_bottleneck`
(Sparse-CBM's contrastive Gumbel-Softmax loss of concept activations, with the head's CE).

The noise-robust members of the comp-sum family (``gce``, ``mae``) live in
:mod:`losslab.losses.robust`; the log-partition penalty ``logz_penalty`` in
:mod:`losslab.losses.sequence`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, overload

import torch
import torch.nn.functional as F
from torch import Tensor

from losslab._core import LossModule, Reduction
from losslab._hparams import Choice, Flag, Int, PerClass, Real, hparams
from losslab._ops.logits import (
    LogitsBatch,
    class_vector,
    comp_sum_items,
    finish,
    gather_target,
    log_softmax,
    masked_classes,
    one_minus_pt_power,
    prepare,
    target_log_prob,
)
from losslab.losses.classification import (
    adversarial,
    concept_bottleneck,
    ebv,
    forward_forward,
    hyperbolic,
    legendre,
    levin,
    longtail_risk,
    multilabel,
    polyloss,
    profit,
    rationale,
    reject,
)
from losslab.losses.classification.adversarial import (
    AdvCompSumLoss,
    ProbabilityMarginLoss,
    adv_comp_sum_loss,
    probability_margin_loss,
)
from losslab.losses.classification.concept_bottleneck import (
    SparseCBMLoss,
    gumbel_concept_loss,
    sparse_cbm_loss,
)
from losslab.losses.classification.ebv import EBVLoss, ebv_loss
from losslab.losses.classification.forward_forward import FFGoodnessLoss, ff_goodness_loss
from losslab.losses.classification.hyperbolic import (
    HypCELoss,
    HypPCLoss,
    hyp_ce_loss,
    hyp_pc_loss,
)
from losslab.losses.classification.legendre import (
    ConvexPotential,
    LegendreLink,
    LegendreTronLoss,
    legendretron_loss,
)
from losslab.losses.classification.levin import LTSLoss, lts_log_cost, lts_loss
from losslab.losses.classification.longtail_risk import (
    IntegratedRiskLoss,
    integrated_risk_loss,
    particle_diversity,
    tail_sensitive_utility,
)
from losslab.losses.classification.multilabel import (
    LDAMMultilabelLoss,
    MLCDLoss,
    ldam_multilabel_loss,
    mlcd_loss,
)
from losslab.losses.classification.polyloss import PolyNLoss, poly_n_loss
from losslab.losses.classification.profit import ChurnRegretLoss, churn_profit, churn_regret_loss
from losslab.losses.classification.rationale import (
    RationaleInvarianceLoss,
    rationale_invariance_loss,
)
from losslab.losses.classification.reject import (
    RejectionSurrogateLoss,
    rejection_loss,
    rejection_surrogate_loss,
)
from losslab.registry import register

__all__ = [
    "AdvCompSumLoss",
    "AnyLoss",
    "ChurnRegretLoss",
    "CompSumLoss",
    "ConvexPotential",
    "CrammerSingerLoss",
    "CrossEntropyLoss",
    "EBVLoss",
    "FFGoodnessLoss",
    "FocalLoss",
    "HypCELoss",
    "HypPCLoss",
    "IntegratedRiskLoss",
    "LDAMLoss",
    "LDAMMultilabelLoss",
    "LTSLoss",
    "LegendreLink",
    "LegendreTronLoss",
    "LogitAdjustedLoss",
    "MLCDLoss",
    "Poly1Loss",
    "PolyNLoss",
    "ProbabilityMarginLoss",
    "RationaleInvarianceLoss",
    "RejectionSurrogateLoss",
    "SparseCBMLoss",
    "StableMaxCELoss",
    "WestonWatkinsLoss",
    "ZLoss",
    "adv_comp_sum_loss",
    "adversarial",
    "anyloss",
    "churn_profit",
    "churn_regret_loss",
    "comp_sum_loss",
    "concept_bottleneck",
    "crammer_singer_loss",
    "cross_entropy_loss",
    "ebv",
    "ebv_loss",
    "ff_goodness_loss",
    "focal_loss",
    "forward_forward",
    "gumbel_concept_loss",
    "hyp_ce_loss",
    "hyp_pc_loss",
    "hyperbolic",
    "integrated_risk_loss",
    "ldam_loss",
    "ldam_multilabel_loss",
    "legendre",
    "legendretron_loss",
    "levin",
    "log_stablemax",
    "logit_adjusted_loss",
    "longtail_risk",
    "lts_log_cost",
    "lts_loss",
    "mlcd_loss",
    "multilabel",
    "particle_diversity",
    "poly1_loss",
    "poly_n_loss",
    "polyloss",
    "probability_margin_loss",
    "profit",
    "rationale",
    "rationale_invariance_loss",
    "reject",
    "rejection_loss",
    "rejection_surrogate_loss",
    "soft_confusion",
    "sparse_cbm_loss",
    "stablemax_ce_loss",
    "tail_sensitive_utility",
    "weston_watkins_loss",
    "z_loss",
]

Weights = Sequence[float] | Tensor | None

#: The rule every logits loss shares: ``ignore_index`` is any integer (usually -100).
_IGNORE = hparams(ignore_index=Int())
#: Per-class weights (``weight=``): one finite value >= 0 per class.
_CLASS_WEIGHTS = PerClass(ge=0, optional=True)


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


_check_cross_entropy = _IGNORE | hparams(weight=_CLASS_WEIGHTS, label_smoothing=Real(ge=0, le=1),
                                         logz_penalty=Real(ge=0), return_z_loss=Flag())


def _token_weight_items(token_weight: Tensor | None, batch: LogitsBatch) -> Tensor | None:
    """``token_weight`` (``[N, d1, ...]`` float, the shape of ``reduction="none"``) flattened to
    the ``M`` items of ``batch``, in the compute dtype; ``None`` stays ``None``."""
    if token_weight is None:
        return None
    if (not isinstance(token_weight, Tensor) or not token_weight.is_floating_point()
            or tuple(token_weight.shape) != tuple(batch.item_shape)):
        got = (tuple(token_weight.shape), token_weight.dtype) if isinstance(
            token_weight, Tensor) else type(token_weight).__name__
        raise ValueError(f"token_weight must be a float tensor of shape "
                         f"{list(batch.item_shape)} (one weight per item), got {got}")
    if token_weight.device != batch.logits.device:
        raise ValueError(f"token_weight must be on the logits' device {batch.logits.device}, "
                         f"got {token_weight.device}")
    return token_weight.reshape(-1).to(batch.logits.dtype)


@overload
def cross_entropy_loss(
    logits: Tensor, target: Tensor, *, weight: Weights = ..., ignore_index: int = ...,
    label_smoothing: float = ..., logz_penalty: float = ..., token_weight: Tensor | None = ...,
    return_z_loss: Literal[False] = ..., reduction: Reduction = ...,
) -> Tensor: ...


@overload
def cross_entropy_loss(
    logits: Tensor, target: Tensor, *, weight: Weights = ..., ignore_index: int = ...,
    label_smoothing: float = ..., logz_penalty: float = ..., token_weight: Tensor | None = ...,
    return_z_loss: Literal[True], reduction: Reduction = ...,
) -> tuple[Tensor, Tensor]: ...


def cross_entropy_loss(
    logits: Tensor,
    target: Tensor,
    *,
    weight: Weights = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    logz_penalty: float = 0.0,
    token_weight: Tensor | None = None,
    return_z_loss: bool = False,
    reduction: Reduction = "mean",
) -> Tensor | tuple[Tensor, Tensor]:
    r"""Cross-entropy, with the exact semantics of ``torch.nn.functional.cross_entropy``,
    plus the options of the fused path (:func:`~losslab.losses.sequence.linear_cross_entropy_loss`):
    a log-partition penalty and per-item (token) weights.

    .. math::
        \ell = -(1-\varepsilon)\, w_y \log p_y - \frac{\varepsilon}{C} \sum_c w_c \log p_c
        + \lambda \,(\log Z)^2,
        \qquad p = \operatorname{softmax}(\text{logits}),\
        \log Z = \operatorname{lse}(\text{logits})

    For soft targets ``q``: the CE part is :math:`-\sum_c w_c\, \tilde q_c \log p_c` with
    :math:`\tilde q = (1-\varepsilon) q + \varepsilon / C`. With token weights :math:`\tau`
    and :math:`v = [y \ne \text{ignore\_index}]`, ``"mean"`` is
    :math:`\sum_n \tau_n v_n \ell_n / \sum_n \tau_n v_n w_{y_n}` (class ids) or
    :math:`\sum_n \tau_n \ell_n / \sum_n \tau_n` (soft targets), as the fused path.
    Without ``token_weight``/``logz_penalty`` the value is torch's.

    The z-loss term :math:`\lambda (\log Z)^2` (PaLM's coefficient is 1e-4) is part of the
    returned loss only when ``logz_penalty > 0`` is asked for, counted over non-ignored items
    only, weighted and normalised exactly like the CE part. With ``return_z_loss=True`` the
    function returns ``(loss, z_loss)`` where ``z_loss`` is that term alone, reduced the same
    way, so that the cross-entropy itself, ``loss - z_loss``, can be logged separately (the
    z-term is never hidden inside a number reported as "CE").

    Args:
        logits: ``[N, C, d1, ...]`` scores.
        target: ``[N, d1, ...]`` class ids or ``[N, C, d1, ...]`` class probabilities (soft).
        weight: optional ``[C]`` class weights :math:`w`.
        ignore_index: class id of items to skip (class-id targets only).
        label_smoothing: :math:`\varepsilon \in [0, 1]`.
        logz_penalty: :math:`\lambda \ge 0`, the z-loss coefficient (default 0: off; the
            same name and definition as ``linear_cross_entropy``).
        token_weight: optional ``[N, d1, ...]`` float per-item weights :math:`\tau` (a
            goldfish mask, TALR or loss-based reweighting from
            :mod:`losslab.losses.token_weights`); differentiable. A call-time input.
        return_z_loss: also return the z-loss term (default False).
        reduction: ``"mean"``: with class ids, :math:`\sum \tau\ell / \sum \tau w_y` over
            non-ignored items (the plain mean without weights); with soft targets, the
            (token-weighted) mean over items, not class-weight-normalised — both as torch.
            ``"sum"``, or ``"none"`` (``[N, d1, ...]``, :math:`\tau_n \ell_n`).

    All items ignored: 0 with zero gradient (torch: NaN). Peer:
    ``torch.nn.functional.cross_entropy``.
    """
    _check_cross_entropy(weight=weight, ignore_index=ignore_index, label_smoothing=label_smoothing,
                         logz_penalty=logz_penalty, return_z_loss=return_z_loss)
    batch = prepare(logits, target, ignore_index=ignore_index, soft_ok=True, loss="cross_entropy")
    tw = _token_weight_items(token_weight, batch)
    w = class_vector("weight", weight, batch)
    values, count = _cross_entropy_values(batch, log_softmax(batch), w, label_smoothing)
    if tw is not None:
        valid_tw = torch.where(batch.valid, tw, torch.zeros_like(tw))
        if count is not None and w is not None and batch.index is not None:
            count = (valid_tw * w[batch.index]).sum()
        else:
            count = valid_tw.sum()
    z: Tensor | None = None
    if logz_penalty > 0 or return_z_loss:
        z = logz_penalty * torch.logsumexp(batch.logits, dim=1).square()
        if logz_penalty > 0:
            values = values + z
    loss = finish(values, batch, reduction, weights=tw, count=count)
    if not return_z_loss:
        return loss
    assert z is not None
    return loss, finish(z, batch, reduction, weights=tw, count=count)


@register(
    "cross_entropy",
    family="classification",
    kind="logits", degenerate=("all_ignored",),
    paper="(standard) softmax cross-entropy",
    arxiv="",
    summary="-(1-eps) w_y log p_y - eps/C sum_c w_c log p_c [+ logz_penalty lse^2], "
    "token_weight-ed; torch.nn.functional.cross_entropy",
    peers=("torch.nn.functional.cross_entropy",),
)
class CrossEntropyLoss(LossModule, function=cross_entropy_loss, check=_check_cross_entropy):
    """Module form of :func:`cross_entropy_loss` (``weight`` is kept as a buffer)."""

    tensor_hparams = ("weight",)


# --------------------------------------------------------------------------------------------
# Focal and Poly-1
# --------------------------------------------------------------------------------------------


def _alpha_vector(alpha: float | Weights, batch: LogitsBatch) -> Tensor | None:
    """Focal ``alpha`` as ``[C]``: a float gives ``1 - alpha`` to class 0 and ``alpha`` to the
    other classes (Lin et al.'s binary convention, as kornia); a sequence is per class."""
    if alpha is None:
        return None
    if isinstance(alpha, (int, float)):
        a = torch.full((batch.num_classes,), float(alpha), dtype=batch.logits.dtype,
                       device=batch.logits.device)
        a[0] = 1.0 - alpha
        return a
    return class_vector("alpha", alpha, batch)


#: ``gamma >= 0``; ``alpha`` a float in ``[0, 1]`` or one weight >= 0 per class (its length is
#: checked against the number of classes at call time).
_check_focal = _IGNORE | hparams(gamma=Real(ge=0),
                                 alpha=PerClass(ge=0, scalar=Real(ge=0, le=1), optional=True))


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
    _check_focal(gamma=gamma, alpha=alpha, ignore_index=ignore_index)
    batch = prepare(logits, target, ignore_index=ignore_index, soft_ok=True, loss="focal")
    values = _focal_values(batch, log_softmax(batch), gamma, _alpha_vector(alpha, batch))
    return finish(values, batch, reduction)


@register(
    "focal",
    family="classification",
    kind="logits", degenerate=("all_ignored",),
    paper="Focal Loss for Dense Object Detection",
    arxiv="1708.02002",
    summary="-alpha_y (1 - p_y)^gamma log p_y, gamma=2",
    peers=("kornia.losses.focal_loss",),
)
class FocalLoss(LossModule, function=focal_loss, check=_check_focal):
    """Module form of :func:`focal_loss`."""


#: ``epsilon >= -1`` (the paper's range: the loss stays monotone in ``p_t``), ``gamma >= 0``.
_check_poly1 = _IGNORE | hparams(epsilon=Real(ge=-1), focal=Flag(), gamma=Real(ge=0))


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
    _check_poly1(epsilon=epsilon, focal=focal, gamma=gamma, ignore_index=ignore_index)
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
    summary="CE + epsilon (1 - p_t); focal=True: FL + epsilon (1 - p_t)^(gamma+1)",
)
class Poly1Loss(LossModule, function=poly1_loss, check=_check_poly1):
    """Module form of :func:`poly1_loss`."""


# --------------------------------------------------------------------------------------------
# Comp-sum
# --------------------------------------------------------------------------------------------

_check_comp_sum = _IGNORE | hparams(tau=Real(ge=0))


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
    ``1 < tau < 2``: generalized cross-entropy with ``q = tau - 1``
    (:func:`~losslab.losses.robust.gce_loss`); ``tau=2``: :math:`1 - p_y`, half the usual MAE
    (:func:`~losslab.losses.robust.mae_loss`). Computed from
    ``log_softmax`` with ``expm1``; stable for ``tau < 1``: beyond an exponent of 60 (5 for
    float16 inputs) the exponential is continued linearly, so extreme logits give a large finite
    loss and a finite gradient (see :func:`~losslab._ops.logits.comp_sum_values`); the lower cap
    of float16 inputs keeps their (float16) gradient finite. The loss itself is returned in
    float32 for half inputs, so it does not overflow at 65504.

    Args:
        logits, target: see the module docstring (class ids only).
        tau: :math:`\tau \ge 0` (default 1: cross-entropy).
        reduction: ``"mean"`` over non-ignored items, ``"sum"``, ``"none"``.

    Paper: Mao, Mohri, Zhong, "Cross-Entropy Loss Functions: Theoretical Analysis and
    Applications", arXiv 2304.07288.
    """
    _check_comp_sum(tau=tau, ignore_index=ignore_index)
    return comp_sum_items(logits, target, tau=tau, scale=1.0, ignore_index=ignore_index,
                          reduction=reduction, loss="comp_sum")


@register(
    "comp_sum",
    family="classification",
    kind="logits", degenerate=("all_ignored",),
    paper="Cross-Entropy Loss Functions: Theoretical Analysis and Applications",
    arxiv="2304.07288",
    summary="(1 - p_y^(tau-1)) / (tau-1); tau=0 sum-exp, 1 CE, 1+q GCE, 2 (1 - p_y)",
)
class CompSumLoss(LossModule, function=comp_sum_loss, check=_check_comp_sum):
    """Module form of :func:`comp_sum_loss`."""


# --------------------------------------------------------------------------------------------
# Z-loss (spherical)
# --------------------------------------------------------------------------------------------


_check_z_loss = _IGNORE | hparams(a=Real(gt=0), b=Real(), eps=Real(gt=0))


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
    is :func:`~losslab.losses.sequence.logz_penalty_loss`). Masked classes (``-inf`` logits)
    are left out of :math:`\mu` and :math:`\sigma` (``C`` counts the other classes); a masked
    target gives ``inf``.

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
    _check_z_loss(a=a, b=b, eps=eps, ignore_index=ignore_index)
    batch = prepare(logits, target, ignore_index=ignore_index, min_classes=2, loss="z_loss")
    o = batch.logits
    # Masked classes (-inf logits) are left out of the mean and the deviation: the statistics
    # are those of the row's other classes (with all C classes the plain mean / deviation).
    keep = ~masked_classes(o)
    n_keep = keep.sum(1).to(o.dtype)
    o_kept = torch.where(keep, o, torch.zeros_like(o))
    mu = o_kept.sum(1) / n_keep
    dev = torch.where(keep, o - mu.unsqueeze(1), torch.zeros_like(o))
    var = dev.pow(2).sum(1) / n_keep
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
    summary="(1/a) softplus(a (b - z_y)), z = (o - mean(o)) / std(o)",
)
class ZLoss(LossModule, function=z_loss, check=_check_z_loss):
    """Module form of :func:`z_loss`."""


# --------------------------------------------------------------------------------------------
# Long-tail: logit adjustment, LDAM
# --------------------------------------------------------------------------------------------


#: ``class_priors`` > 0 per class; ``tau >= 0`` (0 is plain cross-entropy).
_check_logit_adjusted = _IGNORE | hparams(class_priors=PerClass(gt=0), tau=Real(ge=0))


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
        tau: :math:`\tau \ge 0` (default 1, the paper's default; 0 is cross-entropy).
        reduction: ``"mean"`` over non-ignored items, ``"sum"``, ``"none"``.

    Paper: Menon et al., "Long-tail learning via logit adjustment", arXiv 2007.07314.
    """
    _check_logit_adjusted(class_priors=class_priors, tau=tau, ignore_index=ignore_index)
    batch = prepare(logits, target, ignore_index=ignore_index, soft_ok=True,
                    loss="logit_adjusted")
    priors = class_vector("class_priors", class_priors, batch)
    if priors is None:
        raise ValueError("class_priors is required (one positive value per class)")
    logp = F.log_softmax(batch.logits + tau * priors.log(), dim=1)
    return finish(target_log_prob(logp, batch), batch, reduction)


@register(
    "logit_adjusted",
    family="classification",
    kind="logits", degenerate=("all_ignored",),
    paper="Long-tail learning via logit adjustment",
    arxiv="2007.07314",
    summary="CE(logits + tau log prior), tau=1",
    example_hparams={"class_priors": (0.4, 0.3, 0.2, 0.1)},
)
class LogitAdjustedLoss(LossModule, function=logit_adjusted_loss, check=_check_logit_adjusted):
    """Module form of :func:`logit_adjusted_loss` (``class_priors`` kept as a buffer)."""

    tensor_hparams = ("class_priors",)


_check_ldam = _IGNORE | hparams(class_counts=PerClass(gt=0), max_margin=Real(ge=0),
                                scale=Real(gt=0), weight=_CLASS_WEIGHTS)


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
    _check_ldam(class_counts=class_counts, max_margin=max_margin, scale=scale, weight=weight,
                ignore_index=ignore_index)
    batch = prepare(logits, target, ignore_index=ignore_index, loss="ldam")
    counts = class_vector("class_counts", class_counts, batch)
    if counts is None:
        raise ValueError("class_counts is required (one positive count per class)")
    margins = counts.pow(-0.25)
    margins = margins * (max_margin / margins.max())
    onehot = F.one_hot(batch.class_ids, batch.num_classes).to(batch.logits.dtype)
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
    summary="CE(s (f - m_y e_y)), m_c = C_m n_c^(-1/4) scaled to max C_m=0.5, s=30",
    example_hparams={"class_counts": (500, 100, 50, 10)},
)
class LDAMLoss(LossModule, function=ldam_loss, check=_check_ldam):
    """Module form of :func:`ldam_loss` (``class_counts`` and ``weight`` kept as buffers)."""

    tensor_hparams = ("class_counts", "weight")


# --------------------------------------------------------------------------------------------
# Multi-class hinge losses
# --------------------------------------------------------------------------------------------


def _margin_violations(batch: LogitsBatch, margin: float) -> tuple[Tensor, Tensor]:
    """``margin + f_k - f_y`` for every class and the mask of ``k != y``."""
    f_y = gather_target(batch.logits, batch).unsqueeze(1)
    others = ~F.one_hot(batch.class_ids, batch.num_classes).bool()
    return margin + batch.logits - f_y, others


#: ``margin >= 0`` of the multi-class hinge losses.
_check_hinge = _IGNORE | hparams(margin=Real(ge=0))


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
        margin: :math:`m \ge 0` (default 1).
        reduction: ``"mean"`` over non-ignored items, ``"sum"``, ``"none"``.

    Paper: Crammer, Singer, "On the Algorithmic Implementation of Multiclass Kernel-based
    Vector Machines", JMLR 2001 (no arXiv id).
    """
    _check_hinge(margin=margin, ignore_index=ignore_index)
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
    summary="max(0, margin + max_{k!=y} f_k - f_y), margin=1",
)
class CrammerSingerLoss(LossModule, function=crammer_singer_loss, check=_check_hinge):
    """Module form of :func:`crammer_singer_loss`."""


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
        margin: :math:`m \ge 0` (default 1).
        reduction: ``"mean"`` over non-ignored items, ``"sum"``, ``"none"``.

    Paper: Weston, Watkins, "Support Vector Machines for Multi-Class Pattern Recognition",
    ESANN 1999 (no arXiv id).
    """
    _check_hinge(margin=margin, ignore_index=ignore_index)
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
    summary="sum_{k!=y} max(0, margin + f_k - f_y), margin=1",
    peers=("torch.nn.functional.multi_margin_loss",),
)
class WestonWatkinsLoss(LossModule, function=weston_watkins_loss, check=_check_hinge):
    """Module form of :func:`weston_watkins_loss`."""


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
    _IGNORE(ignore_index=ignore_index)
    batch = prepare(logits, target, ignore_index=ignore_index, soft_ok=True, loss="stablemax_ce")
    return finish(target_log_prob(log_stablemax(batch.logits), batch), batch, reduction)


@register(
    "stablemax_ce",
    family="classification",
    kind="logits", degenerate=("all_ignored",),
    paper="Grokking at the Edge of Numerical Stability",
    arxiv="2501.04697",
    summary="-log s(x_y)/sum_j s(x_j), s(x) = x+1 (x>=0), 1/(1-x) (x<0)",
)
class StableMaxCELoss(LossModule, function=stablemax_ce_loss, check=_IGNORE):
    """Module form of :func:`stablemax_ce_loss`."""


# --------------------------------------------------------------------------------------------
# AnyLoss: confusion-matrix metrics as a batch-level loss
# --------------------------------------------------------------------------------------------


#: The confusion-matrix metrics AnyLoss turns into losses.
AnyLossMetric = Literal["f1", "fbeta", "balanced_accuracy", "gmean", "accuracy"]
ANYLOSS_METRICS: tuple[str, ...] = ("f1", "fbeta", "balanced_accuracy", "gmean", "accuracy")

#: Added to every denominator (and under the square root of G-mean) so that an empty class
#: gives a finite value and gradient.
_ANYLOSS_EPS = 1e-7


def soft_confusion(
    probs: Tensor, positive: Tensor, valid: Tensor, amplifier: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""Differentiable confusion entries from probabilities ``[M, K]`` and 0/1 labels ``[M, K]``.

    :math:`\hat y = A(p) = \sigma(L (p - 0.5))`; :math:`TP = \sum y \hat y`,
    :math:`FN = \sum y (1 - \hat y)`, :math:`FP = \sum (1 - y) \hat y`,
    :math:`TN = \sum (1-y)(1-\hat y)` over the valid rows, one entry per column.
    """
    y_hat = torch.sigmoid(amplifier * (probs - 0.5))
    m = valid.to(probs.dtype).unsqueeze(1)
    y = positive.to(probs.dtype) * m
    tp = (y * y_hat).sum(0)
    fn = (y * (1 - y_hat)).sum(0)
    fp = ((m - y) * y_hat).sum(0)
    tn = ((m - y) * (1 - y_hat)).sum(0)
    return tp, fn, fp, tn


def _confusion_metric(tp: Tensor, fn: Tensor, fp: Tensor, tn: Tensor, metric: str,
                      beta: float) -> Tensor:
    if metric in ("f1", "fbeta"):
        b2 = 1.0 if metric == "f1" else beta * beta
        return (1 + b2) * tp / ((1 + b2) * tp + b2 * fn + fp + _ANYLOSS_EPS)
    if metric == "accuracy":
        return (tp + tn) / (tp + tn + fp + fn + _ANYLOSS_EPS)
    tpr = tp / (tp + fn + _ANYLOSS_EPS)
    tnr = tn / (tn + fp + _ANYLOSS_EPS)
    if metric == "balanced_accuracy":
        return (tpr + tnr) / 2
    return (tpr * tnr + _ANYLOSS_EPS).sqrt()


_check_anyloss = _IGNORE | hparams(metric=Choice(*ANYLOSS_METRICS), beta=Real(gt=0),
                                   amplifier=Real(gt=0))


def anyloss(
    logits: Tensor,
    target: Tensor,
    *,
    metric: AnyLossMetric = "f1",
    beta: float = 1.0,
    amplifier: float = 73.0,
    ignore_index: int = -100,
) -> Tensor:
    r"""AnyLoss: ``1 - metric`` of a differentiable confusion matrix.

    .. math::
        \hat y_i = A(p_i) = \frac{1}{1 + e^{-L (p_i - 0.5)}},\quad
        TP = \sum_i y_i \hat y_i,\ FN = \sum_i y_i (1-\hat y_i),\
        FP = \sum_i (1-y_i)\hat y_i,\ TN = \sum_i (1-y_i)(1-\hat y_i)

    and the loss is :math:`1 - M(TP, FN, FP, TN)` with, for ``metric``:

    * ``"f1"`` / ``"fbeta"``: :math:`\frac{(1+\beta^2) TP}{(1+\beta^2) TP + \beta^2 FN + FP}`;
    * ``"balanced_accuracy"``: :math:`\frac12 (\frac{TP}{TP+FN} + \frac{TN}{TN+FP})`;
    * ``"gmean"``: :math:`\sqrt{\frac{TP}{TP+FN} \cdot \frac{TN}{TN+FP}}`;
    * ``"accuracy"``: :math:`\frac{TP+TN}{TP+TN+FP+FN}`.

    A small ``1e-7`` is added to each denominator (and inside the square root).

    Binary: ``logits`` of shape ``[N]`` (or ``[N, 1]``) are positive-class logits,
    :math:`p = \sigma(\text{logit})`, ``target`` is ``[N]`` of 0/1 (class 1 positive).
    Multi-class (``logits[N, C, ...]`` with ``C >= 2``): :math:`p = \operatorname{softmax}`, the
    metric is computed one-vs-rest for every class and macro-averaged (the paper is binary;
    macro averaging is the usual extension). For a binary problem given as 2-class logits this
    averages the metric of both classes; use ``[N]`` logits for the paper's binary loss.

    Args:
        logits: ``[N]``/``[N, 1]`` (binary) or ``[N, C, ...]``; target: ``[N]`` 0/1 or
            ``[N, ...]`` class ids (no soft targets). ``ignore_index`` items are left out.
        metric: ``"f1"`` (default), ``"fbeta"``, ``"balanced_accuracy"``, ``"gmean"``,
            ``"accuracy"``.
        beta: :math:`\beta` of ``"fbeta"`` (default 1).
        amplifier: :math:`L` (default 73, the paper's choice).

    Returns a scalar (batch-level loss; no ``reduction``). No valid item: 0 with zero gradient.

    Paper: Han, Moniz, Chawla, "AnyLoss: Transforming Classification Metrics into Loss
    Functions", arXiv 2405.14745.
    """
    _check_anyloss(metric=metric, beta=beta, amplifier=amplifier, ignore_index=ignore_index)
    if isinstance(logits, Tensor) and logits.ndim == 1:
        logits = logits.unsqueeze(1)
    binary = isinstance(logits, Tensor) and logits.ndim == 2 and logits.shape[1] == 1
    if binary:
        batch = prepare(logits, target, ignore_index=ignore_index, loss="anyloss (binary)",
                        id_range=2)
        probs = torch.sigmoid(batch.logits)
        positive = batch.class_ids.unsqueeze(1) == 1
    else:
        batch = prepare(logits, target, ignore_index=ignore_index, min_classes=2, loss="anyloss")
        probs = torch.softmax(batch.logits, dim=1)
        classes = torch.arange(batch.num_classes, device=probs.device)
        positive = batch.class_ids.unsqueeze(1) == classes
    tp, fn, fp, tn = soft_confusion(probs, positive, batch.valid, amplifier)
    loss = 1 - _confusion_metric(tp, fn, fp, tn, metric, beta).mean()
    # No valid item: a zero that stays connected to the graph (zero gradient).
    return torch.where(batch.valid.any(), loss, (probs * 0.0).sum())


@register(
    "anyloss",
    family="classification",
    kind="logits", degenerate=("all_ignored",),
    paper="AnyLoss: Transforming Classification Metrics into Loss Functions",
    arxiv="2405.14745",
    summary="1 - metric(TP, FN, FP, TN), y_hat = sigmoid(73 (p - 0.5)); macro over classes",
    reduction=None,
)
class AnyLoss(LossModule, function=anyloss, check=_check_anyloss):
    """Module form of :func:`anyloss`."""
