"""AUC surrogates over scored items (kind ``scores``): the Mann-Whitney pairwise surrogate,
LibAUC's square-margin AUC-M, and the pairwise and reweighted-univariate Macro-AUC surrogates
of multi-label learning.

``loss(scores[Q, L], relevance[Q, L], *, mask=None)``; an item is positive when its relevance
is ``> 0`` and negative when ``<= 0``; ``mask`` False marks padding. :func:`auc_pairwise_loss`
and :func:`auc_margin_loss` pool the positives and the negatives of the whole batch (an AUC of
the batch, across lists: in-batch query-document scores, or a flat ``[1, N]`` row of binary
predictions). The Macro-AUC losses read ``scores [N, C]`` as ``N`` instances by ``C`` labels
and average over the labels (columns). A batch (or label) without a positive or without a
negative has no AUC: it contributes a defined zero with zero gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from losslab._core import LossModule, Reduction, reduce
from losslab._hparams import Choice, Real, hparams
from losslab.losses.ranking._common import prepare_scores
from losslab.registry import register

__all__ = [
    "AUCMarginLoss",
    "AUCPairwiseLoss",
    "MacroAUCPairwiseLoss",
    "MacroAUCUnivariateLoss",
    "auc_margin_loss",
    "auc_pairwise_loss",
    "macro_auc_pairwise_loss",
    "macro_auc_univariate_loss",
]

SURROGATES = ("logistic", "hinge", "square")


def _surrogate(t: Tensor, base: str, margin: float) -> Tensor:
    """``l(t)`` of a margin ``t`` (larger is better)."""
    if base == "logistic":
        return F.softplus(-t)
    if base == "hinge":
        return F.relu(margin - t)
    return (margin - t).pow(2)


def auc_pairwise_loss(
    scores: Tensor,
    relevance: Tensor,
    *,
    mask: Tensor | None = None,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Mann-Whitney (MW) AUC surrogate: the logistic loss of every positive-minus-negative
    score difference of the batch.

    .. math::
        \mathcal{L} = \frac{1}{|P|\,|N|} \sum_{i \in P} \sum_{j \in N}
        \log\big(1 + e^{-(s_i - s_j)}\big)

    with :math:`P` (:math:`N`) every real item of the batch with relevance ``> 0``
    (``<= 0``), across lists: a smooth upper bound (up to :math:`\log 2`) of
    :math:`1 - \mathrm{AUC}`. For a single list (``Q = 1``) with binary relevance it is
    :func:`ranknet_loss` and :func:`bpr_loss`; the difference is that those average per list,
    this one compares a positive of one query with the negatives of every query (the in-batch
    grid of a dual encoder: the diagonal of ``[B, B]`` scores is positive).

    Args:
        scores: ``[Q, L]`` scores; ``relevance``: ``[Q, L]``, positives ``> 0``.
        mask: optional ``[Q, L]`` bool, False for padding.
        reduction: ``"mean"`` (over all pairs), ``"sum"`` (of ``"none"``), ``"none"``
            (``[Q, L]``: at each positive, its mean term over the negatives, divided by the
            number of positives; 0 elsewhere, so that it sums to the loss). Memory
            ``O(|P| |N|)``.

    Paper: "Optimizing What Matters: AUC-Driven Learning for Robust Neural Retrieval",
    arXiv 2510.00137 (formula from the abstract and the catalog's description, not verified
    against the paper text; it is the classical logistic Wilcoxon-Mann-Whitney surrogate).
    """
    s, r, m = prepare_scores(scores, relevance, mask)
    s = torch.where(m, s, torch.zeros_like(s))
    pos = (m & (r > 0)).flatten()
    neg = (m & (r <= 0)).flatten()
    x = s.flatten()
    d = x.unsqueeze(1) - x.unsqueeze(0)  # [i, j] = s_i - s_j
    pair = pos.unsqueeze(1) & neg.unsqueeze(0)
    t = torch.where(pair, F.softplus(-d), torch.zeros_like(d)).sum(1)
    n_pos, n_neg = pos.sum().to(s.dtype), neg.sum().to(s.dtype)
    ok = (n_pos > 0) & (n_neg > 0)
    per = torch.where(pos & ok, t / (n_neg.clamp_min(1) * n_pos.clamp_min(1)),
                      torch.zeros_like(t)).view_as(s)
    if reduction == "mean":
        return reduce(per, "sum")
    return reduce(per, reduction)


@register(
    "auc_pairwise",
    family="ranking-recsys",
    kind="scores",
    paper="Optimizing What Matters: AUC-Driven Learning for Robust Neural Retrieval",
    arxiv="2510.00137",
    summary="mean over all (pos, neg) pairs of the batch of log(1 + exp(-(s_pos - s_neg)))",
    peers=("allrank.models.losses.rankNet (one list)", "libauc.losses.PairwiseAUCLoss"),
    reduction="per item ([Q, L], positives only)",
    degenerate=("all_masked", "no_relevant"),
)
class AUCPairwiseLoss(LossModule, function=auc_pairwise_loss):
    """Module form of :func:`auc_pairwise_loss`."""


_check_aucm = hparams(margin=Real(ge=0), imbalance_ratio=Real(gt=0, lt=1, optional=True))


def auc_margin_loss(
    scores: Tensor,
    relevance: Tensor,
    *,
    mask: Tensor | None = None,
    margin: float = 1.0,
    imbalance_ratio: float | None = None,
) -> Tensor:
    r"""AUC-M (square-margin AUC), LibAUC's ``AUCMLoss``, with its auxiliary variables
    :math:`a, b` (minimised) and :math:`\alpha \ge 0` (maximised) at their optimum.

    LibAUC's min-max objective over the batch, with :math:`p` the imbalance ratio and means
    :math:`\mathbb{E}` over all ``N`` real items,

    .. math::
        f(a, b, \alpha) = (1-p)\,\mathbb{E}[(h - a)^2 \mathbb{1}_{y=1}]
        + p\,\mathbb{E}[(h - b)^2 \mathbb{1}_{y=0}]
        + 2\alpha\big(p(1-p)m + \mathbb{E}[p\,h\,\mathbb{1}_{y=0} - (1-p)\,h\,
        \mathbb{1}_{y=1}]\big) - p(1-p)\alpha^2

    is minimised in :math:`a, b` at the class means :math:`\mu_\pm` and maximised in
    :math:`\alpha \ge 0` at :math:`\alpha^* = X_+ / (p(1-p))`, :math:`X` the bracket. This
    function returns :math:`\min_{a,b}\max_{\alpha\ge0} f = (1-p)\hat p\,V_+ + p(1-\hat p)\,V_-
    + X_+^2 / (p(1-p))`, with :math:`V_\pm` the class variances and :math:`\hat p` the batch's
    fraction of positives; for :math:`p = \hat p`,

    .. math::
        \mathcal{L} = p(1-p)\big(V_+ + V_- + (m - (\mu_+ - \mu_-))_+^2\big).

    By Danskin's theorem its gradient is the gradient of :math:`f` at the saddle point, so
    training with it equals LibAUC's PESG with the auxiliary variables solved exactly per
    batch. Scores are used as given (LibAUC applies it to sigmoid outputs in ``[0, 1]``, for
    which ``margin=1`` is its default).

    Args:
        scores: ``[Q, L]`` predictions (e.g. ``[1, N]`` or ``[N, 1]``); ``relevance``:
            ``[Q, L]``, positives ``> 0``.
        mask: optional ``[Q, L]`` bool, False for padding.
        margin: :math:`m \ge 0` (LibAUC default 1.0).
        imbalance_ratio: :math:`p` in ``(0, 1)``; ``None``: the batch's fraction of
            positives.

    A loss of the whole batch (no ``reduction``). Peer: LibAUC ``AUCMLoss`` (its formula,
    restated in the tests; LibAUC is not installable here).

    Paper: Yuan, Yan, Sonka, Yang, "Large-scale Robust Deep AUC Maximization: A New Surrogate
    Loss and Empirical Studies on Medical Image Classification", arXiv 2012.03173.
    """
    _check_aucm(margin=margin, imbalance_ratio=imbalance_ratio)
    s, r, m = prepare_scores(scores, relevance, mask)
    s = torch.where(m, s, torch.zeros_like(s))
    pos = m & (r > 0)
    neg = m & (r <= 0)
    n = m.sum().to(s.dtype)
    n_pos, n_neg = pos.sum().to(s.dtype), neg.sum().to(s.dtype)
    ok = (n_pos > 0) & (n_neg > 0)
    one = torch.ones((), dtype=s.dtype, device=s.device)
    mu_p = torch.where(pos, s, torch.zeros_like(s)).sum() / torch.where(ok, n_pos, one)
    mu_n = torch.where(neg, s, torch.zeros_like(s)).sum() / torch.where(ok, n_neg, one)
    var_p = torch.where(pos, (s - mu_p).pow(2), torch.zeros_like(s)).sum() / torch.where(
        ok, n_pos, one)
    var_n = torch.where(neg, (s - mu_n).pow(2), torch.zeros_like(s)).sum() / torch.where(
        ok, n_neg, one)
    p_hat = n_pos / torch.where(ok, n, one)
    p = p_hat if imbalance_ratio is None else torch.full_like(p_hat, imbalance_ratio)
    pq = torch.where(ok, p * (1 - p), one)
    x = pq * margin + p * (1 - p_hat) * mu_n - (1 - p) * p_hat * mu_p
    value = (1 - p) * p_hat * var_p + p * (1 - p_hat) * var_n + F.relu(x).pow(2) / pq
    return torch.where(ok, value, torch.zeros_like(value)) + 0 * s.sum()


@register(
    "auc_margin",
    family="ranking-recsys",
    kind="scores",
    paper="Large-scale Robust Deep AUC Maximization: A New Surrogate Loss and Empirical Studies "
    "on Medical Image Classification",
    arxiv="2012.03173",
    summary="p(1-p)(Var_pos + Var_neg + (m - (mean_pos - mean_neg))_+^2): AUC-M at its saddle",
    peers=("libauc.losses.AUCMLoss",),
    reduction=None,
    degenerate=("all_masked", "no_relevant"),
)
class AUCMarginLoss(LossModule, function=auc_margin_loss, check=_check_aucm):
    """Module form of :func:`auc_margin_loss`."""


_check_macro = hparams(surrogate=Choice(*SURROGATES), margin=Real(ge=0))


def _labels(scores: Tensor, relevance: Tensor, mask: Tensor | None):
    s, r, m = prepare_scores(scores, relevance, mask)
    s = torch.where(m, s, torch.zeros_like(s))
    pos = m & (r > 0)
    neg = m & (r <= 0)
    ok = pos.any(0) & neg.any(0)  # [C]: labels with an AUC
    return s, pos, neg, ok


def macro_auc_pairwise_loss(
    scores: Tensor,
    relevance: Tensor,
    *,
    mask: Tensor | None = None,
    surrogate: str = "logistic",
    margin: float = 1.0,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Pairwise Macro-AUC surrogate of multi-label learning.

    .. math::
        \mathcal{L} = \frac{1}{C} \sum_{k=1}^{C} \frac{1}{|P_k|\,|N_k|}
        \sum_{i \in P_k} \sum_{j \in N_k} \ell\big(f_k(x_i) - f_k(x_j)\big)

    over the labels (columns) ``k`` with at least one positive instance :math:`P_k` and one
    negative :math:`N_k`; :math:`\ell(t) = \log(1 + e^{-t})` (``"logistic"``),
    :math:`\max(0, m - t)` (``"hinge"``) or :math:`(m - t)^2` (``"square"``).

    Args:
        scores: ``[N, C]`` label scores :math:`f_k(x_i)`; ``relevance``: ``[N, C]`` binary
            labels (``> 0`` relevant).
        mask: optional ``[N, C]`` bool, False for a missing label.
        surrogate: the base loss :math:`\ell`; margin: :math:`m` of hinge / square.
        reduction: ``"mean"`` over the labels that have an AUC, ``"sum"``, ``"none"``
            (``[C]``, 0 for labels without both classes).

    Paper: Wu, Li, Yin, "Towards Understanding Generalization of Macro-AUC in Multi-label
    Learning", arXiv 2305.05248 (ICML 2023). Formula from the abstract and the standard
    pairwise AUC surrogate; the paper's choice of base loss is not verified here (all three
    common ones are offered).
    """
    _check_macro(surrogate=surrogate, margin=margin)
    s, pos, neg, ok = _labels(scores, relevance, mask)
    d = s.unsqueeze(1) - s.unsqueeze(0)  # [i, j, k] = f_k(x_i) - f_k(x_j)
    pair = pos.unsqueeze(1) & neg.unsqueeze(0)
    t = torch.where(pair, _surrogate(d, surrogate, margin), torch.zeros_like(d)).sum((0, 1))
    n_pairs = pair.sum((0, 1)).to(s.dtype).clamp_min(1)
    values = torch.where(ok, t / n_pairs, torch.zeros_like(t)) + 0 * s.sum()  # NaN propagates
    return reduce(values, reduction, count=ok.sum().to(s.dtype))


@register(
    "macro_auc_pairwise",
    family="ranking-recsys",
    kind="scores",
    paper="Towards Understanding Generalization of Macro-AUC in Multi-label Learning",
    arxiv="2305.05248",
    summary="mean over labels of the mean over (pos, neg) instance pairs of l(f_k(x+) - f_k(x-))",
    reduction="per label ([C])",
    degenerate=("all_masked", "no_relevant"),
)
class MacroAUCPairwiseLoss(LossModule, function=macro_auc_pairwise_loss, check=_check_macro):
    """Module form of :func:`macro_auc_pairwise_loss`."""


def macro_auc_univariate_loss(
    scores: Tensor,
    relevance: Tensor,
    *,
    mask: Tensor | None = None,
    surrogate: str = "logistic",
    margin: float = 1.0,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Reweighted univariate Macro-AUC surrogate: a per-instance loss with each label's
    positives and negatives reweighted by their counts.

    .. math::
        \mathcal{L} = \frac{1}{C} \sum_{k=1}^{C} \Big(\frac{1}{|P_k|} \sum_{i \in P_k}
        \ell\big(f_k(x_i)\big) + \frac{1}{|N_k|} \sum_{j \in N_k} \ell\big(-f_k(x_j)\big)\Big)

    (the unweighted univariate loss, :math:`\frac{1}{N}\sum_i \ell(\pm f_k(x_i))`, is the one
    the paper shows to be more sensitive to label-wise imbalance). ``"logistic"``
    :math:`\ell` is the label-wise class-balanced binary cross-entropy.

    Args:
        scores: ``[N, C]`` label scores; ``relevance``: ``[N, C]`` binary labels.
        mask: optional ``[N, C]`` bool, False for a missing label.
        surrogate: the base loss :math:`\ell` (``"logistic"``, ``"hinge"``, ``"square"``);
            margin: :math:`m` of hinge / square.
        reduction: ``"mean"`` over the labels that have an AUC, ``"sum"``, ``"none"``
            (``[C]``).

    Paper: Wu, Li, Yin, "Towards Understanding Generalization of Macro-AUC in Multi-label
    Learning", arXiv 2305.05248 (ICML 2023). Formula from the abstract ("reweighted
    univariate loss"), not verified against the paper's equation.
    """
    _check_macro(surrogate=surrogate, margin=margin)
    s, pos, neg, ok = _labels(scores, relevance, mask)
    lp = torch.where(pos, _surrogate(s, surrogate, margin), torch.zeros_like(s)).sum(0)
    ln = torch.where(neg, _surrogate(-s, surrogate, margin), torch.zeros_like(s)).sum(0)
    n_pos = pos.sum(0).to(s.dtype).clamp_min(1)
    n_neg = neg.sum(0).to(s.dtype).clamp_min(1)
    values = torch.where(ok, lp / n_pos + ln / n_neg, torch.zeros_like(lp)) + 0 * s.sum()
    return reduce(values, reduction, count=ok.sum().to(s.dtype))


@register(
    "macro_auc_univariate",
    family="ranking-recsys",
    kind="scores",
    paper="Towards Understanding Generalization of Macro-AUC in Multi-label Learning",
    arxiv="2305.05248",
    summary="mean over labels of mean_pos l(f_k(x)) + mean_neg l(-f_k(x))",
    reduction="per label ([C])",
    degenerate=("all_masked", "no_relevant"),
)
class MacroAUCUnivariateLoss(LossModule, function=macro_auc_univariate_loss,
                             check=_check_macro):
    """Module form of :func:`macro_auc_univariate_loss`."""
