"""Model-extraction losses: distil a black-box recommender's top-k lists into a surrogate.

Kind ``scores``: ``loss(scores[Q, L], relevance[Q, L], *, mask=None)`` with ``scores`` the
surrogate's scores of ``L`` candidate items for ``Q`` users (sequences) and ``relevance`` the
victim's answer encoded as graded relevance: its top-k items get ``k, k - 1, ..., 1`` (first
item highest), every other item 0 (``victim_relevance`` builds it from the item ids).
"""

from __future__ import annotations

import torch
from torch import Tensor

from losslab._core import LossModule, Reduction, reduce
from losslab._hparams import Real, hparams
from losslab.losses.ranking._common import prepare_scores
from losslab.registry import register

__all__ = ["BidirectionalRepairLoss", "bidirectional_repair_loss", "victim_relevance"]

EXTRACTION_PAPER = "Few-shot Model Extraction Attacks against Sequential Recommender Systems"
_check_repair = hparams(margin=Real(ge=0), repair_weight=Real(ge=0))


def victim_relevance(topk: Tensor, num_items: int) -> Tensor:
    """``[Q, num_items]`` relevance from the victim's ``[Q, k]`` top-k item ids (best first):
    ``k`` for the first item down to 1 for the last, 0 for items not recommended."""
    if (not isinstance(topk, Tensor) or topk.is_floating_point() or topk.dtype == torch.bool
            or topk.ndim != 2):
        raise ValueError(f"topk must be an integer tensor [Q, k] of item ids, got "
                         f"{getattr(topk, 'dtype', type(topk).__name__)} "
                         f"{tuple(getattr(topk, 'shape', ()))}")
    if topk.numel() and (int(topk.min()) < 0 or int(topk.max()) >= num_items):
        raise ValueError(f"topk must hold item ids in [0, {num_items})")
    k = topk.shape[1]
    out = torch.zeros(topk.shape[0], num_items, dtype=torch.float32, device=topk.device)
    grades = torch.arange(k, 0, -1, dtype=torch.float32, device=topk.device)
    return out.scatter(1, topk.long(), grades.expand(topk.shape[0], k).contiguous())


def _pair_hinge(s: Tensor, first: Tensor, second: Tensor, margin: float) -> tuple[Tensor, Tensor]:
    """Per-row mean of ``max(0, margin - (s_i - s_j))`` over the pairs ``first[q, i, j]``
    (``i`` must rank above ``j``) and each row's pair count."""
    terms = (margin - (s.unsqueeze(2) - s.unsqueeze(1))).clamp_min(0)
    pairs = first & second
    n = pairs.sum((1, 2)).to(s.dtype)
    total = torch.where(pairs, terms, torch.zeros_like(terms)).sum((1, 2))
    return total / n.clamp_min(1), n


def bidirectional_repair_loss(
    scores: Tensor,
    relevance: Tensor,
    *,
    mask: Tensor | None = None,
    margin: float = 1.0,
    repair_weight: float = 1.0,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Ranking distillation of a victim recommender's top-k lists with a bidirectional repair
    term, the extraction loss of few-shot model extraction against sequential recommenders.

    With :math:`V_q` the victim's top-:math:`k_q` items for user :math:`q` (relevance > 0,
    ordered by relevance) and :math:`S_q` the surrogate's current top-:math:`k_q` (by
    ``scores``; the selection is not differentiated),

    .. math::
        \ell_q = \underbrace{\operatorname*{mean}_{i, j \in V_q,\ r_i > r_j}
        [m - (s_i - s_j)]_+}_{\text{distillation of the victim's order}}
        + \lambda \underbrace{\operatorname*{mean}_{v \in V_q \setminus S_q,\
        u \in S_q \setminus V_q} [m - (s_v - s_u)]_+}_{\text{repair}}

    The repair term targets the discrepancies of the two lists in both directions: every item
    the victim recommends but the surrogate misses is pushed up, and every item the surrogate
    recommends but the victim does not is pushed down, each against the other (a mean of 0
    when the lists agree). The first term is the margin ranking distillation of the victim's
    list used by black-box recommender extraction (Yue et al., arXiv 2109.01165).

    Formula from the abstract, not verified against the paper: the abstract fixes a
    bidirectional repair loss on the discrepancies between the victim's and the surrogate's
    recommendation lists, added as an auxiliary loss to the distillation; the hinge form, the
    pairing of missed and intruding items and the default margin are this implementation's.

    Args:
        scores: ``[Q, L]`` surrogate scores; ``relevance``: ``[Q, L]`` the victim's list as
            grades (:func:`victim_relevance`), 0 for unrecommended items.
        mask: optional ``[Q, L]`` bool, False for padding.
        margin: :math:`m \ge 0` (default 1).
        repair_weight: :math:`\lambda \ge 0` (default 1; 0 is the distillation term alone).
        reduction: ``"mean"`` over users with a non-empty victim list, ``"sum"``, ``"none"``
            (``[Q]``, 0 for users without one). Memory ``O(Q L^2)``.

    Paper: Zhang, Liu, "Few-shot Model Extraction Attacks against Sequential Recommender
    Systems", arXiv 2411.11677.
    """
    _check_repair(margin=margin, repair_weight=repair_weight)
    s, r, m = prepare_scores(scores, relevance, mask)
    victim = (r > 0) & m
    k = victim.sum(1)
    order = (r.unsqueeze(2) > r.unsqueeze(1)) & victim.unsqueeze(2) & victim.unsqueeze(1)
    dist, _ = _pair_hinge(s, order, order, margin)
    with torch.no_grad():
        ranked = torch.where(m, s, torch.full_like(s, float("-inf")))
        perm = torch.argsort(ranked, dim=1, descending=True, stable=True)
        rank = torch.argsort(perm, dim=1)
        surrogate = (rank < k.unsqueeze(1)) & m
    missed = victim & ~surrogate
    intruder = surrogate & ~victim
    repair, _ = _pair_hinge(s, missed.unsqueeze(2), intruder.unsqueeze(1), margin)
    values = dist + repair_weight * repair
    return reduce(values, reduction, count=(k > 0).sum().to(s.dtype))


@register(
    "bidirectional_repair",
    family="ranking-recsys",
    kind="scores",
    paper=EXTRACTION_PAPER,
    arxiv="2411.11677",
    summary="mean_{victim order} [m - (s_i - s_j)]_+ + lambda mean_{missed v, intruder u} "
    "[m - (s_v - s_u)]_+",
    reduction="per query",
    degenerate=("all_masked", "no_relevant"),
)
class BidirectionalRepairLoss(LossModule, function=bidirectional_repair_loss,
                              check=_check_repair):
    """Module form of :func:`bidirectional_repair_loss`."""
