"""Shared core of the pair/triplet (``embeddings`` kind) losses and the miners.

One place builds, for a batch of query embeddings ``[N, D]`` against a reference set ``[M, D]``
(the batch itself unless ``ref_embeddings`` is given):

* the validated batch and its ``[N, M]`` distance or similarity matrix
  (:func:`pair_batch`, with :func:`losslab.distances.pairwise`);
* the positive and negative pairs, in the three forms the losses need: boolean ``[N, M]``
  masks from labels (:func:`label_masks`; self-pairs excluded only when the reference is the
  batch itself), the same-class member indices of every row for the fused kernels
  (:class:`Members`, :func:`members`: no ``[N, M]`` mask) and the ``[N, C]`` class masks of
  the proxy losses (:func:`class_masks`);
* the miners' ``indices=`` tuples: validation (:func:`check_miner_indices`) and conversion
  between pairs and triplets;
* the multi-similarity pair mining (:func:`ms_pair_mining`), shared by the loss and the miner.

Validation (:func:`validate_batch`) returns the embeddings in their compute dtype (float32 for
half inputs, :func:`losslab._core.compute_dtype`) and the labels as int64 (any integer dtype is
accepted, bool rejected), so that every loss built on it computes half inputs in float32 and
returns float32.

Every loss is then written with masked O(N·M) tensor ops: nothing here builds an ``[N, M, M]``
tensor or materialises a list of all triplets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from losslab._core import (
    check_choice,
    check_labels,
    check_matrix,
    check_same_device,
    compute_dtype,
    zero_loss,
)
from losslab.distances import METRICS, is_similarity, pairwise

__all__ = [
    "Batch",
    "Members",
    "PairBatch",
    "Pairs",
    "Triplets",
    "check_miner_indices",
    "class_masks",
    "label_masks",
    "members",
    "ms_pair_mining",
    "pair_batch",
    "pairs_from_indices",
    "triplets_from_indices",
    "validate_batch",
]

#: Miner index tuples: pairs ``(anchors1, positives, anchors2, negatives)`` and triplets
#: ``(anchors, positives, negatives)``; anchors index the queries, the others the references.
Pairs = tuple[Tensor, Tensor, Tensor, Tensor]
Triplets = tuple[Tensor, Tensor, Tensor]


# --------------------------------------------------------------------------------------------
# Positive / negative pairs from labels
# --------------------------------------------------------------------------------------------


def label_masks(labels: Tensor, ref_labels: Tensor, ref_is_batch: bool) -> tuple[Tensor, Tensor]:
    """``(pos, neg)`` bool ``[N, M]`` masks; the diagonal is not a positive for the batch itself."""
    same = labels.unsqueeze(1) == ref_labels.unsqueeze(0)
    neg = ~same
    if ref_is_batch:
        same.fill_diagonal_(False)
    return same, neg


def class_masks(labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """``(pos, neg)`` bool ``[N, C]``: the sample's own class / every other class."""
    pos = F.one_hot(labels.long(), num_classes).bool()
    return pos, ~pos


@dataclass
class Members:
    """Same-class reference indices of every query row (the fused kernels' positive pairs).

    Attributes:
        idx: ``[N, K]`` long, the reference rows with the query's label (slots past a row's
            count repeat its first member; a row without members points at column 0).
        pos: ``[N, K]`` bool, the slot is a positive (a real member other than the query
            itself when the reference is the batch).
        n_pos, n_neg: ``[N]`` long, numbers of positives and of negatives of every row.
        has: ``[N]`` bool, the row has at least one member.
        all_have: every row has a member (always for the batch itself).
        self_ref: the reference set is the batch itself (the diagonal is a member).
    """

    idx: Tensor
    pos: Tensor
    n_pos: Tensor
    n_neg: Tensor
    has: Tensor
    all_have: bool
    self_ref: bool

    def gather(self, mat: Tensor) -> Tensor:
        """``[N, K]`` entries of ``mat`` at the member slots (mask with :attr:`pos`)."""
        return mat.gather(1, self.idx)

    def fill_(self, mat: Tensor, value: float) -> Tensor:
        """Overwrite every member entry of ``mat`` (positives and the diagonal) with ``value``,
        in place: what remains of a row are its negatives."""
        src = torch.full(self.idx.shape, value, dtype=mat.dtype, device=mat.device)
        if not self.all_have:
            src = torch.where(self.has.unsqueeze(1), src, mat.gather(1, self.idx))
        return mat.scatter_(1, self.idx, src)

    def add_pos_(self, mat: Tensor, values: Tensor) -> Tensor:
        """``mat[i, idx[i, k]] += values[i, k]`` over the positive slots, in place."""
        return mat.scatter_add_(1, self.idx, values.masked_fill(~self.pos, 0.0))


def members(labels: Tensor, ref_labels: Tensor | int, self_ref: bool) -> Members:
    """The :class:`Members` of ``labels`` in ``ref_labels`` (O((N + M) log M)); an ``int``
    ``ref_labels`` C means the references are the classes ``0..C-1`` themselves (proxies)."""
    if isinstance(ref_labels, int):  # one member per row: its class (labels in [0, C))
        n = labels.shape[0]
        ones = torch.ones(n, dtype=torch.long, device=labels.device)
        return Members(labels.long().unsqueeze(1), ones.bool().unsqueeze(1), ones,
                       ones * (ref_labels - 1), ones.bool(), True, False)
    n, m = labels.shape[0], ref_labels.shape[0]
    order = torch.argsort(ref_labels, stable=True)
    srt = ref_labels[order].contiguous()
    q = labels.to(srt.dtype).contiguous()
    start = torch.searchsorted(srt, q, side="left")
    cnt = torch.searchsorted(srt, q, side="right") - start
    compiling = torch.compiler.is_compiling()
    # K = the largest class size; under torch.compile its static bound M instead (a
    # data-dependent width would break the graph): the extra slots are padding (pos False,
    # pointing at the row's first member), so every result is the same, at O(N·M) indices.
    k = max(m, 1) if compiling else (max(int(cnt.max()), 1) if n else 1)
    ar = torch.arange(k, device=labels.device)
    real = ar.unsqueeze(0) < cnt.unsqueeze(1)
    slot = (start.unsqueeze(1) + torch.where(real, ar, 0)).clamp_max_(max(m - 1, 0))
    idx = order[slot]
    has = cnt > 0
    if self_ref:
        pos = real & (idx != torch.arange(n, device=idx.device).unsqueeze(1))
        n_pos = cnt - 1
    else:
        pos, n_pos = real, cnt
    # all_have is a fast-path flag: always true for the batch itself; under compile the
    # general (masked) path is taken for a separate reference set
    all_have = self_ref or (not compiling and bool(has.all()))
    return Members(idx, pos, n_pos, m - cnt, has, all_have, self_ref)


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


# --------------------------------------------------------------------------------------------
# Miner index tuples (``indices=``)
# --------------------------------------------------------------------------------------------


def _check_miner_index(name: str, t: object, bound: int, bound_name: str) -> Tensor:
    """One tensor of a miner tuple: 1-D integers in ``[0, bound)``."""
    if not isinstance(t, Tensor):
        raise ValueError(f"indices: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool or t.ndim != 1:
        raise ValueError(
            f"indices: {name} must be a 1-D integer tensor, got dtype {t.dtype} and shape "
            f"{tuple(t.shape)}"
        )
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= bound):
        raise ValueError(
            f"indices: {name} must lie in [0, {bound}) (rows of {bound_name}), got values in "
            f"[{int(t.min())}, {int(t.max())}]"
        )
    return t.long()


def check_miner_indices(indices: object, n: int, m: int) -> Pairs | Triplets:
    """Validate a miner's ``indices=`` tuple: ``(a, p, n)`` triplets or ``(a1, p, a2, n)`` pairs.

    Anchors index the query rows (``[0, n)``), positives/negatives the reference rows
    (``[0, m)``). Raises ``ValueError`` naming what is wrong.
    """
    if not isinstance(indices, (tuple, list)) or len(indices) not in (3, 4):
        raise ValueError(
            "indices must be a tuple (anchors, positives, negatives) of triplets or "
            f"(anchors1, positives, anchors2, negatives) of pairs, got {type(indices).__name__}"
            + (f" of length {len(indices)}" if isinstance(indices, (tuple, list)) else "")
        )
    if len(indices) == 3:
        a = _check_miner_index("anchors", indices[0], n, "embeddings")
        p = _check_miner_index("positives", indices[1], m, "the reference set")
        ng = _check_miner_index("negatives", indices[2], m, "the reference set")
        if not a.shape == p.shape == ng.shape:
            raise ValueError(
                "indices: anchors, positives and negatives must have one length, got "
                f"{a.shape[0]}, {p.shape[0]}, {ng.shape[0]}"
            )
        return a, p, ng
    a1 = _check_miner_index("anchors1", indices[0], n, "embeddings")
    p = _check_miner_index("positives", indices[1], m, "the reference set")
    a2 = _check_miner_index("anchors2", indices[2], n, "embeddings")
    ng = _check_miner_index("negatives", indices[3], m, "the reference set")
    if a1.shape != p.shape:
        raise ValueError(f"indices: anchors1 and positives differ in length ({a1.shape[0]}, "
                         f"{p.shape[0]})")
    if a2.shape != ng.shape:
        raise ValueError(f"indices: anchors2 and negatives differ in length ({a2.shape[0]}, "
                         f"{ng.shape[0]})")
    return a1, p, a2, ng


def triplets_from_indices(idx: Pairs | Triplets) -> Triplets:
    """Triplets from an index tuple; pairs become every ``(a, p, n)`` with ``a1 == a2``."""
    if len(idx) == 3:
        return idx
    a1, p, a2, n = idx
    i, j = torch.where(a1.unsqueeze(1) == a2.unsqueeze(0))
    return a1[i], p[i], n[j]


def pairs_from_indices(idx: Pairs | Triplets) -> Pairs:
    """Pairs from an index tuple; a triplet ``(a, p, n)`` gives ``(a, p)`` and ``(a, n)``."""
    if len(idx) == 4:
        return idx
    a, p, n = idx
    return a, p, a, n


# --------------------------------------------------------------------------------------------
# The validated batch
# --------------------------------------------------------------------------------------------


@dataclass
class PairBatch:
    """A validated batch against its reference set.

    Attributes:
        mat: ``[N, M]`` distances (``similarity=False``) or similarities.
        pos: ``[N, M]`` bool, positive pairs (same label; self-pairs excluded).
        neg: ``[N, M]`` bool, negative pairs.
        similarity: whether ``mat`` holds similarities (larger = closer).
        indices: the validated ``indices=`` tuple (pairs or triplets) when it was given, else
            ``None`` (then ``pos`` / ``neg`` come from the labels).
        embeddings: the query embeddings, in the compute dtype (float32 for half inputs).
        ref: the reference embeddings (``embeddings`` itself for the batch against itself).
        labels: the query labels (int64).
    """

    mat: Tensor
    pos: Tensor
    neg: Tensor
    similarity: bool
    indices: Pairs | Triplets | None
    embeddings: Tensor
    ref: Tensor
    labels: Tensor

    def zero(self) -> Tensor:
        """A zero connected to the embeddings and the reference set, NaN when either holds a
        non-finite entry (see :meth:`Batch.zero`)."""
        return (zero_loss(self.embeddings) if self.ref is self.embeddings
                else zero_loss(self.embeddings, self.ref))

    @property
    def u(self) -> Tensor:
        """``mat`` as a distance-like quantity (smaller = closer): ``d`` or ``-s``."""
        return -self.mat if self.similarity else self.mat

    @property
    def pairs(self) -> Pairs | None:
        """The ``indices=`` as pairs (a triplet gives its two pairs), or ``None``."""
        return None if self.indices is None else pairs_from_indices(self.indices)

    @property
    def triplets(self) -> Triplets | None:
        """The ``indices=`` as triplets (pairs sharing an anchor combine), or ``None``."""
        return None if self.indices is None else triplets_from_indices(self.indices)


class Batch(NamedTuple):
    """A validated ``embeddings``-kind batch (:func:`validate_batch`).

    Attributes:
        embeddings: the queries ``[N, D]`` in the compute dtype (float32 for half inputs; a
            differentiable cast, the input itself otherwise).
        labels: ``[N]`` int64.
        ref: the reference set ``[M, D]`` in the compute dtype (``embeddings`` itself when
            ``self_ref``).
        ref_labels: ``[M]`` int64 (``labels`` itself when ``self_ref``).
        self_ref: the reference set is the batch itself.
    """

    embeddings: Tensor
    labels: Tensor
    ref: Tensor
    ref_labels: Tensor
    self_ref: bool

    @property
    def reference(self) -> tuple[Tensor | None, Tensor | None]:
        """``(ref, ref_labels)``, or ``(None, None)`` for the batch against itself: the
        reference arguments of :func:`losslab.kernels.matrix_loss.matrix_loss`."""
        return (None, None) if self.self_ref else (self.ref, self.ref_labels)

    def zero(self) -> Tensor:
        """A zero connected to the embeddings and the reference set: NaN (or inf) anywhere in
        them makes it NaN, so no pair selection (hinge, mining, hard pairs) can hide a
        non-finite input behind a finite loss."""
        return zero_loss(self.embeddings) if self.self_ref else zero_loss(self.embeddings,
                                                                          self.ref)


def validate_batch(
    embeddings: Tensor,
    labels: Tensor,
    ref_embeddings: Tensor | None,
    ref_labels: Tensor | None,
) -> Batch:
    """Check the ``embeddings``-kind inputs; return them as a :class:`Batch` (compute dtype,
    int64 labels)."""
    check_matrix("embeddings", embeddings)
    labels = check_labels("labels", labels, embeddings.shape[0], of="embeddings")
    check_same_device(embeddings=embeddings, labels=labels)
    x = embeddings.to(compute_dtype(embeddings.dtype))
    if ref_embeddings is None or ref_labels is None:
        if ref_embeddings is not None or ref_labels is not None:
            raise ValueError("ref_embeddings and ref_labels must be given together (or neither)")
        return Batch(x, labels, x, labels, True)
    check_matrix("ref_embeddings", ref_embeddings, dim=embeddings.shape[1])
    ref_labels = check_labels("ref_labels", ref_labels, ref_embeddings.shape[0],
                              of="ref_embeddings")
    if ref_embeddings.dtype != embeddings.dtype:
        raise ValueError(
            f"ref_embeddings must have the dtype of embeddings ({embeddings.dtype}), got "
            f"{ref_embeddings.dtype}"
        )
    check_same_device(embeddings=embeddings, ref_embeddings=ref_embeddings, ref_labels=ref_labels)
    return Batch(x, labels, ref_embeddings.to(x.dtype), ref_labels, False)


def pair_batch(
    embeddings: Tensor,
    labels: Tensor,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    indices: object = None,
    *,
    metric: str,
    allowed: tuple[str, ...] = METRICS,
    eps: float = 0.0,
) -> PairBatch:
    """Validate the inputs (:func:`validate_batch`: compute dtype, int64 labels) and build the
    distance matrix and the pair masks.

    ``indices`` (triplets or pairs) replace the label masks: a pair is positive/negative iff it
    is listed. Euclidean distances use ``eps=0`` (exact, zero gradient at coincident points).
    """
    check_choice("metric", metric, allowed)
    vb = validate_batch(embeddings, labels, ref_embeddings, ref_labels)
    n, m = vb.embeddings.shape[0], vb.ref.shape[0]
    mat = pairwise(vb.embeddings, None if vb.self_ref else vb.ref, metric=metric, eps=eps)
    idx: Pairs | Triplets | None = None
    if indices is None:
        pos, neg = label_masks(vb.labels, vb.ref_labels, vb.self_ref)
    else:
        idx = check_miner_indices(indices, n, m)
        a1, p, a2, ng = pairs_from_indices(idx)
        pos = torch.zeros(n, m, dtype=torch.bool, device=mat.device)
        neg = torch.zeros(n, m, dtype=torch.bool, device=mat.device)
        pos[a1, p] = True
        neg[a2, ng] = True
    return PairBatch(mat, pos, neg, is_similarity(metric), idx, vb.embeddings, vb.ref, vb.labels)
