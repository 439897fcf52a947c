"""Fused forward/backward for losses that are a function of one ``[N, M]`` matrix.

The pair losses (contrastive, all-triplets, multi-similarity, circle, SupCon) and Proxy-Anchor
are all ``loss = f(mat)`` with ``mat = metric(embeddings, ref)`` and ``f`` a sum of per-row (or
per-column) terms. Autograd through a chain of masked ops keeps a dozen ``[N, M]``
intermediates alive for the backward pass and runs as many passes over them again.
:class:`MatrixLoss` instead asks a *kernel* for the per-row values **and** their closed-form
gradient ``G = d f / d mat`` in one forward sweep (no autograd), keeps only ``G``, and in the
backward pass multiplies ``G`` by the incoming gradient and backpropagates through the one
matrix product by hand (cosine normalisation and euclidean square root included).

A kernel is ``kernel(mat, members, mean) -> (values, G)``:

* ``mat``: the ``[N, M]`` distances (euclidean, squared euclidean) or similarities (cosine,
  dot), in the compute dtype (float32 for half inputs);
* ``members``: the same-class reference indices of every row (:class:`Members`): positives are
  gathered into small ``[N, K]`` tensors (K = the largest class size), and negatives are "the
  row with its members overwritten" (:meth:`Members.fill_`), so no ``[N, M]`` boolean mask is
  ever built and m-per-class batches cost O(N·m) for their positives;
* ``mean``: return the terms already divided by the kernel's ``"mean"`` denominator (so that
  ``values.sum()`` is the mean reduction), else the raw per-row sums;
* optionally a third element, the number of non-zeros of ``G`` when the kernel knows it
  cheaply: a gradient with few non-zeros is kept as a sparse list of pairs, and the backward
  pass then costs O(nnz·D) instead of an ``[N, M] x [M, D]`` product; a kernel that knows
  where its few non-zeros are may return ``G`` directly as ``(rows, cols, vals)``;
* ``values``: ``[N]`` (``axis=1``: one value per row/anchor) or ``[M]`` (``axis=0``: one per
  column/proxy); ``G``: ``d values.sum() / d mat``, where every entry of ``G`` belongs to the
  value of its row (``axis=1``) or column (``axis=0``), so that the gradient for any upstream
  ``grad`` is ``G * grad`` broadcast along that axis.

Kernels may overwrite ``mat`` for similarity metrics only (the euclidean chain rule needs the
distances after the kernel). A kernel whose ``G`` is symmetric for the batch against itself (a
function of the unordered pair only, e.g. contrastive) sets the attribute
``kernel.symmetric = True``, which saves a transpose in the backward pass. Gradients are exact
(checked by the fp64 gradcheck of the contract suite), except where a loss documents a
stop-gradient surrogate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from losslab._core import compute_dtype

__all__ = [
    "Kernel",
    "MatrixLoss",
    "Members",
    "fixed_shift",
    "label_masks",
    "log1p_sum_exp_",
    "logsumexp_",
    "matrix_loss",
    "members",
    "select",
]
NORM_EPS = 1e-12  # as losslab.distances.cosine_similarity


@dataclass
class Members:
    """Same-class reference indices of every query row.

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


Kernel = Callable[[Tensor, Members, bool], tuple[Tensor, Tensor]]


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
    k = max(int(cnt.max()), 1) if n else 1
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
    return Members(idx, pos, n_pos, m - cnt, has, bool(has.all()), self_ref)


def label_masks(labels: Tensor, ref_labels: Tensor, ref_is_batch: bool) -> tuple[Tensor, Tensor]:
    """``(pos, neg)`` bool ``[N, M]`` masks; the diagonal is not a positive for the batch itself."""
    same = labels.unsqueeze(1) == ref_labels.unsqueeze(0)
    neg = ~same
    if ref_is_batch:
        same.fill_diagonal_(False)
    return same, neg


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
        axis: int,
        total: bool,
    ) -> Tensor:
        dt = compute_dtype(x.dtype)
        xc = x.to(dt)
        rc = xc if ref is None else ref.to(dt)
        norms: tuple[Tensor, Tensor] | None = None
        if metric == "cosine":
            nx = torch.linalg.vector_norm(xc, dim=1, keepdim=True).clamp_min_(NORM_EPS)
            xc = xc / nx
            if ref is None:
                rc, nr = xc, nx
            else:
                nr = torch.linalg.vector_norm(rc, dim=1, keepdim=True).clamp_min_(NORM_EPS)
                rc = rc / nr
            norms = (nx, nr)
            mat = xc @ rc.t()
        elif metric == "dot":
            mat = xc @ rc.t()
        else:
            xx = xc.pow(2).sum(1, keepdim=True)
            rr = xx if ref is None else rc.pow(2).sum(1, keepdim=True)
            mat = torch.addmm(xx, xc, rc.t(), beta=1.0, alpha=-2.0).add_(rr.t()).clamp_min_(0.0)
            if metric == "euclidean":
                mat.sqrt_()
        mem = members(labels, labels if ref_labels is None else ref_labels, ref is None)
        out = kernel(mat, mem, mean)
        values, grad = out[0], out[1]
        nnz = out[2] if len(out) > 2 else None
        ctx.half = 0.5 if metric == "euclidean" else 1.0  # applied to the [N, D] results
        sparse = None
        if isinstance(grad, tuple):  # the kernel gave (rows, cols, vals) itself
            sparse, grad = grad, None
        elif nnz is not None and nnz * SPARSE_RATIO <= grad.numel():
            rows, cols = grad.nonzero(as_tuple=True)
            sparse, grad = (rows, cols, grad[rows, cols]), None
        if metric == "euclidean":  # d sqrt(q) / dq = 1 / (2 sqrt(q)), and 0 where q = 0
            if sparse is not None:
                rows, cols, vals = sparse
                vals = torch.nan_to_num_(vals / mat[rows, cols], nan=0.0, posinf=0.0,
                                         neginf=0.0)
                sparse = (rows, cols, vals)
            else:
                torch.nan_to_num_(grad.div_(mat), nan=0.0, posinf=0.0, neginf=0.0)
        del mat, mem
        ctx.metric, ctx.axis, ctx.self_ref, ctx.total = metric, axis, ref is None, total
        ctx.symmetric = total and ref is None and getattr(kernel, "symmetric", False)
        ctx.in_dtypes = (x.dtype, None if ref is None else ref.dtype)
        ctx.norms = norms
        ctx.sparse = sparse is not None
        saved = sparse if sparse is not None else (grad,)
        ctx.save_for_backward(xc, rc if ref is not None else None, *saved)
        res = values.sum() if total else values
        return res.to(x.dtype)

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
            gx, gr = _sparse_backward(ctx, xc, rc, *saved, gout, need_x or ctx.self_ref, need_r)
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
        return gx, gr, None, None, None, None, None, None, None


SPARSE_RATIO = 32  # a gradient with fewer than numel / 32 non-zeros is stored sparse


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


def _sparse_backward(ctx, xc: Tensor, rc: Tensor, rows: Tensor, cols: Tensor, vals: Tensor,
                     gout: Tensor, need_x: bool, need_r: bool
                     ) -> tuple[Tensor | None, Tensor | None]:
    """The backward pass from a sparse ``G`` (``rows, cols, vals``): one sparse-dense product
    per input (``G @ ref`` and ``G^T @ x``; one with ``G + G^T`` for the batch against itself).

    No ``[nnz, D]`` gathers: an uncoalesced COO matrix (duplicates add up) goes straight to
    ``torch.sparse.mm``, which was 4-8x faster than gathering the pair rows and scattering
    them back with ``index_add_`` (``benchmarks/README.md``).
    """
    euclid = ctx.metric in ("euclidean", "squared_euclidean")
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
    axis: int = 1,
) -> Tensor:
    """Apply :class:`MatrixLoss` (``ref_embeddings=None``: the batch against itself).

    ``ref_labels`` may be an ``int`` C: the reference rows are the classes ``0..C-1`` (class
    proxies / weights; ``labels`` already checked to lie in ``[0, C)``).
    ``reduction="none"`` returns the kernel's per-row (per-column for ``axis=0``) values,
    ``"sum"`` their sum and ``"mean"`` the sum of the kernel's mean-scaled values.
    """
    return MatrixLoss.apply(embeddings, ref_embeddings, labels, ref_labels, metric, kernel,
                            reduction == "mean", axis, reduction != "none")


# --------------------------------------------------------------------------------------------
# Shared kernel pieces (in place on their input)
# --------------------------------------------------------------------------------------------


def select(mask: Tensor, a: float, b: float, like: Tensor) -> Tensor:
    """``torch.where(mask, a, b)`` in the dtype of ``like`` (two Python scalars would give the
    default dtype, rounding e.g. 0.1 to float32 in a float64 computation)."""
    return torch.where(mask, torch.tensor(a, dtype=like.dtype, device=like.device),
                       torch.tensor(b, dtype=like.dtype, device=like.device))


MAX_SHIFT_SPAN = {torch.float64: 600.0}  # exp(-span) must stay a normal number
DEFAULT_SPAN = 60.0  # float32 (and half inputs, computed in float32)


def fixed_shift(upper: float, lower: float, dtype: torch.dtype) -> float | None:
    """A constant log-sum-exp shift for logits known to lie in ``[lower, upper]`` (e.g. affine in
    a cosine similarity), or ``None`` when that range is too wide for ``dtype`` (then the exact
    per-row maximum is used). Saves a max pass and a subtraction over the matrix."""
    return upper if upper - lower <= MAX_SHIFT_SPAN.get(dtype, DEFAULT_SPAN) else None


def log1p_sum_exp_(logits: Tensor, dim: int, shift: float | None = None,
                   scale: float = 1.0) -> tuple[Tensor, Tensor]:
    r""":math:`\log(1 + \sum_j e^{L_j})` along ``dim`` (``-inf`` entries are absent) and
    ``scale`` times the weights :math:`e^{L_j} / (1 + \sum e^{L})`, which overwrite ``logits``.

    Shifted by :math:`c = \max(0, \max_j L_j)` (no overflow; an empty set gives exactly 0), or
    by ``max(0, shift)`` when the caller knows an upper bound of the logits (:func:`fixed_shift`).
    """
    if shift is None:
        c = logits.amax(dim=dim, keepdim=True).clamp_min_(0.0)
        w = logits.sub_(c).exp_()
        e = torch.exp(-c)
    else:
        c0 = max(0.0, shift)
        w = (logits.sub_(c0) if c0 else logits).exp_()
        e = torch.full((), -c0, dtype=w.dtype, device=w.device).exp_()
        c = torch.full((), c0, dtype=w.dtype, device=w.device)
    total = w.sum(dim=dim, keepdim=True).add_(e)
    w.mul_(total.reciprocal() * scale)
    return (total.log_() + c).squeeze(dim), w


def logsumexp_(logits: Tensor, dim: int, shift: float | None = None) -> tuple[Tensor, Tensor]:
    """``logsumexp`` along ``dim`` (``-inf`` for an empty set) and the softmax weights (0 on an
    empty set), which overwrite ``logits``; ``shift``: a known upper bound (:func:`fixed_shift`)
    used instead of the per-row maximum."""
    if shift is None:
        c = logits.amax(dim=dim, keepdim=True)
        c = torch.where(torch.isfinite(c), c, 0.0)
        w = logits.sub_(c).exp_()
    else:
        c = torch.full((), shift, dtype=logits.dtype, device=logits.device)
        w = (logits.sub_(shift) if shift else logits).exp_()
    total = w.sum(dim=dim, keepdim=True)
    w.mul_(total.clamp_min(torch.finfo(w.dtype).tiny).reciprocal())
    return (total.log_() + c).squeeze(dim), w
