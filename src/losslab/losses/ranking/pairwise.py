"""Pairwise learning-to-rank losses: Margin-MSE (kind ``teacher``); RankNet, pairwise hinge,
the LambdaLoss framework and YetiLoss (kind ``scores``).

Kind ``scores``: ``loss(scores[Q, L], relevance[Q, L], *, mask=None)``: ``Q`` queries (lists) of
``L`` items, graded relevance (float, higher is better), and an optional bool ``mask`` (True =
a real item; False = padding, left out of every term). A pair ``(i, j)`` is an ordered pair of
real items with ``r_i > r_j``; a list without a pair (fully masked, or all grades equal, e.g.
no relevant item) contributes a defined zero with zero gradient and is left out of ``"mean"``.

Margin-MSE is of kind ``teacher``: ``loss(student_scores[N, 1 + k], teacher_scores[N, 1 + k])``
with, per query ``i``, column 0 the score of the relevant passage and columns ``1..k`` the
scores of ``k`` negatives (``k = 1``: the paper's triples). The teacher scores are normally
precomputed (pass them detached).

fp16/bf16 inputs are computed in float32 and the loss is returned in float32
(:func:`losslab._core.compute_dtype`). Relevance may be of any real dtype (integer grades are
converted); it must be finite at the real (unmasked) items, since a NaN grade would silently
drop pairs or reorder a list.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from losslab._core import LossModule, Reduction, reduce
from losslab._hparams import Choice, Int, Real, hparams
from losslab._ops.teacher import check_teacher_pair, masked_difference
from losslab.losses.ranking._common import (
    gains,
    ideal_dcg,
    order_by,
    pair_mask,
    prepare_scores,
)
from losslab.registry import register

__all__ = [
    "LambdaLoss",
    "MarginMSELoss",
    "PairwiseHingeLoss",
    "RankNetLoss",
    "YetiLoss",
    "lambda_loss",
    "margin_mse_loss",
    "pairwise_hinge_loss",
    "ranknet_loss",
    "yeti_loss",
]


def margin_mse_loss(
    student_scores: Tensor,
    teacher_scores: Tensor,
    *,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Margin-MSE: match the student's score margins to the teacher's.

    .. math::
        \ell_i = \frac{1}{k} \sum_{j=1}^{k}
        \big((s_{i0} - s_{ij}) - (t_{i0} - t_{ij})\big)^2

    with :math:`s_{i0}` (:math:`t_{i0}`) the student (teacher) score of the positive passage of
    query :math:`i` and :math:`s_{ij}` of its :math:`j`-th negative. For :math:`k = 1` this is
    the paper's :math:`\mathrm{MSE}(M_s(q, p^+) - M_s(q, p^-),\ M_t(q, p^+) - M_t(q, p^-))`.

    Computed as :math:`(s_{i0} - t_{i0}) - (s_{ij} - t_{ij})` (the same value), with a score
    that is the same :math:`\pm\infty` for the student and the teacher (a passage masked on
    both sides) giving :math:`s_{ij} - t_{ij} = 0`, the limit of equal finite scores, instead
    of :math:`\infty - \infty`: the loss stays finite and that passage's gradient is 0.

    Args:
        student_scores: ``[N, 1 + k]`` student scores, positive first (``k >= 1``).
        teacher_scores: ``[N, 1 + k]`` teacher scores in the same layout.
        reduction: ``"mean"`` over queries (= over all ``N·k`` margins, as
            ``torch.nn.MSELoss``), ``"sum"`` (of the per-query means), or ``"none"`` (``[N]``).

    Peer: ``sentence_transformers.losses.MarginMSELoss`` (MSE between the student margins and
    the teacher margins given as labels; for several negatives, one margin per negative).

    Paper: Hofstätter, Althammer, Schröder, Sertkan, Hanbury, "Improving Efficient Neural Ranking
    Models with Cross-Architecture Knowledge Distillation", arXiv 2010.02666.
    """
    s, t = check_teacher_pair(student_scores, teacher_scores,
                              names=("student_scores", "teacher_scores"), min_cols=2)
    gap = masked_difference(s, t)  # s - t, 0 where both are the same infinity
    values = (gap[:, :1] - gap[:, 1:]).pow(2).mean(1)
    return reduce(values, reduction)


@register(
    "margin_mse",
    family="ranking-recsys",
    kind="teacher",
    paper="Improving Efficient Neural Ranking Models with Cross-Architecture Knowledge "
    "Distillation",
    arxiv="2010.02666",
    summary="mean_j ((s_pos - s_neg_j) - (t_pos - t_neg_j))^2",
    peers=("sentence_transformers.losses.MarginMSELoss",),
    reduction="per query",
)
class MarginMSELoss(LossModule, function=margin_mse_loss):
    """Module form of :func:`margin_mse_loss`."""


# --------------------------------------------------------------------------------------------
# Kind "scores"
# --------------------------------------------------------------------------------------------


def ranknet_loss(
    scores: Tensor,
    relevance: Tensor,
    *,
    mask: Tensor | None = None,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""RankNet: pairwise logistic loss on every pair of items with different relevance.

    .. math::
        \ell_q = \frac{1}{|P_q|} \sum_{(i, j) \in P_q} \log\big(1 + e^{-(s_i - s_j)}\big),
        \qquad P_q = \{(i, j) : r_i > r_j\}

    (the target probability of "i above j" is 1 for every ordered pair; tied pairs carry no
    term). RankT5 trains its rankers with this loss among others.

    Args:
        scores: ``[Q, L]`` predicted scores; ``relevance``: ``[Q, L]`` graded relevance.
        mask: optional ``[Q, L]`` bool, False for padding.
        reduction: ``"mean"`` over queries with at least one pair, ``"sum"``, ``"none"``
            (``[Q]``, 0 for lists without a pair). Memory ``O(Q L^2)``.

    Paper: Burges et al., "Learning to Rank using Gradient Descent" (ICML 2005; no arXiv id);
    used by Zhuang et al., "RankT5", arXiv 2210.10634.
    """
    s, r, m = prepare_scores(scores, relevance, mask)
    pairs = (r.unsqueeze(2) > r.unsqueeze(1)) & m.unsqueeze(2) & m.unsqueeze(1)
    diff = s.unsqueeze(2) - s.unsqueeze(1)
    terms = torch.where(pairs, F.softplus(-diff), torch.zeros_like(diff))
    n_pairs = pairs.sum((1, 2)).to(s.dtype)
    values = terms.sum((1, 2)) / n_pairs.clamp_min(1)
    return reduce(values, reduction, count=(n_pairs > 0).sum().to(s.dtype))


@register(
    "ranknet",
    family="ranking-recsys",
    kind="scores",
    paper="Learning to Rank using Gradient Descent",
    arxiv="",
    summary="mean over pairs r_i > r_j of log(1 + exp(-(s_i - s_j)))",
    peers=("allrank.models.losses.rankNet", "rax.pairwise_logistic_loss"),
    reduction="per query",
    degenerate=("all_masked", "no_relevant"),
)
class RankNetLoss(LossModule, function=ranknet_loss):
    """Module form of :func:`ranknet_loss`."""


_check_hinge = hparams(margin=Real(ge=0))


def pairwise_hinge_loss(
    scores: Tensor,
    relevance: Tensor,
    *,
    mask: Tensor | None = None,
    margin: float = 1.0,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Pairwise hinge (RankSVM) loss on every pair of items with different relevance.

    .. math::
        \ell_q = \frac{1}{|P_q|} \sum_{(i, j) \in P_q} \max\big(0,\ m - (s_i - s_j)\big),
        \qquad P_q = \{(i, j) : r_i > r_j\}

    Args:
        scores: ``[Q, L]`` predicted scores; ``relevance``: ``[Q, L]`` graded relevance.
        mask: optional ``[Q, L]`` bool, False for padding.
        margin: ``m >= 0`` (TF-Ranking's hinge uses 1).
        reduction: ``"mean"`` over queries with at least one pair, ``"sum"``, ``"none"``
            (``[Q]``, the per-query mean over pairs).

    Peer: TF-Ranking ``PairwiseHingeLoss`` (``max(0, 1 - (s_i - s_j))`` per pair; its default
    reduction sums over pairs and divides by the number of pairs of the batch).

    Paper: Herbrich, Graepel, Obermayer, "Large Margin Rank Boundaries for Ordinal Regression"
    (2000) and Joachims, "Optimizing Search Engines using Clickthrough Data" (KDD 2002); no
    arXiv ids.
    """
    _check_hinge(margin=margin)
    s, r, m = prepare_scores(scores, relevance, mask)
    pairs = pair_mask(r, m)
    diff = s.unsqueeze(2) - s.unsqueeze(1)
    terms = torch.where(pairs, F.relu(margin - diff), torch.zeros_like(diff))
    n_pairs = pairs.sum((1, 2)).to(s.dtype)
    values = terms.sum((1, 2)) / n_pairs.clamp_min(1)
    return reduce(values, reduction, count=(n_pairs > 0).sum().to(s.dtype))


@register(
    "pairwise_hinge",
    family="ranking-recsys",
    kind="scores",
    paper="Optimizing Search Engines using Clickthrough Data",
    arxiv="",
    summary="mean over pairs r_i > r_j of max(0, margin - (s_i - s_j))",
    peers=("rax.pairwise_hinge_loss", "tfr.keras.losses.PairwiseHingeLoss"),
    reduction="per query",
    degenerate=("all_masked", "no_relevant"),
)
class PairwiseHingeLoss(LossModule, function=pairwise_hinge_loss, check=_check_hinge):
    """Module form of :func:`pairwise_hinge_loss`."""


WEIGHTINGS = ("ndcg_loss1", "ndcg_loss2", "ndcg_loss2pp", "lambdarank", "none")
_check_lambda = hparams(weighting=Choice(*WEIGHTINGS), sigma=Real(gt=0), k=Int(ge=1, optional=True),
                        mu=Real(ge=0), gain=Choice("exp", "linear"))


def lambda_loss(
    scores: Tensor,
    relevance: Tensor,
    *,
    mask: Tensor | None = None,
    weighting: str = "ndcg_loss2",
    sigma: float = 1.0,
    k: int | None = None,
    mu: float = 10.0,
    gain: str = "exp",
    reduction: Reduction = "mean",
) -> Tensor:
    r"""The LambdaLoss framework: metric-weighted pairwise logistic loss.

    Items are put in the order of the current scores (positions :math:`i = 1..n`, detached);
    with :math:`G_i = G(r_i) / \mathrm{IDCG@k}`, :math:`G(r) = 2^r - 1` and
    :math:`D_i = \log_2(1 + i)`,

    .. math::
        \ell_q = -\sum_{r_i > r_j} w_{ij} \log_2 \sigma\big(\sigma_s (s_i - s_j)\big)

    with the weights of ``weighting``:

    * ``"ndcg_loss2"`` (default; the paper's NDCG-Loss2, a bound on NDCG):
      :math:`w_{ij} = |\tfrac{1}{D_{|i-j|}} - \tfrac{1}{D_{|i-j|+1}}|\,|G_i - G_j|`;
    * ``"lambdarank"`` (LambdaRank's :math:`|\Delta \mathrm{NDCG}|`):
      :math:`w_{ij} = |\tfrac{1}{D_i} - \tfrac{1}{D_j}|\,|G_i - G_j|`;
    * ``"ndcg_loss2pp"`` (NDCG-Loss2++): :math:`\mu\,w^{\text{Loss2}} + w^{\text{LambdaRank}}`;
    * ``"ndcg_loss1"`` (NDCG-Loss1, as allRank restricts it to pairs): :math:`w_{ij} = G_i/D_i`;
    * ``"none"``: :math:`w_{ij} = 1` (RankNet in base 2, summed).

    ``k`` keeps the pairs whose two items are both in the top ``k`` positions and cuts the
    IDCG at ``k``, as allRank does. The weights depend on the scores only through the sort,
    so they carry no gradient (LambdaRank's lambdas).

    Args:
        scores: ``[Q, L]`` predicted scores; ``relevance``: ``[Q, L]`` graded relevance.
        mask: optional ``[Q, L]`` bool, False for padding.
        weighting: see above. sigma: the logistic scale :math:`\sigma_s` (allRank default 1).
        k: the NDCG cutoff (``None``: all positions). mu: NDCG-Loss2++'s :math:`\mu`
            (allRank default 10). gain: ``"exp"`` or ``"linear"``.
        reduction: ``"mean"`` over queries with at least one pair, ``"sum"``, ``"none"``
            (``[Q]``: the sum over the query's pairs).

    Peer: allRank ``lambdaLoss`` (same terms; its ``reduction="sum"`` sums every pair of the
    batch, its ``"mean"`` averages over pairs rather than queries; it clamps probabilities at
    1e-10).

    Paper: Wang, Li, Golbandi, Bendersky, Najork, "The LambdaLoss Framework for Ranking Metric
    Optimization" (CIKM 2018; no arXiv id); LambdaRank: Burges, Ragno, Le (NIPS 2006).
    """
    _check_lambda(weighting=weighting, sigma=sigma, k=k, mu=mu, gain=gain)
    s, r, m = prepare_scores(scores, relevance, mask)
    s = torch.where(m, s, torch.zeros_like(s))
    order = order_by(s, m)
    s, r, m = s.gather(1, order), r.gather(1, order), m.gather(1, order)
    L = s.shape[1]
    g = torch.where(m, gains(r, gain), torch.zeros_like(r))
    idcg = ideal_dcg(g, m, k)
    G = g / torch.where(idcg > 0, idcg, torch.ones_like(idcg)).unsqueeze(1)
    pos = torch.arange(1, L + 1, dtype=s.dtype, device=s.device)
    D = torch.log2(1 + pos)
    pairs = pair_mask(r, m) & (idcg > 0).view(-1, 1, 1)
    if weighting == "none":
        pairs = pair_mask(r, m)
    if k is not None:
        top = torch.arange(L, device=s.device) < k
        pairs = pairs & top.view(1, -1, 1) & top.view(1, 1, -1)
    gdiff = (G.unsqueeze(2) - G.unsqueeze(1)).abs()
    dist = (pos.view(-1, 1) - pos.view(1, -1)).abs()
    safe = dist.clamp_min(1)
    loss2 = (1 / torch.log2(1 + safe) - 1 / torch.log2(2 + safe)).abs() * gdiff
    lambdarank = (1 / D.view(-1, 1) - 1 / D.view(1, -1)).abs() * gdiff
    if weighting == "ndcg_loss2":
        w = loss2
    elif weighting == "lambdarank":
        w = lambdarank
    elif weighting == "ndcg_loss2pp":
        w = mu * loss2 + lambdarank
    elif weighting == "ndcg_loss1":
        w = (G / D).unsqueeze(2).expand(-1, -1, L)
    else:
        w = torch.ones_like(gdiff)
    diff = s.unsqueeze(2) - s.unsqueeze(1)
    terms = w * F.softplus(-sigma * diff) / math.log(2)  # -w log2 sigmoid(sigma diff)
    values = torch.where(pairs, terms, torch.zeros_like(terms)).sum((1, 2))
    has = pairs.flatten(1).any(1)
    return reduce(values, reduction, count=has.sum().to(s.dtype))


@register(
    "lambda_loss",
    family="ranking-recsys",
    kind="scores",
    paper="The LambdaLoss Framework for Ranking Metric Optimization",
    arxiv="",
    summary="-sum_{r_i > r_j} w_ij log2 sigmoid(s_i - s_j), NDCG-Loss2 / LambdaRank weights",
    peers=("allrank.models.losses.lambdaLoss",
           "rax.pairwise_logistic_loss(lambdaweight_fn=rax.dcg_lambdaweight)"),
    reduction="per query",
    degenerate=("all_masked", "no_relevant"),
)
class LambdaLoss(LossModule, function=lambda_loss, check=_check_lambda):
    """Module form of :func:`lambda_loss`."""


_check_yeti = hparams(num_permutations=Int(ge=1), neighbors=Int(ge=1),
                      k=Int(ge=1, optional=True), gain=Choice("exp", "linear"))


def yeti_loss(
    scores: Tensor,
    relevance: Tensor,
    *,
    mask: Tensor | None = None,
    num_permutations: int = 10,
    neighbors: int = 1,
    k: int | None = None,
    gain: str = "exp",
    reduction: Reduction = "mean",
) -> Tensor:
    r"""YetiLoss: pairwise logistic loss weighted by the NDCG change of swapping the pair in
    randomly perturbed rankings (YetiRank's stochastic pair weights, with the target metric's
    swap delta as the weight, as "Which Tricks are Important for Learning to Rank?" proposes).

    For ``num_permutations`` rankings :math:`\pi^{(t)}` by the perturbed scores
    :math:`s_i + \log\frac{u_i}{1 - u_i}`, :math:`u_i \sim U(0, 1)` (logistic noise, detached),
    every pair with :math:`r_i > r_j` at most ``neighbors`` positions apart gains the weight
    :math:`|\Delta\mathrm{NDCG@k}_{ij}(\pi^{(t)})| = |G_i - G_j|\,|d(\pi_i) - d(\pi_j)|`
    (:math:`G = (2^r - 1)/\mathrm{IDCG@k}`, :math:`d(p) = 1/\log_2(1 + p)` for :math:`p \le k`,
    else 0), averaged over the permutations; then

    .. math::
        \ell_q = \sum_{r_i > r_j} w_{ij} \log\big(1 + e^{-(s_i - s_j)}\big).

    Random: it draws from torch's global generator (seed it for repeatable values).
    Formula from the paper's abstract and CatBoost's YetiRank description (its
    ``permutations`` default 10, neighbouring pairs), **not verified against the paper's
    equations**.

    Args:
        scores: ``[Q, L]`` predicted scores; ``relevance``: ``[Q, L]`` graded relevance.
        mask: optional ``[Q, L]`` bool, False for padding.
        num_permutations: perturbed rankings per call. neighbors: the largest position gap of
            a weighted pair (1: adjacent items, as YetiRank). k: NDCG cutoff. gain: ``"exp"``
            or ``"linear"``.
        reduction: ``"mean"`` over queries with at least one pair, ``"sum"``, ``"none"``
            (``[Q]``).

    Peer: CatBoost ``YetiRank`` (a GBDT objective; not a torch loss).

    Paper: Lyzhin, Ustimenko, Gulin, Prokhorenkova, "Which Tricks are Important for Learning
    to Rank?", arXiv 2204.01500 (ICML 2023).
    """
    _check_yeti(num_permutations=num_permutations, neighbors=neighbors, k=k, gain=gain)
    s, r, m = prepare_scores(scores, relevance, mask)
    s = torch.where(m, s, torch.zeros_like(s))
    L = s.shape[1]
    g = torch.where(m, gains(r, gain), torch.zeros_like(r))
    idcg = ideal_dcg(g, m, k)
    G = g / torch.where(idcg > 0, idcg, torch.ones_like(idcg)).unsqueeze(1)
    pairs = pair_mask(r, m)
    gdiff = (G.unsqueeze(2) - G.unsqueeze(1)).abs()
    w = torch.zeros_like(gdiff)
    with torch.no_grad():
        for _ in range(num_permutations):
            u = torch.rand(s.shape, dtype=s.dtype, device=s.device).clamp(1e-12, 1 - 1e-12)
            order = order_by(s + torch.log(u) - torch.log1p(-u), m)
            rank = torch.empty_like(order)
            rank.scatter_(1, order, torch.arange(L, device=s.device).expand_as(order))
            p = rank.to(s.dtype) + 1  # positions 1..L
            d = 1 / torch.log2(1 + p)
            if k is not None:
                d = torch.where(p <= k, d, torch.zeros_like(d))
            near = (p.unsqueeze(2) - p.unsqueeze(1)).abs() <= neighbors
            w = w + torch.where(near, gdiff * (d.unsqueeze(2) - d.unsqueeze(1)).abs(),
                                torch.zeros_like(w))
        w = w / num_permutations
    diff = s.unsqueeze(2) - s.unsqueeze(1)
    terms = torch.where(pairs, w * F.softplus(-diff), torch.zeros_like(diff))
    values = terms.sum((1, 2))
    has = pairs.flatten(1).any(1)
    return reduce(values, reduction, count=has.sum().to(s.dtype))


@register(
    "yeti_loss",
    family="ranking-recsys",
    kind="scores",
    paper="Which Tricks are Important for Learning to Rank?",
    arxiv="2204.01500",
    summary="pairwise logistic weighted by |dNDCG| of swapping neighbours in noisy rankings",
    peers=("catboost YetiRank",),
    reduction="per query",
    degenerate=("all_masked", "no_relevant"),
)
class YetiLoss(LossModule, function=yeti_loss, check=_check_yeti):
    """Module form of :func:`yeti_loss`."""
