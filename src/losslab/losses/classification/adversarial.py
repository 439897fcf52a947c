r"""Adversarial classification objectives (family ``classification``, kind ``logits``): the
probability-margin loss that the PMA attack maximises, and the smooth adversarial comp-sum
losses for adversarial training.

``probability_margin`` is an *attack* objective: an adversary maximises it over a perturbation
of the input (it is positive exactly when the input is misclassified). ``adv_comp_sum`` is a
*training* loss: the comp-sum loss on the clean input plus a smoothness term between the clean
logits and the logits at an adversarial input, which the caller computes (e.g. with PGD on
that term, as TRADES does) and passes as ``adv_logits``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from losslab._core import LossModule, Reduction, check_float
from losslab._hparams import Choice, Int, Real, hparams
from losslab._ops.logits import (
    COMP_SUM_MAX_EXPONENT,
    COMP_SUM_MAX_EXPONENT_FP16,
    comp_sum_values,
    finish,
    gather_target,
    prepare,
)
from losslab.registry import register

__all__ = [
    "AdvCompSumLoss",
    "ProbabilityMarginLoss",
    "adv_comp_sum_loss",
    "margin_gap_norm",
    "probability_margin_loss",
]


# --------------------------------------------------------------------------------------------
# Probability margin (PMA)
# --------------------------------------------------------------------------------------------

_check_probability_margin = hparams(space=Choice("probability", "logit"), ignore_index=Int())


def probability_margin_loss(
    logits: Tensor,
    target: Tensor,
    *,
    space: str = "probability",
    ignore_index: int = -100,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Probability-margin loss, the objective the Probability Margin Attack (PMA) maximises.

    .. math::
        \ell_{pm} = \max_{j \ne y} p_j - p_y, \qquad p = \operatorname{softmax}(z)

    :math:`\ell_{pm} \in [-1, 1]`, positive exactly when the top class is not :math:`y`
    (tested), and invariant to adding a constant to every logit. ``space="logit"`` gives the
    margin on the logits, :math:`\max_{j \ne y} z_j - z_y` (the margin loss of the MD / CW
    attacks that the paper compares PMA with); it has the same sign but is unbounded. The
    gradient of the probability margin vanishes where the softmax saturates, unlike the logit
    margin's: the two weight the inputs of a batch differently.

    The attack itself (not part of this function) runs signed-gradient ascent on this loss in
    stages: the official code first lowers :math:`p_y` (or raises :math:`\max_{j\ne y} p_j`)
    and switches to the full margin half-way, with a cosine step-size schedule.

    Args:
        logits, target: ``[N, C, ...]`` scores (``C >= 2``) and ``[N, ...]`` class ids.
        space: ``"probability"`` (default, PMA) or ``"logit"``.
        ignore_index: class id of items to skip.
        reduction: ``"mean"`` over non-ignored items, ``"sum"``, ``"none"`` (``[N, ...]``).

    Formula from the official code (github.com/OpenTAI/taiadv, ``attacks/PMA.py``: the loss
    ``z_max - z_y`` on softmax outputs) and the abstract.

    Paper: "Towards Million-Scale Adversarial Robustness Evaluation With Stronger Individual
    Attacks", arXiv 2411.15210.
    """
    _check_probability_margin(space=space, ignore_index=ignore_index)
    batch = prepare(logits, target, ignore_index=ignore_index, min_classes=2,
                    loss="probability_margin")
    values = batch.logits if space == "logit" else torch.softmax(batch.logits, dim=1)
    own = F.one_hot(batch.class_ids, batch.num_classes).bool()
    top_other = torch.where(own, torch.full_like(values, -torch.inf), values).amax(1)
    return finish(top_other - gather_target(values, batch), batch, reduction)


@register(
    "probability_margin",
    family="classification",
    kind="logits", degenerate=("all_ignored",),
    paper="Towards Million-Scale Adversarial Robustness Evaluation With Stronger Individual "
    "Attacks",
    arxiv="2411.15210",
    summary="max_{j != y} p_j - p_y (PMA attack objective, maximised); space='logit': on logits",
)
class ProbabilityMarginLoss(LossModule, function=probability_margin_loss,
                            check=_check_probability_margin):
    """Module form of :func:`probability_margin_loss`."""


# --------------------------------------------------------------------------------------------
# Smooth adversarial comp-sum losses
# --------------------------------------------------------------------------------------------

_check_adv_comp_sum = hparams(tau=Real(ge=0), rho=Real(gt=0), nu=Real(ge=0),
                              ignore_index=Int())


def _safe_norm(sq: Tensor) -> Tensor:
    """``sqrt(sq)`` with the subgradient 0 at ``sq == 0`` (no NaN in the backward)."""
    pos = sq > 0
    return torch.where(pos, torch.sqrt(torch.where(pos, sq, torch.ones_like(sq))),
                       torch.zeros_like(sq))


def margin_gap_norm(logits: Tensor, adv_logits: Tensor, class_ids: Tensor) -> Tensor:
    r"""Per row, :math:`\lVert \bar h(x', y) - \bar h(x, y) \rVert_2` with the margin vector
    :math:`\bar h(x, y) = (h(x, y) - h(x, k))_{k \ne y}` (``[M, C]`` logits and adversarial
    logits, ``[M]`` class ids). A class masked with a ``-inf`` logit on either side is left
    out of the norm."""
    own = F.one_hot(class_ids, logits.shape[1]).bool()
    masked = torch.isneginf(logits) | torch.isneginf(adv_logits)
    keep = ~own & ~masked
    m_clean = logits.gather(1, class_ids[:, None]) - logits
    m_adv = adv_logits.gather(1, class_ids[:, None]) - adv_logits
    diff = torch.where(keep, m_adv - m_clean, torch.zeros_like(logits))
    return _safe_norm(diff.square().sum(1))


def adv_comp_sum_loss(
    logits: Tensor,
    target: Tensor,
    adv_logits: Tensor | None = None,
    *,
    tau: float = 1.0,
    rho: float = 1.0,
    nu: float = 1.0,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Smooth adversarial comp-sum loss: the comp-sum loss of the clean input plus a smooth
    term that penalises how much an adversarial perturbation moves the margins.

    .. math::
        \tilde\ell_{\tau} = \Phi^\tau\Big(\sum_{k \ne y} e^{(h(x,k) - h(x,y))/\rho}\Big)
        + \nu\, \big\lVert \bar h(x', y) - \bar h(x, y) \big\rVert_2,
        \qquad \bar h(x, y) = \big(h(x,y) - h(x,k)\big)_{k \ne y}

    with :math:`\Phi^\tau` the comp-sum transformation of
    :func:`~losslab.losses.classification.comp_sum_loss` (``tau=1``: cross-entropy, the
    paper's ADV-COMP-SUM experiments) and :math:`x'` the perturbed input: the paper's term is a
    supremum over :math:`\lVert x' - x\rVert \le \gamma`, which the caller approximates by an
    inner maximisation (PGD) and passes as ``adv_logits`` :math:`= h(x', \cdot)`. Without
    ``adv_logits`` (or with ``nu=0``) the loss is the clean comp-sum term alone (the
    perturbation :math:`x' = x` of the supremum). The margin vector is invariant to adding a
    constant to a row of logits, so the smooth term is too (tested).

    Args:
        logits: ``[N, C, ...]`` clean logits :math:`h(x, \cdot)`; target: ``[N, ...]`` class ids.
        adv_logits: ``[N, C, ...]`` logits at the adversarial inputs (the shape of
            ``logits``), or ``None``. Gradients flow into both.
        tau: :math:`\tau \ge 0` of :math:`\Phi^\tau` (default 1: cross-entropy).
        rho: :math:`\rho > 0` of the :math:`\rho`-margin form (default 1: the plain comp-sum
            loss); the logits are divided by it in the first term.
        nu: :math:`\nu \ge 0`, the weight of the smooth term (default 1; not a value from
            the paper, which tunes it).
        ignore_index: class id of items to skip.
        reduction: ``"mean"`` over non-ignored items, ``"sum"``, ``"none"`` (``[N, ...]``).

    Source and verification: the paper text was not available here. Summaries of the paper
    state only that the smooth adversarial comp-sum losses are the comp-sum losses "plus a
    related smooth term" on the adversarial input; the smooth term chosen here (the
    :math:`\ell_2` norm of the change of the margin vector between :math:`x` and :math:`x'`),
    the role of :math:`\rho` and the defaults are a reconstruction, not verified against the
    paper. Without the smooth term the loss is the (verified) comp-sum loss (tested).

    Paper: Mao, Mohri, Zhong, "Cross-Entropy Loss Functions: Theoretical Analysis and
    Applications", arXiv 2304.07288.
    """
    _check_adv_comp_sum(tau=tau, rho=rho, nu=nu, ignore_index=ignore_index)
    batch = prepare(logits, target, ignore_index=ignore_index, loss="adv_comp_sum")
    top = COMP_SUM_MAX_EXPONENT_FP16 if batch.dtype == torch.float16 else COMP_SUM_MAX_EXPONENT
    logpt = gather_target(F.log_softmax(batch.logits / rho, dim=1), batch)
    values = comp_sum_values(logpt, tau, max_exponent=top)
    if adv_logits is not None:
        check_float("adv_logits", adv_logits)
        if adv_logits.shape != logits.shape:
            raise ValueError(f"adv_logits must have the shape of logits {tuple(logits.shape)}, "
                             f"got {tuple(adv_logits.shape)}")
        if adv_logits.device != logits.device:
            raise ValueError(f"adv_logits must be on the logits' device {logits.device}, got "
                             f"{adv_logits.device}")
        adv = prepare(adv_logits, target, ignore_index=ignore_index, loss="adv_comp_sum").logits
        values = values + nu * margin_gap_norm(batch.logits, adv, batch.class_ids)
    return finish(values, batch, reduction)


@register(
    "adv_comp_sum",
    family="classification",
    kind="logits", degenerate=("all_ignored",),
    paper="Cross-Entropy Loss Functions: Theoretical Analysis and Applications",
    arxiv="2304.07288",
    summary="Phi^tau(sum_{k!=y} e^{(h_k - h_y)/rho}) + nu ||hbar(x', y) - hbar(x, y)||_2, "
    "hbar = margins h_y - h_k; adv_logits = h(x')",
)
class AdvCompSumLoss(LossModule, function=adv_comp_sum_loss, check=_check_adv_comp_sum):
    """Module form of :func:`adv_comp_sum_loss`: ``loss(logits, target, adv_logits=None)``."""

    def forward(self, logits: Tensor, target: Tensor, adv_logits: Tensor | None = None
                ) -> Tensor:
        """The loss of the clean ``logits`` and the adversarial ``adv_logits``."""
        return type(self).function(logits, target, adv_logits, **self.call_kwargs())
