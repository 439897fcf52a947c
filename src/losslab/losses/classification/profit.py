r"""Profit-driven churn prevention as regret minimisation (family ``classification``, kind
``regression``).

Gómez-Vargas, Maldonado, Vairetti, "A predict-and-optimize approach to profit-driven churn
prevention", arXiv 2310.07047 (EJOR 2025). The paper's text was not found (only its abstract):
the formula below is written from the abstract and from the churn-campaign profit model the
paper builds on; it is **not verified against the paper**.

What the abstract fixes: targeting customers for a retention campaign is framed as a regret
minimisation problem in a predict-and-optimize framework, with *individual* customer lifetime
values (CLVs) rather than an average CLV, solved by stochastic gradient descent.

What this module assumes (the retention-campaign profit of Neslin et al. 2006 and Verbeke et
al., EJOR 2012, the "maximum profit" churn measure this literature uses, with its defaults):
contacting customer :math:`i` costs :math:`f`; a contacted would-be churner accepts the
incentive (cost :math:`\delta`) with probability :math:`\gamma` and stays, keeping
:math:`\mathrm{CLV}_i`; a contacted non-churner accepts the incentive. The profit of targeting
customer :math:`i` is then

.. math::
    v_i = y_i\,\gamma\,(\mathrm{CLV}_i - \delta) - (1 - y_i)\,\delta - f

(:math:`y_i = 1` for a churner; not targeting gives 0). The model outputs a logit :math:`s_i`,
the decision is to target with probability :math:`p_i = \sigma(s_i)` (a randomised decision,
which makes the regret differentiable), and the loss is its expected regret against the best
decision in hindsight:

.. math::
    \ell_i = \max(v_i, 0) - p_i\, v_i \;\ge\; 0 .

The profit model is the instance-dependent churn cost of ``empulse`` (B2Boost, Janssens et
al. 2022): its ``expected_cost_loss_churn`` is :math:`-\frac1N \sum_i p_i v_i`, so the regret
is that cost plus :math:`\max(v_i, 0)`, a constant of the data (tested against ``empulse``).

Properties (tested): the regret is 0 exactly at the hindsight-optimal decision and is the
profit lost by any decision; in expectation over a churn probability :math:`\pi_i`, the
minimiser targets customer :math:`i` exactly when the expected profit
:math:`\pi_i \gamma (\mathrm{CLV}_i - \delta) - (1 - \pi_i)\delta - f` is positive (the
profit-optimal decision, with the individual CLV), so the trained :math:`p_i > 1/2` is the
targeting rule.
"""

from __future__ import annotations

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

__all__ = ["ChurnRegretLoss", "churn_profit", "churn_regret_loss"]

PAPER = "A predict-and-optimize approach to profit-driven churn prevention"

_check_churn = hparams(incentive=Real(ge=0), contact_cost=Real(ge=0), acceptance=Real(ge=0, le=1))


def _inputs(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``pred [N]`` (or ``[N, 1]``) logits and ``target [N, 2]`` (churned, CLV): returns the
    logits ``[N]``, the churn flags and the CLVs in the compute dtype."""
    check_float("pred", pred)
    check_float("target", target)
    if pred.ndim == 2 and pred.shape[1] == 1:
        pred = pred[:, 0]
    if pred.ndim != 1:
        raise ValueError(f"pred must hold one targeting logit per customer, shape [N] or [N, 1], "
                         f"got {tuple(pred.shape)}")
    n = pred.shape[0]
    if tuple(target.shape) != (n, 2):
        raise ValueError(f"target must have shape [{n}, 2] (churned in {{0, 1}}, CLV) for pred "
                         f"{tuple(pred.shape)}, got {tuple(target.shape)}")
    check_same_device(pred=pred, target=target)
    dtype = compute_dtype(pred.dtype)
    churned, clv = target[:, 0].to(dtype), target[:, 1].to(dtype)
    require((churned == 0) | (churned == 1), "target[:, 0] (churned) must be 0 or 1")
    require(torch.isfinite(clv), "target[:, 1] (the customer lifetime values) must be finite")
    return pred.to(dtype), churned, clv


def churn_profit(churned: Tensor, clv: Tensor, *, incentive: float = 10.0,
                 contact_cost: float = 1.0, acceptance: float = 0.3) -> Tensor:
    r"""The campaign profit of targeting each customer, :math:`v_i = y_i \gamma
    (\mathrm{CLV}_i - \delta) - (1 - y_i)\delta - f` (module docstring); ``churned`` and
    ``clv`` are ``[N]``. ``(v > 0)`` is the hindsight-optimal decision; ``(decision * v).sum()``
    the profit of a campaign."""
    _check_churn(incentive=incentive, contact_cost=contact_cost, acceptance=acceptance)
    return (churned * acceptance * (clv - incentive) - (1 - churned) * incentive
            - contact_cost)


def churn_regret_loss(pred: Tensor, target: Tensor, *, incentive: float = 10.0,
                      contact_cost: float = 1.0, acceptance: float = 0.3,
                      reduction: Reduction = "mean") -> Tensor:
    r"""Expected regret of a randomised retention-targeting decision, per customer.

    .. math::
        \ell_i = \max(v_i, 0) - \sigma(s_i)\, v_i, \qquad
        v_i = y_i\,\gamma\,(\mathrm{CLV}_i - \delta) - (1 - y_i)\,\delta - f

    (the module docstring derives it). Formula from the abstract, not verified against the
    paper: Gómez-Vargas, Maldonado, Vairetti, "A predict-and-optimize approach to
    profit-driven churn prevention", arXiv 2310.07047; the profit model and its defaults are
    Verbeke et al.'s (EJOR 2012) maximum-profit churn setting.

    Args:
        pred: ``[N]`` (or ``[N, 1]``) logits :math:`s_i`; :math:`\sigma(s_i)` is the
            probability of targeting customer :math:`i`.
        target: ``[N, 2]`` float: column 0 the churn label :math:`y_i \in \{0, 1\}`, column 1
            the customer's lifetime value :math:`\mathrm{CLV}_i` (currency units).
        incentive: :math:`\delta`, the cost of the retention incentive (default 10).
        contact_cost: :math:`f`, the cost of contacting a customer (default 1).
        acceptance: :math:`\gamma \in [0, 1]`, the probability that a contacted churner accepts
            the incentive and stays (default 0.3, the mean of Verbeke et al.'s Beta(6, 14)).
        reduction: ``"mean"`` over customers, ``"sum"`` (the campaign's expected regret) or
            ``"none"`` (``[N]``).

    Returns:
        The regret, in the currency units of the CLVs; float32 for half inputs.
    """
    _check_churn(incentive=incentive, contact_cost=contact_cost, acceptance=acceptance)
    s, churned, clv = _inputs(pred, target)
    v = churn_profit(churned, clv, incentive=incentive, contact_cost=contact_cost,
                     acceptance=acceptance)
    return reduce(v.clamp_min(0) - torch.sigmoid(s) * v, reduction)


@register(
    "churn_regret",
    family="classification",
    kind="regression",
    paper=PAPER,
    arxiv="2310.07047",
    summary="max(v, 0) - sigmoid(s) v, v = y gamma (CLV - delta) - (1 - y) delta - f "
            "(formula from the abstract)",
    reduction="per customer",
)
class ChurnRegretLoss(LossModule, function=churn_regret_loss, check=_check_churn):
    """Module form of :func:`churn_regret_loss`."""
