r"""Learning to reject with a fixed predictor: the surrogate rejection loss of a rejector
(family ``classification``, kind ``regression``).

A fixed predictor :math:`f` (e.g. a language model) produces an output for every input; a
rejector :math:`r(x)` (any real score; accept when :math:`r(x) > 0`) is trained to abstain on
the inputs where that output is unacceptable. The training label is
:math:`a \in \{-1, +1\}`: +1 when the fixed predictor's output for :math:`x` is acceptable
(correct), -1 when it is not. Rejecting costs :math:`c \in (0, 1)`, accepting a bad output
costs 1: the induced *rejection loss* is

.. math::
    L(r, x, a) = 1_{a = -1}\, 1_{r(x) > 0} + c\, 1_{r(x) \le 0}.

Kind ``regression``: ``loss(scores[N, ...], target[N, ...])`` with ``scores`` the rejector's
:math:`r(x)` and ``target`` a float tensor of the same shape holding :math:`\pm 1`.
"""

from __future__ import annotations

import math

import torch
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
from losslab._hparams import Real, hparams
from losslab.registry import register

__all__ = [
    "RejectionSurrogateLoss",
    "default_beta",
    "rejection_loss",
    "rejection_surrogate_loss",
]

_check_rejection = hparams(cost=Real(gt=0, lt=1), alpha=Real(gt=0),
                           beta=Real(gt=0, optional=True))


def default_beta(cost: float, alpha: float) -> float:
    r"""The :math:`\beta` that puts the surrogate's built-in threshold exactly at ``cost``:

    .. math::
        \frac{2 \beta c}{\alpha} = I_c,\qquad I_c = c\, e^{\alpha/2} + (1 - c)\, e^{-\alpha/2},
        \qquad\text{i.e.}\quad \beta = \frac{\alpha\, I_c}{2 c}.

    With it, the minimiser of the conditional surrogate risk accepts (:math:`r^* > 0`) exactly
    when the predictor's conditional error :math:`P(a = -1 \mid x)` is below ``cost``.
    """
    _check_rejection(cost=cost, alpha=alpha, beta=None)
    i_c = cost * math.exp(alpha / 2) + (1 - cost) * math.exp(-alpha / 2)
    return alpha * i_c / (2 * cost)


def _inputs(scores: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    check_float("scores", scores)
    check_float("target", target)
    if scores.ndim == 0:
        raise ValueError("scores must have one rejector score per input, shape [N, ...], got a "
                         "scalar")
    if target.shape != scores.shape:
        raise ValueError(f"target must have the shape of scores {tuple(scores.shape)} (one "
                         f"+1/-1 label per score), got {tuple(target.shape)}")
    check_same_device(scores=scores, target=target)
    require((target == 1) | (target == -1), lambda: (
        "target must hold +1 (the fixed predictor's output is acceptable) or -1 (it is not), "
        f"got values {sorted(set(target.detach().flatten().tolist()) - {1.0, -1.0})[:5]}"))
    dt = compute_dtype(scores.dtype)
    return scores.to(dt), target.to(dt)


def rejection_surrogate_loss(
    scores: Tensor,
    target: Tensor,
    *,
    cost: float = 0.05,
    alpha: float = 4.0,
    beta: float | None = None,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Surrogate rejection loss for a rejector with a fixed predictor (an exponential bound
    on the rejection loss with a built-in threshold at 0).

    .. math::
        \ell(r, x, a) = e^{\frac{\alpha}{2}\,(r(x) - a)} + c\, e^{-\beta\, r(x)}

    It comes from :math:`1_{a \le 0} 1_{r(x) > 0} = 1_{\max(a, -r(x)) \le 0}
    \le 1_{a - r(x) \le 0} \le e^{-\frac{\alpha}{2}(a - r(x))}` for the first term and
    :math:`1_{r(x) \le 0} \le e^{-\beta r(x)}` for the second, so
    :math:`\ell \ge L` pointwise (tested). For :math:`\eta = P(a = +1 \mid x)` the conditional
    surrogate risk :math:`A(\eta)\, e^{\alpha r/2} + c\, e^{-\beta r}` with
    :math:`A(\eta) = \eta e^{-\alpha/2} + (1 - \eta) e^{\alpha/2}` is minimised at

    .. math::
        r^*(\eta) = \frac{1}{\alpha/2 + \beta} \log \frac{2 \beta c}{\alpha A(\eta)},

    which accepts (:math:`r^* > 0`) exactly when :math:`A(\eta) < 2\beta c / \alpha`. With
    the default :math:`\beta` (:func:`default_beta`, :math:`2\beta c/\alpha = I_c = A(1 - c)`)
    that is :math:`1 - \eta < c`: the Bayes-optimal rejector of :math:`L` (tested). Other
    :math:`\beta` move the threshold on :math:`1 - \eta` to :math:`A^{-1}(2\beta c/\alpha)`.

    Numerics: the loss is exponential in the scores. In float32 (and for half inputs, which
    are computed in float32) it overflows to ``inf`` once :math:`\beta |r|` or
    :math:`\alpha (r + 1)/2` exceeds about 88 (with the defaults, :math:`\beta \approx 19.9`:
    a rejector score below about -4.4); keep the rejector's scores in a small range (e.g. a
    bounded output layer), as the paper's analysis assumes.

    Args:
        scores: ``[N, ...]`` rejector scores :math:`r(x)` (accept where :math:`r(x) > 0`).
        target: ``[N, ...]`` float labels :math:`a`: +1 where the fixed predictor's output is
            acceptable, -1 where it is not (other values raise ``ValueError``).
        cost: the rejection cost :math:`c \in (0, 1)` (default 0.05, the value of the paper's
            Figure 2).
        alpha: :math:`\alpha > 0` (default 4, the value of the paper's decontextualization
            experiments as reported in its public review record; 3.5 in its vision experiments).
        beta: :math:`\beta > 0`; default ``None``: :func:`default_beta` (the relation
            :math:`2\beta c/\alpha = I_c` of the paper's Figure 2 caption).
        reduction: ``"mean"`` over every score, ``"sum"`` or ``"none"`` (``[N, ...]``).

    Source and verification: the full paper text was not available here. The rejection loss
    and the bound it is derived from (:math:`1_{a \le 0} 1_{r(x)>0} \le 1_{\max(a,-r(x)) \le 0}`,
    the ``alpha / 2`` scaling) were read from the paper's public review record, and the
    relation for :math:`\beta` from the caption of its Figure 2 ("β following 2βc/α = I_c");
    the formula is reconstructed from those and checked here against the properties they
    imply (upper bound, calibration at :math:`c`), not verified against the paper's equation.

    Paper: Mohri, Andor, Choi, Collins, Mao, Zhong, "Learning to Reject with a Fixed Predictor:
    Application to Decontextualization", arXiv 2301.09044 (ICLR 2024).
    """
    _check_rejection(cost=cost, alpha=alpha, beta=beta)
    r, a = _inputs(scores, target)
    b = default_beta(cost, alpha) if beta is None else float(beta)
    values = torch.exp(0.5 * alpha * (r - a)) + cost * torch.exp(-b * r)
    return reduce(values, reduction)


def rejection_loss(scores: Tensor, target: Tensor, *, cost: float = 0.05,
                   reduction: Reduction = "mean") -> Tensor:
    r"""The rejection loss itself, :math:`1_{a=-1} 1_{r(x)>0} + c\, 1_{r(x) \le 0}` (no
    gradient: a step function), the quantity :func:`rejection_surrogate_loss` bounds. Its mean
    over a set is the error on the accepted inputs (as a fraction of all inputs) plus ``cost``
    times the rejected fraction.

    Args:
        scores, target: as :func:`rejection_surrogate_loss`.
        cost: the rejection cost :math:`c \in (0, 1)`.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Paper: arXiv 2301.09044 (see :func:`rejection_surrogate_loss`).
    """
    _check_rejection(cost=cost, alpha=1.0, beta=None)
    r, a = _inputs(scores.detach(), target)
    accept = r > 0
    values = torch.where(accept, (a < 0).to(r.dtype), torch.full_like(r, cost))
    return reduce(values, reduction)


@register(
    "rejection_surrogate",
    family="classification",
    kind="regression",
    paper="Learning to Reject with a Fixed Predictor: Application to Decontextualization",
    arxiv="2301.09044",
    summary="exp(alpha (r - a) / 2) + c exp(-beta r), a = +1/-1 (fixed predictor right/wrong), "
    "2 beta c / alpha = c e^(alpha/2) + (1-c) e^(-alpha/2)",
    reduction="per element",
    # exponential in the scores: at the default beta ~ 19.9, exp(-beta r) passes float32's
    # range (e^88.7) for r < -4.5; the contract's scale-1 inputs stay far inside it.
    half_input_scale=1.0,
)
class RejectionSurrogateLoss(LossModule, function=rejection_surrogate_loss,
                             check=_check_rejection):
    """Module form of :func:`rejection_surrogate_loss`."""
