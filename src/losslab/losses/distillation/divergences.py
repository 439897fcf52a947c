r"""Logit-distillation divergences beyond Hinton KD: decoupled KD and the generalised JSD.

Kind ``teacher`` (see :mod:`losslab.losses.distillation`): ``loss(student_logits[N, C],
teacher_logits[N, C], *, target=None)``; ``reduction="mean"`` averages over the ``N`` rows
(the sum over classes is kept, torch's ``kl_div(reduction="batchmean")``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from losslab._core import (
    LossModule,
    Reduction,
    check_labels,
    check_same_device,
    reduce,
    require,
)
from losslab._hparams import Real, hparams
from losslab._ops.teacher import check_teacher_pair, kl_terms
from losslab.registry import register

__all__ = ["DKDLoss", "JSDLoss", "dkd_loss", "jsd_loss"]

DKD = "Decoupled Knowledge Distillation"
GKD = "On-Policy Distillation of Language Models: Learning from Self-Generated Mistakes"


# --------------------------------------------------------------------------------------------
# DKD
# --------------------------------------------------------------------------------------------


def dkd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    target: Tensor,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Decoupled knowledge distillation: target-class KD plus non-target-class KD.

    With :math:`p = \operatorname{softmax}(z / T)` of a row and target class :math:`y`, the
    binary distribution :math:`b = (p_y, 1 - p_y)` and the distribution over the other classes
    :math:`\hat p_k = p_k / (1 - p_y) = \operatorname{softmax}_{k \ne y}(z_k / T)`:

    .. math::
        \ell_i = \alpha\, T^2\, \mathrm{KL}(b^{t}_i \,\|\, b^{s}_i)
               + \beta\, T^2\, \mathrm{KL}(\hat p^{t}_i \,\|\, \hat p^{s}_i)

    (TCKD and NCKD; the paper shows that classical KD is
    :math:`\mathrm{TCKD} + (1 - p^t_y)\,\mathrm{NCKD}`, tested here). Computed in log space:
    :math:`\log(1 - p_y)` is the log-sum-exp of the non-target logits minus that of all
    logits, so it never cancels; the official code masks the target with ``- 1000`` instead of
    ``-inf`` and takes ``log`` of the summed probabilities (the same values for moderate
    logits). The hard-label CE that DKD trains with is not included (add
    ``cross_entropy``).

    Args:
        student_logits: ``[N, C]`` student scores, ``C >= 2``.
        teacher_logits: ``[N, C]`` teacher scores (pass them detached).
        target: ``[N]`` class ids in ``[0, C)`` (required: DKD splits at the true class).
        alpha: TCKD weight (default 1.0, official).
        beta: NCKD weight (default 8.0, official CIFAR-100 default; the paper uses smaller
            values on ImageNet, not checked here).
        temperature: :math:`T > 0` (default 4.0, official CIFAR-100 default).
        reduction: ``"mean"`` over rows, ``"sum"``, or ``"none"`` (``[N]``).

    Paper: Zhao, Cui, Song, Qiu, Liang, "Decoupled Knowledge Distillation", arXiv 2203.08679
    (code: github.com/megvii-research/mdistiller, ``distillers/DKD.py``; the defaults are its
    ``engine/cfg.py`` ``CFG.DKD``: ``ALPHA 1.0, BETA 8.0, T 4.0``, plus ``CE_WEIGHT 1.0`` and a
    20-epoch linear warm-up of the DKD term, both left to the caller).
    """
    _check_dkd(alpha=alpha, beta=beta, temperature=temperature)
    s, t = check_teacher_pair(student_logits, teacher_logits, min_cols=2)
    if target is None:  # the kind's adapter passes target=None when it is left out
        raise ValueError("dkd needs target= (the [N] true class ids it decouples at)")
    target = _check_target(target, s)
    log_bs, log_ps_hat = _decoupled(s / temperature, target)
    log_bt, log_pt_hat = _decoupled(t / temperature, target)
    tckd = kl_terms(log_bt, log_bs).sum(1)
    nckd = kl_terms(log_pt_hat, log_ps_hat).sum(1)
    values = temperature**2 * (alpha * tckd + beta * nckd)
    return reduce(values, reduction)


def _check_target(target: Tensor, s: Tensor) -> Tensor:
    target = check_labels("target", target, s.shape[0], of="student_logits")
    check_same_device(student_logits=s, target=target)
    require((target >= 0) & (target < s.shape[1]),  # no graph break under compile
            f"target must hold class ids in [0, {s.shape[1]})")
    return target


def _decoupled(z: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """``(log b [N, 2], log p_hat [N, C])`` of logits ``z`` (already divided by ``T``):
    the binary target / non-target log-probabilities and the log-softmax over the non-target
    classes (``-inf`` at the target, which :func:`kl_terms` counts as 0)."""
    onehot = F.one_hot(target, z.shape[1]).bool()
    lse_all = torch.logsumexp(z, 1)
    z_y = z.gather(1, target.unsqueeze(1)).squeeze(1)
    others = z.masked_fill(onehot, -math.inf)
    lse_others = torch.logsumexp(others, 1)
    log_b = torch.stack([z_y - lse_all, lse_others - lse_all], 1)
    log_hat = others - lse_others.unsqueeze(1)
    return log_b, log_hat


_check_dkd = hparams(alpha=Real(ge=0), beta=Real(ge=0), temperature=Real(gt=0))


@register(
    "dkd",
    family="distillation",
    kind="teacher",
    paper=DKD,
    arxiv="2203.08679",
    summary="T^2 (alpha KL(b_t || b_s) + beta KL(p^_t || p^_s)), target / non-target split; "
    "alpha=1, beta=8, T=4",
)
class DKDLoss(LossModule, function=dkd_loss, check=_check_dkd):
    """Module form of :func:`dkd_loss` (call it with ``target=``)."""


# --------------------------------------------------------------------------------------------
# Generalised JSD (GKD)
# --------------------------------------------------------------------------------------------


def jsd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    target: Tensor | None = None,
    beta: float = 0.5,
    temperature: float = 1.0,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Generalised Jensen-Shannon divergence between teacher :math:`P` and student :math:`Q`.

    With :math:`P = \operatorname{softmax}(t / T)`, :math:`Q = \operatorname{softmax}(s / T)`
    and the mixture :math:`M = \beta P + (1 - \beta) Q`:

    .. math::
        \ell_i = \beta\, \mathrm{KL}(P_i \,\|\, M_i) + (1 - \beta)\, \mathrm{KL}(Q_i \,\|\, M_i),
        \qquad 0 < \beta < 1

    :math:`\beta = 0.5` is the (symmetric) Jensen-Shannon divergence, bounded by
    :math:`\log 2`. The endpoints are the normalised limits: :math:`\ell / \beta \to
    \mathrm{KL}(P\|Q)` as :math:`\beta \to 0` and :math:`\ell / (1 - \beta) \to
    \mathrm{KL}(Q\|P)` as :math:`\beta \to 1`, so ``beta=0`` is the forward KL and ``beta=1``
    the reverse KL (TRL's ``generalized_jsd_loss`` convention; the unnormalised formula would
    be 0 there). No :math:`T^2` factor (as GKD, TRL and Liger). :math:`\log M` is a
    log-sum-exp of the two log-probabilities, so no probability is ever logged; classes that
    both distributions give probability 0 (``-inf`` in both) contribute 0.

    Args:
        student_logits: ``[N, C]`` student scores :math:`s` (LM use: one row per token).
        teacher_logits: ``[N, C]`` teacher scores :math:`t` (pass them detached).
        target: unused (accepted for the ``teacher`` kind's signature; must be ``None``).
        beta: :math:`\beta \in [0, 1]` (default 0.5, GKD's and TRL's default).
        temperature: :math:`T > 0` applied to both logits (default 1.0).
        reduction: ``"mean"`` over rows, ``"sum"``, or ``"none"`` (``[N]``).

    The fused LM-head form is :func:`losslab.kernels.linear_kd.linear_kd` (``divergence=
    "jsd"``).

    Paper: Agarwal, Vieillard, Zhou, Stanczyk, Ramos, Geist, Bachem, "On-Policy Distillation
    of Language Models: Learning from Self-Generated Mistakes" (GKD), arXiv 2306.13649.
    """
    _check_jsd(beta=beta, temperature=temperature)
    if target is not None:
        raise ValueError("jsd takes no target (it compares two distributions); got a target")
    s, t = check_teacher_pair(student_logits, teacher_logits)
    log_q = F.log_softmax(s / temperature, dim=1)
    log_p = F.log_softmax(t / temperature, dim=1)
    return reduce(jsd_rows(log_q, log_p, beta), reduction)


def jsd_rows(log_q: Tensor, log_p: Tensor, beta: float) -> Tensor:
    """Per-row generalised JSD of student ``log_q`` and teacher ``log_p`` (log-probabilities,
    ``[N, C]``), with the endpoint conventions of :func:`jsd_loss`."""
    if beta == 0.0:
        return kl_terms(log_p, log_q).sum(1)
    if beta == 1.0:
        return kl_terms(log_q, log_p).sum(1)
    # A class that both give probability 0 (-inf in both) has log M = -inf, dropped by
    # kl_terms; logaddexp(-inf, -inf) has a NaN derivative, so it never sees such a pair.
    both = torch.isneginf(log_p) & torch.isneginf(log_q)
    log_m = torch.logaddexp(log_p.masked_fill(both, 0.0) + math.log(beta),
                            log_q.masked_fill(both, 0.0) + math.log1p(-beta))
    log_m = log_m.masked_fill(both, -math.inf)
    return beta * kl_terms(log_p, log_m).sum(1) + (1 - beta) * kl_terms(log_q, log_m).sum(1)


_check_jsd = hparams(beta=Real(ge=0, le=1), temperature=Real(gt=0))


@register(
    "jsd",
    family="distillation",
    kind="teacher",
    paper=GKD,
    arxiv="2306.13649",
    summary="beta KL(P || M) + (1 - beta) KL(Q || M), M = beta P + (1 - beta) Q; beta=0.5, T=1",
    peers=("trl.GKDTrainer.generalized_jsd_loss",),
)
class JSDLoss(LossModule, function=jsd_loss, check=_check_jsd):
    """Module form of :func:`jsd_loss`."""
