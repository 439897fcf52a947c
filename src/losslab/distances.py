"""Pairwise distances and similarities, computed by matrix products.

No function here builds an ``[N, M, D]`` tensor: squared euclidean distances come from
``|x|^2 + |y|^2 - 2 x.y`` (clamped at 0), so memory is O(N·M + (N + M)·D).

``euclidean`` keeps an ``eps`` *inside* the square root (``sqrt(|x - y|^2 + eps)``), as the
SuSana Distancia code does, so that the backward pass never divides by ``sqrt(0)``. With
``eps=0`` it uses a square root whose gradient at 0 is 0 instead of infinite.

Half-precision inputs (fp16/bf16) are computed in float32 and the matrices are returned in
float32 (:func:`losslab._core.compute_dtype`): a squared distance between fp16 embeddings of
norm 200 (4e4 each) overflows fp16's 65504, and ``|x|^2 + |y|^2 - 2 x.y`` loses every digit
of a small distance at 3 significant digits. Two inputs of different float dtypes are computed
in the wider one.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from losslab._core import check_choice, check_matrix, compute_dtype

__all__ = [
    "METRICS",
    "NORM_EPS",
    "DistanceName",
    "Metric",
    "cosine_similarity",
    "dot",
    "euclidean",
    "is_similarity",
    "knn",
    "normalize_rows",
    "paired",
    "pairwise",
    "row_norms",
    "squared_euclidean",
]

#: The names accepted by the ``metric=`` keyword of the losses, miners and retrieval metrics.
DistanceName = Literal["euclidean", "squared_euclidean", "cosine", "dot"]
#: Deprecated alias of :data:`DistanceName` (kept for one release; 0.2 removes it).
Metric = DistanceName
METRICS: tuple[str, ...] = ("euclidean", "squared_euclidean", "cosine", "dot")


def _pair(x: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor]:
    """Validated ``(x, y)`` in their compute dtype (``y is x`` when ``y`` is None)."""
    check_matrix("x", x)
    if y is None:
        x = x.to(compute_dtype(x.dtype))
        return x, x
    check_matrix("y", y, dim=x.shape[1])
    return _upcast(x, y)


def _upcast(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """``x`` and ``y`` in one compute dtype: the wider of the two, float32 for half inputs (a
    differentiable cast; no copy when the dtype is already right)."""
    dt = compute_dtype(torch.promote_types(x.dtype, y.dtype))
    return x.to(dt), y.to(dt)


def squared_euclidean(x: Tensor, y: Tensor | None = None) -> Tensor:
    """``D[i, j] = |x_i - y_j|^2`` for ``x[N, D]``, ``y[M, D]`` (``y`` defaults to ``x``)."""
    x, y = _pair(x, y)
    xx = x.pow(2).sum(1, keepdim=True)
    yy = xx if y is x else y.pow(2).sum(1, keepdim=True)
    d = torch.addmm(xx, x, y.t(), beta=1.0, alpha=-2.0).add_(yy.t())  # add_: no grad needed
    # in place when nothing records it (no_grad, e.g. inside a fused kernel's forward)
    return d.clamp_min(0.0) if d.requires_grad else d.clamp_min_(0.0)


class _SafeSqrt(torch.autograd.Function):
    """``sqrt`` with gradient 0 (not inf) at 0."""

    @staticmethod
    def forward(ctx, a: Tensor) -> Tensor:  # type: ignore[override]
        out = a.sqrt()
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        (out,) = ctx.saved_tensors
        return torch.where(out > 0, grad / (2 * out).clamp_min(torch.finfo(out.dtype).tiny), 0.0)


def euclidean(x: Tensor, y: Tensor | None = None, *, eps: float = 1e-6) -> Tensor:
    """``D[i, j] = sqrt(|x_i - y_j|^2 + eps)``.

    ``eps=1e-6`` is the value of the SuSana Distancia code; ``eps=0`` gives the exact distance
    with a zero gradient where two points coincide.
    """
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    sq = squared_euclidean(x, y)
    if eps == 0:
        return _SafeSqrt.apply(sq)
    return (sq + eps).sqrt()


#: The one row-normalisation epsilon of the library (norms are clamped at it).
NORM_EPS = 1e-12


def row_norms(x: Tensor, *, eps: float = NORM_EPS) -> Tensor:
    """``max(|x_i|, eps)`` for every row, as a ``[..., 1]`` column: the divisor of
    :func:`normalize_rows` (for code that needs the norms too, e.g. a hand-written backward)."""
    return torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(eps)


def normalize_rows(x: Tensor, *, eps: float = NORM_EPS) -> Tensor:
    """``x_i / max(|x_i|, eps)`` row by row: the one row normalisation every loss uses."""
    return x / row_norms(x, eps=eps)


def cosine_similarity(x: Tensor, y: Tensor | None = None, *, eps: float = NORM_EPS) -> Tensor:
    """``S[i, j] = x_i.y_j / (|x_i| |y_j|)`` (norms clamped at ``eps``)."""
    x, y = _pair(x, y)
    xn = normalize_rows(x, eps=eps)
    yn = xn if y is x else normalize_rows(y, eps=eps)
    return xn @ yn.t()


def dot(x: Tensor, y: Tensor | None = None) -> Tensor:
    """``S[i, j] = x_i.y_j``."""
    x, y = _pair(x, y)
    return x @ y.t()


def is_similarity(metric: str) -> bool:
    """True for similarities (larger = closer: cosine, dot), False for distances."""
    check_choice("metric", metric, METRICS)
    return metric in ("cosine", "dot")


def pairwise(x: Tensor, y: Tensor | None = None, *, metric: str = "euclidean",
             eps: float = 1e-6) -> Tensor:
    """Pairwise matrix for ``metric`` in :data:`METRICS` (``eps`` only affects euclidean)."""
    check_choice("metric", metric, METRICS)
    if metric == "euclidean":
        return euclidean(x, y, eps=eps)
    if metric == "squared_euclidean":
        return squared_euclidean(x, y)
    if metric == "cosine":
        return cosine_similarity(x, y)
    return dot(x, y)


def paired(x: Tensor, y: Tensor, *, metric: str = "euclidean", eps: float = 1e-6) -> Tensor:
    """``v[i] = metric(x_i, y_i)`` for two ``[N, D]`` matrices (row by row, no ``[N, M]``)."""
    check_choice("metric", metric, METRICS)
    check_matrix("x", x)
    check_matrix("y", y, dim=x.shape[1])
    x, y = _upcast(x, y)
    if metric in ("euclidean", "squared_euclidean"):
        sq = (x - y).pow(2).sum(1)
        if metric == "squared_euclidean":
            return sq
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        return _SafeSqrt.apply(sq) if eps == 0 else (sq + eps).sqrt()
    if metric == "cosine":
        x, y = normalize_rows(x), normalize_rows(y)
    return (x * y).sum(1)


@torch.no_grad()
def knn(
    query: Tensor,
    ref: Tensor | None = None,
    k: int = 1,
    *,
    metric: str = "euclidean",
    exclude_self: bool = False,
    chunk_size: int | None = None,
    eps: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """The ``k`` nearest references of every query, computed in row chunks (no gradient).

    Returns ``(values[Nq, k], indices[Nq, k])`` sorted from nearest: ascending distances, or
    descending similarities for ``cosine``/``dot``. ``exclude_self=True`` (requires
    ``ref is None`` or ``ref is query``) removes each query from its own neighbours. Memory is
    ``chunk_size x M``; the default chunk keeps that near 32 M entries.
    """
    q, r = _pair(query, ref)
    self_match = ref is None or ref is query
    if exclude_self and not self_match:
        raise ValueError("exclude_self=True needs ref=None (the query set against itself)")
    n_ref = r.shape[0] - (1 if exclude_self else 0)
    if not 1 <= k <= n_ref:
        raise ValueError(f"k must be in [1, {n_ref}] (the number of references), got {k}")
    largest = is_similarity(metric)
    if chunk_size is None:
        chunk_size = max(1, min(q.shape[0], (32 * 1024 * 1024) // max(1, r.shape[0])))
    values, indices = [], []
    for start in range(0, q.shape[0], chunk_size):
        block = pairwise(q[start : start + chunk_size], r, metric=metric, eps=eps)
        if exclude_self:
            rows = torch.arange(block.shape[0], device=block.device)
            fill = float("-inf") if largest else float("inf")
            block[rows, rows + start] = fill
        v, i = block.topk(k, dim=1, largest=largest, sorted=True)
        values.append(v)
        indices.append(i)
    return torch.cat(values), torch.cat(indices)
