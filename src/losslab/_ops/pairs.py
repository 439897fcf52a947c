"""Private core of the pair/triplet (``embeddings`` kind) losses and miners.

One place builds, for a batch of query embeddings ``[N, D]`` against a reference set ``[M, D]``
(the batch itself unless ``ref_embeddings`` is given):

* the ``[N, M]`` distance or similarity matrix, with :func:`losslab.distances.pairwise`;
* the positive and negative masks from labels (``labels[:, None] == ref_labels[None, :]``,
  self-pairs excluded only when the reference is the batch itself), or from ``indices=``;
* helpers for masked log-sum-exp and index validation.

Every loss is then written with masked O(N·M) tensor ops: nothing here builds an ``[N, M, M]``
tensor or materialises a list of all triplets.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from losslab._core import (
    check_choice,
    check_labels,
    check_matrix,
    check_same_device,
)
from losslab.distances import METRICS, is_similarity, pairwise
from losslab.kernels.matrix_loss import label_masks

__all__ = [
    "PairBatch",
    "Pairs",
    "Triplets",
    "check_indices",
    "masked_logsumexp",
    "pair_batch",
    "triplets_from_indices",
    "weighted_log1p_sum_exp",
]

Pairs = tuple[Tensor, Tensor, Tensor, Tensor]
Triplets = tuple[Tensor, Tensor, Tensor]


@dataclass
class PairBatch:
    """A validated batch against its reference set.

    Attributes:
        mat: ``[N, M]`` distances (``similarity=False``) or similarities.
        pos: ``[N, M]`` bool, positive pairs (same label; self-pairs excluded).
        neg: ``[N, M]`` bool, negative pairs.
        similarity: whether ``mat`` holds similarities (larger = closer).
        pairs: the explicit ``(a1, p, a2, n)`` pairs when ``indices=`` was given, else ``None``.
        triplets: the explicit ``(a, p, n)`` triplets when ``indices=`` was a triplet tuple.
        embeddings: the query embeddings (for zero losses connected to the graph).
    """

    mat: Tensor
    pos: Tensor
    neg: Tensor
    similarity: bool
    pairs: Pairs | None
    triplets: Triplets | None
    embeddings: Tensor
    ref: Tensor

    @property
    def u(self) -> Tensor:
        """``mat`` as a distance-like quantity (smaller = closer): ``d`` or ``-s``."""
        return -self.mat if self.similarity else self.mat


def _check_index(name: str, t: object, bound: int, bound_name: str) -> Tensor:
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


def check_indices(indices: object, n: int, m: int) -> Pairs | Triplets:
    """Validate an index tuple: ``(a, p, n)`` triplets or ``(a1, p, a2, n)`` pairs.

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
        a = _check_index("anchors", indices[0], n, "embeddings")
        p = _check_index("positives", indices[1], m, "the reference set")
        ng = _check_index("negatives", indices[2], m, "the reference set")
        if not a.shape == p.shape == ng.shape:
            raise ValueError(
                "indices: anchors, positives and negatives must have one length, got "
                f"{a.shape[0]}, {p.shape[0]}, {ng.shape[0]}"
            )
        return a, p, ng
    a1 = _check_index("anchors1", indices[0], n, "embeddings")
    p = _check_index("positives", indices[1], m, "the reference set")
    a2 = _check_index("anchors2", indices[2], n, "embeddings")
    ng = _check_index("negatives", indices[3], m, "the reference set")
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
        return idx  # type: ignore[return-value]
    a1, p, a2, n = idx  # type: ignore[misc]
    i, j = torch.where(a1.unsqueeze(1) == a2.unsqueeze(0))
    return a1[i], p[i], n[j]


def pairs_from_indices(idx: Pairs | Triplets) -> Pairs:
    """Pairs from an index tuple; a triplet ``(a, p, n)`` gives ``(a, p)`` and ``(a, n)``."""
    if len(idx) == 4:
        return idx  # type: ignore[return-value]
    a, p, n = idx  # type: ignore[misc]
    return a, p, a, n


def validate_batch(
    embeddings: Tensor,
    labels: Tensor,
    ref_embeddings: Tensor | None,
    ref_labels: Tensor | None,
) -> tuple[Tensor, Tensor, bool]:
    """Check the ``embeddings``-kind inputs; return ``(ref, ref_labels, ref_is_batch)``."""
    check_matrix("embeddings", embeddings)
    check_labels("labels", labels, embeddings.shape[0], of="embeddings")
    check_same_device(embeddings=embeddings, labels=labels)
    if (ref_embeddings is None) != (ref_labels is None):
        raise ValueError("ref_embeddings and ref_labels must be given together (or neither)")
    if ref_embeddings is None:
        return embeddings, labels, True
    check_matrix("ref_embeddings", ref_embeddings, dim=embeddings.shape[1])
    check_labels("ref_labels", ref_labels, ref_embeddings.shape[0], of="ref_embeddings")
    if ref_embeddings.dtype != embeddings.dtype:
        raise ValueError(
            f"ref_embeddings must have the dtype of embeddings ({embeddings.dtype}), got "
            f"{ref_embeddings.dtype}"
        )
    check_same_device(embeddings=embeddings, ref_embeddings=ref_embeddings, ref_labels=ref_labels)
    return ref_embeddings, ref_labels, False  # type: ignore[return-value]


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
    """Validate the inputs and build the distance matrix and the pair masks.

    ``indices`` (triplets or pairs) replace the label masks: a pair is positive/negative iff it
    is listed. Euclidean distances use ``eps=0`` (exact, zero gradient at coincident points).
    """
    check_choice("metric", metric, allowed)
    ref, ref_lab, ref_is_batch = validate_batch(embeddings, labels, ref_embeddings, ref_labels)
    n, m = embeddings.shape[0], ref.shape[0]
    mat = pairwise(embeddings, None if ref_is_batch else ref, metric=metric, eps=eps)
    pairs: Pairs | None = None
    triplets: Triplets | None = None
    if indices is None:
        pos, neg = label_masks(labels, ref_lab, ref_is_batch)
    else:
        idx = check_indices(indices, n, m)
        if len(idx) == 3:
            triplets = idx  # type: ignore[assignment]
        pairs = pairs_from_indices(idx)
        a1, p, a2, ng = pairs
        pos = torch.zeros(n, m, dtype=torch.bool, device=mat.device)
        neg = torch.zeros(n, m, dtype=torch.bool, device=mat.device)
        pos[a1, p] = True
        neg[a2, ng] = True
    return PairBatch(mat, pos, neg, is_similarity(metric), pairs, triplets, embeddings, ref)


def masked_logsumexp(x: Tensor, mask: Tensor, dim: int = 1) -> tuple[Tensor, Tensor]:
    """``log sum_{mask} exp(x)`` along ``dim`` and the non-empty flag.

    Empty rows give ``-inf`` in the value; their gradient is exactly zero (never NaN).
    """
    xm = x.masked_fill(~mask, float("-inf"))
    mx = xm.amax(dim=dim, keepdim=True).detach()
    mx = torch.where(torch.isfinite(mx), mx, torch.zeros_like(mx))
    s = torch.exp(xm - mx).sum(dim=dim)
    nonempty = mask.any(dim=dim)
    s = torch.where(nonempty, s, torch.ones_like(s))
    out = torch.log(s) + mx.squeeze(dim)
    return out.masked_fill(~nonempty, float("-inf")), nonempty


def weighted_log1p_sum_exp(x: Tensor, w: Tensor, dim: int = 1) -> Tensor:
    """``log(1 + sum_j w_j exp(x_j))`` along ``dim`` for weights ``w >= 0``, computed stably.

    Entries with ``w == 0`` contribute nothing and get zero gradient; an all-zero row gives 0.
    """
    active = w > 0
    xm = x.masked_fill(~active, float("-inf"))
    mx = xm.amax(dim=dim, keepdim=True).detach().clamp_min(0.0)
    mx = torch.where(torch.isfinite(mx), mx, torch.zeros_like(mx))
    terms = torch.where(active, w * torch.exp(xm - mx), torch.zeros_like(x))
    return torch.log(torch.exp(-mx.squeeze(dim)) + terms.sum(dim=dim)) + mx.squeeze(dim)
