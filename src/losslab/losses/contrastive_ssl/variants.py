"""InfoNCE variants on paired views: decoupled contrastive learning (DCL), InfoNCE with explicit
hard negatives, and multi-positive InfoNCE with per-query hard negatives.

Kind ``paired``: ``loss(a[N, D], b[N, D])``, row ``i`` of ``a`` paired with row ``i`` of ``b``.
``negatives="cross"`` takes an anchor's negatives from the other view only; ``"both"`` from both
views (SimCLR's ``2N - 2``), see :func:`~losslab.losses.contrastive_ssl.infonce_loss`.
fp16/bf16 inputs are computed in float32 and the loss is returned in float32.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from losslab._core import LossModule, Reduction, check_float, compute_dtype, reduce
from losslab._hparams import Choice, Flag, Real, hparams
from losslab._ops.paired import prepare_paired
from losslab.distances import normalize_rows
from losslab.losses.contrastive_ssl._common import (
    Negatives,
    check_call,
    inverse_temperature,
    two_view_logits,
)
from losslab.registry import register

__all__ = [
    "DCLLoss",
    "HardNegativeInfoNCELoss",
    "MultiPositiveInfoNCELoss",
    "dcl_loss",
    "hard_negative_infonce_loss",
    "multi_positive_infonce_loss",
]

_NEGATIVES = Choice("cross", "both")


def _per_pair(per_anchor: Tensor, n: int, negatives: Negatives) -> Tensor:
    """``[N]`` per-pair values: with ``"both"`` the mean of anchors ``a_i`` and ``b_i``."""
    return per_anchor if negatives == "cross" else (per_anchor[:n] + per_anchor[n:]) / 2


def _need_negatives(a: Tensor, loss: str) -> None:
    if a.shape[0] < 2:
        raise ValueError(f"{loss} needs at least 2 pairs in a and b (each anchor's negatives "
                         f"are the other pairs), got {a.shape[0]}")


# --------------------------------------------------------------------------------------------
# DCL
# --------------------------------------------------------------------------------------------

_check_dcl = hparams(temperature=Real(gt=0), negatives=_NEGATIVES, weighting=Flag(),
                     sigma=Real(gt=0), normalize=Flag())


def dcl_loss(
    a: Tensor,
    b: Tensor,
    *,
    temperature: float = 0.1,
    negatives: Negatives = "both",
    weighting: bool = False,
    sigma: float = 0.5,
    normalize: bool = True,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Decoupled contrastive loss: InfoNCE without the positive in the denominator.

    For anchor :math:`z_i^{(k)}` (view ``k`` of pair ``i``) with positive :math:`z_i^{(3-k)}`,

    .. math::
        \ell_i^{(k)} = -w_i\, \frac{\langle z_i^{(1)}, z_i^{(2)}\rangle}{\tau}
            + \log \sum_{l \in \{1, 2\},\, j \ne i} \exp\frac{\langle z_i^{(k)},
              z_j^{(l)}\rangle}{\tau}

    (the paper's Eq. 6, summed over both views ``k``; ``negatives="cross"`` keeps only
    ``l = 3 - k``). Removing the positive from the denominator removes the
    negative-positive coupling factor :math:`1 - p_i` from the gradient, which makes the loss
    work with small batches. ``weighting=True`` is DCLW, the negative von Mises-Fisher weight
    :math:`w_i = 2 - \exp(\langle z_i^{(1)}, z_i^{(2)}\rangle / \sigma) /
    \mathbb{E}_j \exp(\langle z_j^{(1)}, z_j^{(2)}\rangle / \sigma)` (treated as a constant,
    as the reference code does), else :math:`w_i = 1`.

    Args:
        a, b: ``[N, D]`` two views (``N >= 2``).
        temperature: :math:`\tau` (default 0.1, lightly's and the official code's).
        negatives: ``"both"`` (default, the paper's SimCLR setting) or ``"cross"``.
        weighting: DCLW's weight (default False). sigma: its :math:`\sigma` (default 0.5).
        normalize: L2-normalise first (default True; the paper's inner products are cosines).
        reduction: ``"mean"`` over the ``N`` pairs (= over the ``2N`` anchors with ``"both"``),
            ``"sum"``, ``"none"`` (``[N]``: the mean of the pair's two anchors with ``"both"``).

    Paper: Yeh, Hong, Hsu, Liu, Chen, LeCun, "Decoupled Contrastive Learning", arXiv
    2110.06848. Equal to lightly's ``DCLLoss``/``DCLWLoss`` (tests).
    """
    check_call(_check_dcl, temperature=temperature, negatives=negatives, weighting=weighting,
               sigma=sigma, normalize=normalize)
    a, b = prepare_paired(a, b, normalize=normalize)
    _need_negatives(a, "dcl")
    n = a.shape[0]
    logits, positive, negative = two_view_logits(a, b, inverse_temperature(temperature, a),
                                                 negatives, normalize=False)
    pos = logits.gather(1, positive.unsqueeze(1)).squeeze(1)
    if weighting:
        with torch.no_grad():
            s = (a * b).sum(1) / sigma
            w = 2.0 - n * torch.softmax(s, 0)
        pos = pos * (w if negatives == "cross" else torch.cat([w, w]))
    neg = torch.logsumexp(logits.masked_fill(~negative, float("-inf")), 1)
    return reduce(_per_pair(neg - pos, n, negatives), reduction)


@register(
    "dcl", family="contrastive-ssl", kind="paired",
    paper="Decoupled Contrastive Learning", arxiv="2110.06848",
    summary="-w s(z_i, z_i+)/tau + log sum_{negatives only} exp(s/tau) (no positive in the "
    "denominator)",
    peers=("lightly.loss.DCLLoss", "lightly.loss.DCLWLoss"), reduction="per pair",
)
class DCLLoss(LossModule, function=dcl_loss, check=_check_dcl):
    """Module form of :func:`dcl_loss`."""


# --------------------------------------------------------------------------------------------
# InfoNCE with explicit hard negatives
# --------------------------------------------------------------------------------------------

_check_hard = hparams(temperature=Real(gt=0), hard_fraction=Real(gt=0, le=1),
                      negatives=_NEGATIVES, normalize=Flag())


def hard_negative_infonce_loss(
    a: Tensor,
    b: Tensor,
    *,
    temperature: float = 0.2,
    hard_fraction: float = 0.25,
    negatives: Negatives = "cross",
    normalize: bool = True,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""InfoNCE whose denominator keeps only each anchor's hardest negatives.

    .. math::
        \ell_i = -\log \frac{\exp(s_{ii}/\tau)}{\exp(s_{ii}/\tau)
                 + \sum_{k:\, s_{ik} \ge s^{(i)}_{\alpha}} \exp(s_{ik}/\tau)}

    with :math:`s^{(i)}_\alpha` the similarity of anchor ``i``'s ``K``-th most similar
    negative, ``K = ceil(hard_fraction x #negatives)``. InfoNCE is hardness-aware: its gradient
    weights negative ``k`` by :math:`P_{ik} = \mathrm{softmax}(s_{i\cdot}/\tau)_k`, so a small
    :math:`\tau` concentrates it on hard negatives; the explicit truncation does the same at a
    larger :math:`\tau` and keeps the embedding tolerant to semantically similar samples (the
    paper's uniformity-tolerance dilemma). ``hard_fraction=1`` is plain InfoNCE. The selection
    is a constant of the step (the gradient flows through the kept negatives only).

    Formula from the paper's abstract and its description of the explicit hard-negative loss
    (top-``K`` truncation of the denominator). The paper's full text was not found in the
    search corpus, so the truncation rule and its ``K`` (here a fraction of the negatives,
    default 1/4, our choice) are not verified against the text.

    Args:
        a, b: ``[N, D]`` paired embeddings (``N >= 2``).
        temperature: :math:`\tau` (default 0.2). hard_fraction: the fraction of each anchor's
            negatives kept (``(0, 1]``, default 0.25).
        negatives: ``"cross"`` (default) or ``"both"`` (both views, the ``2N - 2`` negatives
            of SimCLR).
        normalize: L2-normalise first (default True).
        reduction: ``"mean"`` over pairs, ``"sum"``, ``"none"`` (``[N]``).

    Paper: Wang & Liu, "Understanding the Behaviour of Contrastive Loss", arXiv 2012.09740.
    """
    check_call(_check_hard, temperature=temperature, hard_fraction=hard_fraction,
               negatives=negatives, normalize=normalize)
    a, b = prepare_paired(a, b, normalize=normalize)
    _need_negatives(a, "hard_negative_infonce")
    n = a.shape[0]
    logits, positive, negative = two_view_logits(a, b, inverse_temperature(temperature, a),
                                                 negatives, normalize=False)
    # every anchor has the same number of negatives, a function of N alone (no .item(): a
    # static width under torch.compile)
    n_neg = n - 1 if negatives == "cross" else 2 * n - 2
    k = max(1, math.ceil(hard_fraction * n_neg - 1e-9))
    neg_logits = logits.masked_fill(~negative, float("-inf"))
    hard = neg_logits.topk(k, dim=1).values
    pos = logits.gather(1, positive.unsqueeze(1))
    per_anchor = torch.logsumexp(torch.cat([pos, hard], 1), 1) - pos.squeeze(1)
    return reduce(_per_pair(per_anchor, n, negatives), reduction)


@register(
    "hard_negative_infonce", family="contrastive-ssl", kind="paired",
    paper="Understanding the Behaviour of Contrastive Loss", arxiv="2012.09740",
    summary="InfoNCE with each anchor's denominator truncated to its top-K most similar "
    "negatives", reduction="per pair",
)
class HardNegativeInfoNCELoss(LossModule, function=hard_negative_infonce_loss,
                              check=_check_hard):
    """Module form of :func:`hard_negative_infonce_loss`."""


# --------------------------------------------------------------------------------------------
# Multi-positive InfoNCE with hard negatives (CoDiEmb's IR objective)
# --------------------------------------------------------------------------------------------

_check_multi = hparams(temperature=Real(gt=0), normalize=Flag())


def _check_positives(positives: Tensor, n: int, m: int) -> Tensor:
    if not isinstance(positives, Tensor) or positives.dtype != torch.bool:
        raise ValueError("positives must be a bool tensor [N, M] (True where document j is a "
                         "positive of query i)")
    if positives.shape != (n, m):
        raise ValueError(f"positives must have shape [{n}, {m}] (queries x documents), got "
                         f"{tuple(positives.shape)}")
    return positives


def multi_positive_infonce_loss(
    a: Tensor,
    b: Tensor,
    *,
    positives: Tensor | None = None,
    hard_negatives: Tensor | None = None,
    temperature: float = 0.05,
    normalize: bool = True,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Multi-positive InfoNCE for retrieval, with in-batch and per-query hard negatives.

    Query ``a_i`` has positives :math:`P_i` among the documents ``b`` and negatives
    :math:`N_i` = the other documents of the batch plus its own hard negatives
    :math:`h_{i1..H}`. Each positive is contrasted against the negatives only:

    .. math::
        \ell_i = -\frac{1}{|P_i|} \sum_{p \in P_i} \log
            \frac{e^{s_{ip}/\tau}}{e^{s_{ip}/\tau} + \sum_{n \in N_i} e^{s_{in}/\tau}}

    with ``s`` the cosine similarity. One positive per query and no hard negatives is InfoNCE
    (:func:`~losslab.losses.contrastive_ssl.infonce_loss`); the other positives of a query
    are never its negatives (no false negatives from duplicates: pass them in ``positives``).
    Negatives from other devices are other rows of ``b`` (all-gather them first).

    Formula from the abstract ("a contrastive loss with multiple positives and hard
    negatives"); the paper's equation was not found in the search corpus, so the choice of
    contrasting each positive against the negatives only (rather than against all positives
    too) is not verified against the text.

    Args:
        a: ``[N, D]`` queries. b: ``[M, D]`` documents of the batch.
        positives: ``[N, M]`` bool, True where ``b_j`` is a positive of ``a_i``; default: the
            diagonal (``M = N``, document ``i`` for query ``i``).
        hard_negatives: ``[N, H, D]`` per-query hard negatives (optional; ``H`` may be 0).
        temperature: :math:`\tau` (default 0.05, the usual text-embedding value).
        normalize: L2-normalise first (default True).
        reduction: ``"mean"`` over queries with at least one positive (the others give 0),
            ``"sum"``, ``"none"`` (``[N]``).

    Paper: Zhang et al., "CoDiEmb: A Collaborative yet Distinct Framework for Unified
    Representation Learning in Information Retrieval and Semantic Textual Similarity", arXiv
    2508.11442.
    """
    check_call(_check_multi, temperature=temperature, normalize=normalize)
    check_float("a", a)
    check_float("b", b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"a and b must be [N, D] and [M, D] with one D, got {tuple(a.shape)} "
                         f"and {tuple(b.shape)}")
    n, m = a.shape[0], b.shape[0]
    if positives is None:
        if m != n:
            raise ValueError(f"a and b must have the same number of rows without positives= "
                             f"(document i is query i's positive), got {n} and {m}")
        positives = torch.eye(n, dtype=torch.bool, device=a.device)
    positives = _check_positives(positives, n, m).to(a.device)
    dtype = compute_dtype(a.dtype)
    a, b = a.to(dtype), b.to(dtype)
    if normalize:
        a, b = normalize_rows(a), normalize_rows(b)
    scale = inverse_temperature(temperature, a)
    logits = (a @ b.t()) * scale
    neg = logits.masked_fill(positives, float("-inf"))
    if hard_negatives is not None:
        check_float("hard_negatives", hard_negatives)
        if hard_negatives.ndim != 3 or hard_negatives.shape[0] != n or (
                hard_negatives.shape[2] != a.shape[1]):
            raise ValueError(f"hard_negatives must have shape [{n}, H, {a.shape[1]}], got "
                             f"{tuple(hard_negatives.shape)}")
        h = hard_negatives.to(dtype)
        if normalize:
            h = normalize_rows(h.reshape(-1, h.shape[2])).reshape(h.shape)
        neg = torch.cat([neg, torch.einsum("nd,nhd->nh", a, h) * scale], 1)
    neg_lse = torch.logsumexp(neg, 1, keepdim=True)  # -inf when a query has no negative
    per_pos = torch.logaddexp(logits, neg_lse.expand_as(logits)) - logits
    per_pos = torch.where(positives, per_pos, torch.zeros_like(per_pos))
    count = positives.sum(1)
    per_query = per_pos.sum(1) / count.clamp_min(1)
    return reduce(per_query, reduction, count=(count > 0).sum().to(per_query.dtype))


@register(
    "multi_positive_infonce", family="contrastive-ssl", kind="paired",
    paper="CoDiEmb: A Collaborative yet Distinct Framework for Unified Representation "
    "Learning in Information Retrieval and Semantic Textual Similarity", arxiv="2508.11442",
    summary="-mean_{p in P_i} log e^{s_ip/tau} / (e^{s_ip/tau} + sum_{in-batch + hard "
    "negatives} e^{s_in/tau})", reduction="per query",
)
class MultiPositiveInfoNCELoss(LossModule, function=multi_positive_infonce_loss,
                               check=_check_multi):
    """Module form of :func:`multi_positive_infonce_loss`:
    ``forward(a, b, *, positives=None, hard_negatives=None)``."""

    function_only = ("positives", "hard_negatives")  # call-time inputs, not hyperparameters

    def forward(self, a: Tensor, b: Tensor, *, positives: Tensor | None = None,
                hard_negatives: Tensor | None = None, index: Tensor | None = None) -> Tensor:
        if index is not None:
            raise ValueError("multi_positive_infonce takes no index= argument")
        return multi_positive_infonce_loss(a, b, positives=positives,
                                           hard_negatives=hard_negatives,
                                           **self.call_kwargs())
