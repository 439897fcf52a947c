"""Learning-to-rank losses: Margin-MSE (kind ``teacher``); ListNet, RankNet and ListMLE
(kind ``scores``).

Kind ``scores``: ``loss(scores[Q, L], relevance[Q, L], *, mask=None)``: ``Q`` queries (lists) of
``L`` items, graded relevance (float, higher is better), and an optional bool ``mask`` (True =
a real item; False = padding, left out of every term). Definitions follow allRank's; see each
function.

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

import torch
import torch.nn.functional as F
from torch import Tensor

from losslab._core import (
    LossModule,
    Reduction,
    check_float,
    check_same_device,
    compute_dtype,
    reduce,
)
from losslab._ops.teacher import check_teacher_pair, masked_difference
from losslab.registry import register

__all__ = [
    "ListMLELoss",
    "ListNetLoss",
    "MarginMSELoss",
    "RankNetLoss",
    "listmle_loss",
    "listnet_loss",
    "margin_mse_loss",
    "ranknet_loss",
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
# Kind "scores": ListNet, RankNet, ListMLE
# --------------------------------------------------------------------------------------------


def prepare_scores(
    scores: Tensor, relevance: Tensor, mask: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """Validate ``(scores[Q, L], relevance[Q, L], mask)``; return them in the compute dtype
    with a bool mask (all True when ``mask`` is None). Relevance of an integer dtype is
    converted; bool relevance and a non-finite relevance at a real item are a ``ValueError``
    (padding, ``mask`` False, may hold anything)."""
    check_float("scores", scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must have shape [Q, L], got {tuple(scores.shape)}")
    if not isinstance(relevance, Tensor) or relevance.shape != scores.shape:
        shape = tuple(relevance.shape) if isinstance(relevance, Tensor) else type(relevance)
        raise ValueError(f"relevance must have the shape of scores {tuple(scores.shape)}, "
                         f"got {shape}")
    if relevance.is_complex() or relevance.dtype == torch.bool:
        raise ValueError(f"relevance must be real-valued, got dtype {relevance.dtype}")
    if mask is None:
        mask = torch.ones(scores.shape, dtype=torch.bool, device=scores.device)
    elif not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.shape != scores.shape:
        raise ValueError(f"mask must be a bool tensor of shape {tuple(scores.shape)}")
    check_same_device(scores=scores, relevance=relevance, mask=mask)
    cd = compute_dtype(scores.dtype)
    relevance = relevance.to(cd)
    if not bool((torch.isfinite(relevance) | ~mask).all()):
        raise ValueError("relevance must be finite at the real items (mask True), got NaN or "
                         "inf; mark padding with mask=False")
    return scores.to(cd), relevance, mask


def _masked_log_softmax(x: Tensor, m: Tensor) -> Tensor:
    """``log_softmax`` over the items of each list with ``m`` True, 0 elsewhere (finite, with
    finite gradients, for fully masked lists too)."""
    x = torch.where(m, x, torch.full_like(x, float("-inf")))
    x = torch.where(m.any(1, keepdim=True), x, torch.zeros_like(x))
    out = F.log_softmax(x, dim=1)
    return torch.where(m, out, torch.zeros_like(out))


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
    peers=("allrank.models.losses.listNet",),
    reduction="per query",
)
class ListNetLoss(LossModule, function=listnet_loss):
    """Module form of :func:`listnet_loss`."""


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
    peers=("allrank.models.losses.rankNet",),
    reduction="per query",
)
class RankNetLoss(LossModule, function=ranknet_loss):
    """Module form of :func:`ranknet_loss`."""


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
    peers=("allrank.models.losses.listMLE",),
    reduction="per query",
)
class ListMLELoss(LossModule, function=listmle_loss):
    """Module form of :func:`listmle_loss`."""
