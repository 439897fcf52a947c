"""Deep-metric-learning pair and triplet losses (kind ``embeddings``).

``loss(embeddings[N, D], labels[N], *, ref_embeddings=None, ref_labels=None, indices=None)``.

* ``ref_embeddings``/``ref_labels``: compare the batch (queries) against another set (a
  cross-batch memory, the all-gathered batch of other ranks, ...). Self-pairs are excluded only
  when the reference is the batch itself.
* ``indices``: a miner's output, either ``(a, p, n)`` triplets or ``(a1, p, a2, n)`` pairs (see
  :mod:`losslab.miners`). Pair losses read triplets as the pairs ``(a, p)`` and ``(a, n)``;
  triplet losses read pairs as every ``(a, p, n)`` that shares its anchor (as PML does).
* Every loss builds the ``[N, M]`` distance/similarity matrix once and works with masked
  O(N·M) ops; the all-triplets losses never build an ``[N, M, M]`` tensor (see
  :func:`triplet_loss`).
* A batch with no valid pair/triplet gives a zero loss with zero gradient, connected to the
  graph. ``reduction="none"`` returns one value per anchor (row of ``embeddings``) whose sum
  is the ``"sum"`` reduction; ``"mean"`` is documented per loss.

PML (pytorch-metric-learning) is the peer: the tests check values and gradients against it.
Where our default reduction differs from PML's (PML averages many losses over their non-zero
terms, ``AvgNonZeroReducer``), the loss has ``mean_over="nonzero"`` to reproduce it.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from losslab._core import (
    LossModule,
    Reduction,
    check_choice,
    check_positive,
    check_reduction,
    reduce,
    zero_loss,
)
from losslab._ops.pairs import (
    PairBatch,
    masked_logsumexp,
    pair_batch,
    triplets_from_indices,
    validate_batch,
    weighted_log1p_sum_exp,
)
from losslab.distances import METRICS, cosine_similarity, is_similarity, paired, pairwise
from losslab.kernels.matrix_loss import (
    Members,
    fixed_shift,
    gather_rows,
    log1p_sum_exp_,
    logsumexp_,
    matrix_loss,
    members,
)
from losslab.registry import register

__all__ = [
    "CircleLoss",
    "ContrastiveLoss",
    "LiftedStructureLoss",
    "MultiSimilarityLoss",
    "NPairsLoss",
    "SupConLoss",
    "TripletLoss",
    "TripletRatioLoss",
    "circle_loss",
    "contrastive_loss",
    "lifted_structure_loss",
    "multi_similarity_loss",
    "npairs_loss",
    "supcon_loss",
    "triplet_loss",
    "triplet_ratio_loss",
]

MeanOver = Literal["all", "nonzero"]
MEAN_OVER = ("all", "nonzero")
SIMILARITIES = ("cosine", "dot")
PML = "pytorch_metric_learning.losses"


def _finish(per_anchor: Tensor, total_mean: Tensor, reduction: str) -> Tensor:
    """``"none"`` -> per-anchor values, ``"sum"`` -> their sum, ``"mean"`` -> ``total_mean``."""
    check_reduction(reduction)
    if reduction == "none":
        return per_anchor
    if reduction == "sum":
        return per_anchor.sum()
    return total_mean


# --------------------------------------------------------------------------------------------
# Contrastive
# --------------------------------------------------------------------------------------------


def _contrastive_terms(
    mat: Tensor, similarity: bool, pos_margin: float, neg_margin: float, power: float
) -> tuple[Tensor, Tensor]:
    """Per-pair positive and negative terms (unmasked)."""
    if similarity:
        pos = F.relu(pos_margin - mat)
        neg = F.relu(mat - neg_margin)
    else:
        pos = F.relu(mat - pos_margin)
        neg = F.relu(neg_margin - mat)
    if power != 1:
        pos, neg = pos.pow(power), neg.pow(power)
    return pos, neg


def _contrastive_kernel(pos_margin: float, neg_margin: float, power: float, similarity: bool,
                        mean_over: str):
    """Fused contrastive kernel (see :mod:`losslab.kernels.matrix_loss`): positives on the gathered
    ``[N, K]`` member slots, negatives on the full rows with the members zeroed."""

    def hinge(h: Tensor) -> tuple[Tensor, Tensor]:  # [h]_+^q and its derivative, h clamped
        if power == 1:
            return h, torch.sign(h)
        g = torch.where(h > 0, h.pow(power - 1) * power, 0.0)
        return h.pow(power), g

    def kernel(mat: Tensor, mem: Members, mean: bool) -> tuple[Tensor, Tensor]:
        # u: distance-like (-s for similarities); hinges [u - a]_+ and [b - u]_+
        su = -1.0 if similarity else 1.0
        u = mat.neg_() if similarity else mat
        a, b = su * pos_margin, su * neg_margin
        hp = (mem.gather(u) - a).clamp_min_(0.0).masked_fill_(~mem.pos, 0.0)
        tp, gp = hinge(hp)
        per_p = tp.sum(1)
        # Any active negative ([b - u]_+ > 0, i.e. u < b)? A bool test first, so that the
        # common case "every negative beyond the margin" builds no float [N, M] hinge matrix.
        active = torch.lt(u, b)
        if not bool(mem.fill_(active, False).any()):
            # no active negative: G lives on the positive slots
            wp = 1.0
            if mean:
                cp = float((hp > 0).sum()) if mean_over == "nonzero" else float(
                    mem.n_pos.sum())
                wp = 1.0 / max(cp, 1.0)
            keep = gp != 0
            rows = torch.arange(u.shape[0], device=u.device).unsqueeze(1).expand_as(gp)[keep]
            sparse = (rows, mem.idx[keep], gp[keep] * (wp * su))
            return per_p * wp, sparse
        del active
        hn = torch.rsub(u, b)
        mem.fill_(hn, 0.0).clamp_min_(0.0)
        per_n = hn.sum(1)
        if power == 1:
            grad = hn.sign_()
            active_n = grad.sum(1)
        else:
            tn, grad = hinge(hn)
            per_n = tn.sum(1)
            del tn
            active_n = (hn > 0).sum(1)
        cn = float(active_n.sum(dtype=torch.float64))  # non-zero negative terms
        cp = float((hp > 0).sum())
        wp = wn = 1.0
        if mean:
            if mean_over == "all":
                cp, cn = float(mem.n_pos.sum()), float(mem.n_neg.sum())
            wp, wn = 1.0 / max(cp, 1.0), 1.0 / max(cn, 1.0)
        grad.mul_(-wn * su)  # d[b - u]_+ / du = -1 where active
        mem.add_pos_(grad, gp * (wp * su))
        nnz = float(active_n.sum(dtype=torch.float64)) + float((gp != 0).sum())
        return per_p * wp + per_n * wn, grad, nnz

    kernel.symmetric = True  # type: ignore[attr-defined]  # a function of the pair only
    return kernel


def contrastive_loss(
    embeddings: Tensor,
    labels: Tensor,
    *,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    indices: object = None,
    pos_margin: float = 0.0,
    neg_margin: float = 1.0,
    power: float = 1.0,
    metric: str = "euclidean",
    mean_over: MeanOver = "all",
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Contrastive loss with a positive and a negative margin.

    .. math::
        \ell^+_{ap} = [d_{ap} - m^+]_+^{\,q}, \qquad \ell^-_{an} = [m^- - d_{an}]_+^{\,q}

    over all positive pairs :math:`(a, p)` and negative pairs :math:`(a, n)` of the batch (or of
    ``indices``). For a similarity metric the signs flip (:math:`[m^+ - s]_+`,
    :math:`[s - m^-]_+`). ``power=2`` with ``pos_margin=0`` is Hadsell et al.'s squared form
    (without its factor 1/2); ``power=1`` is the form of the DML "reality check" / PML.

    Args:
        embeddings, labels, ref_embeddings, ref_labels, indices: see the module docstring.
        pos_margin: :math:`m^+` (default 0). neg_margin: :math:`m^-` (default 1).
        power: :math:`q` (default 1). metric: ``"euclidean"`` (default, exact with zero gradient
            at 0), ``"squared_euclidean"``, ``"cosine"`` or ``"dot"``.
        mean_over: ``"all"`` (default): mean over positive pairs + mean over negative pairs;
            ``"nonzero"``: each mean taken over the non-zero terms only (PML's
            ``AvgNonZeroReducer``, the PML default).
        reduction: ``"mean"`` (as ``mean_over``), ``"sum"``, or ``"none"`` (``[N]``: per-anchor
            sums of its pair terms).

    Paper: Hadsell, Chopra, LeCun, "Dimensionality Reduction by Learning an Invariant
    Mapping", CVPR 2006 (no arXiv id).
    """
    check_choice("mean_over", mean_over, MEAN_OVER)
    check_positive("power", power)
    if indices is None:
        check_reduction(reduction)
        check_choice("metric", metric, METRICS)
        validate_batch(embeddings, labels, ref_embeddings, ref_labels)
        kernel = _contrastive_kernel(pos_margin, neg_margin, power, is_similarity(metric),
                                     mean_over)
        out = matrix_loss(embeddings, labels, ref_embeddings, ref_labels, metric=metric,
                          kernel=kernel, reduction=reduction)
        return out
    b = pair_batch(embeddings, labels, ref_embeddings, ref_labels, indices, metric=metric)
    n = embeddings.shape[0]
    if b.pairs is not None:
        a1, p, a2, ng = b.pairs
        pos_t, _ = _contrastive_terms(b.mat[a1, p], b.similarity, pos_margin, neg_margin, power)
        _, neg_t = _contrastive_terms(b.mat[a2, ng], b.similarity, pos_margin, neg_margin, power)
        per_anchor = b.mat.new_zeros(n).index_add(0, a1, pos_t).index_add(0, a2, neg_t)
        n_pos, n_neg = float(a1.numel()), float(a2.numel())
    else:
        pos_all, neg_all = _contrastive_terms(b.mat, b.similarity, pos_margin, neg_margin, power)
        pos_t = pos_all.masked_fill(~b.pos, 0.0)
        neg_t = neg_all.masked_fill(~b.neg, 0.0)
        per_anchor = pos_t.sum(1) + neg_t.sum(1)
        n_pos, n_neg = b.pos.sum(), b.neg.sum()
    if reduction != "mean":
        return _finish(per_anchor + zero_loss(embeddings), per_anchor, reduction)
    if mean_over == "nonzero":
        n_pos, n_neg = (pos_t > 0).sum(), (neg_t > 0).sum()
    total = reduce(pos_t, "mean", count=_as_count(n_pos, b.mat)) + reduce(
        neg_t, "mean", count=_as_count(n_neg, b.mat)
    )
    return total + zero_loss(embeddings)


def _as_count(c: Tensor | float, like: Tensor) -> Tensor:
    return torch.as_tensor(c, dtype=like.dtype, device=like.device)


@register(
    "contrastive",
    family="metric-learning",
    kind="embeddings",
    paper="Dimensionality Reduction by Learning an Invariant Mapping",
    arxiv="",
    function=contrastive_loss,
    summary="[d_ap - m+]_+ over positive pairs + [m- - d_an]_+ over negative pairs",
    peers=(f"{PML}.ContrastiveLoss",),
    reduction="per anchor",
)
class ContrastiveLoss(LossModule):
    """Module form of :func:`contrastive_loss`."""

    def __init__(
        self,
        *,
        pos_margin: float = 0.0,
        neg_margin: float = 1.0,
        power: float = 1.0,
        metric: str = "euclidean",
        mean_over: MeanOver = "all",
        reduction: Reduction = "mean",
    ) -> None:
        check_choice("mean_over", mean_over, MEAN_OVER)
        super().__init__(pos_margin=pos_margin, neg_margin=neg_margin, power=power,
                         metric=metric, mean_over=mean_over, reduction=reduction)

    def forward(self, embeddings: Tensor, labels: Tensor, *, ref_embeddings: Tensor | None = None,
                ref_labels: Tensor | None = None, indices: object = None) -> Tensor:
        return contrastive_loss(embeddings, labels, ref_embeddings=ref_embeddings,
                                ref_labels=ref_labels, indices=indices, **self.hparams)


# --------------------------------------------------------------------------------------------
# Triplet
# --------------------------------------------------------------------------------------------

Strategy = Literal["all", "batch_hard", "semi_hard", "soft_margin"]
STRATEGIES = ("all", "batch_hard", "semi_hard", "soft_margin")


def _accumulation_dtype(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype != torch.float64 else t.dtype


DIRECT_MAX_POSITIVES = 16  # direct per-positive sweeps up to this many positives, else sorting


def _triplet_all_kernel(margin: float, similarity: bool, mean_over: str):
    r"""Fused all-triplets kernel. With :math:`u` the distance (``-s`` for similarities), the
    per-anchor sum :math:`\sum_{p,n}[u_{ap} - u_{an} + m]_+` has gradient :math:`c_{ap}` (the
    number of negatives violating the margin with that positive) on :math:`u_{ap}` and
    :math:`-c_{an}` (the number of positives it violates with) on :math:`u_{an}`.

    With at most :data:`DIRECT_MAX_POSITIVES` member slots per anchor (m-per-class batches
    have m), one ``[N, M]`` sweep per slot does it; otherwise the negatives are sorted once
    per anchor and every positive's violating negatives are a prefix found by
    ``searchsorted`` (prefix sums in float64), O(N·M log M).
    """

    def kernel(mat: Tensor, mem: Members, mean: bool) -> tuple[Tensor, Tensor]:
        u = mat.neg_() if similarity else mat
        thr = (mem.gather(u) + margin).masked_fill_(~mem.pos, float("-inf"))  # [N, K]
        un = u.clone()
        mem.fill_(un, float("inf"))  # negatives only
        grad = torch.zeros_like(u)
        k_slots = thr.shape[1]
        if k_slots <= DIRECT_MAX_POSITIVES:
            per = u.new_zeros(u.shape[0])
            cnt = torch.zeros_like(thr)
            for k in range(k_slots):
                if not bool(mem.pos[:, k].any()):
                    continue
                t = torch.rsub(un, thr[:, k : k + 1]).clamp_min_(0.0)  # [thr_k - u_an]_+
                per += t.sum(1)
                t.sign_()
                cnt[:, k] = t.sum(1)
                grad.sub_(t)
        else:
            sk = un.sort(dim=1).values
            sv = torch.where(torch.isinf(sk), 0.0, sk).to(torch.float64)
            csum = F.pad(sv.cumsum(dim=1), (1, 0))
            del sv
            ci = torch.searchsorted(sk, thr.contiguous(), side="left")  # [N, K]
            per = (ci.to(csum.dtype) * thr.to(csum.dtype) - csum.gather(1, ci))
            per = per.masked_fill_(~mem.pos, 0.0).sum(1).to(u.dtype)
            cnt = ci.masked_fill_(~mem.pos, 0).to(u.dtype)
            # a negative's gradient: minus the number of thresholds above it
            st = thr.sort(dim=1).values
            above = k_slots - torch.searchsorted(st, un, side="right")
            grad.sub_(above.to(grad.dtype))
        mem.add_pos_(grad, cnt)
        if similarity:
            grad.neg_()
        if mean:
            if mean_over == "nonzero":
                count = float(cnt.sum(1, dtype=torch.float64).sum())
            else:
                count = float((mem.n_pos.to(torch.float64) * mem.n_neg).sum())
            w = 1.0 / max(count, 1.0)
            per.mul_(w)
            grad.mul_(w)
        return per, grad

    return kernel


def _batch_hard(
    embeddings: Tensor,
    labels: Tensor,
    ref_embeddings: Tensor | None,
    ref_labels: Tensor | None,
    *,
    metric: str,
) -> tuple[Tensor, Tensor, Tensor]:
    """Hardest positive and negative of every anchor: ``(u_ap, u_an, valid)``.

    Selected without gradient on the matrix (squared distances for ``"euclidean"``: same
    order, no square root; positives gathered from the class members, negatives = the row
    with its members overwritten), then ``u`` is recomputed with gradient on the ``2N``
    selected pairs only, from the embeddings (a sparse, O(N·D) backward).
    """
    ref, ref_lab, ref_is_batch = validate_batch(embeddings, labels, ref_embeddings, ref_labels)
    similarity = is_similarity(metric)
    with torch.no_grad():
        if metric in ("euclidean", "squared_euclidean"):
            # Same order within a row as the (squared) distance: |r_j|^2 - 2 x_i . r_j (the
            # row constant |x_i|^2 and the square root change no argmin/argmax): one GEMM.
            x, r = embeddings.detach(), ref.detach()
            rr = torch.linalg.vector_norm(r, dim=1).square_().unsqueeze(0)
            mat = torch.addmm(rr, x, r.t(), beta=1.0, alpha=-2.0)
        else:
            mat = pairwise(embeddings.detach(), None if ref_is_batch else ref.detach(),
                           metric=metric)
        if similarity:
            mat.neg_()
        mem = members(labels, ref_lab, ref_is_batch)
        up = mem.gather(mat).masked_fill_(~mem.pos, float("-inf"))
        hp_idx = mem.idx.gather(1, up.argmax(dim=1, keepdim=True)).squeeze(1)
        hn_idx = mem.fill_(mat, float("inf")).argmin(dim=1)
        valid = (mem.n_pos > 0) & (mem.n_neg > 0)
        del mat
    sign = -1.0 if similarity else 1.0
    u_ap = sign * paired(embeddings, gather_rows(ref, hp_idx), metric=metric, eps=0.0)
    u_an = sign * paired(embeddings, gather_rows(ref, hn_idx), metric=metric, eps=0.0)
    return u_ap, u_an, valid


def _semi_hard_negatives(u: Tensor, neg: Tensor) -> tuple[Tensor, Tensor]:
    """For every (anchor, ref) entry: u of the nearest negative farther than it (FaceNet
    semi-hard), or of the farthest negative when there is none (TF-addons' fallback)."""
    key = u.detach().masked_fill(~neg, float("inf"))
    sk, order = key.sort(dim=1)
    sv = u.gather(1, order)
    nneg = neg.sum(dim=1, keepdim=True)
    idx = torch.searchsorted(sk, u.detach().contiguous(), side="right")
    use = torch.where(idx < nneg, idx, (nneg - 1).clamp_min(0).expand_as(idx))
    return sv.gather(1, use), (nneg > 0).squeeze(1)


def triplet_loss(
    embeddings: Tensor,
    labels: Tensor,
    *,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    indices: object = None,
    margin: float = 0.2,
    strategy: Strategy = "all",
    metric: str = "euclidean",
    mean_over: MeanOver = "all",
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Triplet margin loss with the batch strategies of Hermans et al.

    .. math::
        \ell_{apn} = [d_{ap} - d_{an} + m]_+

    (for a similarity metric, :math:`[s_{an} - s_{ap} + m]_+`). Strategies:

    * ``"all"`` (batch all): every valid triplet of the batch. Computed per anchor from the
      sorted negative distances (:func:`_triplet_all_kernel`): O(N·M log M) time, O(N·M) memory,
      no triplet list and no ``[N, M, M]`` tensor.
    * ``"batch_hard"``: one triplet per anchor, its farthest positive and nearest negative.
    * ``"semi_hard"``: one triplet per positive pair, the nearest negative farther than the
      positive (FaceNet); when none is, the farthest negative (TF-addons' convention).
    * ``"soft_margin"``: batch hard with :math:`\log(1 + e^{d_{ap} - d_{an}})` instead of the
      hinge (``margin`` unused), the paper's recommended variant.

    With ``indices`` the given triplets are used (``strategy`` then only chooses hinge vs soft
    margin).

    Args:
        margin: :math:`m` (default 0.2, FaceNet's value, used by Hermans et al. for the hinge).
        strategy: see above (default ``"all"``).
        metric: default ``"euclidean"`` (Hermans et al. found non-squared distances better).
        mean_over: ``"all"`` (default): mean over all valid triplets (one per anchor for batch
            hard / soft margin, one per positive pair for semi hard); ``"nonzero"``: mean over
            the triplets with a non-zero loss (PML's ``AvgNonZeroReducer``).
        reduction: ``"mean"`` (as ``mean_over``), ``"sum"``, or ``"none"`` (``[N]``: per-anchor
            sums of its triplet terms).

    Paper: Hermans, Beyer, Leibe, "In Defense of the Triplet Loss for Person Re-Identification",
    arXiv 1703.07737.
    """
    check_choice("strategy", strategy, STRATEGIES)
    check_choice("mean_over", mean_over, MEAN_OVER)
    if indices is None and strategy in ("all", "batch_hard", "soft_margin"):
        check_reduction(reduction)
        check_choice("metric", metric, METRICS)
        if strategy == "all":
            validate_batch(embeddings, labels, ref_embeddings, ref_labels)
            kernel = _triplet_all_kernel(margin, is_similarity(metric), mean_over)
            out = matrix_loss(embeddings, labels, ref_embeddings, ref_labels, metric=metric,
                              kernel=kernel, reduction=reduction)
            return out
        hp, hn, valid = _batch_hard(embeddings, labels, ref_embeddings, ref_labels,
                                    metric=metric)
        return _batch_hard_terms(hp, hn, valid, margin, strategy, mean_over, reduction)
    b = pair_batch(embeddings, labels, ref_embeddings, ref_labels, indices, metric=metric)
    u = b.u
    n = embeddings.shape[0]
    z = zero_loss(embeddings)
    if indices is not None:
        a, p, ng = triplets_from_indices(b.triplets or b.pairs)  # type: ignore[arg-type]
        diff = u[a, p] - u[a, ng]
        terms = F.softplus(diff) if strategy == "soft_margin" else F.relu(diff + margin)
        per_anchor = u.new_zeros(n).index_add(0, a, terms)
        count = (terms > 0).sum() if mean_over == "nonzero" else float(a.numel())
        return _finish(per_anchor + z, reduce(terms, "mean", count=count) + z, reduction)
    # semi hard (batch all / hard / soft margin without indices: the fused paths above)
    u_an, has_neg = _semi_hard_negatives(u, b.neg)
    valid = b.pos & has_neg.unsqueeze(1)
    terms = F.relu(u - u_an + margin).masked_fill(~valid, 0.0)
    count = (terms > 0).sum() if mean_over == "nonzero" else valid.sum()
    return _finish(terms.sum(1) + z, reduce(terms, "mean", count=count) + z, reduction)


def _batch_hard_terms(hp: Tensor, hn: Tensor, valid: Tensor, margin: float, strategy: str,
                      mean_over: str, reduction: str) -> Tensor:
    """Batch-hard / soft-margin terms from the hardest pairs' ``u`` values."""
    hp = torch.where(valid, hp, torch.zeros_like(hp))
    hn = torch.where(valid, hn, torch.zeros_like(hn))
    terms = F.softplus(hp - hn) if strategy == "soft_margin" else F.relu(hp - hn + margin)
    terms = terms.masked_fill(~valid, 0.0)
    count = (terms > 0).sum() if mean_over == "nonzero" else valid.sum()
    return _finish(terms, reduce(terms, "mean", count=count), reduction)


@register(
    "triplet",
    family="metric-learning",
    kind="embeddings",
    paper="In Defense of the Triplet Loss for Person Re-Identification",
    arxiv="1703.07737",
    function=triplet_loss,
    summary="[d_ap - d_an + m]_+ over all / batch-hard / semi-hard triplets; soft margin",
    peers=(f"{PML}.TripletMarginLoss", "torch.nn.TripletMarginLoss"),
    reduction="per anchor",
)
class TripletLoss(LossModule):
    """Module form of :func:`triplet_loss`."""

    def __init__(
        self,
        *,
        margin: float = 0.2,
        strategy: Strategy = "all",
        metric: str = "euclidean",
        mean_over: MeanOver = "all",
        reduction: Reduction = "mean",
    ) -> None:
        check_choice("strategy", strategy, STRATEGIES)
        check_choice("mean_over", mean_over, MEAN_OVER)
        super().__init__(margin=margin, strategy=strategy, metric=metric, mean_over=mean_over,
                         reduction=reduction)

    def forward(self, embeddings: Tensor, labels: Tensor, *, ref_embeddings: Tensor | None = None,
                ref_labels: Tensor | None = None, indices: object = None) -> Tensor:
        return triplet_loss(embeddings, labels, ref_embeddings=ref_embeddings,
                            ref_labels=ref_labels, indices=indices, **self.hparams)


# --------------------------------------------------------------------------------------------
# Triplet ratio (Hoffer & Ailon)
# --------------------------------------------------------------------------------------------


def triplet_ratio_loss(
    embeddings: Tensor,
    labels: Tensor,
    *,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    indices: object = None,
    metric: str = "euclidean",
    chunk_size: int | None = None,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Softmax distance-ratio loss of the Triplet network.

    .. math::
        d^\pm = \frac{e^{\|x - x^\pm\|}}{e^{\|x - x^+\|} + e^{\|x - x^-\|}},\qquad
        \ell_{apn} = \|(d^+, d^- - 1)\|_2^2 = 2\,\sigma(d_{ap} - d_{an})^2

    over all valid triplets of the batch (or ``indices``). The loss is not a hinge, so every
    triplet contributes; it is evaluated per anchor on the ``[P_max, M]`` block of its
    positives (P_max = largest number of positives of an anchor), in anchor chunks of at most
    ``chunk_size`` rows (default: ~16 M elements per chunk), never a global triplet list.

    Args:
        metric: ``"euclidean"`` (default, the paper's L2 distance) or any other metric
            (similarities use ``-s``).
        reduction: ``"mean"`` over all valid triplets, ``"sum"``, or ``"none"`` (``[N]``
            per-anchor sums).

    Paper: Hoffer, Ailon, "Deep metric learning using Triplet network", arXiv 1412.6622.
    """
    b = pair_batch(embeddings, labels, ref_embeddings, ref_labels, indices, metric=metric)
    u = b.u
    n = embeddings.shape[0]
    z = zero_loss(embeddings)
    if indices is not None:
        a, p, ng = triplets_from_indices(b.triplets or b.pairs)  # type: ignore[arg-type]
        terms = 2.0 * torch.sigmoid(u[a, p] - u[a, ng]).pow(2)
        per_anchor = u.new_zeros(n).index_add(0, a, terms)
        return _finish(per_anchor + z, reduce(terms, "mean") + z, reduction)
    n_pos = b.pos.sum(1)
    p_max = int(n_pos.max()) if n > 0 else 0
    if p_max == 0 or not bool(b.neg.any()):
        return _finish(u.new_zeros(n) + z, z, reduction)
    pos_idx = b.pos.to(torch.uint8).topk(p_max, dim=1).indices  # positives first
    valid_p = torch.arange(p_max, device=u.device).unsqueeze(0) < n_pos.unsqueeze(1)
    m = u.shape[1]
    if chunk_size is None:
        chunk_size = max(1, (1 << 24) // max(1, p_max * m))
    parts = []
    for s in range(0, n, chunk_size):
        uc = u[s : s + chunk_size]
        u_ap = uc.gather(1, pos_idx[s : s + chunk_size])  # [c, P]
        t = 2.0 * torch.sigmoid(u_ap.unsqueeze(2) - uc.unsqueeze(1)).pow(2)  # [c, P, M]
        mask = valid_p[s : s + chunk_size].unsqueeze(2) & b.neg[s : s + chunk_size].unsqueeze(1)
        parts.append(t.masked_fill(~mask, 0.0).sum(dim=(1, 2)))
    per_anchor = torch.cat(parts)
    count = (n_pos.to(u.dtype) * b.neg.sum(1).to(u.dtype)).sum()
    return _finish(per_anchor + z, reduce(per_anchor, "mean", count=count) + z, reduction)


@register(
    "triplet_ratio",
    family="metric-learning",
    kind="embeddings",
    paper="Deep metric learning using Triplet network",
    arxiv="1412.6622",
    function=triplet_ratio_loss,
    summary="||(d+, d- - 1)||^2 with (d+, d-) = softmax(d_ap, d_an), over all triplets",
    reduction="per anchor",
)
class TripletRatioLoss(LossModule):
    """Module form of :func:`triplet_ratio_loss`."""

    def __init__(self, *, metric: str = "euclidean", chunk_size: int | None = None,
                 reduction: Reduction = "mean") -> None:
        super().__init__(metric=metric, chunk_size=chunk_size, reduction=reduction)

    def forward(self, embeddings: Tensor, labels: Tensor, *, ref_embeddings: Tensor | None = None,
                ref_labels: Tensor | None = None, indices: object = None) -> Tensor:
        return triplet_ratio_loss(embeddings, labels, ref_embeddings=ref_embeddings,
                                  ref_labels=ref_labels, indices=indices, **self.hparams)


# --------------------------------------------------------------------------------------------
# Multi-similarity
# --------------------------------------------------------------------------------------------


def ms_pair_mining(s: Tensor, pos: Tensor, neg: Tensor, epsilon: float) -> tuple[Tensor, Tensor]:
    r"""The multi-similarity pair mining (similarities ``s``, larger = closer).

    A positive is kept if :math:`s_{ap} - \epsilon < \max_n s_{an}`, a negative if
    :math:`s_{an} + \epsilon > \min_p s_{ap}` (an anchor without negatives keeps no positive and
    vice versa). Returns the mined ``(pos, neg)`` masks; no gradient.
    """
    with torch.no_grad():
        max_neg = s.masked_fill(~neg, float("-inf")).amax(dim=1, keepdim=True)
        min_pos = s.masked_fill(~pos, float("inf")).amin(dim=1, keepdim=True)
        return pos & (s - epsilon < max_neg), neg & (s + epsilon > min_pos)


def ms_terms(s: Tensor, w_pos: Tensor, w_neg: Tensor, alpha: float, beta: float,
             base: float) -> Tensor:
    r"""Per-anchor MS loss with (possibly soft) pair weights ``w_pos``, ``w_neg`` ``[N, M]``:
    :math:`\frac{1}{\alpha}\log(1 + \sum_p w^+ e^{-\alpha(s - \lambda)}) +
    \frac{1}{\beta}\log(1 + \sum_n w^- e^{\beta(s - \lambda)})`."""
    pos = weighted_log1p_sum_exp(-alpha * (s - base), w_pos) / alpha
    neg = weighted_log1p_sum_exp(beta * (s - base), w_neg) / beta
    return pos + neg


def _ms_kernel(alpha: float, beta: float, base: float, epsilon: float, mining: bool,
               cosine: bool):
    r"""Fused multi-similarity kernel: with :math:`L = -\alpha(s - \lambda)` on positives and
    :math:`\beta(s - \lambda)` on negatives, :math:`\partial \ell / \partial s` is minus /
    plus the "softmax with a 1" weight of the pair (:func:`log1p_sum_exp_`)."""

    def kernel(s: Tensor, mem: Members, mean: bool) -> tuple[Tensor, Tensor]:
        sp = mem.gather(s)  # [N, K]
        logits = s.sub_(base).mul_(beta)  # negatives
        mem.fill_(logits, float("-inf"))
        keep_p = mem.pos
        if mining:
            max_neg = logits.amax(dim=1, keepdim=True) / beta + base
            min_pos = sp.masked_fill(~mem.pos, float("inf")).amin(dim=1, keepdim=True)
            keep_p = mem.pos & (sp - epsilon < max_neg)
            cut = beta * (min_pos - epsilon - base)  # keep negatives with s + eps > min_pos
            logits = torch.where(logits > cut, logits, float("-inf"))
        lp, wp = log1p_sum_exp_((sp - base).mul_(-alpha).masked_fill_(~keep_p, float("-inf")),
                                dim=1)
        # cosine: beta (s - base) <= beta (1 - base), a constant shift
        shift = fixed_shift(beta * (1 - base), -beta * (1 + base), s.dtype) if cosine else None
        ln, grad = log1p_sum_exp_(logits, dim=1, shift=shift)
        per = lp / alpha + ln / beta
        mem.add_pos_(grad, wp.neg_())
        if mean:
            per /= per.numel()
            grad /= per.numel()
        return per, grad

    return kernel


def multi_similarity_loss(
    embeddings: Tensor,
    labels: Tensor,
    *,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    indices: object = None,
    alpha: float = 2.0,
    beta: float = 50.0,
    base: float = 0.5,
    epsilon: float = 0.1,
    mining: bool = True,
    metric: str = "cosine",
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Multi-similarity loss, with its pair mining.

    .. math::
        \ell_a = \frac{1}{\alpha}\log\Big(1 + \sum_{p \in \tilde P_a} e^{-\alpha(s_{ap} -
        \lambda)}\Big) + \frac{1}{\beta}\log\Big(1 + \sum_{n \in \tilde N_a}
        e^{\beta(s_{an} - \lambda)}\Big)

    where :math:`\tilde P_a, \tilde N_a` are the pairs kept by the paper's mining
    (:func:`ms_pair_mining`, margin :math:`\epsilon`). ``mining=False`` uses all pairs (PML's
    ``MultiSimilarityLoss`` alone); ``mining=True`` equals PML's
    ``MultiSimilarityLoss`` + ``MultiSimilarityMiner``. With ``indices``, the given pairs are
    used and no mining is done.

    Args:
        alpha, beta, base: :math:`\alpha = 2, \beta = 50, \lambda = 0.5` (the paper's values).
        epsilon: mining margin (0.1, the paper's). mining: apply the pair mining (default True).
        metric: ``"cosine"`` (default; the paper L2-normalises embeddings) or ``"dot"``.
        reduction: ``"mean"`` over all anchors (the paper's 1/m sum), ``"sum"``, ``"none"``.

    Paper: Wang et al., "Multi-Similarity Loss with General Pair Weighting for Deep Metric
    Learning", arXiv 1904.06627.
    """
    if indices is None:
        check_reduction(reduction)
        check_choice("metric", metric, SIMILARITIES)
        validate_batch(embeddings, labels, ref_embeddings, ref_labels)
        kernel = _ms_kernel(alpha, beta, base, epsilon, mining, metric == "cosine")
        out = matrix_loss(embeddings, labels, ref_embeddings, ref_labels, metric=metric,
                          kernel=kernel, reduction=reduction)
        return out
    b = pair_batch(embeddings, labels, ref_embeddings, ref_labels, indices, metric=metric,
                   allowed=SIMILARITIES)
    pos, neg = b.pos, b.neg
    if mining and indices is None:
        pos, neg = ms_pair_mining(b.mat, pos, neg, epsilon)
    per_anchor = ms_terms(b.mat, pos.to(b.mat.dtype), neg.to(b.mat.dtype), alpha, beta, base)
    per_anchor = per_anchor + zero_loss(embeddings) / max(1, per_anchor.numel())
    return reduce(per_anchor, reduction)


@register(
    "multi_similarity",
    family="metric-learning",
    kind="embeddings",
    paper="Multi-Similarity Loss with General Pair Weighting for Deep Metric Learning",
    arxiv="1904.06627",
    function=multi_similarity_loss,
    summary="1/a log(1+sum_p e^{-a(s-l)}) + 1/b log(1+sum_n e^{b(s-l)}) over mined pairs",
    peers=(f"{PML}.MultiSimilarityLoss", "pytorch_metric_learning.miners.MultiSimilarityMiner"),
    reduction="per anchor",
)
class MultiSimilarityLoss(LossModule):
    """Module form of :func:`multi_similarity_loss`."""

    def __init__(self, *, alpha: float = 2.0, beta: float = 50.0, base: float = 0.5,
                 epsilon: float = 0.1, mining: bool = True, metric: str = "cosine",
                 reduction: Reduction = "mean") -> None:
        check_positive("alpha", alpha)
        check_positive("beta", beta)
        super().__init__(alpha=alpha, beta=beta, base=base, epsilon=epsilon, mining=mining,
                         metric=metric, reduction=reduction)

    def forward(self, embeddings: Tensor, labels: Tensor, *, ref_embeddings: Tensor | None = None,
                ref_labels: Tensor | None = None, indices: object = None) -> Tensor:
        return multi_similarity_loss(embeddings, labels, ref_embeddings=ref_embeddings,
                                     ref_labels=ref_labels, indices=indices, **self.hparams)


# --------------------------------------------------------------------------------------------
# Circle
# --------------------------------------------------------------------------------------------


def _circle_from_sims(s: Tensor, pos: Tensor, neg: Tensor, margin: float,
                      scale: float) -> tuple[Tensor, Tensor]:
    sd = s.detach()
    logit_p = -scale * F.relu(1 + margin - sd) * (s - (1 - margin))
    logit_n = scale * F.relu(sd + margin) * (s - margin)
    lse_p, has_p = masked_logsumexp(logit_p, pos)
    lse_n, has_n = masked_logsumexp(logit_n, neg)
    valid = has_p & has_n
    x = torch.where(valid, lse_p + lse_n, torch.zeros_like(lse_p))
    return F.softplus(x).masked_fill(~valid, 0.0), valid


def _circle_kernel(margin: float, scale: float):
    r"""Fused circle kernel (``mat`` = cosine similarities to batch samples or to class
    proxies). With :math:`\alpha` held constant, :math:`\partial \ell_a/\partial s_{aj} =
    \sigma(x_a)\,\mathrm{softmax}_j\,(\mp\gamma\alpha_j)` on positives / negatives."""

    def kernel(s: Tensor, mem: Members, mean: bool) -> tuple[Tensor, Tensor]:
        sp = mem.gather(s)  # [N, K]
        slope_p = (1.0 + margin - sp).clamp_min_(0.0).mul_(-scale)  # -g [1 + m - s]_+
        lp, wp = logsumexp_((sp - (1.0 - margin)).mul_(slope_p).masked_fill_(~mem.pos,
                                                                              float("-inf")), 1)
        slope = (s + margin).clamp_min_(0.0).mul_(scale)  # g [s + m]_+
        logits = s.sub_(margin).mul_(slope)
        mem.fill_(logits, float("-inf"))
        ln, grad = logsumexp_(logits, dim=1)
        valid = (mem.n_pos > 0) & (mem.n_neg > 0)
        x = torch.where(valid, lp + ln, 0.0)
        per = F.softplus(x).masked_fill_(~valid, 0.0)
        sig = torch.sigmoid(x).masked_fill_(~valid, 0.0)
        if mean:
            count = max(int(valid.sum()), 1)
            per /= count
            sig /= count
        grad.mul_(slope).mul_(sig.unsqueeze(1))
        mem.add_pos_(grad, wp.mul_(slope_p).mul_(sig.unsqueeze(1)))
        return per, grad

    return kernel


def circle_loss(
    embeddings: Tensor,
    labels: Tensor,
    proxies: Tensor | None = None,
    *,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    indices: object = None,
    margin: float = 0.4,
    scale: float = 80.0,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Circle loss, pair-level (batch pairs) or class-level (``proxies`` = class weights).

    .. math::
        \ell_a = \log\Big[1 + \sum_n e^{\gamma \alpha_n (s_n - \Delta_n)}
        \sum_p e^{-\gamma \alpha_p (s_p - \Delta_p)}\Big],\quad
        \alpha_p = [1 + m - s_p]_+,\ \alpha_n = [s_n + m]_+,\
        \Delta_p = 1 - m,\ \Delta_n = m

    on cosine similarities; :math:`\alpha_p, \alpha_n` are not differentiated (as in the paper).
    Pair-level: :math:`s_p, s_n` are the anchor's similarities to the positives/negatives of the
    batch (or ``indices``). Class-level (``proxies`` ``[C, D]`` given): :math:`s_p = \cos(x,
    w_y)` and :math:`s_n = \cos(x, w_j), j \ne y` (labels in ``[0, C)``).

    Args:
        margin: :math:`m` (default 0.4); scale: :math:`\gamma` (default 80). These are the
            paper's values for fine-grained image retrieval (face recognition: 0.25 / 256).
        reduction: ``"mean"`` over anchors with at least one positive and one negative (equal to
            PML's ``AvgNonZeroReducer`` since the loss of such an anchor is > 0), ``"sum"``,
            ``"none"`` (``[N]``, 0 for invalid anchors).

    Paper: Sun et al., "Circle Loss: A Unified Perspective of Pair Similarity Optimization",
    arXiv 2002.10857.
    """
    check_reduction(reduction)
    kernel = _circle_kernel(margin, scale)
    if proxies is not None and indices is None and ref_embeddings is None and ref_labels is None:
        from losslab.losses.proxy import validate_proxy_inputs

        validate_proxy_inputs(embeddings, labels, proxies, None, None, None,
                              name="circle (class-level)")
        out = matrix_loss(embeddings, labels, proxies, proxies.shape[0], metric="cosine",
                          kernel=kernel,
                          reduction=reduction)
        return out
    if proxies is None and indices is None:
        validate_batch(embeddings, labels, ref_embeddings, ref_labels)
        out = matrix_loss(embeddings, labels, ref_embeddings, ref_labels, metric="cosine",
                          kernel=kernel, reduction=reduction)
        return out
    if proxies is not None:
        from losslab.losses.proxy import class_masks, validate_proxy_inputs

        proxies = validate_proxy_inputs(embeddings, labels, proxies, ref_embeddings,

                                        ref_labels, indices,
                              name="circle (class-level)")
        s = cosine_similarity(embeddings, proxies)
        pos, neg = class_masks(labels, proxies.shape[0])
    else:
        b = pair_batch(embeddings, labels, ref_embeddings, ref_labels, indices, metric="cosine")
        s, pos, neg = b.mat, b.pos, b.neg
    per_anchor, valid = _circle_from_sims(s, pos, neg, margin, scale)
    z = zero_loss(embeddings) + (zero_loss(proxies) if proxies is not None else 0.0)
    return _finish(per_anchor + z, reduce(per_anchor, "mean", count=valid.sum()) + z, reduction)


@register(
    "circle",
    family="metric-learning",
    kind="embeddings",
    paper="Circle Loss: A Unified Perspective of Pair Similarity Optimization",
    arxiv="2002.10857",
    function=circle_loss,
    summary="softplus(lse_n g a_n (s_n - m) + lse_p -g a_p (s_p - 1 + m)), pair or class level",
    peers=(f"{PML}.CircleLoss",),
    reduction="per anchor",
    surrogate_gradient="alpha_p, alpha_n are constants (stop-gradient), as in the paper",
)
class CircleLoss(LossModule):
    """Module form of :func:`circle_loss`.

    With ``num_classes`` and ``embedding_dim`` the module is the class-level form and owns the
    class weights ``proxies`` (``nn.Parameter [C, D]``, normal init); otherwise pair-level.
    """

    def __init__(self, *, margin: float = 0.4, scale: float = 80.0,
                 num_classes: int | None = None, embedding_dim: int | None = None,
                 reduction: Reduction = "mean") -> None:
        check_positive("scale", scale)
        super().__init__(margin=margin, scale=scale, reduction=reduction)
        if (num_classes is None) != (embedding_dim is None):
            raise ValueError("num_classes and embedding_dim must be given together (class-level "
                             "circle loss) or neither (pair-level)")
        self.proxies: nn.Parameter | None = None
        if num_classes is not None and embedding_dim is not None:
            check_positive("num_classes", num_classes)
            check_positive("embedding_dim", embedding_dim)
            self.proxies = nn.Parameter(torch.randn(num_classes, embedding_dim))

    def forward(self, embeddings: Tensor, labels: Tensor, *, ref_embeddings: Tensor | None = None,
                ref_labels: Tensor | None = None, indices: object = None) -> Tensor:
        return circle_loss(embeddings, labels, self.proxies, ref_embeddings=ref_embeddings,
                           ref_labels=ref_labels, indices=indices, **self.hparams)


# --------------------------------------------------------------------------------------------
# Generalized lifted structure
# --------------------------------------------------------------------------------------------


def lifted_structure_loss(
    embeddings: Tensor,
    labels: Tensor,
    *,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    indices: object = None,
    pos_margin: float = 0.0,
    neg_margin: float = 1.0,
    metric: str = "euclidean",
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Generalized lifted structure loss (Hermans et al.'s form of Song et al.'s loss).

    .. math::
        \ell_a = \Big[\log \sum_p e^{d_{ap} - m^+} + \log \sum_n e^{m^- - d_{an}}\Big]_+

    (similarities: :math:`m^+ - s_{ap}` and :math:`s_{an} - m^-`). An anchor without a positive
    or without a negative has no term (the log of an empty sum is :math:`-\infty`).

    Args:
        pos_margin, neg_margin: :math:`m^+ = 0, m^- = 1` (PML's defaults; the paper's margin
            is :math:`m^-`). metric: default ``"euclidean"``.
        reduction: ``"mean"`` over anchors with at least one positive and one negative,
            ``"sum"``, ``"none"`` (``[N]``). PML (``GeneralizedLiftedStructureLoss``) instead
            takes an empty log-sum as 0 and averages over all anchors: identical whenever every
            anchor has a positive and a negative (e.g. m-per-class batches).

    Paper: Hermans, Beyer, Leibe, "In Defense of the Triplet Loss for Person Re-Identification",
    arXiv 1703.07737 (generalising Oh Song et al., arXiv 1511.06452).
    """
    b = pair_batch(embeddings, labels, ref_embeddings, ref_labels, indices, metric=metric)
    u = b.u
    sign_m = -1.0 if b.similarity else 1.0  # u = -s for similarities
    lse_p, has_p = masked_logsumexp(u - sign_m * pos_margin, b.pos)
    lse_n, has_n = masked_logsumexp(sign_m * neg_margin - u, b.neg)
    valid = has_p & has_n
    x = torch.where(valid, lse_p + lse_n, torch.zeros_like(lse_p))
    per_anchor = F.relu(x).masked_fill(~valid, 0.0)
    z = zero_loss(embeddings)
    return _finish(per_anchor + z, reduce(per_anchor, "mean", count=valid.sum()) + z, reduction)


@register(
    "lifted_structure",
    family="metric-learning",
    kind="embeddings",
    paper="In Defense of the Triplet Loss for Person Re-Identification",
    arxiv="1703.07737",
    function=lifted_structure_loss,
    summary="[log sum_p e^{d_ap - m+} + log sum_n e^{m- - d_an}]_+ per anchor",
    peers=(f"{PML}.GeneralizedLiftedStructureLoss",),
    reduction="per anchor",
)
class LiftedStructureLoss(LossModule):
    """Module form of :func:`lifted_structure_loss`."""

    def __init__(self, *, pos_margin: float = 0.0, neg_margin: float = 1.0,
                 metric: str = "euclidean", reduction: Reduction = "mean") -> None:
        super().__init__(pos_margin=pos_margin, neg_margin=neg_margin, metric=metric,
                         reduction=reduction)

    def forward(self, embeddings: Tensor, labels: Tensor, *, ref_embeddings: Tensor | None = None,
                ref_labels: Tensor | None = None, indices: object = None) -> Tensor:
        return lifted_structure_loss(embeddings, labels, ref_embeddings=ref_embeddings,
                                     ref_labels=ref_labels, indices=indices, **self.hparams)


# --------------------------------------------------------------------------------------------
# N-pairs
# --------------------------------------------------------------------------------------------


def _first_pair_per_class(b: PairBatch, labels: Tensor) -> tuple[Tensor, Tensor]:
    """One (anchor, positive) per anchor label: the first listed/lowest-index pair."""
    if b.pairs is not None:
        a, p = b.pairs[0], b.pairs[1]
    else:
        a, p = torch.where(b.pos)  # row-major: lowest anchor, then lowest positive
    if a.numel() == 0:
        return a, p
    lab = labels[a]
    # first occurrence of each label in the list
    order = torch.arange(a.numel(), device=a.device)
    first = torch.full((int(lab.max()) - int(lab.min()) + 1,), a.numel(), device=a.device,
                       dtype=torch.long).scatter_reduce(0, lab - lab.min(), order, "amin")
    keep = first[first < a.numel()].sort().values
    return a[keep], p[keep]


def npairs_loss(
    embeddings: Tensor,
    labels: Tensor,
    *,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    indices: object = None,
    l2_reg: float = 0.002,
    metric: str = "dot",
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Multi-class N-pair loss.

    One (anchor, positive) pair per class is taken from the batch (the first anchor of the class
    and its first positive, or the first listed pair of ``indices``); with K such pairs,

    .. math::
        \ell_i = \log\Big(1 + \sum_{j \ne i} e^{f_i^\top f_j^+ - f_i^\top f_i^+}\Big)
        = \mathrm{CE}\big([f_i^\top f_j^+]_j,\ i\big)
        \quad + \quad \lambda \tfrac{1}{2K}\sum_i (\|f_i\|^2 + \|f_i^+\|^2)

    Args:
        l2_reg: :math:`\lambda`, the embedding-norm regulariser of the paper (0.002). PML's
            ``NPairsLoss`` has none: use ``l2_reg=0`` to match it.
        metric: ``"dot"`` (default, the paper's inner product) or ``"cosine"``.
        reduction: ``"mean"`` over the K pairs, ``"sum"``, ``"none"`` (``[K]``, per pair,
            regulariser included per pair).

    Paper: Sohn, "Improved Deep Metric Learning with Multi-class N-pair Loss Objective",
    NeurIPS 2016 (no arXiv id).
    """
    check_positive("l2_reg", l2_reg, strict=False)
    b = pair_batch(embeddings, labels, ref_embeddings, ref_labels, indices, metric=metric,
                   allowed=SIMILARITIES)
    a, p = _first_pair_per_class(b, labels)
    z = zero_loss(embeddings) + zero_loss(b.ref)
    if a.numel() < 2:  # no negative pair: degenerate
        return z.expand(a.numel()) * 0.0 if reduction == "none" else z
    logits = b.mat[a][:, p]  # [K, K]: anchor i vs positive j
    target = torch.arange(a.numel(), device=a.device)
    per = F.cross_entropy(logits, target, reduction="none")
    if l2_reg:
        per = per + l2_reg * 0.5 * (embeddings[a].pow(2).sum(1) + b.ref[p].pow(2).sum(1))
    return reduce(per, reduction) + (z if reduction != "none" else 0.0)


@register(
    "npairs",
    family="metric-learning",
    kind="embeddings",
    paper="Improved Deep Metric Learning with Multi-class N-pair Loss Objective",
    arxiv="",
    function=npairs_loss,
    summary="CE over f_i . f_j+ with target i, one (anchor, positive) pair per class",
    peers=(f"{PML}.NPairsLoss",),
    reduction="per pair",
)
class NPairsLoss(LossModule):
    """Module form of :func:`npairs_loss`."""

    def __init__(self, *, l2_reg: float = 0.002, metric: str = "dot",
                 reduction: Reduction = "mean") -> None:
        check_positive("l2_reg", l2_reg, strict=False)
        super().__init__(l2_reg=l2_reg, metric=metric, reduction=reduction)

    def forward(self, embeddings: Tensor, labels: Tensor, *, ref_embeddings: Tensor | None = None,
                ref_labels: Tensor | None = None, indices: object = None) -> Tensor:
        return npairs_loss(embeddings, labels, ref_embeddings=ref_embeddings,
                           ref_labels=ref_labels, indices=indices, **self.hparams)


# --------------------------------------------------------------------------------------------
# SupCon
# --------------------------------------------------------------------------------------------


def _supcon_kernel(temperature: float, cosine: bool):
    r"""Fused SupCon kernel: :math:`\partial \ell_i / \partial s_{ij} = (\mathrm{softmax}_j
    - [j \in P(i)] / |P(i)|) / \tau` over :math:`A(i)` (every reference but the anchor)."""

    def kernel(s: Tensor, mem: Members, mean: bool) -> tuple[Tensor, Tensor]:
        x = s.div_(temperature)
        valid = (mem.n_pos > 0) & (mem.n_neg > 0)
        inv_p = 1.0 / mem.n_pos.clamp_min(1).to(x.dtype)
        pos_mean = mem.gather(x).masked_fill_(~mem.pos, 0.0).sum(1).mul_(inv_p)
        if mem.self_ref:
            x.fill_diagonal_(float("-inf"))
        # cosine: s / t in [-1/t, 1/t], a constant shift
        shift = fixed_shift(1 / temperature, -1 / temperature, x.dtype) if cosine else None
        lse, grad = logsumexp_(x, dim=1, shift=shift)
        per = torch.where(valid, lse - pos_mean, 0.0)
        w = valid.to(x.dtype) / temperature
        if mean:
            count = max(int(valid.sum()), 1)
            per /= count
            w /= count
        grad.mul_(w.unsqueeze(1))
        mem.add_pos_(grad, (-(inv_p * w)).unsqueeze(1).expand_as(mem.idx))
        return per, grad

    return kernel


def supcon_loss(
    embeddings: Tensor,
    labels: Tensor,
    *,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    indices: object = None,
    temperature: float = 0.1,
    metric: str = "cosine",
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Supervised contrastive loss (the "L_out" form), as a masked log-sum-exp over ``[N, M]``.

    .. math::
        \ell_i = -\frac{1}{|P(i)|}\sum_{p \in P(i)} \log
        \frac{e^{s_{ip}/\tau}}{\sum_{a \in A(i)} e^{s_{ia}/\tau}}

    with :math:`A(i)` the positives and negatives of anchor :math:`i` (every other sample), on
    cosine similarities of the (L2-normalised) embeddings. O(N·M) memory: no ``[P, N]``
    positive-by-negative matrix (PML's NT-Xent builds one).

    Args:
        temperature: :math:`\tau` (default 0.1, the paper's). metric: ``"cosine"`` or ``"dot"``.
        reduction: ``"mean"`` over anchors with at least one positive and one negative (anchors
            of a one-class batch, whose loss is constant, are left out, as in PML),
            ``"sum"``, ``"none"`` (``[N]``).

    Paper: Khosla et al., "Supervised Contrastive Learning", arXiv 2004.11362.
    """
    check_positive("temperature", temperature)
    if indices is None:
        check_reduction(reduction)
        check_choice("metric", metric, SIMILARITIES)
        validate_batch(embeddings, labels, ref_embeddings, ref_labels)
        kernel = _supcon_kernel(temperature, metric == "cosine")
        return matrix_loss(embeddings, labels, ref_embeddings, ref_labels, metric=metric,
                           kernel=kernel, reduction=reduction)
    b = pair_batch(embeddings, labels, ref_embeddings, ref_labels, indices, metric=metric,
                   allowed=SIMILARITIES)
    x = b.mat / temperature
    lse, _ = masked_logsumexp(x, b.pos | b.neg)
    n_pos = b.pos.sum(1)
    valid = (n_pos > 0) & b.neg.any(1)
    lse = torch.where(valid, lse, torch.zeros_like(lse))
    pos_sum = x.masked_fill(~b.pos, 0.0).sum(1)
    per_anchor = (lse - pos_sum / n_pos.clamp_min(1).to(x.dtype)).masked_fill(~valid, 0.0)
    z = zero_loss(embeddings)
    return _finish(per_anchor + z, reduce(per_anchor, "mean", count=valid.sum()) + z, reduction)


@register(
    "supcon",
    family="metric-learning",
    kind="embeddings",
    paper="Supervised Contrastive Learning",
    arxiv="2004.11362",
    function=supcon_loss,
    summary="-1/|P(i)| sum_p log softmax_{a != i}(s_ia / T)[p]",
    peers=(f"{PML}.SupConLoss",),
    reduction="per anchor",
)
class SupConLoss(LossModule):
    """Module form of :func:`supcon_loss`."""

    def __init__(self, *, temperature: float = 0.1, metric: str = "cosine",
                 reduction: Reduction = "mean") -> None:
        check_positive("temperature", temperature)
        super().__init__(temperature=temperature, metric=metric, reduction=reduction)

    def forward(self, embeddings: Tensor, labels: Tensor, *, ref_embeddings: Tensor | None = None,
                ref_labels: Tensor | None = None, indices: object = None) -> Tensor:
        return supcon_loss(embeddings, labels, ref_embeddings=ref_embeddings,
                           ref_labels=ref_labels, indices=indices, **self.hparams)
