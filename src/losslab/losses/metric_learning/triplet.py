"""Triplet losses: the triplet margin loss with its batch strategies, the Triplet network's
distance-ratio loss and M2FNet's adaptive-margin triplet loss (kind ``embeddings``).

See :mod:`losslab.losses.metric_learning` for the call convention (``ref_embeddings``,
``indices``, degenerate batches, reductions).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from losslab._core import LossModule, Reduction, check_reduction, reduce
from losslab._hparams import Choice, Int, Real, hparams
from losslab._ops.pairs import Members, members, pair_batch, validate_batch
from losslab.distances import METRICS, DistanceName, is_similarity, paired, pairwise
from losslab.kernels.matrix_loss import KernelOut, gather_rows, matrix_loss
from losslab.losses.metric_learning._common import (
    MEAN_OVER,
    PML,
    MeanOver,
    reduce_per_anchor,
)
from losslab.registry import register

__all__ = [
    "AdaptiveMarginTripletLoss",
    "TripletAllKernel",
    "TripletLoss",
    "TripletRatioLoss",
    "adaptive_margin",
    "adaptive_margin_triplet_loss",
    "triplet_loss",
    "triplet_ratio_loss",
]

Strategy = Literal["all", "batch_hard", "semi_hard", "soft_margin"]
STRATEGIES = ("all", "batch_hard", "semi_hard", "soft_margin")

#: The all-triplets kernel sweeps the matrix once per positive slot up to this many positives
#: per anchor, and sorts the negatives beyond.
DIRECT_MAX_POSITIVES = 16


@dataclass(frozen=True)
class TripletAllKernel:
    r"""Fused all-triplets kernel (:class:`~losslab.kernels.matrix_loss.Kernel`). With
    :math:`u` the distance (``-s`` for similarities), the per-anchor sum
    :math:`\sum_{p,n}[u_{ap} - u_{an} + m]_+` has gradient :math:`c_{ap}` (the number of
    negatives violating the margin with that positive) on :math:`u_{ap}` and :math:`-c_{an}`
    (the number of positives it violates with) on :math:`u_{an}`.

    With at most :data:`DIRECT_MAX_POSITIVES` member slots per anchor (m-per-class batches
    have m), one ``[N, M]`` sweep per slot does it; otherwise the negatives are sorted once
    per anchor and every positive's violating negatives are a prefix found by
    ``searchsorted`` (prefix sums in float64), O(N·M log M).

    Glossary:

    * ``u`` ``[N, M]``: the matrix on a distance-like scale (``-s`` for similarities);
      ``u_neg``: its copy with the members set to ``+inf`` (negatives only);
    * ``threshold`` ``[N, K]``: :math:`u_{ap} + m` per positive slot (``-inf`` on non-positive
      slots); a negative violates the margin with that positive iff :math:`u_{an} <`
      threshold;
    * ``violations`` ``[N, K]``: :math:`c_{ap}`, the number of violating negatives per
      positive; ``per`` ``[N]``: the per-anchor sums of the hinges;
    * ``sorted_neg``, ``prefix``: the sorted negatives of each row and their prefix sums
      (sorted sweep); ``cut``: the number of negatives below each threshold.
    """

    margin: float
    similarity: bool
    mean_over: str
    symmetric: ClassVar[bool] = False
    axis: ClassVar[int] = 1

    def __call__(self, mat: Tensor, members: Members, mean: bool) -> KernelOut:
        u = mat.neg_() if self.similarity else mat
        threshold = (members.gather(u) + self.margin).masked_fill_(~members.pos, float("-inf"))
        u_neg = u.clone()
        members.fill_(u_neg, float("inf"))  # negatives only
        grad = torch.zeros_like(u)
        k_slots = threshold.shape[1]
        if k_slots <= DIRECT_MAX_POSITIVES:
            per = u.new_zeros(u.shape[0])
            violations = torch.zeros_like(threshold)
            compiling = torch.compiler.is_compiling()
            for k in range(k_slots):
                # an empty slot adds exactly 0 (its threshold is -inf): skipping it is a
                # speed-up that needs a sync, so not under compile
                if not compiling and not bool(members.pos[:, k].any()):
                    continue
                hinge = torch.rsub(u_neg, threshold[:, k : k + 1]).clamp_min_(0.0)
                per += hinge.sum(1)
                hinge.sign_()
                violations[:, k] = hinge.sum(1)
                grad.sub_(hinge)
        else:
            sorted_neg = u_neg.sort(dim=1).values
            finite = torch.where(torch.isinf(sorted_neg), 0.0, sorted_neg).to(torch.float64)
            prefix = F.pad(finite.cumsum(dim=1), (1, 0))
            del finite
            cut = torch.searchsorted(sorted_neg, threshold.contiguous(), side="left")  # [N, K]
            per = (cut.to(prefix.dtype) * threshold.to(prefix.dtype) - prefix.gather(1, cut))
            per = per.masked_fill_(~members.pos, 0.0).sum(1).to(u.dtype)
            violations = cut.masked_fill_(~members.pos, 0).to(u.dtype)
            # a negative's gradient: minus the number of thresholds above it
            sorted_thr = threshold.sort(dim=1).values
            above = k_slots - torch.searchsorted(sorted_thr, u_neg, side="right")
            grad.sub_(above.to(grad.dtype))
        members.add_pos_(grad, violations)
        if self.similarity:
            grad.neg_()
        if mean:
            # float64 0-d tensors: the arithmetic of the Python numbers, without a sync
            if self.mean_over == "nonzero":
                count = violations.sum(1, dtype=torch.float64).sum()
            else:
                count = (members.n_pos.to(torch.float64) * members.n_neg).sum()
            w = 1.0 / count.clamp_min(1.0)
            per.mul_(w)
            grad.mul_(w)
        return KernelOut(per, grad=grad)


def _batch_hard(
    embeddings: Tensor,
    labels: Tensor,
    ref_embeddings: Tensor | None,
    ref_labels: Tensor | None,
    *,
    metric: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Hardest positive and negative of every anchor: ``(u_ap, u_an, valid, zero)``
    (``zero``: :meth:`~losslab._ops.pairs.Batch.zero`, NaN when an input is).

    Selected without gradient on the matrix (squared distances for ``"euclidean"``: same
    order, no square root; positives gathered from the class members, negatives = the row
    with its members overwritten), then ``u`` is recomputed with gradient on the ``2N``
    selected pairs only, from the embeddings (a sparse, O(N·D) backward).
    """
    vb = validate_batch(embeddings, labels, ref_embeddings, ref_labels)
    embeddings, ref = vb.embeddings, vb.ref  # the compute dtype (float32 for half inputs)
    similarity = is_similarity(metric)
    with torch.no_grad():
        if metric in ("euclidean", "squared_euclidean"):
            # Same order within a row as the (squared) distance: |r_j|^2 - 2 x_i . r_j (the
            # row constant |x_i|^2 and the square root change no argmin/argmax): one GEMM.
            x, r = embeddings.detach(), ref.detach()
            rr = torch.linalg.vector_norm(r, dim=1).square_().unsqueeze(0)
            mat = torch.addmm(rr, x, r.t(), beta=1.0, alpha=-2.0)
        else:
            mat = pairwise(embeddings.detach(), None if vb.self_ref else ref.detach(),
                           metric=metric)
        if similarity:
            mat.neg_()
        mem = members(vb.labels, vb.ref_labels, vb.self_ref)
        u_pos = mem.gather(mat).masked_fill_(~mem.pos, float("-inf"))
        hardest_pos = mem.idx.gather(1, u_pos.argmax(dim=1, keepdim=True)).squeeze(1)
        hardest_neg = mem.fill_(mat, float("inf")).argmin(dim=1)
        valid = (mem.n_pos > 0) & (mem.n_neg > 0)
        del mat
    sign = -1.0 if similarity else 1.0
    u_ap = sign * paired(embeddings, gather_rows(ref, hardest_pos), metric=metric, eps=0.0)
    u_an = sign * paired(embeddings, gather_rows(ref, hardest_neg), metric=metric, eps=0.0)
    return u_ap, u_an, valid, vb.zero()


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


def _batch_hard_terms(hp: Tensor, hn: Tensor, valid: Tensor, margin: float, strategy: str,
                      mean_over: str, reduction: str) -> Tensor:
    """Batch-hard / soft-margin terms from the hardest pairs' ``u`` values."""
    hp = torch.where(valid, hp, torch.zeros_like(hp))
    hn = torch.where(valid, hn, torch.zeros_like(hn))
    terms = F.softplus(hp - hn) if strategy == "soft_margin" else F.relu(hp - hn + margin)
    terms = terms.masked_fill(~valid, 0.0)
    count = (terms > 0).sum() if mean_over == "nonzero" else valid.sum()
    return reduce_per_anchor(terms, reduce(terms, "mean", count=count), reduction)


_check_triplet = hparams(margin=Real(ge=0), strategy=Choice(*STRATEGIES),
                         metric=Choice(*METRICS), mean_over=Choice(*MEAN_OVER))


def triplet_loss(
    embeddings: Tensor,
    labels: Tensor,
    *,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    indices: object = None,
    margin: float = 0.2,
    strategy: Strategy = "all",
    metric: DistanceName = "euclidean",
    mean_over: MeanOver = "all",
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Triplet margin loss with the batch strategies of Hermans et al.

    .. math::
        \ell_{apn} = [d_{ap} - d_{an} + m]_+

    (for a similarity metric, :math:`[s_{an} - s_{ap} + m]_+`). Strategies:

    * ``"all"`` (batch all): every valid triplet of the batch. Computed per anchor in one fused
      pass (:class:`TripletAllKernel`): O(N·M log M) time at worst, O(N·M) memory, no triplet
      list and no ``[N, M, M]`` tensor.
    * ``"batch_hard"``: one triplet per anchor, its farthest positive and nearest negative.
    * ``"semi_hard"``: one triplet per positive pair, the nearest negative farther than the
      positive (FaceNet); when none is, the farthest negative (TF-addons' convention).
    * ``"soft_margin"``: batch hard with :math:`\log(1 + e^{d_{ap} - d_{an}})` instead of the
      hinge (``margin`` unused), the paper's recommended variant.

    With ``indices`` the given triplets are used (``strategy`` then only chooses hinge vs soft
    margin); that autograd path is the reference definition the fused ``"all"`` path is
    checked against.

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
    _check_triplet(margin=margin, strategy=strategy, metric=metric, mean_over=mean_over)
    if indices is None and strategy in ("all", "batch_hard", "soft_margin"):
        check_reduction(reduction)
        if strategy == "all":
            vb = validate_batch(embeddings, labels, ref_embeddings, ref_labels)
            kernel = TripletAllKernel(margin, is_similarity(metric), mean_over)
            return matrix_loss(vb.embeddings, vb.labels, *vb.reference, metric=metric,
                               kernel=kernel, reduction=reduction)
        hp, hn, valid, z = _batch_hard(embeddings, labels, ref_embeddings, ref_labels,
                                       metric=metric)
        return _batch_hard_terms(hp, hn, valid, margin, strategy, mean_over, reduction) + z
    b = pair_batch(embeddings, labels, ref_embeddings, ref_labels, indices, metric=metric)
    u = b.u
    n = embeddings.shape[0]
    z = b.zero()
    if b.triplets is not None:
        a, p, ng = b.triplets
        diff = u[a, p] - u[a, ng]
        terms = F.softplus(diff) if strategy == "soft_margin" else F.relu(diff + margin)
        per_anchor = u.new_zeros(n).index_add(0, a, terms)
        count = (terms > 0).sum() if mean_over == "nonzero" else float(a.numel())
        return reduce_per_anchor(per_anchor + z, reduce(terms, "mean", count=count) + z,
                                 reduction)
    # semi hard (batch all / hard / soft margin without indices: the fused paths above)
    u_an, has_neg = _semi_hard_negatives(u, b.neg)
    valid = b.pos & has_neg.unsqueeze(1)
    terms = F.relu(u - u_an + margin).masked_fill(~valid, 0.0)
    count = (terms > 0).sum() if mean_over == "nonzero" else valid.sum()
    return reduce_per_anchor(terms.sum(1) + z, reduce(terms, "mean", count=count) + z, reduction)


@register(
    "triplet",
    family="metric-learning",
    kind="embeddings",
    paper="In Defense of the Triplet Loss for Person Re-Identification",
    arxiv="1703.07737",
    summary="[d_ap - d_an + m]_+ over all / batch-hard / semi-hard triplets; soft margin",
    peers=(f"{PML}.TripletMarginLoss", "torch.nn.TripletMarginLoss"),
    reduction="per anchor",
    degenerate=("one_class", "no_positives"),
)
class TripletLoss(LossModule, function=triplet_loss, check=_check_triplet):
    """Module form of :func:`triplet_loss`."""


# --------------------------------------------------------------------------------------------
# Triplet ratio (Hoffer & Ailon)
# --------------------------------------------------------------------------------------------


_check_triplet_ratio = hparams(metric=Choice(*METRICS), chunk_size=Int(ge=1, optional=True))


def _positive_slots(pos: Tensor, neg: Tensor) -> tuple[Tensor, Tensor, Tensor] | None:
    """The per-anchor positive slots of the all-triplets forms: ``(pos_idx [N, P], valid_p
    [N, P], n_pos [N])``, each anchor's positives first, ``valid_p`` masking the padding.

    Eagerly ``P`` is the largest positive count, and ``None`` means no triplet (no positive
    or no negative anywhere: the caller returns its zero). Under ``torch.compile`` ``P`` is
    the static bound ``M`` (every reference a positive slot) and there is no early exit:
    without triplets every term is masked and the count is 0 (a zero loss)."""
    n_pos = pos.sum(1)
    if torch.compiler.is_compiling():
        p_max = pos.shape[1]
    else:
        p_max = int(n_pos.max()) if pos.shape[0] > 0 else 0
        if p_max == 0 or not bool(neg.any()):
            return None
    pos_idx = pos.to(torch.uint8).topk(p_max, dim=1).indices  # positives first
    valid_p = torch.arange(p_max, device=pos.device).unsqueeze(0) < n_pos.unsqueeze(1)
    return pos_idx, valid_p, n_pos


def triplet_ratio_loss(
    embeddings: Tensor,
    labels: Tensor,
    *,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    indices: object = None,
    metric: DistanceName = "euclidean",
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
        chunk_size: anchors per chunk (> 0; default ``None``: about 16 M elements a chunk).
        reduction: ``"mean"`` over all valid triplets, ``"sum"``, or ``"none"`` (``[N]``
            per-anchor sums).

    Paper: Hoffer, Ailon, "Deep metric learning using Triplet network", arXiv 1412.6622.
    """
    _check_triplet_ratio(metric=metric, chunk_size=chunk_size)
    b = pair_batch(embeddings, labels, ref_embeddings, ref_labels, indices, metric=metric)
    u = b.u
    n = embeddings.shape[0]
    z = b.zero()
    if b.triplets is not None:
        a, p, ng = b.triplets
        terms = 2.0 * torch.sigmoid(u[a, p] - u[a, ng]).pow(2)
        per_anchor = u.new_zeros(n).index_add(0, a, terms)
        return reduce_per_anchor(per_anchor + z, reduce(terms, "mean") + z, reduction)
    slots = _positive_slots(b.pos, b.neg)
    if slots is None:
        return reduce_per_anchor(u.new_zeros(n) + z, z, reduction)
    pos_idx, valid_p, n_pos = slots
    p_max = pos_idx.shape[1]
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
    return reduce_per_anchor(per_anchor + z, reduce(per_anchor, "mean", count=count) + z,
                             reduction)


@register(
    "triplet_ratio",
    family="metric-learning",
    kind="embeddings",
    paper="Deep metric learning using Triplet network",
    arxiv="1412.6622",
    summary="||(d+, d- - 1)||^2 with (d+, d-) = softmax(d_ap, d_an), over all triplets",
    reduction="per anchor",
    degenerate=("one_class", "no_positives"),
)
class TripletRatioLoss(LossModule, function=triplet_ratio_loss, check=_check_triplet_ratio):
    """Module form of :func:`triplet_ratio_loss`."""


# --------------------------------------------------------------------------------------------
# Adaptive-margin triplet (M2FNet)
# --------------------------------------------------------------------------------------------


def adaptive_margin(s_ap: Tensor, s_an: Tensor) -> Tensor:
    r"""M2FNet's adaptive margin :math:`m_{AM} = m_{sim} + m_{dissim}` from the cosine
    similarities of the anchor to its positive and negative:
    :math:`m_{sim} = 1 + 2 e^{-4 s_{ap}}` (large when the positive is dissimilar) and
    :math:`m_{dissim} = 1 + 2 e^{4 s_{an} - 4}` (large when the negative is similar); each in
    [1.04, 3] for similarities in [0, 1]. Broadcasts."""
    return 2.0 + 2.0 * torch.exp(-4.0 * s_ap) + 2.0 * torch.exp(4.0 * s_an - 4.0)


def _adaptive_terms(d_ap: Tensor, d_an: Tensor, d_pn: Tensor, s_ap: Tensor,
                    s_an: Tensor) -> Tensor:
    return F.relu(d_ap - 0.5 * (d_an + d_pn) + adaptive_margin(s_ap, s_an))


_check_adaptive = hparams(chunk_size=Int(ge=1, optional=True))


def adaptive_margin_triplet_loss(
    embeddings: Tensor,
    labels: Tensor,
    *,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    indices: object = None,
    chunk_size: int | None = None,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Adaptive-margin triplet loss of M2FNet's audio and visual feature extractors.

    .. math::
        \ell_{apn} = \Big[d_{ap} - \tfrac12 (d_{an} + d_{pn}) + m_{AM}\Big]_+, \qquad
        m_{AM} = \big(1 + 2 e^{-4 s_{ap}}\big) + \big(1 + 2 e^{4 s_{an} - 4}\big)

    with :math:`d` the Euclidean distance and :math:`s` the cosine similarity
    (:func:`adaptive_margin`): the margin grows for hard triplets (a dissimilar positive, a
    similar negative), and the negative is pushed from both the anchor and the positive. Over
    all valid triplets of the batch (or ``indices``), evaluated per anchor on the ``[P_max, M]``
    block of its positives in anchor chunks of at most ``chunk_size`` rows (default: about
    16 M elements per chunk), as :func:`triplet_ratio_loss`. Under ``torch.compile`` P_max is
    its static bound M (every reference a slot, the padding masked: the same value and
    gradient, no graph break).

    Source: the abstract fixes an adaptive-margin triplet loss; the expression above is the
    form of a public re-implementation that cites the paper (the positive-negative distance
    term and the margin constants 1, 2, 4), with its two deliberate departures: the hinge of a
    triplet loss, and the margin computed from cosine similarities -- on distances the same
    expression grows as :math:`e^{4 d_{an}}` and pulls negatives in, which no triplet loss
    does. *Formula from the abstract, not verified against the paper.*

    Args:
        chunk_size: anchors per chunk (> 0; default ``None``: about 16 M elements a chunk).
        reduction: ``"mean"`` over all valid triplets, ``"sum"``, or ``"none"`` (``[N]``
            per-anchor sums).

    Degenerate batches (one class, all labels distinct) have no triplet: zero. Paper:
    Chudasama et al., "M2FNet: Multi-modal Fusion Network for Emotion Recognition in
    Conversation", CVPR workshops 2022, arXiv 2206.02187.
    """
    _check_adaptive(chunk_size=chunk_size)
    b = pair_batch(embeddings, labels, ref_embeddings, ref_labels, indices, metric="euclidean")
    d = b.mat
    self_ref = b.ref is b.embeddings
    s = pairwise(b.embeddings, None if self_ref else b.ref, metric="cosine")
    d_ref = d if self_ref else pairwise(b.ref, metric="euclidean", eps=0.0)
    n = embeddings.shape[0]
    z = b.zero()
    if b.triplets is not None:
        a, p, ng = b.triplets
        terms = _adaptive_terms(d[a, p], d[a, ng], d_ref[p, ng], s[a, p], s[a, ng])
        per_anchor = d.new_zeros(n).index_add(0, a, terms)
        return reduce_per_anchor(per_anchor + z, reduce(terms, "mean") + z, reduction)
    slots = _positive_slots(b.pos, b.neg)
    if slots is None:
        return reduce_per_anchor(d.new_zeros(n) + z, z, reduction)
    pos_idx, valid_p, n_pos = slots
    p_max = pos_idx.shape[1]
    m = d.shape[1]
    if chunk_size is None:
        chunk_size = max(1, (1 << 24) // max(1, p_max * m))
    parts = []
    for st in range(0, n, chunk_size):
        idx = pos_idx[st : st + chunk_size]  # [c, P]
        dc, sc = d[st : st + chunk_size], s[st : st + chunk_size]
        t = _adaptive_terms(dc.gather(1, idx).unsqueeze(2), dc.unsqueeze(1), d_ref[idx],
                            sc.gather(1, idx).unsqueeze(2), sc.unsqueeze(1))  # [c, P, M]
        mask = valid_p[st : st + chunk_size].unsqueeze(2) & b.neg[st : st + chunk_size].unsqueeze(1)
        parts.append(t.masked_fill(~mask, 0.0).sum(dim=(1, 2)))
    per_anchor = torch.cat(parts)
    count = (n_pos.to(d.dtype) * b.neg.sum(1).to(d.dtype)).sum()
    return reduce_per_anchor(per_anchor + z, reduce(per_anchor, "mean", count=count) + z,
                             reduction)


@register(
    "adaptive_margin_triplet",
    family="metric-learning",
    kind="embeddings",
    paper="M2FNet: Multi-modal Fusion Network for Emotion Recognition in Conversation",
    arxiv="2206.02187",
    summary="[d_ap - (d_an + d_pn)/2 + m(s_ap, s_an)]_+ with an adaptive margin from cosine "
            "similarities, all triplets",
    reduction="per anchor",
    degenerate=("one_class", "no_positives"),
)
class AdaptiveMarginTripletLoss(LossModule, function=adaptive_margin_triplet_loss,
                                check=_check_adaptive):
    """Module form of :func:`adaptive_margin_triplet_loss`."""
