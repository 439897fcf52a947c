"""Listwise learning-to-rank losses (kind ``scores``): ListNet, ListMLE, ApproxNDCG,
NeuralNDCG and RankT5's Poly-1 listwise softmax loss.

``loss(scores[Q, L], relevance[Q, L], *, mask=None)``; ``mask`` False marks padding, which takes
part in no term (its scores may hold anything finite or not; its gradient is 0). A fully masked
list, and for the NDCG losses a list whose ideal DCG is 0 (no relevant item), contributes a
defined zero with zero gradient and is left out of the ``"mean"``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from losslab._core import LossModule, Reduction, reduce
from losslab._hparams import Choice, Int, Real, hparams
from losslab.losses.ranking._common import (
    discounts,
    gains,
    ideal_dcg,
    masked_log_softmax,
    prepare_scores,
)
from losslab.registry import register

__all__ = [
    "ApproxNDCGLoss",
    "ListMLELoss",
    "ListNetLoss",
    "NeuralNDCGLoss",
    "Poly1ListwiseLoss",
    "approx_ndcg_loss",
    "listmle_loss",
    "listnet_loss",
    "neural_ndcg_loss",
    "poly1_listwise_loss",
]

_masked_log_softmax = masked_log_softmax


def listnet_loss(
    scores: Tensor,
    relevance: Tensor,
    *,
    mask: Tensor | None = None,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""ListNet (top-one probability): cross-entropy between the softmax of the relevance and
    the softmax of the scores over each list.

    .. math::
        \ell_q = -\sum_i \operatorname{softmax}(r_q)_i \log \operatorname{softmax}(s_q)_i

    Args:
        scores: ``[Q, L]`` predicted scores; ``relevance``: ``[Q, L]`` graded relevance.
        mask: optional ``[Q, L]`` bool, False for padding.
        reduction: ``"mean"`` over queries with at least one item, ``"sum"``, ``"none"``
            (``[Q]``).

    Peer: allRank ``listNet`` (which adds ``eps=1e-10`` inside the log).

    Paper: Cao, Qin, Liu, Tsai, Li, "Learning to Rank: From Pairwise Approach to Listwise
    Approach" (ICML 2007; no arXiv id).
    """
    s, r, m = prepare_scores(scores, relevance, mask)
    target = _masked_log_softmax(r, m).exp() * m
    values = -(target * _masked_log_softmax(s, m)).sum(1)
    has = m.any(1)
    return reduce(values, reduction, count=has.sum().to(s.dtype))


@register(
    "listnet",
    family="ranking-recsys",
    kind="scores",
    paper="Learning to Rank: From Pairwise Approach to Listwise Approach",
    arxiv="",
    summary="-sum_i softmax(r)_i log softmax(s)_i per list",
    peers=("allrank.models.losses.listNet", "rax.softmax_loss (softmax labels)"),
    reduction="per query",
    degenerate=("all_masked",),
)
class ListNetLoss(LossModule, function=listnet_loss):
    """Module form of :func:`listnet_loss`."""


def listmle_loss(
    scores: Tensor,
    relevance: Tensor,
    *,
    mask: Tensor | None = None,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""ListMLE: negative log-likelihood of the ideal ranking under the Plackett-Luce model.

    .. math::
        \ell_q = -\sum_{i=1}^{n} \Big(s_{\pi_i} - \log \sum_{k \ge i} e^{s_{\pi_k}}\Big)

    with :math:`\pi` the items sorted by decreasing relevance. Ties are broken by position
    (a stable sort: the earlier item first), which makes the loss deterministic; allRank breaks
    them at random.

    Args:
        scores: ``[Q, L]`` predicted scores; ``relevance``: ``[Q, L]`` graded relevance.
        mask: optional ``[Q, L]`` bool, False for padding (padding is ranked last and left
            out).
        reduction: ``"mean"`` over queries with at least one item, ``"sum"``, ``"none"``
            (``[Q]``).

    Paper: Xia, Liu, Wang, Zhang, Li, "Listwise Approach to Learning to Rank: Theory and
    Algorithm" (ICML 2008; no arXiv id); used by RankT5, arXiv 2210.10634.
    """
    s, r, m = prepare_scores(scores, relevance, mask)
    key = torch.where(m, r, torch.full_like(r, float("-inf")))
    order = torch.sort(key, dim=1, descending=True, stable=True).indices
    s_sorted, m_sorted = s.gather(1, order), m.gather(1, order)
    x = torch.where(m_sorted, s_sorted, torch.full_like(s_sorted, float("-inf")))
    # log sum_{k >= i} exp(x_k): a reversed cumulative logsumexp
    tail = torch.logcumsumexp(x.flip(1), dim=1).flip(1)
    terms = torch.where(m_sorted, tail - s_sorted, torch.zeros_like(s_sorted))
    values = terms.sum(1)
    return reduce(values, reduction, count=m.any(1).sum().to(s.dtype))


@register(
    "listmle",
    family="ranking-recsys",
    kind="scores",
    paper="Listwise Approach to Learning to Rank: Theory and Algorithm",
    arxiv="",
    summary="-sum_i (s_pi_i - log sum_{k>=i} exp s_pi_k), pi = ideal order",
    peers=("allrank.models.losses.listMLE", "rax.listmle_loss"),
    reduction="per query",
    degenerate=("all_masked",),
)
class ListMLELoss(LossModule, function=listmle_loss):
    """Module form of :func:`listmle_loss`."""


# --------------------------------------------------------------------------------------------
# NDCG surrogates
# --------------------------------------------------------------------------------------------

_check_approx = hparams(temperature=Real(gt=0), gain=Choice("exp", "linear"))


def approx_ndcg_loss(
    scores: Tensor,
    relevance: Tensor,
    *,
    mask: Tensor | None = None,
    temperature: float = 1.0,
    gain: str = "exp",
    reduction: Reduction = "mean",
) -> Tensor:
    r"""ApproxNDCG: minus NDCG with each item's rank replaced by a smooth position.

    .. math::
        \hat\pi_i = 1 + \sum_{j \ne i} \sigma\Big(\frac{s_j - s_i}{T}\Big), \qquad
        \ell_q = -\frac{1}{\mathrm{IDCG}_q} \sum_i \frac{G(r_i)}{\log_2(1 + \hat\pi_i)}

    with :math:`G(r) = 2^r - 1` (``gain="exp"``) or :math:`r` (``"linear"``), sums over the
    real items of the list and :math:`\mathrm{IDCG}_q` the DCG of the ideal order. As
    :math:`T \to 0`, :math:`\hat\pi_i` tends to the rank of item ``i`` and :math:`-\ell_q` to
    NDCG. The value lies in ``[-1, 0]`` (minus a smooth NDCG, as allRank and TF-Ranking return
    it).

    Args:
        scores: ``[Q, L]`` predicted scores; ``relevance``: ``[Q, L]`` graded relevance.
        mask: optional ``[Q, L]`` bool, False for padding.
        temperature: ``T > 0`` of the sigmoid (allRank's ``alpha = 1 / T``; default 1 as
            allRank's ``alpha=1``).
        gain: ``"exp"`` (``2^r - 1``) or ``"linear"`` (``r``).
        reduction: ``"mean"`` over lists with ``IDCG > 0``, ``"sum"``, ``"none"`` (``[Q]``, 0
            for lists without a relevant item).

    Peer: allRank ``approxNDCGLoss`` (the same value; allRank's mean also counts lists with no
    relevant item, as zeros).

    Paper: Qin, Liu, Li, "A General Approximation Framework for Direct Optimization of
    Information Retrieval Measures" (Information Retrieval 13, 2010; no arXiv id).
    """
    _check_approx(temperature=temperature, gain=gain)
    s, r, m = prepare_scores(scores, relevance, mask)
    s = torch.where(m, s, torch.zeros_like(s))
    g = torch.where(m, gains(r, gain), torch.zeros_like(r))
    idcg = ideal_dcg(g, m)
    L = s.shape[1]
    others = m.unsqueeze(2) & m.unsqueeze(1) & ~torch.eye(L, dtype=torch.bool, device=s.device)
    sig = torch.sigmoid((s.unsqueeze(1) - s.unsqueeze(2)) / temperature)  # [q, i, j]: s_j - s_i
    pos = 1 + torch.where(others, sig, torch.zeros_like(sig)).sum(2)
    dcg = (g / torch.log2(1 + pos)).sum(1)
    has = idcg > 0
    values = torch.where(has, -dcg / torch.where(has, idcg, torch.ones_like(idcg)),
                         torch.zeros_like(dcg))
    return reduce(values, reduction, count=has.sum().to(s.dtype))


@register(
    "approx_ndcg",
    family="ranking-recsys",
    kind="scores",
    paper="A General Approximation Framework for Direct Optimization of Information Retrieval "
    "Measures",
    arxiv="",
    summary="-NDCG with ranks replaced by 1 + sum_j sigmoid((s_j - s_i) / T)",
    peers=("allrank.models.losses.approxNDCGLoss", "rax.approx_t12n(rax.ndcg_metric)",
           "tfr.keras.losses.ApproxNDCGLoss"),
    reduction="per query",
    degenerate=("all_masked", "no_relevant"),
)
class ApproxNDCGLoss(LossModule, function=approx_ndcg_loss, check=_check_approx):
    """Module form of :func:`approx_ndcg_loss`."""


def _log_normalize(x: Tensor, valid: Tensor, dim: int) -> Tensor:
    """``x - logsumexp(x)`` along ``dim`` over the ``valid`` entries (``-inf`` elsewhere);
    finite with finite gradients when a whole slice is invalid."""
    x = torch.where(valid, x, torch.full_like(x, float("-inf")))
    x = torch.where(valid.any(dim, keepdim=True), x, torch.zeros_like(x))
    out = x - torch.logsumexp(x, dim=dim, keepdim=True)
    return torch.where(valid, out, torch.full_like(out, float("-inf")))


_check_neural = hparams(temperature=Real(gt=0), k=Int(ge=1, optional=True),
                        sinkhorn_iters=Int(ge=0), gain=Choice("exp", "linear"))


def neural_ndcg_loss(
    scores: Tensor,
    relevance: Tensor,
    *,
    mask: Tensor | None = None,
    temperature: float = 1.0,
    k: int | None = None,
    sinkhorn_iters: int = 50,
    gain: str = "exp",
    reduction: Reduction = "mean",
) -> Tensor:
    r"""NeuralNDCG: minus NDCG@k computed with NeuralSort's relaxed permutation matrix.

    For a list of :math:`n` real items, NeuralSort's row-stochastic matrix is

    .. math::
        \hat P_{ij} = \operatorname{softmax}_j
        \Big(\frac{(n + 1 - 2i)\, s_j - \sum_{l} |s_j - s_l|}{T}\Big), \qquad i, j = 1..n

    (row :math:`i` = position, column :math:`j` = item), made doubly stochastic by
    ``sinkhorn_iters`` Sinkhorn rounds (columns then rows, in log space, ending on rows). Then

    .. math::
        \ell_q = -\frac{1}{\mathrm{IDCG@k}_q} \sum_{i=1}^{\min(k, n)}
        \frac{\sum_j \hat P_{ij}\, G(r_j)}{\log_2(1 + i)}

    with :math:`G(r) = 2^r - 1` (``gain="exp"``) or :math:`r`. As :math:`T \to 0`,
    :math:`\hat P` tends to the sorting permutation and :math:`-\ell_q` to NDCG@k.

    Args:
        scores: ``[Q, L]`` predicted scores; ``relevance``: ``[Q, L]`` graded relevance.
        mask: optional ``[Q, L]`` bool, False for padding (a padded list is sorted as the list
            of its real items alone).
        temperature: NeuralSort's :math:`\tau` (allRank default 1).
        k: the NDCG cutoff (``None``: the whole list).
        sinkhorn_iters: Sinkhorn rounds (allRank: at most 50, stopping at tolerance 1e-6; here
            a fixed count, so the loss is a fixed function of its inputs).
        gain: ``"exp"`` (allRank's ``powered_relevancies=True``) or ``"linear"``.
        reduction: ``"mean"`` over lists with ``IDCG > 0``, ``"sum"``, ``"none"`` (``[Q]``).

    Memory ``O(Q L^2)``. Peer: allRank ``neuralNDCG`` (deterministic variant, not the
    transposed one).

    Paper: Pobrotyn, Białobrzeski, "NeuralNDCG: Direct Optimisation of a Ranking Metric via
    Differentiable Relaxation of Sorting", arXiv 2102.07831; NeuralSort from Grover, Wang,
    Zweig, Ermon, "Stochastic Optimization of Sorting Networks via Continuous Relaxations",
    arXiv 1903.08850.
    """
    _check_neural(temperature=temperature, k=k, sinkhorn_iters=sinkhorn_iters, gain=gain)
    s, r, m = prepare_scores(scores, relevance, mask)
    s = torch.where(m, s, torch.zeros_like(s))
    g = torch.where(m, gains(r, gain), torch.zeros_like(r))
    L = s.shape[1]
    n = m.sum(1, keepdim=True).to(s.dtype)  # [Q, 1]
    both = m.unsqueeze(2) & m.unsqueeze(1)
    absdiff = (s.unsqueeze(2) - s.unsqueeze(1)).abs()
    b = torch.where(both, absdiff, torch.zeros_like(absdiff)).sum(2)  # [Q, L] per item
    i = torch.arange(1, L + 1, dtype=s.dtype, device=s.device)
    coef = n + 1 - 2 * i  # [Q, positions]
    logits = (coef.unsqueeze(2) * s.unsqueeze(1) - b.unsqueeze(1)) / temperature
    valid = (i.unsqueeze(0) <= n).unsqueeze(2) & m.unsqueeze(1)  # [Q, position, item]
    logp = _log_normalize(logits, valid, 2)
    for _ in range(sinkhorn_iters):
        logp = _log_normalize(logp, valid, 1)
        logp = _log_normalize(logp, valid, 2)
    p = torch.where(valid, logp.exp(), torch.zeros_like(logp))
    ghat = (p * g.unsqueeze(1)).sum(2)  # [Q, positions]
    d = discounts(L, s)
    if k is not None:
        d = torch.where(torch.arange(L, device=s.device) < k, d, torch.zeros_like(d))
    dcg = (ghat * d).sum(1)
    idcg = ideal_dcg(g, m, k)
    has = idcg > 0
    values = torch.where(has, -dcg / torch.where(has, idcg, torch.ones_like(idcg)),
                         torch.zeros_like(dcg))
    return reduce(values, reduction, count=has.sum().to(s.dtype))


@register(
    "neural_ndcg",
    family="ranking-recsys",
    kind="scores",
    paper="NeuralNDCG: Direct Optimisation of a Ranking Metric via Differentiable Relaxation of "
    "Sorting",
    arxiv="2102.07831",
    summary="-NDCG@k of the gains permuted by Sinkhorn-scaled NeuralSort",
    peers=("allrank.models.losses.neuralNDCG",),
    reduction="per query",
    degenerate=("all_masked", "no_relevant"),
)
class NeuralNDCGLoss(LossModule, function=neural_ndcg_loss, check=_check_neural):
    """Module form of :func:`neural_ndcg_loss`."""


_check_poly1 = hparams(epsilon=Real())


def poly1_listwise_loss(
    scores: Tensor,
    relevance: Tensor,
    *,
    mask: Tensor | None = None,
    epsilon: float = 1.0,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""RankT5's listwise Poly-1 softmax cross-entropy.

    .. math::
        p_i = \frac{e^{s_i}}{\sum_j e^{s_j}}, \qquad
        \ell_q = -\sum_i y_i \log p_i + \epsilon\,\big(1 - p_t\big), \qquad
        p_t = \sum_i \frac{y_i}{\sum_j y_j}\, p_i

    over the real items, :math:`y_i` the relevance (RankT5: 1 for the relevant document, 0 for
    the sampled negatives, where :math:`p_t` is the relevant document's probability).
    :math:`\epsilon = 0` is RankT5's listwise softmax cross-entropy; the
    :math:`\epsilon(1 - p_t)` term is PolyLoss's first polynomial coefficient (Leng et al.,
    arXiv 2204.12511). This is the definition of Rax's ``poly1_softmax_loss`` (the JAX ranking
    library of RankT5's authors; the test compares values and gradients with it for graded
    labels too). The paper's own equation was not retrieved here. A list without a relevant
    item gives 0 (Rax gives :math:`\epsilon (1 - 1/n)` there: uniform labels).

    Args:
        scores: ``[Q, L]`` predicted scores; ``relevance``: ``[Q, L]`` labels ``y >= 0``.
        mask: optional ``[Q, L]`` bool, False for padding.
        epsilon: the Poly-1 coefficient (PolyLoss's default 1).
        reduction: ``"mean"`` over lists with a nonzero label, ``"sum"``, ``"none"``
            (``[Q]``).

    Paper: Zhuang, Qin, Jagerman, Hui, Ma, Lu, Ni, Wang, Bendersky, "RankT5: Fine-Tuning T5
    for Text Ranking with Ranking Losses", arXiv 2210.10634.
    """
    _check_poly1(epsilon=epsilon)
    s, r, m = prepare_scores(scores, relevance, mask)
    y = torch.where(m, r, torch.zeros_like(r))
    logp = masked_log_softmax(s, m)
    ce = -torch.where(m, y * logp, torch.zeros_like(logp)).sum(1)
    total = y.sum(1)
    has = ((y != 0) & m).any(1)
    safe = torch.where(has, total, torch.ones_like(total))
    p_t = torch.where(m, y * logp.exp(), torch.zeros_like(logp)).sum(1) / safe
    values = torch.where(has, ce + epsilon * (1 - p_t), torch.zeros_like(ce))
    return reduce(values, reduction, count=has.sum().to(s.dtype))


@register(
    "poly1_listwise",
    family="ranking-recsys",
    kind="scores",
    paper="RankT5: Fine-Tuning T5 for Text Ranking with Ranking Losses",
    arxiv="2210.10634",
    peers=("rax.poly1_softmax_loss",),
    summary="-sum_i y_i log p_i + eps (1 - p_t), p = softmax(s), p_t = sum_i y_i p_i / sum_j y_j",
    reduction="per query",
    degenerate=("all_masked", "no_relevant"),
)
class Poly1ListwiseLoss(LossModule, function=poly1_listwise_loss, check=_check_poly1):
    """Module form of :func:`poly1_listwise_loss`."""
