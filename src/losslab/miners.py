"""Miners: pick informative pairs/triplets of a batch, as index tuples for ``indices=``.

Every miner runs under ``torch.no_grad`` and returns either triplets ``(a, p, n)`` or pairs
``(a1, p, a2, n)``: anchors index rows of ``embeddings``, positives/negatives rows of the
reference set (``ref_embeddings``, or the batch itself, in which case an anchor is never its
own positive). Every pair/triplet loss of :mod:`losslab.losses.metric_learning` accepts
both forms.
Each miner builds the ``[N, M]`` distance matrix once and works with masked O(N·M) ops.

Inputs are validated as the losses' (labels of any integer dtype, bool rejected; half
embeddings mined on float32 distances). Embeddings with a NaN or inf entry are a
``ValueError``: their distances cannot be ordered, and a miner that silently skipped (or
arbitrarily picked) such a sample would let the loss on its tuples hide the fault.
Hyperparameters are checked with the losses' rules (:mod:`losslab._hparams`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from losslab._hparams import Real, hparams
from losslab._ops.pairs import PairBatch, ms_pair_mining, pair_batch, validate_batch
from losslab.distances import METRICS, normalize_rows

__all__ = ["batch_hard", "distance_weighted", "multi_similarity", "semi_hard"]


_check_miners = hparams(margin=Real(ge=0), epsilon=Real(ge=0), cutoff=Real(gt=0),
                        nonzero_loss_cutoff=Real(gt=0))


def _batch(embeddings: Tensor, labels: Tensor, ref_embeddings: Tensor | None,
           ref_labels: Tensor | None, metric: str, allowed: tuple[str, ...] = METRICS, *,
           normalize: bool = False) -> PairBatch:
    """The validated batch (compute dtype, int64 labels) and its matrix; ``normalize``: on
    L2-normalised embeddings. Raises a ``ValueError`` for non-finite embeddings."""
    vb = validate_batch(embeddings, labels, ref_embeddings, ref_labels)
    for name, t in (("embeddings", vb.embeddings), ("ref_embeddings", vb.ref)):
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} must be finite to mine pairs, got NaN or inf entries")
    x, r = vb.embeddings.detach(), vb.ref.detach()
    if normalize:
        x = normalize_rows(x)
        r = x if vb.self_ref else normalize_rows(r)
    ref, ref_lab = vb.reference
    return pair_batch(x, vb.labels, None if ref is None else r, ref_lab, metric=metric,
                      allowed=allowed)


@torch.no_grad()
def batch_hard(
    embeddings: Tensor,
    labels: Tensor,
    *,
    metric: str = "euclidean",
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """One triplet per anchor: its farthest positive and its nearest negative.

    Anchors without a positive or a negative are skipped. Same triplets as PML's
    ``BatchHardMiner`` (with the same distance).

    Paper: Hermans, Beyer, Leibe, "In Defense of the Triplet Loss", arXiv 1703.07737.
    """
    b = _batch(embeddings, labels, ref_embeddings, ref_labels, metric)
    u = b.u
    p = u.masked_fill(~b.pos, float("-inf")).argmax(dim=1)
    n = u.masked_fill(~b.neg, float("inf")).argmin(dim=1)
    a = torch.where(b.pos.any(1) & b.neg.any(1))[0]
    return a, p[a], n[a]


@torch.no_grad()
def semi_hard(
    embeddings: Tensor,
    labels: Tensor,
    *,
    margin: float = 0.2,
    metric: str = "euclidean",
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """One triplet per positive pair ``(a, p)``: the nearest semi-hard negative, i.e. the
    nearest negative with ``d_ap < d_an <= d_ap + margin`` (FaceNet's selection); positive pairs
    without one are skipped.

    Every returned triplet is one of PML's ``TripletMarginMiner(margin, "semihard")`` triplets,
    which lists *all* semi-hard triplets (O(B^3) indices); this keeps one per positive pair.

    Paper: Schroff, Kalenichenko, Philbin, "FaceNet", arXiv 1503.03832.
    """
    _check_miners(margin=margin)
    b = _batch(embeddings, labels, ref_embeddings, ref_labels, metric)
    u = b.u
    key = u.masked_fill(~b.neg, float("inf"))
    order = key.argsort(dim=1)
    sk = key.gather(1, order)
    nneg = b.neg.sum(1, keepdim=True)
    idx = torch.searchsorted(sk, u.contiguous(), side="right")
    ok = b.pos & (idx < nneg)
    safe = idx.clamp_max(u.shape[1] - 1)
    u_an = sk.gather(1, safe)
    ok &= u_an <= u + margin
    a, p = torch.where(ok)
    return a, p, order[a, safe[a, p]]


@torch.no_grad()
def multi_similarity(
    embeddings: Tensor,
    labels: Tensor,
    *,
    epsilon: float = 0.1,
    metric: str = "cosine",
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The multi-similarity pair mining: pairs ``(a1, p, a2, n)``.

    A positive is kept if ``s_ap - epsilon < max_n s_an``, a negative if
    ``s_an + epsilon > min_p s_ap`` (see :func:`losslab._ops.pairs.ms_pair_mining`). Same
    pairs as PML's ``MultiSimilarityMiner``.

    Paper: Wang et al., "Multi-Similarity Loss with General Pair Weighting", arXiv 1904.06627.
    """
    _check_miners(epsilon=epsilon)
    b = _batch(embeddings, labels, ref_embeddings, ref_labels, metric, ("cosine", "dot"))
    pos, neg = ms_pair_mining(b.mat, b.pos, b.neg, epsilon)
    a1, p = torch.where(pos)
    a2, n = torch.where(neg)
    return a1, p, a2, n


@torch.no_grad()
def distance_weighted(
    embeddings: Tensor,
    labels: Tensor,
    *,
    cutoff: float = 0.5,
    nonzero_loss_cutoff: float = 1.4,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    r"""Distance-weighted sampling: one negative per positive pair ``(a, p)``, drawn with
    probability proportional to the inverse density of distances on the unit sphere,

    .. math::
        w(d) \propto \min\big(\lambda, q(d)^{-1}\big),\qquad
        q(d) \propto d^{D-2}\,\big(1 - \tfrac{d^2}{4}\big)^{\frac{D-3}{2}}

    on L2-normalised embeddings, with :math:`d` clipped below at ``cutoff`` (the paper's 0.5)
    and negatives at :math:`d \ge` ``nonzero_loss_cutoff`` (1.4) given weight 0 (they would have
    zero margin loss). Anchors with no eligible negative are skipped. ``generator`` seeds the
    draw.

    Paper: Wu et al., "Sampling Matters in Deep Embedding Learning", arXiv 1706.07567.
    """
    _check_miners(cutoff=cutoff, nonzero_loss_cutoff=nonzero_loss_cutoff)
    b = _batch(embeddings, labels, ref_embeddings, ref_labels, "euclidean", normalize=True)
    dim = float(embeddings.shape[1])
    d = b.mat.clamp_min(cutoff)
    inside = (1.0 - 0.25 * d * d).clamp_min(torch.finfo(d.dtype).tiny)
    log_w = (2.0 - dim) * torch.log(d) - ((dim - 3.0) / 2.0) * torch.log(inside)
    eligible = b.neg & (b.mat < nonzero_loss_cutoff) & (1.0 - 0.25 * d * d > 0)
    log_w = log_w.masked_fill(~eligible, float("-inf"))
    mx = log_w.amax(dim=1, keepdim=True)
    w = torch.exp(log_w - torch.where(torch.isfinite(mx), mx, torch.zeros_like(mx)))
    has = eligible.any(1)
    a, p = torch.where(b.pos & has.unsqueeze(1))
    if a.numel() == 0:
        empty = a.new_zeros(0)
        return empty, empty.clone(), empty.clone()
    n = torch.multinomial(w[a].float(), 1, replacement=True, generator=generator).squeeze(1)
    return a, p, n
