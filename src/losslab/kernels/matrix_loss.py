"""Fused forward/backward for losses that are a function of one ``[N, M]`` matrix.

The pair losses (contrastive, all-triplets, multi-similarity, circle, SupCon) and Proxy-Anchor
are all ``loss = f(mat)`` with ``mat = metric(embeddings, ref)`` and ``f`` a sum of per-row (or
per-column) terms. Autograd through a chain of masked ops keeps a dozen ``[N, M]``
intermediates alive for the backward pass and runs as many passes over them again.
:class:`MatrixLoss` instead asks a *kernel* for the per-row values **and** their closed-form
gradient ``G = d f / d mat`` in one forward sweep (no autograd), keeps only ``G``, and in the
backward pass multiplies ``G`` by the incoming gradient and backpropagates through the one
matrix product by hand (cosine normalisation and euclidean square root included).

The contract is typed: a kernel is a :class:`Kernel` (in practice a small frozen dataclass
holding the loss's hyperparameters, defined next to its loss) called as
``kernel(mat, members, mean) -> KernelOut``:

* ``mat``: the ``[N, M]`` distances (euclidean, squared euclidean) or similarities (cosine,
  dot), in the compute dtype (float32 for half inputs, which is also the dtype of the loss:
  half inputs return float32, :func:`losslab._core.compute_dtype`). Kernels may overwrite
  ``mat`` for similarity metrics only (the euclidean chain rule needs the distances after the
  kernel);
* ``members``: the same-class reference indices of every row
  (:class:`losslab._ops.pairs.Members`): positives are gathered into small ``[N, K]`` tensors
  (K = the largest class size), and negatives are "the row with its members overwritten"
  (:meth:`~losslab._ops.pairs.Members.fill_`), so no ``[N, M]`` boolean mask is ever built and
  m-per-class batches cost O(N·m) for their positives;
* ``mean``: return the terms already divided by the kernel's ``"mean"`` denominator (so that
  ``values.sum()`` is the mean reduction), else the raw per-row sums;
* the result (:class:`KernelOut`): the ``values`` (``[N]`` for ``axis = 1``: one value per
  row/anchor, or ``[M]`` for ``axis = 0``: one per column/proxy) and ``G = d values.sum() /
  d mat``, where every entry of ``G`` belongs to the value of its row (``axis = 1``) or column
  (``axis = 0``), so that the gradient for any upstream ``grad`` is ``G * grad`` broadcast along
  that axis. ``G`` comes dense (``grad``), optionally with its number of non-zeros (``nnz``)
  when the kernel knows it cheaply -- a gradient with few non-zeros is then kept as a sparse
  list of pairs and the backward pass costs O(nnz·D) instead of an ``[N, M] x [M, D]`` product
  -- or directly sparse (``sparse``: rows, cols, vals) when the kernel knows where its few
  non-zeros are.

A kernel whose ``G`` is symmetric for the batch against itself (a function of the unordered
pair only, e.g. contrastive) declares ``symmetric = True``, which saves a transpose in the
backward pass. A non-finite entry (NaN, inf) anywhere in the inputs makes the loss NaN
(kernels select pairs by comparisons, which would otherwise skip it). Gradients are exact
(checked by the fp64 gradcheck of the contract suite and by the fused-vs-autograd tests over
``losslab.losses.metric_learning.FAST_PATHS``), except where a loss documents a stop-gradient
surrogate.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import ClassVar, NamedTuple, Protocol

import torch
from torch import Tensor

from losslab._core import compute_dtype
from losslab._ops.pairs import Members, members
from losslab.distances import row_norms, squared_euclidean

__all__ = [
    "SPARSE_RATIO",
    "Kernel",
    "KernelOut",
    "MatrixLoss",
    "SparseGrad",
    "gather_rows",
    "matrix_loss",
    "self_gram",
]


class SparseGrad(NamedTuple):
    """A gradient ``G`` given by its non-zeros: ``G[rows[k], cols[k]] += vals[k]`` (duplicate
    positions add up)."""

    rows: Tensor
    cols: Tensor
    vals: Tensor


@dataclass(frozen=True)
class KernelOut:
    """What a :class:`Kernel` returns.

    Attributes:
        values: ``[N]`` per-row values (``axis = 1``) or ``[M]`` per-column values
            (``axis = 0``), divided by the ``"mean"`` denominator when the kernel was called
            with ``mean=True``.
        grad: the dense gradient ``G = d values.sum() / d mat`` (``[N, M]``), or ``None`` when
            ``sparse`` is given. May be ``mat`` itself, overwritten.
        sparse: ``G`` as its list of non-zeros, instead of ``grad``.
        nnz: the number of non-zeros of ``grad``, when the kernel knows it without a pass over
            ``G`` (``None``: unknown; ``G`` is then kept dense).
    """

    values: Tensor
    grad: Tensor | None = None
    sparse: SparseGrad | None = None
    nnz: float | None = None

    def __post_init__(self) -> None:
        if (self.grad is None) == (self.sparse is None):
            raise ValueError("KernelOut needs exactly one of grad (dense) and sparse")


class Kernel(Protocol):
    """The per-loss part of :class:`MatrixLoss`: values and closed-form gradient of ``f(mat)``.

    Attributes:
        symmetric: ``G`` is a function of the unordered pair for the batch against itself
            (``G = G^T``), which saves a transpose in the backward pass.
        axis: 1 when the values are per row (anchor), 0 when per column (proxy).
    """

    symmetric: ClassVar[bool]
    axis: ClassVar[int]

    def __call__(self, mat: Tensor, members: Members, mean: bool) -> KernelOut:
        """Values and gradient from ``mat`` (which the kernel may overwrite, see above)."""
        ...


class MatrixLoss(torch.autograd.Function):
    """``kernel(metric(x, ref))`` with the gradient computed in the forward pass."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        x: Tensor,
        ref: Tensor | None,
        labels: Tensor,
        ref_labels: Tensor | int | None,
        metric: str,
        kernel: Kernel,
        mean: bool,
        total: bool,
    ) -> Tensor:
        dt = compute_dtype(x.dtype)
        xc = x.to(dt)
        rc = xc if ref is None else ref.to(dt)
        norms: tuple[Tensor, Tensor] | None = None
        if metric == "cosine":
            nx = row_norms(xc)
            xc = xc / nx
            if ref is None:
                rc, nr = xc, nx
            else:
                nr = row_norms(rc)
                rc = rc / nr
            norms = (nx, nr)
            mat = self_gram(xc) if ref is None else xc @ rc.t()
        elif metric == "dot":
            mat = self_gram(xc) if ref is None else xc @ rc.t()
        elif ref is None:  # |x_i|^2 + |x_j|^2 - 2 x_i.x_j from the symmetric product
            sq = xc.pow(2).sum(1, keepdim=True)
            mat = self_gram(xc).mul_(-2.0).add_(sq).add_(sq.t()).clamp_min_(0.0)
        else:
            mat = squared_euclidean(xc, rc)
        if metric == "euclidean":
            mat.sqrt_()
        mem = members(labels, labels if ref_labels is None else ref_labels, ref is None)
        out = kernel(mat, mem, mean)
        ctx.half = 0.5 if metric == "euclidean" else 1.0  # applied to the [N, D] results
        grad, sparse = out.grad, out.sparse
        if grad is not None and out.nnz is not None and out.nnz * SPARSE_RATIO <= grad.numel():
            rows, cols = grad.nonzero(as_tuple=True)
            grad, sparse = None, SparseGrad(rows, cols, grad[rows, cols])
        if metric == "euclidean":  # d sqrt(q) / dq = 1 / (2 sqrt(q)), and 0 where q = 0
            if sparse is not None:
                rows, cols, vals = sparse
                vals = torch.nan_to_num_(vals / mat[rows, cols], nan=0.0, posinf=0.0,
                                         neginf=0.0)
                sparse = SparseGrad(rows, cols, vals)
            elif grad is not None:
                torch.nan_to_num_(grad.div_(mat), nan=0.0, posinf=0.0, neginf=0.0)
        del mat, mem
        ctx.metric, ctx.axis, ctx.self_ref, ctx.total = metric, kernel.axis, ref is None, total
        ctx.symmetric = total and ref is None and kernel.symmetric
        ctx.in_dtypes = (x.dtype, None if ref is None else ref.dtype)
        ctx.norms = norms
        ctx.sparse = sparse is not None
        saved = tuple(sparse) if sparse is not None else (grad,)
        ctx.save_for_backward(xc, rc if ref is not None else None, *saved)
        res = out.values.sum() if total else out.values
        # A kernel selects pairs by comparisons (hinges, mining thresholds, "any active
        # negative?"), which a NaN fails silently. sum(x * 0) is 0, or NaN when x holds a NaN or
        # an inf: added to the value, any non-finite input gives NaN, never a plausible finite
        # loss (O((N + M) D), no sync; 10x cheaper than isfinite(x).all() on CPU).
        guard = xc.mul(0.0).sum() if ref is None else xc.mul(0.0).sum() + rc.mul(0.0).sum()
        return res + guard  # the compute dtype: float32 for half inputs

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gout: Tensor):  # type: ignore[override]
        xc, rc, *saved = ctx.saved_tensors
        gout = gout.to(xc.dtype)
        need_x = ctx.needs_input_grad[0]
        need_r = (not ctx.self_ref) and ctx.needs_input_grad[1]
        if ctx.self_ref:
            rc = xc
        if ctx.sparse:
            rows, cols, vals = saved
            gx, gr = _sparse_backward(ctx, xc, rc, SparseGrad(rows, cols, vals), gout,
                                      need_x or ctx.self_ref, need_r)
        else:
            gx, gr = _dense_backward(ctx, xc, rc, saved[0], gout, need_x, need_r)
        if ctx.half != 1.0:
            gx = None if gx is None else gx.mul_(ctx.half)
            gr = None if gr is None else gr.mul_(ctx.half)
        if ctx.metric == "cosine":  # through x / |x|: (g - xn (xn . g)) / |x|
            nx, nr = ctx.norms
            if gx is not None:
                gx = gx.addcmul_(xc, torch.linalg.vecdot(gx, xc).unsqueeze(1), value=-1.0)
                gx = gx.div_(nx)
            if gr is not None:
                gr = gr.addcmul_(rc, torch.linalg.vecdot(gr, rc).unsqueeze(1), value=-1.0)
                gr = gr.div_(nr)
        x_dtype, r_dtype = ctx.in_dtypes
        gx = None if gx is None or not need_x else gx.to(x_dtype)
        gr = None if gr is None else gr.to(r_dtype)
        return gx, gr, None, None, None, None, None, None


#: A dense gradient with at most numel / SPARSE_RATIO non-zeros is stored sparse.
SPARSE_RATIO = 32

#: :func:`self_gram` computes row blocks of about this many rows, from this batch size and
#: embedding width on (below, one product: the saving does not pay for the mirror copies).
GRAM_BLOCK_ROWS, GRAM_MIN_ROWS, GRAM_MIN_DIM = 512, 1024, 256


def self_gram(x: Tensor) -> Tensor:
    """``x @ x.T`` (``[N, N]``) from its upper block triangle: ``b = N // 512`` row blocks,
    block row ``i`` multiplied by the rows from block ``i`` on (``(b + 1) / (2 b)`` of the
    multiply-adds: 5/8 at N = 2048), each block below the diagonal copied from its transpose.
    The result is exactly symmetric. On the 2-core CPU of ``benchmarks/README.md`` 2048 x 512
    took 37.5 ms of CPU instead of 49.4 (no gain at D = 128: then one product)."""
    n = x.shape[0]
    b = n // GRAM_BLOCK_ROWS
    if n < GRAM_MIN_ROWS or x.shape[1] < GRAM_MIN_DIM or torch.compiler.is_compiling():
        return x @ x.t()
    out = torch.empty(n, n, dtype=x.dtype, device=x.device)
    edges = [n * i // b for i in range(b + 1)]
    for lo, hi in itertools.pairwise(edges):
        torch.mm(x[lo:hi], x[lo:].t(), out=out[lo:hi, lo:])
        if hi < n:
            out[hi:, lo:hi].copy_(out[lo:hi, hi:].t())
    return out


def _sq_dist_grad(prod: Tensor, weight_sums: Tensor, x: Tensor) -> Tensor:
    """Gradient w.r.t. the rows ``x_i`` of ``sum_ij G_ij |x_i - y_j|^2`` from ``prod = G @ y`` and
    ``weight_sums = G.sum(1)``: ``2 (weight_sums_i x_i - prod_i)``, in place on ``prod``."""
    return prod.sub_(weight_sums.unsqueeze(1) * x).mul_(-2.0)


def _dense_backward(ctx, xc: Tensor, rc: Tensor, grad: Tensor, gout: Tensor, need_x: bool,
                    need_r: bool) -> tuple[Tensor | None, Tensor | None]:
    euclid = ctx.metric in ("euclidean", "squared_euclidean")
    gx = gr = None
    if ctx.self_ref:
        # d/dx of f(x x^T) (or of the squared distances) only needs g + g^T: one product.
        if ctx.symmetric:
            g, scale = grad, 2.0 * gout
        else:
            if ctx.total:
                g = grad
            else:
                g = grad * (gout.unsqueeze(1) if ctx.axis == 1 else gout.unsqueeze(0))
            g, scale = g.t().contiguous().add_(g), gout if ctx.total else None
        gx = g @ xc
        if euclid:  # q_ij = |x_i|^2 + |x_j|^2 - 2 x_i.x_j
            gx = _sq_dist_grad(gx, g.sum(1), xc)
        if scale is not None:
            gx.mul_(scale)
        return gx, None
    # a scalar upstream gradient (reduced loss) scales the [N, D] results, not the matrix
    g = grad if ctx.total else grad * (gout.unsqueeze(1) if ctx.axis == 1 else gout.unsqueeze(0))
    if need_x:
        gx = g @ rc
        if euclid:
            gx = _sq_dist_grad(gx, g.sum(1), xc)
        if ctx.total:
            gx.mul_(gout)
    if need_r:
        gr = g.t() @ xc
        if euclid:
            gr = _sq_dist_grad(gr, g.sum(0), rc)
        if ctx.total:
            gr.mul_(gout)
    return gx, gr


def _sparse_backward(ctx, xc: Tensor, rc: Tensor, grad: SparseGrad, gout: Tensor, need_x: bool,
                     need_r: bool) -> tuple[Tensor | None, Tensor | None]:
    """The backward pass from a sparse ``G`` (``rows, cols, vals``): one sparse-dense product
    per input (``G @ ref`` and ``G^T @ x``; one with ``G + G^T`` for the batch against itself).

    No ``[nnz, D]`` gathers: an uncoalesced COO matrix (duplicates add up) goes straight to
    ``torch.sparse.mm``, which was 4-8x faster than gathering the pair rows and scattering
    them back with ``index_add_`` (``benchmarks/README.md``).
    """
    euclid = ctx.metric in ("euclidean", "squared_euclidean")
    rows, cols, vals = grad
    v = vals * gout if ctx.total else vals * gout[rows if ctx.axis == 1 else cols]
    n, m = xc.shape[0], rc.shape[0]
    if ctx.self_ref:
        # d/dx of sum_k v_k f(x_r, x_c) through both ends: one product with G + G^T.
        idx = torch.stack([torch.cat([rows, cols]), torch.cat([cols, rows])])
        vv = torch.cat([v, v])
        g = torch.sparse_coo_tensor(idx, vv, (n, n), check_invariants=False)
        gx = torch.sparse.mm(g, xc)
        if euclid:  # dq_rc/dx_r = 2 (x_r - x_c): sum_c G_rc (x_r - x_c) = rowsum * x_r - G x
            rs = torch.zeros(n, dtype=xc.dtype, device=xc.device).index_add_(0, idx[0], vv)
            gx = _sq_dist_grad(gx, rs, xc)
        return gx, None
    g = torch.sparse_coo_tensor(torch.stack([rows, cols]), v, (n, m), check_invariants=False)
    gx = gr = None
    if need_x:
        gx = torch.sparse.mm(g, rc)  # ds/dx_r = r_c
        if euclid:  # dq/dx_r = 2 (x_r - r_c)
            rs = torch.zeros(n, dtype=xc.dtype, device=xc.device).index_add_(0, rows, v)
            gx = _sq_dist_grad(gx, rs, xc)
    if need_r:
        gr = torch.sparse.mm(g.t(), xc)  # ds/dr_c = x_r
        if euclid:  # dq/dr_c = -2 (x_r - r_c)
            cs = torch.zeros(m, dtype=rc.dtype, device=rc.device).index_add_(0, cols, v)
            gr = _sq_dist_grad(gr, cs, rc)
    return gx, gr


class _GatherRows(torch.autograd.Function):
    """``src[idx]`` whose backward scatters through one sparse-dense product."""

    @staticmethod
    def forward(ctx, src: Tensor, idx: Tensor) -> Tensor:  # type: ignore[override]
        ctx.n_src = src.shape[0]
        ctx.save_for_backward(idx)
        return src.index_select(0, idx)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (idx,) = ctx.saved_tensors
        ar = torch.arange(idx.numel(), device=idx.device)
        s = torch.sparse_coo_tensor(torch.stack([idx, ar]), grad.new_ones(idx.numel()),
                                    (ctx.n_src, idx.numel()), check_invariants=False)
        return torch.sparse.mm(s, grad), None


def gather_rows(src: Tensor, idx: Tensor) -> Tensor:
    """``src.index_select(0, idx)`` with a faster backward for repeated indices: the gradient
    is summed into ``src``'s rows by ``torch.sparse.mm`` instead of ``index_add_`` (3x faster
    on CPU for 512 x 128 rows)."""
    if not (torch.is_grad_enabled() and src.requires_grad):
        return src.index_select(0, idx)
    return _GatherRows.apply(src, idx)


def matrix_loss(
    embeddings: Tensor,
    labels: Tensor,
    ref_embeddings: Tensor | None,
    ref_labels: Tensor | int | None,
    *,
    metric: str,
    kernel: Kernel,
    reduction: str,
) -> Tensor:
    """Apply :class:`MatrixLoss` (``ref_embeddings=None``: the batch against itself).

    ``ref_labels`` may be an ``int`` C: the reference rows are the classes ``0..C-1`` (class
    proxies / weights; ``labels`` already checked to lie in ``[0, C)``).
    ``reduction="none"`` returns the kernel's per-row (per-column for ``kernel.axis = 0``)
    values, ``"sum"`` their sum and ``"mean"`` the sum of the kernel's mean-scaled values.
    """
    return MatrixLoss.apply(embeddings, ref_embeddings, labels, ref_labels, metric, kernel,
                            reduction == "mean", reduction != "none")
