"""Pair losses: contrastive, generalized lifted structure, N-pairs (kind ``embeddings``).

See :mod:`losslab.losses.metric_learning` for the call convention (``ref_embeddings``,
``indices``, degenerate batches, reductions).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from losslab._core import LossModule, Reduction, check_reduction, reduce
from losslab._hparams import Choice, Real, hparams
from losslab._ops.logsumexp import masked_logsumexp
from losslab._ops.pairs import Members, PairBatch, pair_batch, validate_batch
from losslab.distances import METRICS, DistanceName, is_similarity
from losslab.kernels.matrix_loss import KernelOut, SparseGrad, matrix_loss
from losslab.losses.metric_learning._common import (
    MEAN_OVER,
    PML,
    SIMILARITIES,
    MeanOver,
    SimilarityName,
    as_count,
    reduce_per_anchor,
)
from losslab.registry import register

__all__ = [
    "ContrastiveKernel",
    "ContrastiveLoss",
    "LiftedStructureLoss",
    "NPairsLoss",
    "contrastive_loss",
    "contrastive_terms",
    "lifted_structure_loss",
    "npairs_loss",
]


# --------------------------------------------------------------------------------------------
# Contrastive
# --------------------------------------------------------------------------------------------


def contrastive_terms(
    mat: Tensor, similarity: bool, pos_margin: float, neg_margin: float, power: float
) -> tuple[Tensor, Tensor]:
    """Per-pair positive and negative terms of every entry of ``mat`` (unmasked)."""
    if similarity:
        pos = F.relu(pos_margin - mat)
        neg = F.relu(mat - neg_margin)
    else:
        pos = F.relu(mat - pos_margin)
        neg = F.relu(neg_margin - mat)
    if power != 1:
        pos, neg = pos.pow(power), neg.pow(power)
    return pos, neg


@dataclass(frozen=True)
class ContrastiveKernel:
    r"""Fused contrastive kernel (:class:`~losslab.kernels.matrix_loss.Kernel`): positives on
    the gathered ``[N, K]`` member slots, negatives on the full rows with the members zeroed.

    Glossary (one code path for distances and similarities, on a distance-like scale):

    * ``sign``: +1 for distances, -1 for similarities; ``u = sign * mat`` (smaller = closer);
    * ``pos_bound``, ``neg_bound``: the margins on the ``u`` scale (``sign * m+``,
      ``sign * m-``);
    * ``hinge_p`` ``[N, K]``: :math:`[u_{ap} - m^+]_+` on the positive slots; ``hinge_n``
      ``[N, M]``: :math:`[m^- - u_{an}]_+` on the negatives (0 elsewhere);
    * ``term_p``, ``slope_p``: ``hinge_p ** power`` and its derivative;
    * ``count_p``, ``count_n``: the ``"mean"`` denominators (all pairs, or the non-zero terms
      for ``mean_over="nonzero"``); ``w_p``, ``w_n``: their inverses (1 without ``mean``).

    When no negative is inside its margin (the common case late in training), ``G`` lives on
    the positive slots only and is returned sparse, without building a float ``[N, M]`` matrix.
    """

    pos_margin: float
    neg_margin: float
    power: float
    similarity: bool
    mean_over: str
    symmetric: ClassVar[bool] = True  # a function of the (unordered) pair only
    axis: ClassVar[int] = 1

    def _powered(self, hinge: Tensor) -> tuple[Tensor, Tensor]:
        """``hinge ** power`` and its derivative (``hinge`` is already clamped at 0)."""
        if self.power == 1:
            return hinge, torch.sign(hinge)
        slope = torch.where(hinge > 0, hinge.pow(self.power - 1) * self.power, 0.0)
        return hinge.pow(self.power), slope

    def __call__(self, mat: Tensor, members: Members, mean: bool) -> KernelOut:
        sign = -1.0 if self.similarity else 1.0
        u = mat.neg_() if self.similarity else mat
        pos_bound, neg_bound = sign * self.pos_margin, sign * self.neg_margin
        hinge_p = (members.gather(u) - pos_bound).clamp_min_(0.0).masked_fill_(~members.pos, 0.0)
        term_p, slope_p = self._powered(hinge_p)
        per_p = term_p.sum(1)
        # Any active negative ([m- - u]_+ > 0, i.e. u < m-)? A bool test first, so that the
        # common case "every negative beyond the margin" builds no float [N, M] hinge matrix.
        active = torch.lt(u, neg_bound)
        compiling = torch.compiler.is_compiling()  # then the dense path, tensor counts
        if not compiling and not bool(members.fill_(active, False).any()):
            w_p = 1.0
            if mean:
                count_p = (float((hinge_p > 0).sum()) if self.mean_over == "nonzero"
                           else float(members.n_pos.sum()))
                w_p = 1.0 / max(count_p, 1.0)
            keep = slope_p != 0
            rows = torch.arange(u.shape[0], device=u.device).unsqueeze(1).expand_as(slope_p)
            sparse = SparseGrad(rows[keep], members.idx[keep], slope_p[keep] * (w_p * sign))
            return KernelOut(per_p * w_p, sparse=sparse)
        del active
        hinge_n = torch.rsub(u, neg_bound)
        members.fill_(hinge_n, 0.0).clamp_min_(0.0)
        per_n = hinge_n.sum(1)
        if self.power == 1:
            grad = hinge_n.sign_()
            active_n = grad.sum(1)
        else:
            term_n, grad = self._powered(hinge_n)
            per_n = term_n.sum(1)
            del term_n
            active_n = (hinge_n > 0).sum(1)
        if compiling:
            # the counts as float64 0-d tensors (the arithmetic of the Python floats below,
            # without their device syncs, which break the graph), and no sparse gradient
            f64 = torch.float64
            cnt_p, cnt_n = (hinge_p > 0).sum(dtype=f64), active_n.sum(dtype=f64)
            if mean and self.mean_over == "all":
                cnt_p, cnt_n = members.n_pos.sum(dtype=f64), members.n_neg.sum(dtype=f64)
            if mean:
                inv_p, inv_n = cnt_p.clamp_min(1.0).reciprocal(), cnt_n.clamp_min(1.0).reciprocal()
                grad.mul_(inv_n * (-sign))
                members.add_pos_(grad, slope_p * (inv_p * sign))
                return KernelOut(per_p * inv_p + per_n * inv_n, grad=grad)
            grad.mul_(-sign)
            members.add_pos_(grad, slope_p * sign)
            return KernelOut(per_p + per_n, grad=grad)
        nonzero_n = float(active_n.sum(dtype=torch.float64))  # non-zero negative terms
        count_p, count_n = float((hinge_p > 0).sum()), nonzero_n
        w_p = w_n = 1.0
        if mean:
            if self.mean_over == "all":
                count_p, count_n = float(members.n_pos.sum()), float(members.n_neg.sum())
            w_p, w_n = 1.0 / max(count_p, 1.0), 1.0 / max(count_n, 1.0)
        grad.mul_(-w_n * sign)  # d[m- - u]_+ / du = -1 where active
        members.add_pos_(grad, slope_p * (w_p * sign))
        nnz = nonzero_n + float((slope_p != 0).sum())
        return KernelOut(per_p * w_p + per_n * w_n, grad=grad, nnz=nnz)


_check_contrastive = hparams(pos_margin=Real(), neg_margin=Real(), power=Real(gt=0),
                             metric=Choice(*METRICS), mean_over=Choice(*MEAN_OVER))


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
    metric: DistanceName = "euclidean",
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
        embeddings, labels, ref_embeddings, ref_labels, indices: see
            :mod:`losslab.losses.metric_learning`.
        pos_margin: :math:`m^+` (default 0). neg_margin: :math:`m^-` (default 1).
        power: :math:`q` (default 1). metric: ``"euclidean"`` (default, exact with zero gradient
            at 0), ``"squared_euclidean"``, ``"cosine"`` or ``"dot"``.
        mean_over: ``"all"`` (default): mean over positive pairs + mean over negative pairs;
            ``"nonzero"``: each mean taken over the non-zero terms only (PML's
            ``AvgNonZeroReducer``, the PML default).
        reduction: ``"mean"`` (as ``mean_over``), ``"sum"``, or ``"none"`` (``[N]``: per-anchor
            sums of its pair terms).

    Without ``indices`` the loss and its gradient come from one fused pass
    (:class:`ContrastiveKernel`); with ``indices`` (the reference definition) autograd
    differentiates the listed pairs' terms.

    Degenerate batches: none is declared. The loss has a term per positive pair and per
    negative pair, so a one-class batch (positive pairs only) is the mean positive term and a
    batch of distinct labels the mean negative term, not zero.

    Paper: Hadsell, Chopra, LeCun, "Dimensionality Reduction by Learning an Invariant
    Mapping", CVPR 2006 (no arXiv id).
    """
    _check_contrastive(pos_margin=pos_margin, neg_margin=neg_margin, power=power, metric=metric,
                       mean_over=mean_over)
    if indices is None:
        check_reduction(reduction)
        vb = validate_batch(embeddings, labels, ref_embeddings, ref_labels)
        kernel = ContrastiveKernel(pos_margin, neg_margin, power, is_similarity(metric),
                                   mean_over)
        return matrix_loss(vb.embeddings, vb.labels, *vb.reference, metric=metric,
                           kernel=kernel, reduction=reduction)
    b = pair_batch(embeddings, labels, ref_embeddings, ref_labels, indices, metric=metric)
    n = embeddings.shape[0]
    if b.pairs is not None:
        a1, p, a2, ng = b.pairs
        pos_t, _ = contrastive_terms(b.mat[a1, p], b.similarity, pos_margin, neg_margin, power)
        _, neg_t = contrastive_terms(b.mat[a2, ng], b.similarity, pos_margin, neg_margin, power)
        per_anchor = b.mat.new_zeros(n).index_add(0, a1, pos_t).index_add(0, a2, neg_t)
        n_pos: Tensor | float = float(a1.numel())
        n_neg: Tensor | float = float(a2.numel())
    else:
        pos_all, neg_all = contrastive_terms(b.mat, b.similarity, pos_margin, neg_margin, power)
        pos_t = pos_all.masked_fill(~b.pos, 0.0)
        neg_t = neg_all.masked_fill(~b.neg, 0.0)
        per_anchor = pos_t.sum(1) + neg_t.sum(1)
        n_pos, n_neg = b.pos.sum(), b.neg.sum()
    z = b.zero()
    if reduction != "mean":
        return reduce_per_anchor(per_anchor + z, per_anchor, reduction)
    if mean_over == "nonzero":
        n_pos, n_neg = (pos_t > 0).sum(), (neg_t > 0).sum()
    total = reduce(pos_t, "mean", count=as_count(n_pos, b.mat)) + reduce(
        neg_t, "mean", count=as_count(n_neg, b.mat)
    )
    return total + z


@register(
    "contrastive",
    family="metric-learning",
    kind="embeddings",
    paper="Dimensionality Reduction by Learning an Invariant Mapping",
    arxiv="",
    summary="[d_ap - m+]_+ over positive pairs + [m- - d_an]_+ over negative pairs",
    peers=(f"{PML}.ContrastiveLoss",),
    reduction="per anchor",
)
class ContrastiveLoss(LossModule, function=contrastive_loss, check=_check_contrastive):
    """Module form of :func:`contrastive_loss`."""


# --------------------------------------------------------------------------------------------
# Generalized lifted structure
# --------------------------------------------------------------------------------------------


_check_lifted_structure = hparams(pos_margin=Real(), neg_margin=Real(),
                                  metric=Choice(*METRICS))


def lifted_structure_loss(
    embeddings: Tensor,
    labels: Tensor,
    *,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    indices: object = None,
    pos_margin: float = 0.0,
    neg_margin: float = 1.0,
    metric: DistanceName = "euclidean",
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
    _check_lifted_structure(pos_margin=pos_margin, neg_margin=neg_margin, metric=metric)
    b = pair_batch(embeddings, labels, ref_embeddings, ref_labels, indices, metric=metric)
    u = b.u
    sign_m = -1.0 if b.similarity else 1.0  # u = -s for similarities
    lse_p, has_p = masked_logsumexp(u - sign_m * pos_margin, b.pos)
    lse_n, has_n = masked_logsumexp(sign_m * neg_margin - u, b.neg)
    valid = has_p & has_n
    x = torch.where(valid, lse_p + lse_n, torch.zeros_like(lse_p))
    per_anchor = F.relu(x).masked_fill(~valid, 0.0)
    z = b.zero()
    return reduce_per_anchor(per_anchor + z, reduce(per_anchor, "mean", count=valid.sum()) + z,
                             reduction)


@register(
    "lifted_structure",
    family="metric-learning",
    kind="embeddings",
    paper="In Defense of the Triplet Loss for Person Re-Identification",
    arxiv="1703.07737",
    summary="[log sum_p e^{d_ap - m+} + log sum_n e^{m- - d_an}]_+ per anchor",
    peers=(f"{PML}.GeneralizedLiftedStructureLoss",),
    reduction="per anchor",
    degenerate=("one_class", "no_positives"),
)
class LiftedStructureLoss(LossModule, function=lifted_structure_loss,
                          check=_check_lifted_structure):
    """Module form of :func:`lifted_structure_loss`."""


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


def _npairs_static(b: PairBatch, l2_reg: float, reduction: str) -> Tensor:
    """The N-pair loss with a static number of pair slots (the ``torch.compile`` path of
    ``reduction="mean" | "sum"``).

    Every candidate is a slot: each anchor row with its first positive (or each listed pair of
    ``indices``); the slot is kept when it is the first candidate of its anchor label, which
    are the pairs of :func:`_first_pair_per_class` in the same order. The other slots are
    padding: no column of the logits, no term, no count. Same value and gradient as the eager
    path, no data-dependent shape."""
    if b.pairs is not None:
        a, p = b.pairs[0], b.pairs[1]
        ok = torch.ones_like(a, dtype=torch.bool)
    else:
        a = torch.arange(b.pos.shape[0], device=b.pos.device)
        ok = b.pos.any(1)
        p = b.pos.to(torch.uint8).argmax(1)  # the first positive (argmax: first maximum)
    n_slots = a.shape[0]
    lab = b.labels[a]
    before = torch.ones(n_slots, n_slots, dtype=torch.bool, device=a.device).tril(-1)
    earlier = (lab.unsqueeze(1) == lab.unsqueeze(0)) & ok.unsqueeze(0) & before
    sel = ok & ~earlier.any(1)
    logits = b.mat[a][:, p]  # [L, L]: slot i's anchor vs slot j's positive
    lse, _ = masked_logsumexp(logits, sel.unsqueeze(0).expand(n_slots, n_slots))
    per = lse - logits.diagonal()
    if l2_reg:
        per = per + l2_reg * 0.5 * (b.embeddings[a].pow(2).sum(1) + b.ref[p].pow(2).sum(1))
    per = torch.where(sel, per, torch.zeros_like(per))
    count = sel.sum()
    out = reduce(per, reduction, count=count)
    # fewer than two pairs: no negative, the degenerate zero of the eager path
    return torch.where(count >= 2, out, torch.zeros_like(out))


_check_npairs = hparams(l2_reg=Real(ge=0), metric=Choice(*SIMILARITIES))


def npairs_loss(
    embeddings: Tensor,
    labels: Tensor,
    *,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    indices: object = None,
    l2_reg: float = 0.002,
    metric: SimilarityName = "dot",
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

    Degenerate batches: with fewer than two such pairs (one class, or no class with two
    samples) there is no (N+1)-tuplet, i.e. no negative to compare with: the loss is zero
    with zero gradient, regulariser included (it acts on the tuplets' embeddings, and there
    is none). NaN anywhere in the embeddings, also in samples not picked for a pair, gives NaN.

    Under ``torch.compile``, ``"mean"`` and ``"sum"`` use a static number of pair slots (one
    per sample, or per listed pair; the slots beyond the first of each class masked): the
    same value and gradient, no graph break. ``"none"`` keeps the eager form, whose length K
    is data-dependent (a graph break at ``torch.where``).

    Paper: Sohn, "Improved Deep Metric Learning with Multi-class N-pair Loss Objective",
    NeurIPS 2016 (no arXiv id).
    """
    _check_npairs(l2_reg=l2_reg, metric=metric)
    b = pair_batch(embeddings, labels, ref_embeddings, ref_labels, indices, metric=metric,
                   allowed=SIMILARITIES)
    z = b.zero()
    if torch.compiler.is_compiling() and reduction != "none":
        return _npairs_static(b, l2_reg, reduction) + z
    a, p = _first_pair_per_class(b, b.labels)
    if a.numel() < 2:  # no negative pair: degenerate
        return z.expand(a.numel()) * 0.0 if reduction == "none" else z
    logits = b.mat[a][:, p]  # [K, K]: anchor i vs positive j
    target = torch.arange(a.numel(), device=a.device)
    per = F.cross_entropy(logits, target, reduction="none")
    if l2_reg:
        per = per + l2_reg * 0.5 * (b.embeddings[a].pow(2).sum(1) + b.ref[p].pow(2).sum(1))
    return reduce(per, reduction) + z  # z: NaN in an unpaired sample propagates too


@register(
    "npairs",
    family="metric-learning",
    kind="embeddings",
    paper="Improved Deep Metric Learning with Multi-class N-pair Loss Objective",
    arxiv="",
    summary="CE over f_i . f_j+ with target i, one (anchor, positive) pair per class",
    peers=(f"{PML}.NPairsLoss",),
    reduction="per pair",
    degenerate=("one_class", "no_positives"),
)
class NPairsLoss(LossModule, function=npairs_loss, check=_check_npairs):
    """Module form of :func:`npairs_loss`."""
