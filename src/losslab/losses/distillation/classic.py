"""Hinton KD, Dual-Head KD's BinaryKL, DistilBERT's cosine term (and its triple loss).

Kind ``teacher``: ``loss(student_logits[N, C], teacher_logits[N, C], *, target=None)``; row ``i``
of both is the same input. The teacher is normally fixed: pass ``teacher_logits`` computed
under ``torch.no_grad()`` (or detached). The losses here do not detach it, so the gradient with
respect to the teacher is the derivative of the value (gradcheck-exact). ``reduction="mean"``
averages over the ``N`` samples (the sum over classes is kept, i.e. torch's
``kl_div(reduction="batchmean")``). fp16/bf16 inputs are computed in float32 and the loss is
returned in float32 (:func:`losslab._core.compute_dtype`).

``cosine_alignment`` is of kind ``paired`` (``(student_hidden[N, D], teacher_hidden[N, D])``):
the hidden-state term of DistilBERT's triple loss.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor

from losslab._core import LossModule, Reduction, check_labels, check_same_device, reduce
from losslab._hparams import Flag, Real, hparams
from losslab._ops.paired import prepare_paired
from losslab._ops.teacher import check_teacher_pair, kl_terms, masked_difference
from losslab.registry import register

__all__ = [
    "BinaryKLLoss",
    "CosineAlignmentLoss",
    "KDLoss",
    "binary_kl_loss",
    "cosine_alignment_loss",
    "kd_loss",
]

HINTON = "Distilling the Knowledge in a Neural Network"
DISTILBERT = "DistilBERT, a distilled version of BERT: smaller, faster, cheaper and lighter"
DHKD = "Dual-Head Knowledge Distillation: Enhancing Logits Utilization with an Auxiliary Head"


# --------------------------------------------------------------------------------------------
# Hinton KD
# --------------------------------------------------------------------------------------------


def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    target: Tensor | None = None,
    temperature: float = 2.0,
    alpha: float = 0.5,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Knowledge distillation: soft-target KL at temperature :math:`T` plus hard-label CE.

    .. math::
        \ell_i = \alpha\, T^2\, \mathrm{KL}\big(\operatorname{softmax}(t_i / T)\,\|\,
        \operatorname{softmax}(s_i / T)\big) + (1 - \alpha)\, \mathrm{CE}(s_i, y_i)

    The CE term is present only when ``target`` is given (without it the loss is
    :math:`\alpha T^2 \mathrm{KL}`). The :math:`T^2` factor keeps the gradient magnitude of the
    soft term roughly independent of :math:`T` (Hinton et al., section 2). The KL equals the
    soft-target cross-entropy minus the teacher's entropy (a constant in the student), so the
    gradients are those of the paper's soft-target CE.

    The KL is computed in log space with :math:`0 \log 0 = 0`: a class the teacher gives
    probability 0 (a ``-inf`` logit, e.g. a masked vocabulary entry) contributes exactly 0 with
    a zero gradient, also when the student's logit is ``-inf`` there too; ``kd_loss(t, t)`` is
    exactly 0. (A ``-inf`` student logit where the teacher's probability is positive is an
    infinite KL, as it should be.)

    DistilBERT's triple loss (Sanh et al., arXiv 1910.01108) is
    :math:`5.0\, L_{ce} + 2.0\, L_{mlm} + 1.0\, L_{cos}` (weights ``--alpha_ce 5.0 --alpha_mlm 2.0
    --alpha_cos 1.0`` of the training command in the authors' distillation README; temperature
    default 2.0 in their ``train.py``), with :math:`L_{ce} = T^2\,\mathrm{KL}` the soft term here
    (``alpha=1``), :math:`L_{mlm}` the masked-LM cross-entropy on the hard labels and
    :math:`L_{cos}` = :func:`cosine_alignment_loss` of the last hidden states. With losslab:
    ``5.0 * kd_loss(s, t, alpha=1.0) + 2.0 * cross_entropy_loss(s, y) +
    1.0 * cosine_alignment_loss(h_s, h_t)``.

    Args:
        student_logits: ``[N, C]`` student scores :math:`s`.
        teacher_logits: ``[N, C]`` teacher scores :math:`t` (pass them detached).
        target: optional ``[N]`` class ids :math:`y` in ``[0, C)``.
        temperature: :math:`T > 0` (default 2.0, DistilBERT's default; Hinton et al. use 1 to
            20 depending on the task and give no single default).
        alpha: :math:`\alpha \in [0, 1]`, the weight of the soft term (default 0.5: equal
            weights, as e.g. the EQ-Net GPG setting quoted in the brief — that source was not
            verified here).
        reduction: ``"mean"`` over samples, ``"sum"``, or ``"none"`` (``[N]``).

    Peer: ``torch.nn.functional.kl_div(log_softmax(s/T), log_softmax(t/T), log_target=True,
    reduction="batchmean") * T**2`` and ``torch.nn.functional.cross_entropy``.

    Paper: Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network",
    arXiv 1503.02531.
    """
    _check_kd(temperature=temperature, alpha=alpha)
    s, t = check_teacher_pair(student_logits, teacher_logits)
    log_p = F.log_softmax(s / temperature, dim=1)
    log_q = F.log_softmax(t / temperature, dim=1)
    kl = kl_terms(log_q, log_p).sum(1)
    values = alpha * temperature**2 * kl
    if target is not None:
        target = check_labels("target", target, s.shape[0], of="student_logits")
        check_same_device(student_logits=student_logits, target=target)
        if bool(((target < 0) | (target >= s.shape[1])).any()):
            raise ValueError(f"target must hold class ids in [0, {s.shape[1]})")
        ce = F.cross_entropy(s, target, reduction="none")
        values = values + (1 - alpha) * ce
    return reduce(values, reduction)


_check_kd = hparams(temperature=Real(gt=0), alpha=Real(ge=0, le=1))


@register(
    "kd",
    family="distillation",
    kind="teacher",
    paper=HINTON,
    arxiv="1503.02531",
    summary="alpha T^2 KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) CE(s, y), T=2, alpha=0.5",
    peers=("torch.nn.functional.kl_div",),
)
class KDLoss(LossModule, function=kd_loss, check=_check_kd):
    """Module form of :func:`kd_loss`."""


# --------------------------------------------------------------------------------------------
# BinaryKL (Dual-Head KD)
# --------------------------------------------------------------------------------------------


def binary_kl_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    target: Tensor | None = None,
    temperature: float = 2.0,
    norm: bool = False,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""BinaryKL: a logit-level KD loss, one Bernoulli KL per class on sigmoid outputs.

    .. math::
        \ell_i = T^2 \sum_c \mathrm{KL}\big(\mathrm{Bern}(\sigma(t_{ic}/T))\,\|\,
        \mathrm{Bern}(\sigma(s_{ic}/T))\big)

    Unlike softmax KD it sees the logits' absolute level (``[2, 3, 4]`` and ``[-2, -1, 0]``
    differ). ``norm=True`` is BinaryKL-Norm, which compares the difference of the logits with
    an even coin (zero iff :math:`s = t`):

    .. math::
        \ell_i = T^2 \sum_c \mathrm{KL}\big(\mathrm{Bern}(\tfrac12)\,\|\,
        \mathrm{Bern}(\sigma((s_{ic} - t_{ic})/T))\big)

    Computed in log space (:math:`\log\sigma(x) = -\operatorname{softplus}(-x)`); the official
    code clamps :math:`\sigma` to :math:`[10^{-8}, 1 - 10^{-8}]` instead, which differs only for
    logits beyond about :math:`\pm 18 T`. A teacher logit of :math:`\pm\infty` (a Bernoulli
    probability of exactly 1 or 0) gives the finite KL of that limit (:math:`0 \log 0 = 0`), and
    the same infinite logit in student and teacher contributes 0, for BinaryKL-Norm too (there
    :math:`s = t`); a finite teacher facing an infinite student logit is an infinite KL.

    In DHKD this loss trains an auxiliary head (a second linear classifier on the same
    features) while CE and softmax KD train the main head; apply it to the auxiliary head's
    logits.

    Args:
        student_logits: ``[N, C]`` student (auxiliary-head) scores :math:`s`.
        teacher_logits: ``[N, C]`` teacher scores :math:`t` (pass them detached).
        target: unused (accepted for the ``teacher`` kind's signature; must be ``None``).
        temperature: :math:`T > 0` (default 2, the official code's default).
        norm: BinaryKL-Norm (default ``False``: BinaryKL).
        reduction: ``"mean"`` over samples (the official code: sum / N), ``"sum"``, ``"none"``.

    Paper: Yang, Zong, Huang, Feng, An, "Dual-Head Knowledge Distillation: Enhancing Logits
    Utilization with an Auxiliary Head", arXiv 2411.08937 (code: github.com/penghui-yang/DHKD).
    """
    _check_binary_kl(temperature=temperature, norm=norm)
    if target is not None:
        raise ValueError("binary_kl takes no target (it distils logits only); got a target")
    s, t = check_teacher_pair(student_logits, teacher_logits)
    if norm:
        # the same infinite logit on both sides (a class masked in both) is s = t: d = 0
        d = masked_difference(s, t) / temperature
        per_class = 0.5 * (F.softplus(d) + F.softplus(-d)) - math.log(2.0)
    else:
        zs, zt = s / temperature, t / temperature
        log_qt, log_1mqt = -F.softplus(-zt), -F.softplus(zt)
        log_ps, log_1mps = -F.softplus(-zs), -F.softplus(zs)
        per_class = kl_terms(log_qt, log_ps) + kl_terms(log_1mqt, log_1mps)
    values = temperature**2 * per_class.sum(1)
    return reduce(values, reduction)


_check_binary_kl = hparams(temperature=Real(gt=0), norm=Flag())


@register(
    "binary_kl",
    family="distillation",
    kind="teacher",
    paper=DHKD,
    arxiv="2411.08937",
    summary="T^2 sum_c KL(Bern(sigmoid(t_c/T)) || Bern(sigmoid(s_c/T))), T=2; norm: -Norm variant",
)
class BinaryKLLoss(LossModule, function=binary_kl_loss, check=_check_binary_kl):
    """Module form of :func:`binary_kl_loss`."""


# --------------------------------------------------------------------------------------------
# DistilBERT cosine alignment of hidden states
# --------------------------------------------------------------------------------------------


def cosine_alignment_loss(
    a: Tensor,
    b: Tensor,
    *,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Cosine alignment of student and teacher hidden states (DistilBERT's :math:`L_{cos}`).

    .. math::
        \ell_i = 1 - \cos(a_i, b_i) = 1 - \frac{a_i \cdot b_i}{\|a_i\|\,\|b_i\|}

    Args:
        a: ``[N, D]`` student hidden states (DistilBERT: the last layer, at non-padding
            tokens).
        b: ``[N, D]`` teacher hidden states (same width: DistilBERT keeps BERT's hidden size).
        reduction: ``"mean"`` over rows, ``"sum"``, or ``"none"`` (``[N]``).

    Peer: ``torch.nn.CosineEmbeddingLoss`` with target 1 for every row (as DistilBERT's code).
    See :func:`kd_loss` for the DistilBERT triple loss.

    Paper: Sanh, Debut, Chaumond, Wolf, "DistilBERT, a distilled version of BERT: smaller,
    faster, cheaper and lighter", arXiv 1910.01108.
    """
    a_unit, b_unit = prepare_paired(a, b, normalize=True)
    values = 1 - (a_unit * b_unit).sum(1)
    return reduce(values, reduction)


@register(
    "cosine_alignment",
    family="distillation",
    kind="paired",
    paper=DISTILBERT,
    arxiv="1910.01108",
    summary="1 - cos(student_hidden_i, teacher_hidden_i), mean over rows",
    peers=("torch.nn.CosineEmbeddingLoss",),
)
class CosineAlignmentLoss(LossModule, function=cosine_alignment_loss):
    """Module form of :func:`cosine_alignment_loss`."""
