"""PolyLoss, general form: cross-entropy (or focal loss) with its first N polynomial
coefficients perturbed (family ``classification``, kind ``logits``).

The Poly-1 member is :func:`losslab.losses.classification.poly1_loss`; ``poly_n`` with one
coefficient equals it (tested).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from losslab._core import LossModule, Reduction
from losslab._hparams import Flag, Int, PerClass, Real, hparams
from losslab._ops.logits import finish, gather_target, log_softmax, prepare, target_log_prob
from losslab._ops.numerics import safe_pow
from losslab.registry import register

__all__ = ["PolyNLoss", "poly_n_loss"]


@dataclass(frozen=True)
class _Coefficients(PerClass):
    """A non-empty 1-d sequence of finite numbers, one per polynomial term (not per class)."""

    def expected(self) -> str:
        return "a non-empty 1-d sequence of finite numbers (one per polynomial term)"


_check_poly_n = hparams(epsilons=_Coefficients(), focal=Flag(), gamma=Real(ge=0),
                        ignore_index=Int())


def poly_n_loss(
    logits: Tensor,
    target: Tensor,
    *,
    epsilons: Sequence[float] | Tensor = (1.0,),
    focal: bool = False,
    gamma: float = 2.0,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Poly-N loss: the first ``N`` polynomial coefficients of CE (or focal loss) perturbed.

    Cross-entropy and focal loss expand in the bases :math:`(1 - P_t)^j`:

    .. math::
        -\log P_t = \sum_{j \ge 1} \tfrac1j (1 - P_t)^j, \qquad
        -(1 - P_t)^\gamma \log P_t = \sum_{j \ge 1} \tfrac1j (1 - P_t)^{j + \gamma}.

    PolyLoss moves the first ``N`` coefficients :math:`1/j \to 1/j + \epsilon_j`:

    .. math::
        \ell_{\text{Poly-N}} = -\log P_t + \sum_{j=1}^{N} \epsilon_j (1 - P_t)^j, \qquad
        \ell_{\text{Poly-N focal}} = -(1-P_t)^\gamma \log P_t
            + \sum_{j=1}^{N} \epsilon_j (1 - P_t)^{j+\gamma}

    with :math:`P_t = p_y`; for soft targets ``q``, :math:`P_t = \sum_c q_c p_c` and the CE /
    focal term is taken over ``q`` (as :func:`~losslab.losses.classification.poly1_loss`).
    ``epsilons = (-1, -1/2, ..., -1/N)`` removes the first ``N`` terms of the expansion (the
    paper's "drop" experiments); all zeros gives CE / focal loss; one coefficient is Poly-1.

    Args:
        logits, target: ``[N, C, d1, ...]`` scores; class ids ``[N, d1, ...]`` or soft targets
            ``[N, C, d1, ...]``.
        epsilons: :math:`(\epsilon_1, \ldots, \epsilon_N)` (default ``(1.0,)``: Poly-1 with the
            paper's ImageNet default). Any finite values; the paper notes that a negative
            :math:`\epsilon_1 < -1` makes the loss non-monotone in :math:`P_t`.
        focal: perturb the focal-loss expansion instead (the paper's detection variant).
        gamma: focal exponent when ``focal=True`` (default 2).
        ignore_index: class id of items to skip.
        reduction: ``"mean"`` over non-ignored items, ``"sum"``, ``"none"`` (``[N, d1, ...]``).

    Paper: Leng et al., "PolyLoss: A Polynomial Expansion Perspective of Classification Loss
    Functions", arXiv 2204.12511 (Eq. 2 / the Poly-N formulation, Section 4).
    """
    _check_poly_n(epsilons=epsilons, focal=focal, gamma=gamma, ignore_index=ignore_index)
    batch = prepare(logits, target, ignore_index=ignore_index, soft_ok=True, loss="poly_n")
    eps = torch.as_tensor(epsilons, dtype=batch.logits.dtype, device=batch.logits.device)
    logp = log_softmax(batch)
    if batch.probs is not None:
        one_minus_pt = (1.0 - (batch.probs * logp.exp()).sum(1)).clamp_min(0)
    else:
        one_minus_pt = -torch.expm1(gather_target(logp, batch))
    if focal:
        if batch.probs is not None:
            base = -(safe_pow(-torch.expm1(logp), gamma) * logp * batch.probs).sum(1)
        else:
            logpt = gather_target(logp, batch)
            base = -safe_pow(-torch.expm1(logpt), gamma) * logpt
    else:
        base = target_log_prob(logp, batch)
    shift = gamma if focal else 0.0
    poly = torch.zeros_like(base)
    for j in range(eps.shape[0]):
        poly = poly + eps[j] * safe_pow(one_minus_pt, j + 1 + shift)
    return finish(base + poly, batch, reduction)


@register(
    "poly_n",
    family="classification",
    kind="logits", degenerate=("all_ignored",),
    paper="PolyLoss: A Polynomial Expansion Perspective of Classification Loss Functions",
    arxiv="2204.12511",
    summary="CE + sum_j eps_j (1 - p_t)^j; focal=True: FL + sum_j eps_j (1 - p_t)^(j+gamma)",
    example_hparams={"epsilons": (1.0, -0.5)},
)
class PolyNLoss(LossModule, function=poly_n_loss, check=_check_poly_n):
    """Module form of :func:`poly_n_loss`."""
