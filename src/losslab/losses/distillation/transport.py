r"""Sinkhorn knowledge distillation: a batch-wise entropic optimal-transport distance between
the student's and the teacher's output distributions.

Kind ``teacher``: ``loss(student_logits[N, C], teacher_logits[N, C])``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from losslab._core import LossModule, Reduction, reduce
from losslab._hparams import Int, Real, hparams
from losslab._ops.teacher import check_teacher_pair
from losslab.registry import register

__all__ = ["SinkhornKDLoss", "sinkhorn_kd_loss", "sinkhorn_plan"]

SINKD = "Sinkhorn Distance Minimization for Knowledge Distillation"


def sinkhorn_plan(cost: Tensor, *, epsilon: float, iterations: int) -> Tensor:
    r"""The ``[N, M]`` plan of ``iterations`` Sinkhorn rounds on ``cost``: starting from the Gibbs
    kernel :math:`K = e^{-C/\varepsilon}`, each round divides the rows by their sums, then the
    columns by theirs (so the columns of the result sum to 1 and the rows to about
    :math:`M / N`). Run in log space (each normalisation is a log-sum-exp subtraction), so a
    small :math:`\varepsilon` never underflows :math:`K`; differentiable through every round.
    """
    log_p = -cost / epsilon
    for _ in range(iterations):
        log_p = log_p - torch.logsumexp(log_p, 1, keepdim=True)
        log_p = log_p - torch.logsumexp(log_p, 0, keepdim=True)
    return log_p.exp()


def sinkhorn_kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    target: Tensor | None = None,
    temperature: float = 2.0,
    epsilon: float = 0.1,
    iterations: int = 20,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""SinKD: the Sinkhorn distance between the batch of student and teacher distributions.

    With :math:`q_i = \operatorname{softmax}(s_i / T)` and :math:`p_j =
    \operatorname{softmax}(t_j / T)` the batch is treated as two point clouds of ``N`` points
    in the probability simplex (the paper's batch-wise reformulation: every student sample is
    compared with every teacher sample, not only its own). The cost is the L1 distance
    :math:`C_{ij} = \|q_i - p_j\|_1`; the plan :math:`P` is :func:`sinkhorn_plan` of :math:`C`
    (``iterations`` alternating row / column normalisations of :math:`e^{-C/\varepsilon}`) and

    .. math::
        \ell_i = \sum_j P_{ij} C_{ij}

    the transport cost out of student sample :math:`i`. ``"sum"`` is the official code's
    value :math:`\sum_{ij} P_{ij} C_{ij}` (the plan there has unit column sums, total mass
    :math:`N`) and ``"mean"`` (the default) divides it by :math:`N`: the entropic OT cost
    between the two uniform empirical measures, which does not grow with the batch. The
    official training code multiplies the sum by a loss weight of 0.002 (:math:`0.0008 \cdot
    20 / 8`), left to the caller. The gradient flows through the Sinkhorn rounds (as in the
    official code, which backpropagates through them).

    Args:
        student_logits: ``[N, C]`` student scores.
        teacher_logits: ``[N, C]`` teacher scores (pass them detached); ``N`` may be 1 (then
            the loss is :math:`\|q_1 - p_1\|_1`).
        target: unused (must be ``None``).
        temperature: :math:`T > 0` of both softmaxes (default 2.0, the official code's).
        epsilon: entropic regularisation :math:`\varepsilon > 0` (default 0.1, official).
        iterations: Sinkhorn rounds (default 20, official).
        reduction: ``"mean"`` (sum / N), ``"sum"``, or ``"none"`` (``[N]``, per student row).

    The formula is taken from the official code (github.com/2018cx/SinKD, ``loss.py``); the
    paper's text beyond its abstract (batch-wise Sinkhorn distance between teacher and student
    distributions) was not available here, so the paper's equations were not checked against it.

    Paper: Cui, Qin, Gao, Zhang, Xu, Wu, Li, Sun, Zhou, Li, "Sinkhorn Distance Minimization for
    Knowledge Distillation", arXiv 2402.17110 (LREC-COLING 2024).
    """
    _check_sinkhorn(temperature=temperature, epsilon=epsilon, iterations=iterations)
    if target is not None:
        raise ValueError("sinkhorn_kd takes no target (it compares distributions); got a target")
    s, t = check_teacher_pair(student_logits, teacher_logits)
    q = torch.softmax(s / temperature, dim=1)
    p = torch.softmax(t / temperature, dim=1)
    cost = _l1_cost(q, p)
    plan = sinkhorn_plan(cost, epsilon=epsilon, iterations=iterations)
    return reduce((plan * cost).sum(1), reduction)


#: Classes per slice of the L1 cost (bounds the ``[N, N, block]`` temporary).
_COST_BLOCK = 64


def _l1_cost(q: Tensor, p: Tensor) -> Tensor:
    """``[N, M]`` matrix of ``|q_i - p_j|_1`` (a smooth-enough L1: its derivative at a tie is
    0, torch's ``abs``), summed over class slices so no ``[N, M, C]`` tensor is built."""
    cost = q.new_zeros(q.shape[0], p.shape[0])
    for c0 in range(0, q.shape[1], _COST_BLOCK):
        qs, ps = q[:, c0:c0 + _COST_BLOCK], p[:, c0:c0 + _COST_BLOCK]
        cost = cost + (qs.unsqueeze(1) - ps.unsqueeze(0)).abs().sum(2)
    return cost


_check_sinkhorn = hparams(temperature=Real(gt=0), epsilon=Real(gt=0), iterations=Int(ge=1))


@register(
    "sinkhorn_kd",
    family="distillation",
    kind="teacher",
    paper=SINKD,
    arxiv="2402.17110",
    summary="batch-wise Sinkhorn distance sum_ij P_ij |q_i - p_j|_1 / N, q, p softmax at T=2; "
    "eps=0.1, 20 rounds",
    peers=("ot.sinkhorn",),
)
class SinkhornKDLoss(LossModule, function=sinkhorn_kd_loss, check=_check_sinkhorn):
    """Module form of :func:`sinkhorn_kd_loss`."""
