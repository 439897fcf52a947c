r"""Black-box proper losses for discrete generative models: polynomial losses estimated by
U-statistics from draws of the model and draws of the target.

Kimpara, Frongillo, Waggoner, "Proper losses for discrete generative models", arXiv
2211.03761. A generative model ``p`` over ``K`` outcomes is observed only through i.i.d. draws
``x_1..x_n ~ p``, the target ``q`` through draws ``y_1..y_m ~ q``. A loss of the draws is
*black-box proper* when its expectation is minimised at ``p = q``. The paper shows that such a
loss has a polynomial expected loss whose degree in ``p`` does not exceed ``n`` (and in ``q``
not ``m``), and that any such polynomial proper loss is obtained from unbiased estimators of
its monomials.

Here: the power (Brier-family) losses of integer degree ``a >= 2``,

.. math::
    L_a(p; q) = (a - 1) \sum_k p_k^a - a \sum_k q_k\, p_k^{a-1}

(the expected loss of the negated power score; ``a = 2`` is the Brier / squared loss,
``||p - q||^2 - ||q||^2``), strictly proper for every ``a >= 2``. Each monomial is estimated
without bias by a U-statistic: ``sum_k p_k^a`` by the fraction of ``a``-subsets of model draws
that agree, ``sum_k q_k p_k^(a-1)`` by the fraction of ``(a-1)``-subsets of model draws that
agree with a target draw -- so ``n >= a`` model draws and ``m >= 1`` target draws are needed,
as the paper's characterisation requires.

Formula status: the characterisation and the construction (polynomial expected loss, one
unbiased U-statistic per monomial) are from the abstract and introduction; the full text was
not available here, so the specific family (power losses) is ours, chosen as the standard
strictly proper polynomial losses -- not verified against the paper's own examples.

Kind ``logits``: ``loss(logits[N, K], target[N])``. Row ``i`` of ``logits`` is the ``i``-th
model draw, given as scores whose softmax is the draw: a hard draw ``x_i`` is a one-hot row
(0 at ``x_i``, ``-inf`` elsewhere, or any large margin), a relaxed draw (Gumbel-softmax logits)
gives a differentiable surrogate. ``target`` holds the target draws; entries equal to
``ignore_index`` are not draws (pad with it to use fewer target draws than model draws).
"""

from __future__ import annotations

import torch
from torch import Tensor

from losslab._core import LossModule, zero_loss
from losslab._hparams import Int, hparams
from losslab._ops.logits import prepare
from losslab.registry import register

__all__ = [
    "BlackBoxPowerLoss",
    "black_box_power_loss",
    "elementary_symmetric",
    "power_expected_loss",
]

_check_power = hparams(degree=Int(ge=2), ignore_index=Int())


def _comb(n: int, k: int) -> int:
    """``math.comb(n, k)`` by the exact product ``prod (n - i) / (i + 1)``, which also traces
    for a symbolic ``n`` (``torch.compile(dynamic=True)``: the number of draws)."""
    out = 1
    for i in range(k):
        out = out * (n - i) // (i + 1)
    return out


def elementary_symmetric(values: Tensor, k: int) -> Tensor:
    r"""Elementary symmetric polynomials :math:`e_0..e_k` of the rows of ``values[n, ...]``,
    per column: :math:`e_j = \sum_{|S| = j} \prod_{i \in S} v_i` (sum over ``j``-subsets of the
    ``n`` rows). Newton's identities from the power sums :math:`P_i = \sum_r v_r^i`:
    :math:`e_j = \frac1j \sum_{i=1}^{j} (-1)^{i-1} e_{j-i} P_i`. Returns ``[k + 1, ...]``."""
    powers = [values.pow(i).sum(0) for i in range(1, k + 1)]
    e = [torch.ones_like(powers[0]) if powers else values.new_ones(values.shape[1:])]
    for j in range(1, k + 1):
        acc = torch.zeros_like(e[0])
        for i in range(1, j + 1):
            acc = acc + (-1) ** (i - 1) * e[j - i] * powers[i - 1]
        e.append(acc / j)
    return torch.stack(e)


def power_expected_loss(p: Tensor, q: Tensor, *, degree: int = 2) -> Tensor:
    r"""The expected loss :math:`L_a(p; q) = (a-1)\sum_k p_k^a - a \sum_k q_k p_k^{a-1}` of the
    power loss of degree ``a`` for distributions ``p``, ``q`` over the last dim (the
    white-box value that :func:`black_box_power_loss` estimates without bias)."""
    _check_power(degree=degree)
    return (degree - 1) * p.pow(degree).sum(-1) - degree * (q * p.pow(degree - 1)).sum(-1)


def black_box_power_loss(logits: Tensor, target: Tensor, *, degree: int = 2,
                         ignore_index: int = -100) -> Tensor:
    r"""Black-box proper power loss of degree ``a`` from ``n`` model draws and ``m`` target
    draws (an unbiased estimate of :func:`power_expected_loss`):

    .. math::
        \hat L = (a-1)\,\frac{1}{\binom{n}{a}} \sum_{|S| = a} \sum_k \prod_{i\in S} s_{ik}
        \;-\; a\,\frac{1}{m} \sum_{j=1}^m \frac{1}{\binom{n}{a-1}} \sum_{|S| = a-1}
        \prod_{i \in S} s_{i y_j}

    with :math:`s_i = \mathrm{softmax}(\text{logits}_i)`. For hard (one-hot) draws the first
    sum counts the ``a``-subsets of model draws that coincide and the second the
    ``(a-1)``-subsets that coincide with target draw ``y_j``; the expectation over the draws is
    :math:`L_a(p; q)`, minimised exactly at ``p = q`` (properness). ``a = 2``:
    ``frac(x_i = x_i') - 2 frac(x_i = y_j)``, an unbiased estimate of ``||p - q||^2 - ||q||^2``.
    If every row's softmax is the model's full distribution ``p``, the value is the
    (white-box) power loss of ``p`` at the target draws.

    Args:
        logits: ``[n, K]``: row ``i`` is model draw ``i`` (one-hot scores for hard draws,
            relaxed-sample logits for a differentiable surrogate); ``n >= degree``.
        target: ``[n]`` target draws (class ids), ``ignore_index`` for "no draw".
        degree: ``a >= 2``, the polynomial degree in ``p`` (2: Brier).
        ignore_index: the padding value of ``target``.

    Returns:
        A scalar (the estimate over the whole set of draws); 0, with zero gradient, when
        ``target`` holds no draw.

    Paper: Kimpara, Frongillo, Waggoner, "Proper losses for discrete generative models", arXiv
    2211.03761 -- construction (polynomial form, U-statistic estimators, draws >= degree) from
    the abstract and introduction; formula of the power family not verified against the
    paper.
    """
    _check_power(degree=degree, ignore_index=ignore_index)
    batch = prepare(logits, target, ignore_index=ignore_index, spatial_ok=False,
                    loss="black_box_power")
    s = torch.softmax(batch.logits, dim=1)  # [n, K]
    n = s.shape[0]
    if n < degree:
        raise ValueError(f"black_box_power of degree {degree} needs at least {degree} model "
                         f"draws (rows of logits), got {n}")
    e = elementary_symmetric(s, degree)  # [a + 1, K]
    agree = e[degree].sum() / _comb(n, degree)
    valid = batch.valid.to(s.dtype)
    m = valid.sum()
    cross_per_class = e[degree - 1] / _comb(n, degree - 1)  # [K]
    cross = (cross_per_class[batch.class_ids] * valid).sum()
    safe_m = torch.where(m > 0, m, torch.ones_like(m))
    value = (degree - 1) * agree - degree * cross / safe_m
    return torch.where(m > 0, value, zero_loss(logits))


@register(
    "black_box_power", family="generative", kind="logits",
    paper="Proper losses for discrete generative models", arxiv="2211.03761",
    summary="U-statistic estimate of (a-1) sum_k p_k^a - a sum_k q_k p_k^(a-1) from model "
    "draws (rows) and target draws; black-box proper",
    reduction=None, degenerate=("all_ignored",),
)
class BlackBoxPowerLoss(LossModule, function=black_box_power_loss, check=_check_power):
    """Module form of :func:`black_box_power_loss`."""
