"""Retrieval metrics for deep metric learning, and threshold-consistency metrics (OPIS).

:func:`retrieval_metrics` computes precision@1, recall@k, MAP@R, R-precision and the mean
reciprocal rank of a query set against a reference set (or the query set against itself,
leaving each query out, the DML convention of "A Metric Learning Reality Check"). It works on
query chunks: per chunk, one ``[chunk, M]`` score block (written into one reused buffer), one
exact top-``K`` with ``K = max(R_max, max(k))`` (``R`` = number of references of the query's
class; :func:`losslab._ops.selection.topk_rows`: group maxima, then the candidates of the
``K`` best groups, 1.8x faster than ``torch.topk`` of the rows at 100k references), and the
exact rank of the first correct reference for MRR. Memory is O(chunk·M + N·K); no faiss needed
(faiss is used for the top-K search when importable and ``backend="auto"``).

:func:`opis` / :func:`epsilon_opis`: the threshold-inconsistency metrics of the TCM paper.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from losslab._core import (
    check_choice,
    check_labels,
    check_matrix,
    check_positive,
    compute_dtype,
)
from losslab._ops.selection import topk_rows
from losslab.distances import normalize_rows

__all__ = ["RETRIEVAL_METRICS", "epsilon_opis", "opis", "retrieval_metrics"]

RETRIEVAL_METRICS: tuple[str, ...] = (
    "precision_at_1", "map_at_r", "r_precision", "mrr", "recall_at_k",
)


#: Scores per query block (``chunk_size`` default: this many divided by the reference count).
DEFAULT_BLOCK_SCORES = 64 << 20


def _faiss():
    try:
        import faiss  # type: ignore[import-not-found]
    except Exception:  # pragma: no cover - optional
        return None
    return faiss


def _augmented_reference(r: Tensor, metric: str) -> Tensor:
    """``[r, |r|^2]`` for the euclidean score (one product, :func:`_scores`), ``r`` for cosine."""
    if metric == "euclidean":
        return torch.cat([r, r.pow(2).sum(1, keepdim=True)], dim=1)
    return r


def _scores(q: Tensor, r_aug: Tensor, metric: str, out: Tensor) -> Tensor:
    """Scores whose descending order is the nearest-first order (no sqrt, no |q|^2 term),
    written into ``out`` (one buffer reused by every chunk: a fresh block of this size costs
    its page faults again at every chunk, ~10% of the product's time on the 2-core CPU).

    Euclidean: ``2 q.r - |r|^2`` as one product of augmented rows, ``[2q, -1] . [r, |r|^2]``
    (``r_aug`` from :func:`_augmented_reference`): ``addmm`` with the ``-|r|^2`` row as bias
    first writes the broadcast bias into the whole block and then reads it back in the
    product, two extra passes over a block far larger than the cache (3-8% of the product's
    time at 32k-100k references, ``benchmarks/README.md``)."""
    if metric == "euclidean":
        q_aug = torch.cat([2.0 * q, q.new_full((q.shape[0], 1), -1.0)], dim=1)
        return torch.mm(q_aug, r_aug.t(), out=out)
    return torch.mm(q, r_aug.t(), out=out)


@torch.no_grad()
def retrieval_metrics(
    query: Tensor,
    query_labels: Tensor,
    reference: Tensor | None = None,
    reference_labels: Tensor | None = None,
    *,
    metrics: Sequence[str] = RETRIEVAL_METRICS,
    k: Sequence[int] = (1, 2, 4, 8),
    metric: str = "euclidean",
    chunk_size: int | None = None,
    backend: str = "auto",
) -> dict[str, float]:
    r"""Retrieval metrics of ``query`` against ``reference`` (default: the query set itself,
    each query excluded from its own results).

    For a query with :math:`R` relevant references (same label) and relevance :math:`rel_j` of
    its :math:`j`-th nearest reference:

    * ``precision_at_1``: :math:`rel_1`;
    * ``recall_at_k`` (reported as ``recall_at_{k}`` for each k): :math:`\max_{j \le k} rel_j`
      (the DML "Recall@K": at least one relevant reference in the top k);
    * ``r_precision``: :math:`\frac1R\sum_{j \le R} rel_j`;
    * ``map_at_r``: :math:`\frac1R\sum_{j \le R} rel_j\, P@j` (Musgrave et al.);
    * ``mrr``: :math:`1 / \text{rank of the first relevant reference}` (exact, over all
      references).

    Each is averaged over the queries that have :math:`R \ge 1` (as PML drops "lone" queries).
    Distances: ``"euclidean"`` (ranking by :math:`\|q - r\|`) or ``"cosine"`` (on L2-normalised
    vectors). Ties are broken by the top-k order of the backend.

    Args:
        chunk_size: query rows per block (default: ~64 M scores per block).
        backend: ``"auto"`` (faiss if importable, else torch), ``"torch"`` or ``"faiss"``.

    Returns a dict of floats (plus ``"num_queries"``, the number of queries averaged over).
    """
    check_matrix("query", query)
    check_labels("query_labels", query_labels, query.shape[0], of="query")
    check_choice("metric", metric, ("euclidean", "cosine"))
    check_choice("backend", backend, ("auto", "torch", "faiss"))
    for name in metrics:
        check_choice("metrics", name, RETRIEVAL_METRICS)
    ks = sorted({int(v) for v in k})
    if not ks or ks[0] < 1:
        raise ValueError(f"k must be positive integers, got {list(k)}")
    self_mode = reference is None
    if self_mode != (reference_labels is None):
        raise ValueError("reference and reference_labels must be given together (or neither)")
    if self_mode:
        reference, reference_labels = query, query_labels
    else:
        check_matrix("reference", reference, dim=query.shape[1])
        if reference_labels is None:
            raise ValueError("reference_labels must be given with reference")
        check_labels("reference_labels", reference_labels, reference.shape[0], of="reference")
    q = query.to(compute_dtype(query.dtype))
    r = reference.to(compute_dtype(reference.dtype))
    if metric == "cosine":
        q = normalize_rows(q)
        r = q if self_mode else normalize_rows(r)
    ql, rl = query_labels.long(), reference_labels.long()
    # R per query: reference count of its label (minus itself in self mode)
    uniq, inv = torch.unique(torch.cat([rl, ql]), return_inverse=True)
    ref_counts = torch.bincount(inv[: rl.numel()], minlength=uniq.numel())
    R = ref_counts[inv[rl.numel():]] - (1 if self_mode else 0)
    n_ref = r.shape[0] - (1 if self_mode else 0)
    K = int(min(n_ref, max(int(R.max()) if R.numel() else 0, ks[-1])))
    if K < 1:
        raise ValueError("the reference set must hold at least one item besides the query")
    use_faiss = backend == "faiss" or (backend == "auto" and _faiss() is not None)
    if backend == "faiss" and _faiss() is None:
        raise ValueError("backend='faiss' but faiss is not importable")
    if chunk_size is None:
        chunk_size = max(1, min(q.shape[0], DEFAULT_BLOCK_SCORES // max(1, r.shape[0])))
    check_positive("chunk_size", chunk_size)

    index = None
    if use_faiss:
        faiss = _faiss()
        if faiss is None:
            raise ValueError("backend='faiss' but faiss is not importable")
        rn = r.detach().cpu().float().contiguous().numpy()
        index = (faiss.IndexFlatL2 if metric == "euclidean" else faiss.IndexFlatIP)(rn.shape[1])
        index.add(rn)
    want_mrr = "mrr" in metrics
    hits_all, rr_all = [], []
    need_block = index is None or want_mrr
    r_aug = _augmented_reference(r, metric) if need_block else r
    buf = (torch.empty(min(chunk_size, q.shape[0]), r.shape[0], dtype=q.dtype, device=q.device)
           if need_block else None)
    block: Tensor | None = None
    for s in range(0, q.shape[0], chunk_size):
        qc = q[s : s + chunk_size]
        rows = torch.arange(qc.shape[0], device=q.device)
        block = (_scores(qc, r_aug, metric, buf[: qc.shape[0]])  # type: ignore[index]
                 if need_block else None)
        if self_mode and block is not None:
            block[rows, rows + s] = float("-inf")
        if index is not None:
            kk = K + (1 if self_mode else 0)
            _, idx_np = index.search(qc.detach().cpu().float().contiguous().numpy(), kk)
            idx = torch.as_tensor(idx_np, device=q.device)
            if self_mode:  # drop the query itself (wherever faiss put it among ties)
                keep = idx != (rows + s).unsqueeze(1)
                first = keep.cumsum(1) <= K
                idx = idx[keep & first].view(qc.shape[0], K)
            else:
                idx = idx[:, :K]
        else:
            idx = topk_rows(block, K)  # type: ignore[arg-type]
        hits = rl[idx] == ql[s : s + chunk_size].unsqueeze(1)
        hits_all.append(hits)
        if want_mrr:
            same = rl.unsqueeze(0) == ql[s : s + chunk_size].unsqueeze(1)
            if self_mode:
                same[rows, rows + s] = False
            best = block.masked_fill(~same, float("-inf")).amax(dim=1, keepdim=True)  # type: ignore
            rank = (block > best).sum(dim=1) + 1  # type: ignore
            rr_all.append(torch.where(same.any(1), 1.0 / rank.double(),
                                      torch.zeros_like(rank, dtype=torch.float64)))
    del buf, block  # the score buffer is not needed past the chunks (peak memory)
    hits = torch.cat(hits_all)  # [N, K]
    valid = R > 0
    hits, Rv = hits[valid], R[valid]
    out: dict[str, float] = {"num_queries": float(valid.sum())}
    if hits.shape[0] == 0:
        raise ValueError("no query has a relevant reference (every query label is unique)")
    h = hits.double()
    if "precision_at_1" in metrics:
        out["precision_at_1"] = float(h[:, 0].mean())
    if "recall_at_k" in metrics:
        for kv in ks:
            out[f"recall_at_{kv}"] = float(h[:, : min(kv, K)].amax(dim=1).mean())
    pos = torch.arange(1, K + 1, device=h.device, dtype=torch.float64).unsqueeze(0)
    within = pos <= Rv.unsqueeze(1).double()
    if "r_precision" in metrics:
        out["r_precision"] = float(((h * within).sum(1) / Rv.double()).mean())
    if "map_at_r" in metrics:
        prec = h.cumsum(1) / pos
        out["map_at_r"] = float(((prec * h * within).sum(1) / Rv.double()).mean())
    if want_mrr:
        out["mrr"] = float(torch.cat(rr_all)[valid].mean())
    return out


# --------------------------------------------------------------------------------------------
# OPIS
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def _class_utilities(
    embeddings: Tensor, labels: Tensor, *, far_range: tuple[float, float],
    num_thresholds: int, chunk_size: int | None,
) -> Tensor:
    """``U[c, t]``: per-class utility (harmonic mean of TPR and TNR) at each threshold of the
    calibration range; thresholds on cosine similarity (accept a pair when ``s >= t``)."""
    check_matrix("embeddings", embeddings)
    check_labels("labels", labels, embeddings.shape[0], of="embeddings")
    lo, hi = far_range
    if not 0 < lo < hi <= 1:
        raise ValueError(f"far_range must satisfy 0 < low < high <= 1, got {far_range}")
    check_positive("num_thresholds", num_thresholds)
    x = torch.nn.functional.normalize(embeddings.double(), dim=1)
    _, cls = torch.unique(labels, return_inverse=True)
    n, c = x.shape[0], int(cls.max()) + 1
    # fine grid of similarity bins; counts of positive / negative pairs per (class, bin)
    n_bins = 4096
    edges = torch.linspace(-1.0, 1.0, n_bins + 1, dtype=torch.float64, device=x.device)
    pos_h = torch.zeros(c, n_bins + 1, dtype=torch.float64, device=x.device)
    neg_h = torch.zeros_like(pos_h)
    if chunk_size is None:
        chunk_size = max(1, (16 << 20) // max(1, n))
    for s in range(0, n, chunk_size):
        sim = x[s : s + chunk_size] @ x.t()
        rows = torch.arange(sim.shape[0], device=x.device)
        same = cls[s : s + chunk_size].unsqueeze(1) == cls.unsqueeze(0)
        valid = torch.ones_like(same)
        valid[rows, rows + s] = False  # no self-pairs
        b = torch.bucketize(sim.clamp(-1, 1), edges)  # bin index
        row_cls = cls[s : s + chunk_size].unsqueeze(1).expand_as(b)
        flat = row_cls * (n_bins + 2) + b
        for h, m in ((pos_h, same & valid), (neg_h, ~same & valid)):
            cnt = torch.bincount(flat[m], minlength=c * (n_bins + 2)).view(c, n_bins + 2)
            h += cnt[:, : n_bins + 1].double()
    # accepted at threshold edges[t]: pairs in bins >= t  (bucketize: bin b holds (e[b-1], e[b]])
    acc_pos = pos_h.flip(1).cumsum(1).flip(1)
    acc_neg = neg_h.flip(1).cumsum(1).flip(1)
    far_all = acc_neg.sum(0) / neg_h.sum().clamp_min(1)
    # thresholds whose overall false-accept rate lies in the calibration range
    ok = (far_all >= lo) & (far_all <= hi)
    if not bool(ok.any()):
        raise ValueError("no threshold has a false accept rate inside far_range")
    t_idx = torch.where(ok)[0]
    if t_idx.numel() > num_thresholds:
        t_idx = t_idx[torch.linspace(0, t_idx.numel() - 1, num_thresholds).round().long()]
    tpr = acc_pos[:, t_idx] / pos_h.sum(1, keepdim=True).clamp_min(1)
    tnr = 1 - acc_neg[:, t_idx] / neg_h.sum(1, keepdim=True).clamp_min(1)
    u = 2 * tpr * tnr / (tpr + tnr).clamp_min(1e-300)
    has_pos = pos_h.sum(1) > 0
    return u[has_pos]


def opis(
    embeddings: Tensor,
    labels: Tensor,
    *,
    far_range: tuple[float, float] = (1e-3, 1e-1),
    num_thresholds: int = 100,
    chunk_size: int | None = None,
) -> float:
    r"""Operating-Point-Inconsistency Score: how much the per-class utility varies at a shared
    threshold, averaged over a calibration range of thresholds.

    .. math::
        \mathrm{OPIS} = \frac{1}{|\mathcal T|}\sum_{t \in \mathcal T} \frac{1}{C}\sum_{i=1}^{C}
        \big(U(i, t) - \bar U(t)\big)^2

    with :math:`U(i, t)` the utility of class :math:`i` at similarity threshold :math:`t` (the
    harmonic mean of its true-positive rate over its positive pairs and true-negative rate over
    its negative pairs), :math:`\bar U(t)` the mean over classes, and :math:`\mathcal T` a grid
    of (up to ``num_thresholds``) thresholds whose overall false-accept rate lies in
    ``far_range``. Lower is more threshold-consistent. Pairs: all pairs of the set (cosine
    similarity, no self-pairs), counted in chunks into per-class histograms (O(C·4096) memory).

    Paper: Zhang et al., "Threshold-Consistent Margin Loss for Open-World Deep Metric
    Learning", arXiv 2307.04047 (the calibration range here is a FAR range chosen by the
    caller; see the report for the choice of defaults).
    """
    u = _class_utilities(embeddings, labels, far_range=far_range, num_thresholds=num_thresholds,
                         chunk_size=chunk_size)
    return float(((u - u.mean(0, keepdim=True)) ** 2).mean())


def epsilon_opis(
    embeddings: Tensor,
    labels: Tensor,
    *,
    epsilon: float = 0.05,
    far_range: tuple[float, float] = (1e-3, 1e-1),
    num_thresholds: int = 100,
    chunk_size: int | None = None,
) -> float:
    r""":math:`\epsilon`-OPIS: the gap between the best and the worst classes,

    .. math::
        \epsilon\text{-OPIS} = \frac{1}{|\mathcal T|}\sum_{t \in \mathcal T}
        \big(\bar U_{\epsilon}^{high}(t) - \bar U_{\epsilon}^{low}(t)\big)^2

    with :math:`\bar U_\epsilon^{high}(t)` / :math:`\bar U_\epsilon^{low}(t)` the mean utility
    of the top / bottom :math:`\epsilon` fraction of classes at threshold :math:`t` (at least
    one class each). Same utilities and thresholds as :func:`opis`.
    """
    if not 0 < epsilon <= 0.5:
        raise ValueError(f"epsilon must be in (0, 0.5], got {epsilon!r}")
    u = _class_utilities(embeddings, labels, far_range=far_range, num_thresholds=num_thresholds,
                         chunk_size=chunk_size)
    k = max(1, round(epsilon * u.shape[0]))
    srt = u.sort(dim=0).values
    return float(((srt[-k:].mean(0) - srt[:k].mean(0)) ** 2).mean())
