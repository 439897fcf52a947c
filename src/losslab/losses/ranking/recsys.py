"""Recommendation losses over a user's candidate list (kind ``scores``): BPR, sampled softmax
(with the logQ correction), PSL, SoftmaxLoss@K, SimpleX's CCL, DEXML's decoupled softmax and
SoftTop-k.

``loss(scores[Q, L], relevance[Q, L], *, mask=None)``: row ``q`` holds the scores of user
(query) ``q`` for ``L`` candidate items -- its positives (``relevance > 0``) and its sampled or
in-batch negatives (``relevance <= 0``); ``mask`` False marks padding. Every loss is a sum of
terms per positive item; a list's value is the mean over its positives, and ``"mean"``
averages over the lists that have at least one positive and one negative. A list without a
positive or without a negative (or fully masked) contributes a defined zero with zero
gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from losslab._core import LossModule, Reduction, reduce
from losslab._hparams import Choice, Int, Real, hparams
from losslab.losses.ranking._common import prepare_scores
from losslab.registry import register

__all__ = [
    "BPRLoss",
    "CCLLoss",
    "DecoupledSoftmaxLoss",
    "PSLLoss",
    "SampledSoftmaxLoss",
    "SoftTopKLoss",
    "SoftmaxAtKLoss",
    "bpr_loss",
    "ccl_loss",
    "decoupled_softmax_loss",
    "psl_loss",
    "sampled_softmax_loss",
    "soft_topk_loss",
    "softmax_at_k_loss",
]

_NEG_INF = float("-inf")


def _split(scores: Tensor, relevance: Tensor, mask: Tensor | None
           ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(s, pos, neg, npos, has)``: scores (0 at padding), positive / negative masks, the
    number of positives per list and whether the list has a positive and a negative."""
    s, r, m = prepare_scores(scores, relevance, mask)
    s = torch.where(m, s, torch.zeros_like(s))
    pos = m & (r > 0)
    neg = m & (r <= 0)
    npos = pos.sum(1).to(s.dtype)
    has = pos.any(1) & neg.any(1)
    return s, pos, neg, npos, has


def _per_list(terms: Tensor, pos: Tensor, npos: Tensor, has: Tensor, reduction: str) -> Tensor:
    """Mean of the per-positive ``terms [Q, L]`` over each list's positives; reduce."""
    t = torch.where(pos & has.unsqueeze(1), terms, torch.zeros_like(terms))
    values = t.sum(1) / npos.clamp_min(1)
    return reduce(values, reduction, count=has.sum().to(terms.dtype))


def _neg_lse(x: Tensor, neg: Tensor) -> Tensor:
    """``[Q, L]`` -> ``[Q, L]``: ``logsumexp_j x[q, i, j]`` over the negatives ``j`` of list q
    for ``x [Q, L(i), L(j)]``; finite (0) where a list has no negative."""
    valid = neg.unsqueeze(1).expand_as(x)
    x = torch.where(valid, x, torch.full_like(x, _NEG_INF))
    x = torch.where(valid.any(2, keepdim=True), x, torch.zeros_like(x))
    return torch.logsumexp(x, dim=2)


# --------------------------------------------------------------------------------------------


def bpr_loss(
    scores: Tensor,
    relevance: Tensor,
    *,
    mask: Tensor | None = None,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Bayesian Personalized Ranking: logistic loss on every (positive, negative) pair.

    .. math::
        \ell_q = \frac{1}{|P_q|\,|N_q|} \sum_{i \in P_q} \sum_{j \in N_q}
        -\log \sigma(s_i - s_j)

    (:math:`P_q`: the items with ``relevance > 0``, :math:`N_q`: those with ``<= 0``). With one
    positive and one sampled negative per row this is the usual BPR batch loss. On binary
    relevance it equals :func:`ranknet_loss` (same pairs, same logistic term).

    Args:
        scores: ``[Q, L]`` user-item scores; ``relevance``: ``[Q, L]``, positives ``> 0``.
        mask: optional ``[Q, L]`` bool, False for padding.
        reduction: ``"mean"`` over lists with a positive and a negative, ``"sum"``,
            ``"none"`` (``[Q]``).

    Paper: Rendle, Freudenthaler, Gantner, Schmidt-Thieme, "BPR: Bayesian Personalized Ranking
    from Implicit Feedback", arXiv 1205.2618 (UAI 2009).
    """
    s, pos, neg, npos, has = _split(scores, relevance, mask)
    d = s.unsqueeze(2) - s.unsqueeze(1)  # [q, i, j] = s_i - s_j
    pair = neg.unsqueeze(1).expand_as(d)
    t = torch.where(pair, F.softplus(-d), torch.zeros_like(d)).sum(2)
    nneg = neg.sum(1, keepdim=True).to(s.dtype).clamp_min(1)
    return _per_list(t / nneg, pos, npos, has, reduction)


@register(
    "bpr",
    family="ranking-recsys",
    kind="scores",
    paper="BPR: Bayesian Personalized Ranking from Implicit Feedback",
    arxiv="1205.2618",
    summary="mean over (pos i, neg j) of -log sigmoid(s_i - s_j) per user",
    peers=("recbole.model.loss.BPRLoss",),
    reduction="per query",
    degenerate=("all_masked", "no_relevant"),
)
class BPRLoss(LossModule, function=bpr_loss):
    """Module form of :func:`bpr_loss`."""


_check_temp = hparams(temperature=Real(gt=0))


def sampled_softmax_loss(
    scores: Tensor,
    relevance: Tensor,
    *,
    mask: Tensor | None = None,
    log_q: Tensor | None = None,
    temperature: float = 1.0,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Sampled softmax with the logQ (sampling-bias) correction.

    .. math::
        z_j = s_j / \tau - \log q_j, \qquad
        \ell_q = \frac{1}{|P_q|} \sum_{i \in P_q} -\log
        \frac{e^{z_i}}{\sum_{j} e^{z_j}}

    over all real items ``j`` of the list (the other positives included: the plain
    multi-positive softmax that DEXML's :func:`decoupled_softmax_loss` changes).
    :math:`q_j` is the probability with which item ``j`` was sampled as a candidate (in-batch
    negatives: its frequency in the stream); subtracting :math:`\log q_j` corrects the bias
    toward popular items. ``log_q=None`` is the uncorrected sampled softmax.

    Args:
        scores: ``[Q, L]`` user-item scores; ``relevance``: ``[Q, L]``, positives ``> 0``.
        mask: optional ``[Q, L]`` bool, False for padding.
        log_q: optional ``log q`` of each candidate, ``[Q, L]`` or ``[L]`` (a shared candidate
            list), finite at the real items (a call-time input, not a hyperparameter).
        temperature: :math:`\tau > 0`.
        reduction: ``"mean"`` over lists with a positive and a negative, ``"sum"``,
            ``"none"`` (``[Q]``).

    Paper: Yi, Yang, Hong, Cheng, Heldt, Kumthekar, Zhao, Wei, Chi, "Sampling-Bias-Corrected
    Neural Modeling for Large Corpus Item Recommendations" (RecSys 2019; no arXiv id); the
    correction from Bengio & Senécal's importance-sampled softmax.
    """
    _check_temp(temperature=temperature)
    s, pos, neg, npos, has = _split(scores, relevance, mask)
    z = s / temperature
    m = pos | neg
    if log_q is not None:
        if not isinstance(log_q, Tensor) or not log_q.is_floating_point():
            raise ValueError("log_q must be a float tensor of shape [Q, L] or [L]")
        if log_q.shape not in (s.shape, s.shape[1:]):
            raise ValueError(f"log_q must have shape {tuple(s.shape)} or {tuple(s.shape[1:])}, "
                             f"got {tuple(log_q.shape)}")
        lq = torch.broadcast_to(log_q.to(z.dtype), s.shape)
        if not bool((torch.isfinite(lq) | ~m).all()):
            raise ValueError("log_q must be finite at the real items")
        z = z - torch.where(m, lq, torch.zeros_like(lq))
    x = torch.where(m, z, torch.full_like(z, _NEG_INF))
    x = torch.where(m.any(1, keepdim=True), x, torch.zeros_like(x))
    lse = torch.logsumexp(x, dim=1, keepdim=True)
    return _per_list(lse - z, pos, npos, has, reduction)


@register(
    "sampled_softmax",
    family="ranking-recsys",
    kind="scores",
    paper="Sampling-Bias-Corrected Neural Modeling for Large Corpus Item Recommendations",
    arxiv="",
    summary="-log softmax(s / tau - log q)_pos over the candidates, mean over positives",
    peers=("torch.nn.functional.cross_entropy",),
    reduction="per query",
    degenerate=("all_masked", "no_relevant"),
)
class SampledSoftmaxLoss(LossModule, function=sampled_softmax_loss, check=_check_temp):
    """Module form of :func:`sampled_softmax_loss` (``log_q=`` is passed at call time)."""


PSL_ACTIVATIONS = ("tanh", "atan", "relu", "exp")
_check_psl = hparams(activation=Choice(*PSL_ACTIVATIONS), temperature=Real(gt=0))


def _log_activation(d: Tensor, activation: str) -> Tensor:
    """``log sigma(d)`` of PSL's surrogate activations (``exp``: ``d`` itself)."""
    if activation == "exp":
        return d
    if activation == "tanh":
        a = torch.tanh(d) + 1
    elif activation == "atan":
        a = torch.atan(d) + 1
    else:
        a = F.relu(d + 1)
    tiny = torch.finfo(d.dtype).tiny
    return torch.log(a.clamp_min(tiny))


def psl_loss(
    scores: Tensor,
    relevance: Tensor,
    *,
    mask: Tensor | None = None,
    activation: str = "tanh",
    temperature: float = 1.0,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Pairwise Softmax Loss: the softmax loss with ``exp(d)`` replaced by a surrogate
    activation :math:`\sigma(d)` of the score gap :math:`d_{ij} = s_j - s_i`.

    .. math::
        \ell_q = \frac{1}{|P_q|} \sum_{i \in P_q}
        \log \sum_{j \in N_q} \sigma(d_{ij})^{1/\tau}

    with :math:`\sigma(d) = \tanh(d) + 1` (``"tanh"``, default), :math:`\arctan(d) + 1`
    (``"atan"``), :math:`\max(0, d + 1)` (``"relu"``), or :math:`e^{d}` (``"exp"``: the softmax
    loss :math:`\log\sum_j e^{(s_j - s_i)/\tau}` of the paper's code, negatives only). The
    paper's bounds hold for scores in ``[-1/2, 1/2]`` (cosine similarities divided by a
    temperature ``>= 2``, as in its code): pass such scores. Outside ``[-1, 1]`` the
    ``"relu"``/``"atan"`` activations reach 0; their value is clamped at the smallest normal
    float, so the loss stays finite and those pairs get zero gradient.

    Args:
        scores: ``[Q, L]`` user-item scores; ``relevance``: ``[Q, L]``, positives ``> 0``.
        mask: optional ``[Q, L]`` bool, False for padding.
        activation: ``"tanh"`` | ``"atan"`` | ``"relu"`` | ``"exp"``.
        temperature: the robustness temperature :math:`\tau^* > 0` applied after the
            activation (the code's ``tau_star``, default 1).
        reduction: ``"mean"`` over lists with a positive and a negative, ``"sum"``,
            ``"none"`` (``[Q]``).

    Peer: the official IR-Benchmark ``PSLOptimizer`` (method 1):
    ``logsumexp(log(act(d)) / tau_star)`` over the sampled negatives, averaged over the
    (user, positive) rows.

    Paper: Yang, Chen, Xin, Zhou, Hu, Feng, Chen, Wang, "PSL: Rethinking and Improving Softmax
    Loss from Pairwise Perspective for Recommendation", arXiv 2411.00163 (NeurIPS 2024).
    """
    _check_psl(activation=activation, temperature=temperature)
    s, pos, neg, npos, has = _split(scores, relevance, mask)
    d = s.unsqueeze(1) - s.unsqueeze(2)  # [q, i, j] = s_j - s_i
    lse = _neg_lse(_log_activation(d, activation) / temperature, neg)
    return _per_list(lse, pos, npos, has, reduction)


@register(
    "psl",
    family="ranking-recsys",
    kind="scores",
    paper="PSL: Rethinking and Improving Softmax Loss from Pairwise Perspective for "
    "Recommendation",
    arxiv="2411.00163",
    summary="log sum_neg sigma(s_j - s_i)^(1/tau), sigma = tanh + 1 | atan + 1 | relu(d + 1)",
    peers=("IR-Benchmark PSLOptimizer",),
    reduction="per query",
    degenerate=("all_masked", "no_relevant"),
)
class PSLLoss(LossModule, function=psl_loss, check=_check_psl):
    """Module form of :func:`psl_loss`."""


_check_slk = hparams(k=Int(ge=1), temperature=Real(gt=0), weight_temperature=Real(gt=0))


def softmax_at_k_loss(
    scores: Tensor,
    relevance: Tensor,
    *,
    mask: Tensor | None = None,
    k: int = 20,
    temperature: float = 1.0,
    weight_temperature: float = 1.0,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""SoftmaxLoss@K (SL@K): the softmax loss of each positive weighted by a smooth
    indicator that it lies in the top ``K``.

    .. math::
        \ell_q = \frac{1}{|P_q|} \sum_{i \in P_q}
        \sigma\Big(\frac{s_i - \beta_q}{\tau_w}\Big)
        \log \sum_{j \in N_q} e^{(s_j - s_i)/\tau_d}

    with :math:`\beta_q` the top-``K`` quantile of the list's scores: here its ``K``-th largest
    real score (the official code's sorting estimate, taken over the positives and the sampled
    negatives), detached (the paper fixes :math:`\beta` while the model steps); a list with
    fewer than ``K`` items takes its smallest score. The weight keeps its gradient through
    :math:`s_i`, as in the official code.

    Args:
        scores: ``[Q, L]`` user-item scores; ``relevance``: ``[Q, L]``, positives ``> 0``.
        mask: optional ``[Q, L]`` bool, False for padding.
        k: the ``K`` of NDCG@K (code default 20). temperature: :math:`\tau_d` of the softmax
            loss; weight_temperature: :math:`\tau_w` of the sigmoid weight (code defaults 1).
        reduction: ``"mean"`` over lists with a positive and a negative, ``"sum"``,
            ``"none"`` (``[Q]``).

    Peer: IR-Benchmark ``SLatKOptimizer.cal_slatk_loss`` (sigmoid weight, sorting quantile).

    Paper: Yang, Chen, Zhang, Wu, Sun, Feng, Chen, Wang, "Breaking the Top-K Barrier:
    Advancing Top-K Ranking Metrics Optimization in Recommender Systems", arXiv 2508.05673
    (KDD 2025).
    """
    _check_slk(k=k, temperature=temperature, weight_temperature=weight_temperature)
    s, pos, neg, npos, has = _split(scores, relevance, mask)
    m = pos | neg
    key = torch.where(m, s.detach(), torch.full_like(s, _NEG_INF))
    top = torch.sort(key, dim=1, descending=True).values
    n = m.sum(1)
    kth = (torch.clamp(n, min=1).clamp(max=k) - 1).unsqueeze(1)
    beta = top.gather(1, kth)
    beta = torch.where(torch.isfinite(beta), beta, torch.zeros_like(beta))
    w = torch.sigmoid((s - beta) / weight_temperature)
    d = (s.unsqueeze(1) - s.unsqueeze(2)) / temperature
    return _per_list(w * _neg_lse(d, neg), pos, npos, has, reduction)


@register(
    "softmax_at_k",
    family="ranking-recsys",
    kind="scores",
    paper="Breaking the Top-K Barrier: Advancing Top-K Ranking Metrics Optimization in "
    "Recommender Systems",
    arxiv="2508.05673",
    summary="sigmoid((s_i - beta_K) / tau_w) * log sum_neg exp((s_j - s_i) / tau_d)",
    peers=("IR-Benchmark SLatKOptimizer",),
    reduction="per query",
    surrogate_gradient="the top-K quantile beta is held fixed (detached) in the backward, as "
    "the paper's alternating scheme fixes it while the model steps",
    degenerate=("all_masked", "no_relevant"),
)
class SoftmaxAtKLoss(LossModule, function=softmax_at_k_loss, check=_check_slk):
    """Module form of :func:`softmax_at_k_loss`."""


_check_ccl = hparams(margin=Real(ge=-1, le=1), negative_weight=Real(ge=0))


def ccl_loss(
    scores: Tensor,
    relevance: Tensor,
    *,
    mask: Tensor | None = None,
    margin: float = 0.9,
    negative_weight: float = 10.0,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Cosine Contrastive Loss (SimpleX).

    .. math::
        \ell_{qi} = (1 - s_i) + \frac{w}{|N_q|} \sum_{j \in N_q} \max(0,\ s_j - m)

    per positive ``i``, with ``scores`` the cosine similarities of the user and item
    embeddings; :math:`\ell_q` is the mean over the list's positives.

    Args:
        scores: ``[Q, L]`` cosine similarities in ``[-1, 1]``; ``relevance``: ``[Q, L]``,
            positives ``> 0``.
        mask: optional ``[Q, L]`` bool, False for padding.
        margin: :math:`m` (RecBole's SimpleX default 0.9).
        negative_weight: :math:`w` (RecBole's default 10).
        reduction: ``"mean"`` over lists with a positive and a negative, ``"sum"``,
            ``"none"`` (``[Q]``).

    Peer: RecBole ``SimpleX`` (its CCL term).

    Paper: Mao, Zhu, Wang, Dong, Cai, Li, He, "SimpleX: A Simple and Strong Baseline for
    Collaborative Filtering", arXiv 2109.12613 (CIKM 2021).
    """
    _check_ccl(margin=margin, negative_weight=negative_weight)
    s, pos, neg, npos, has = _split(scores, relevance, mask)
    nneg = neg.sum(1, keepdim=True).to(s.dtype).clamp_min(1)
    neg_term = torch.where(neg, F.relu(s - margin), torch.zeros_like(s)).sum(1, keepdim=True)
    terms = (1 - s) + negative_weight * neg_term / nneg
    return _per_list(terms, pos, npos, has, reduction)


@register(
    "ccl",
    family="ranking-recsys",
    kind="scores",
    paper="SimpleX: A Simple and Strong Baseline for Collaborative Filtering",
    arxiv="2109.12613",
    summary="(1 - cos_pos) + w / |N| sum_neg max(0, cos_neg - margin)",
    peers=("recbole.model.general_recommender.SimpleX",),
    reduction="per query",
    degenerate=("all_masked", "no_relevant"),
)
class CCLLoss(LossModule, function=ccl_loss, check=_check_ccl):
    """Module form of :func:`ccl_loss`."""


def decoupled_softmax_loss(
    scores: Tensor,
    relevance: Tensor,
    *,
    mask: Tensor | None = None,
    temperature: float = 1.0,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Decoupled softmax (DEXML): InfoNCE per positive with the *other* positives removed
    from the denominator.

    .. math::
        \ell_q = \frac{1}{|P_q|} \sum_{i \in P_q} -\log
        \frac{e^{s_i/\tau}}{e^{s_i/\tau} + \sum_{j \in N_q} e^{s_j/\tau}}

    With one positive per list it equals :func:`sampled_softmax_loss` (no logQ); with several
    it no longer pushes the positives against each other.

    Args:
        scores: ``[Q, L]`` query-label scores; ``relevance``: ``[Q, L]``, positives ``> 0``.
        mask: optional ``[Q, L]`` bool, False for padding.
        temperature: :math:`\tau > 0` (DEXML folds it into the similarity).
        reduction: ``"mean"`` over lists with a positive and a negative, ``"sum"``,
            ``"none"`` (``[Q]``). DEXML divides by all queries of the batch.

    Peer: DEXML ``SimLoss`` (``loss_criterion="decoupled-softmax"``).

    Paper: Gupta, Khatri, Rawat, Bhojanapalli, Jain, Dhillon, "Dual-Encoders for Extreme
    Multi-Label Classification", arXiv 2310.10636 (ICLR 2024).
    """
    _check_temp(temperature=temperature)
    s, pos, neg, npos, has = _split(scores, relevance, mask)
    z = s / temperature
    x = torch.where(neg, z, torch.full_like(z, _NEG_INF))
    x = torch.where(neg.any(1, keepdim=True), x, torch.zeros_like(x))
    neg_lse = torch.logsumexp(x, dim=1, keepdim=True)
    terms = torch.logaddexp(z, neg_lse.expand_as(z)) - z
    return _per_list(terms, pos, npos, has, reduction)


@register(
    "decoupled_softmax",
    family="ranking-recsys",
    kind="scores",
    paper="Dual-Encoders for Extreme Multi-Label Classification",
    arxiv="2310.10636",
    summary="-log e^{s_i} / (e^{s_i} + sum_neg e^{s_j}) per positive (others removed)",
    peers=("DEXML SimLoss decoupled-softmax",),
    reduction="per query",
    degenerate=("all_masked", "no_relevant"),
)
class DecoupledSoftmaxLoss(LossModule, function=decoupled_softmax_loss, check=_check_temp):
    """Module form of :func:`decoupled_softmax_loss`."""


_check_topk = hparams(k=Int(ge=1), alpha=Real(gt=0), bisect_iters=Int(ge=1))


def soft_topk_loss(
    scores: Tensor,
    relevance: Tensor,
    *,
    mask: Tensor | None = None,
    k: int = 5,
    alpha: float = 1.0,
    bisect_iters: int = 64,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""DEXML's SoftTop-k loss: minus the log of each positive's soft top-``k`` membership.

    .. math::
        p_j = \sigma\big(\alpha (s_j + t_q)\big), \quad t_q:\ \sum_{j} p_j = k, \qquad
        \ell_q = -\frac{1}{|P_q|} \sum_{i \in P_q} \log p_i

    :math:`t_q` is found by bisection (``bisect_iters`` halvings of an interval ``20/alpha``
    wider than the score range) and differentiated implicitly,
    :math:`\partial t / \partial s_j = -\sigma'_j / \sum_l \sigma'_l`, as DEXML's backward
    does. A list with at most ``k`` real items holds every item in its top ``k``: its loss is
    a defined zero.

    Args:
        scores: ``[Q, L]`` query-label scores; ``relevance``: ``[Q, L]``, positives ``> 0``.
        mask: optional ``[Q, L]`` bool, False for padding.
        k: the ``k`` of top-``k``; alpha: the sigmoid sharpness; bisect_iters: bisection
            steps.
        reduction: ``"mean"`` over lists with a positive and more than ``k`` items,
            ``"sum"``, ``"none"`` (``[Q]``).

    Peer: DEXML ``DistLogTopK`` (``loss_criterion="topk"``).

    Paper: Gupta et al., "Dual-Encoders for Extreme Multi-Label Classification", arXiv
    2310.10636 (ICLR 2024).
    """
    _check_topk(k=k, alpha=alpha, bisect_iters=bisect_iters)
    s, r, m = prepare_scores(scores, relevance, mask)
    s = torch.where(m, s, torch.zeros_like(s))
    pos = m & (r > 0)
    npos = pos.sum(1).to(s.dtype)
    has = pos.any(1) & (m.sum(1) > k)
    with torch.no_grad():
        big = torch.finfo(s.dtype).max
        lo = -torch.where(m, s, torch.full_like(s, -big)).amax(1, keepdim=True) - 10 / alpha
        hi = -torch.where(m, s, torch.full_like(s, big)).amin(1, keepdim=True) + 10 / alpha
        lo = torch.where(m.any(1, keepdim=True), lo, torch.zeros_like(lo))
        hi = torch.where(m.any(1, keepdim=True), hi, torch.zeros_like(hi))
        for _ in range(bisect_iters):
            mid = (lo + hi) / 2
            total = torch.where(m, torch.sigmoid(alpha * (s + mid)), torch.zeros_like(s)).sum(
                1, keepdim=True)
            below = total < k
            lo = torch.where(below, mid, lo)
            hi = torch.where(below, hi, mid)
        t0 = (lo + hi) / 2
        p0 = torch.sigmoid(alpha * (s + t0))
        v = torch.where(m, alpha * p0 * (1 - p0), torch.zeros_like(s)).sum(1, keepdim=True)
    # one Newton step from t0 carries the implicit gradient dt/ds_j = -v_j / sum v
    excess = torch.where(m, torch.sigmoid(alpha * (s + t0)), torch.zeros_like(s)).sum(
        1, keepdim=True) - k
    t = t0 - excess / v.clamp_min(torch.finfo(s.dtype).tiny)
    log_p = F.logsigmoid(alpha * (s + t))
    return _per_list(-log_p, pos, npos, has, reduction)


@register(
    "soft_topk",
    family="ranking-recsys",
    kind="scores",
    paper="Dual-Encoders for Extreme Multi-Label Classification",
    arxiv="2310.10636",
    summary="-log sigmoid(alpha (s_i + t)), t such that the soft top-k sums to k",
    peers=("DEXML DistLogTopK",),
    reduction="per query",
    example_hparams={"k": 2},
    degenerate=("all_masked", "no_relevant"),
)
class SoftTopKLoss(LossModule, function=soft_topk_loss, check=_check_topk):
    """Module form of :func:`soft_topk_loss`."""


