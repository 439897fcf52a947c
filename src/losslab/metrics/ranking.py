"""Ranking (IR / recommendation) metrics over padded lists: NDCG@k (exponential or linear
gain), MRR, MAP, recall@k, precision@k and the per-list AUC.

Every function takes ``scores [Q, L]`` (higher = ranked earlier), ``relevance [Q, L]`` (graded;
an item is *relevant* when its grade is ``> 0``) and an optional bool ``mask [Q, L]`` (False =
padding or an excluded candidate, e.g. a training item in recommendation: it is not ranked),
and returns one value per list, ``[Q]``, in float64. Ties in the scores are broken by position
(the earlier item first; trec_eval breaks them by document id). A list without a relevant item
gets 0 for every metric (recall and AUC are undefined there; :func:`has_relevant` tells which
lists to average over). Definitions follow trec_eval (``ndcg_cut`` with linear gain,
``recip_rank``, ``map``, ``recall_k``, ``P_k``; precision@k divides by ``k`` even when the list
is shorter).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from losslab._ops.scores import prepare_scores

__all__ = [
    "RANKING_METRICS",
    "auc_per_list",
    "average_precision",
    "has_relevant",
    "ndcg_at_k",
    "precision_at_k",
    "ranking_metrics",
    "recall_at_k",
    "reciprocal_rank",
]

RANKING_METRICS: tuple[str, ...] = ("ndcg", "mrr", "map", "recall", "precision")


def _check_k(k: int | None) -> None:
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise ValueError(f"k must be a positive integer or None, got {k!r}")


def _sorted(scores: Tensor, relevance: Tensor, mask: Tensor | None
            ) -> tuple[Tensor, Tensor, Tensor]:
    """Relevance and mask in ranked order (padding last), and the unsorted relevance."""
    s, r, m = prepare_scores(scores.detach(), relevance, mask)
    s, r = s.double(), r.double()
    key = torch.where(m, s, torch.full_like(s, float("-inf")))
    order = torch.sort(key, dim=1, descending=True, stable=True).indices
    rs, ms = r.gather(1, order), m.gather(1, order)
    rs = torch.where(ms, rs, torch.zeros_like(rs))
    return rs, ms, torch.where(m, r, torch.zeros_like(r))


def _cut(L: int, k: int | None, like: Tensor) -> Tensor:
    top = torch.arange(L, device=like.device)
    return top < (L if k is None else k)


@torch.no_grad()
def has_relevant(relevance: Tensor, mask: Tensor | None = None) -> Tensor:
    """``[Q]`` bool: the lists with at least one relevant (``> 0``) real item."""
    rel = relevance > 0
    return (rel if mask is None else rel & mask).any(1)


@torch.no_grad()
def ndcg_at_k(scores: Tensor, relevance: Tensor, *, k: int | None = None,
              mask: Tensor | None = None, gain: str = "exp") -> Tensor:
    r"""NDCG@k: :math:`\mathrm{DCG@k} / \mathrm{IDCG@k}`,
    :math:`\mathrm{DCG@k} = \sum_{i \le k} G(r_{\pi_i}) / \log_2(1 + i)` with
    :math:`G(r) = 2^r - 1` (``gain="exp"``, Burges et al.) or :math:`G(r) = r` (``"linear"``,
    trec_eval's ``ndcg_cut``); grades ``<= 0`` gain nothing. ``k=None``: the whole list.

    Args:
        scores, relevance: ``[Q, L]``. k: the cutoff. mask: ``[Q, L]`` bool, False = not
            ranked. gain: ``"exp"`` or ``"linear"``.

    Returns: ``[Q]`` float64, 0 for lists whose IDCG is 0.
    """
    _check_k(k)
    if gain not in ("exp", "linear"):
        raise ValueError(f"gain must be 'exp' or 'linear', got {gain!r}")
    rs, _ms, r = _sorted(scores, relevance, mask)
    L = rs.shape[1]

    def g(x: Tensor) -> Tensor:
        x = x.clamp_min(0)
        return torch.pow(2.0, x) - 1 if gain == "exp" else x

    disc = 1.0 / torch.log2(torch.arange(2, L + 2, dtype=torch.float64, device=rs.device))
    disc = torch.where(_cut(L, k, rs), disc, torch.zeros_like(disc))
    dcg = (g(rs) * disc).sum(1)
    # the ideal order of the real items
    ideal = torch.sort(torch.where(_real(relevance, mask), g(r), torch.zeros_like(r)), dim=1,
                       descending=True).values
    idcg = (ideal * disc).sum(1)
    return torch.where(idcg > 0, dcg / torch.where(idcg > 0, idcg, torch.ones_like(idcg)),
                       torch.zeros_like(dcg))


def _real(relevance: Tensor, mask: Tensor | None) -> Tensor:
    return torch.ones(relevance.shape, dtype=torch.bool, device=relevance.device) \
        if mask is None else mask


@torch.no_grad()
def reciprocal_rank(scores: Tensor, relevance: Tensor, *, mask: Tensor | None = None,
                    k: int | None = None) -> Tensor:
    """``[Q]``: 1 / the rank of the first relevant item (0 when none is in the top ``k``);
    its mean is the MRR."""
    _check_k(k)
    rs, ms, _ = _sorted(scores, relevance, mask)
    L = rs.shape[1]
    hit = (rs > 0) & ms & _cut(L, k, rs)
    rank = torch.arange(1, L + 1, dtype=torch.float64, device=rs.device)
    first = torch.where(hit, rank, torch.full_like(rs, float("inf"))).amin(1)
    return torch.where(torch.isfinite(first), 1.0 / first, torch.zeros_like(first))


@torch.no_grad()
def average_precision(scores: Tensor, relevance: Tensor, *, mask: Tensor | None = None,
                      k: int | None = None) -> Tensor:
    """``[Q]``: average precision, :math:`\\frac{1}{R} \\sum_{i \\le k,\\ rel_i} P@i` with
    ``R`` the number of relevant real items of the list (trec_eval ``map``); its mean is MAP."""
    _check_k(k)
    rs, ms, r = _sorted(scores, relevance, mask)
    L = rs.shape[1]
    hit = ((rs > 0) & ms).double()
    rank = torch.arange(1, L + 1, dtype=torch.float64, device=rs.device)
    prec = hit.cumsum(1) / rank
    total = (prec * hit * _cut(L, k, rs)).sum(1)
    n_rel = ((r > 0) & _real(relevance, mask)).sum(1).double()
    return torch.where(n_rel > 0, total / n_rel.clamp_min(1), torch.zeros_like(total))


def _hits(scores: Tensor, relevance: Tensor, mask: Tensor | None, k: int
          ) -> tuple[Tensor, Tensor]:
    _check_k(k)
    rs, ms, r = _sorted(scores, relevance, mask)
    hits = (((rs > 0) & ms) & _cut(rs.shape[1], k, rs)).sum(1).double()
    n_rel = ((r > 0) & _real(relevance, mask)).sum(1).double()
    return hits, n_rel


@torch.no_grad()
def recall_at_k(scores: Tensor, relevance: Tensor, *, k: int,
                mask: Tensor | None = None) -> Tensor:
    """``[Q]``: the fraction of the list's relevant items ranked in the top ``k``."""
    hits, n_rel = _hits(scores, relevance, mask, k)
    return torch.where(n_rel > 0, hits / n_rel.clamp_min(1), torch.zeros_like(hits))


@torch.no_grad()
def precision_at_k(scores: Tensor, relevance: Tensor, *, k: int,
                   mask: Tensor | None = None) -> Tensor:
    """``[Q]``: the number of relevant items in the top ``k``, divided by ``k``."""
    hits, _ = _hits(scores, relevance, mask, k)
    return hits / k


@torch.no_grad()
def auc_per_list(scores: Tensor, relevance: Tensor, *, mask: Tensor | None = None) -> Tensor:
    """``[Q]``: the fraction of (relevant, non-relevant) pairs of real items ranked in order,
    ties counting 1/2 (0 for a list without both kinds). Memory ``O(Q L^2)``."""
    s, r, m = prepare_scores(scores.detach(), relevance, mask)
    s = s.double()
    pos, neg = m & (r > 0), m & (r <= 0)
    d = s.unsqueeze(2) - s.unsqueeze(1)
    pair = pos.unsqueeze(2) & neg.unsqueeze(1)
    win = torch.where(pair, (d > 0).double() + 0.5 * (d == 0).double(), torch.zeros_like(d))
    n = pair.sum((1, 2)).double()
    return torch.where(n > 0, win.sum((1, 2)) / n.clamp_min(1), torch.zeros_like(n))


@torch.no_grad()
def ranking_metrics(scores: Tensor, relevance: Tensor, *, mask: Tensor | None = None,
                    k: Sequence[int] = (10,), metrics: Sequence[str] = RANKING_METRICS,
                    gain: str = "exp") -> dict[str, Tensor]:
    """Several metrics at once: ``{"ndcg@10": [Q], "recall@10": [Q], "mrr": [Q], ...}``
    (``ndcg``, ``recall`` and ``precision`` at every ``k``; ``mrr`` and ``map`` uncut)."""
    bad = set(metrics) - set(RANKING_METRICS)
    if bad:
        raise ValueError(f"metrics must be among {RANKING_METRICS}, got {sorted(bad)}")
    out: dict[str, Tensor] = {}
    for name in metrics:
        if name == "mrr":
            out["mrr"] = reciprocal_rank(scores, relevance, mask=mask)
        elif name == "map":
            out["map"] = average_precision(scores, relevance, mask=mask)
        else:
            for kk in k:
                if name == "ndcg":
                    out[f"ndcg@{kk}"] = ndcg_at_k(scores, relevance, k=kk, mask=mask, gain=gain)
                elif name == "recall":
                    out[f"recall@{kk}"] = recall_at_k(scores, relevance, k=kk, mask=mask)
                else:
                    out[f"precision@{kk}"] = precision_at_k(scores, relevance, k=kk, mask=mask)
    return out
