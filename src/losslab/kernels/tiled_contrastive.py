"""Tiled contrastive losses: InfoNCE/CLIP and SigLIP without an ``N x N`` logits matrix.

Row tiles of ``tile x N`` similarities are computed, reduced and dropped (flash-attention
style, as Inf-CL, arXiv 2410.17243). Memory is ``O(tile * N + N * D)`` instead of ``O(N^2)``;
the gradients are exact.

The kernels take embeddings ``a[N, D]``, ``b[N, D]`` and a scalar ``scale``:
``l_ij = scale * a_i . b_j``, or with ``normalize=True`` the cosine logits
``scale * a_i . b_j / (max(|a_i|, eps) max(|b_j|, eps))`` -- normalised inside the kernel, whose
backward returns the gradient w.r.t. the raw rows in place, so no normalised copy of the
embeddings is kept between the passes. They return per-row loss terms, so that any reduction or
per-row weight works.

The tile is a memory budget, not a row count: ``tile=None`` picks the largest number of rows
whose ``tile x N`` work buffers fit in :data:`WORKSPACE_BYTES` (:func:`rows_for_budget`), so the
workspace stays bounded whatever the batch size. A ``tile x N`` block is memory-bound and a GEMM
is not, so the kernels do as few passes over each block, and as few GEMMs, as the math allows:

- *row-separable terms* (InfoNCE ``a -> b``, SigLIP; :func:`tiled_row_terms`): one pass in the
  forward computes the values and, when gradients are needed, the gradient's two GEMMs as
  well (``P b`` and ``P^T a``, ``P`` the softmax or sigmoid of the block). The backward pass is
  then ``O(N D)``: 3 GEMMs in all, as the dense computation, and no ``N x N`` tensor. The
  ``P^T a`` part assumes the same weight on every row (``"mean"`` / ``"sum"``); with other
  weights (``reduction="none"`` followed by a weighted sum) the backward recomputes it.
- *both directions* (CLIP, symmetric InfoNCE; :func:`tiled_infonce_terms`): the column
  log-sum-exp needs every row, so the forward computes the two log-sum-exps (one GEMM, one
  ``exp`` pass, a row sum and a GEMV) and the backward recomputes each block once (the
  row shift fused into the GEMM, the column shift one broadcast pass): 4 GEMMs in all.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = [
    "WORKSPACE_BYTES",
    "rows_for_budget",
    "tiled_infonce_terms",
    "tiled_row_terms",
    "tiled_sigmoid_terms",
]

#: Default memory budget of the ``tile x N`` work buffers, in bytes.
WORKSPACE_BYTES = 64 * 2**20
#: Fewest rows per tile the budget policy picks (smaller tiles starve the GEMM).
MIN_TILE = 32


def rows_for_budget(n: int, itemsize: int, *, buffers: int = 2,
                    budget: int = WORKSPACE_BYTES) -> int:
    """Rows per tile so that ``buffers`` work blocks of ``rows x n`` fit in ``budget`` bytes
    (at least :data:`MIN_TILE`, at most ``n``)."""
    rows = budget // max(1, buffers * n * itemsize)
    return int(min(max(n, 1), max(MIN_TILE, rows)))


def _workspace(count: int, tile: int, like: Tensor, cols: int) -> list[Tensor]:
    """``count`` reusable ``tile x cols`` buffers: every tile writes into them (``out=``), so
    the peak memory is exactly the budget, with no allocator churn between tiles."""
    return list(torch.empty(count, min(tile, like.shape[0]), cols, dtype=like.dtype,
                            device=like.device).unbind(0))


def _tile_rows(tile: int | None, b: Tensor) -> int:
    return rows_for_budget(b.shape[0], b.element_size()) if tile is None else tile


def _inv_norms(x: Tensor, normalize: bool, eps: float) -> Tensor | None:
    """``1 / max(|x_i|, eps)`` (no graph), or ``None`` without normalisation."""
    if not normalize:
        return None
    return torch.linalg.vector_norm(x, dim=1).clamp_min_(eps).reciprocal_()


def _scaled(x: Tensor, r: Tensor | None) -> Tensor:
    return x if r is None else x * r[:, None]


def _rows(a: Tensor, ra: Tensor | None, r0: int, tile: int) -> Tensor:
    """Rows ``r0 : r0 + tile`` of ``ra * a`` (one tile; the scaled ``a`` is never stored)."""
    rows = a[r0 : r0 + tile]
    return rows if ra is None else rows * ra[r0 : r0 + tile, None]


def _positives(a: Tensor, b: Tensor, ra: Tensor | None, rb: Tensor | None) -> Tensor:
    """``(ra_i a_i) . (rb_i b_i)``."""
    pos = _rowdot(a, b)
    return pos if ra is None or rb is None else pos * ra * rb


def _logits(a_s: Tensor, b: Tensor, rb: Tensor | None, out: Tensor, *,
            shift: Tensor | None = None, bias: Tensor | None = None) -> Tensor:
    """``out = a_s @ (rb * b).T - shift_i + bias`` for one row tile, without a scaled copy of
    ``b``: the column scale is one pass over the block (fused into the GEMM when absent)."""
    if rb is None:
        if shift is not None:
            return torch.addmm(shift.neg()[:, None], a_s, b.t(), out=out)
        if bias is not None:
            return torch.addmm(bias.expand(1, 1), a_s, b.t(), out=out)
        return torch.mm(a_s, b.t(), out=out)
    blk = torch.mm(a_s, b.t(), out=out).mul_(rb[None, :])
    if shift is not None:
        blk.sub_(shift[:, None])
    if bias is not None:
        blk.add_(bias)
    return blk


def _rowdot(x: Tensor, y: Tensor) -> Tensor:
    """``(x_i . y_i)_i`` without an ``N x D`` temporary."""
    return torch.bmm(x.unsqueeze(1), y.unsqueeze(2)).reshape(-1)


def _unnormalize_(dx_hat: Tensor, x: Tensor, r: Tensor | None, eps: float) -> Tensor:
    """The gradient w.r.t. ``x`` from the gradient w.r.t. ``x_hat = r * x``,
    ``r = 1 / max(|x|, eps)``, in place: ``r dx_hat - r^3 (x . dx_hat) x`` where ``|x| > eps``,
    ``r dx_hat`` where the norm is clamped (as autograd through ``x / norm.clamp_min(eps)``)."""
    if r is None:
        return dx_hat
    c = _rowdot(x, dx_hat) * r.pow(3) * (r < 1.0 / eps)
    return dx_hat.mul_(r[:, None]).addcmul_(x, c[:, None], value=-1.0)


class _TiledInfoNCE(torch.autograd.Function):
    """Row and column InfoNCE terms of ``l = scale * (ra a) @ (rb b).T`` (diagonal =
    positives)."""

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, scale: Tensor, tile: int,  # type: ignore[override]
                normalize: bool, eps: float) -> tuple[Tensor, Tensor]:
        n, m = a.shape[0], b.shape[0]
        ra, rb = _inv_norms(a, normalize, eps), _inv_norms(b, normalize, eps)
        row_lse = torch.empty(n, dtype=a.dtype, device=a.device)
        col_lse = torch.full((m,), float("-inf"), dtype=a.dtype, device=a.device)
        # a partial column sum below ``floor`` would lose terms to underflow: redone exactly
        floor = torch.finfo(a.dtype).tiny * 2.0**24 * tile
        (work,) = _workspace(1, tile, a, m)
        for r0 in range(0, n, tile):
            a_s = _rows(a, ra, r0, tile) * scale
            blk = _logits(a_s, b, rb, work[: a_s.shape[0]])
            row_max = blk.amax(1)
            top = row_max.max()
            blk.sub_(row_max[:, None]).exp_()
            row_lse[r0 : r0 + tile] = row_max + blk.sum(1).log_()
            col_sum = torch.mv(blk.t(), (row_max - top).exp_())
            low = col_sum < floor
            part = col_sum.log_().add_(top)
            if bool(low.any()):
                cols = low.nonzero().squeeze(1)
                exact = torch.mm(a_s, _scaled(b[cols], None if rb is None else rb[cols]).t())
                part[cols] = torch.logsumexp(exact, dim=0)
            col_lse = torch.logaddexp(col_lse, part)
        diag = _positives(a, b, ra, rb) * scale
        ctx.save_for_backward(a, b, scale, ra, rb, row_lse, col_lse)
        ctx.tile, ctx.eps = tile, eps
        return row_lse - diag, col_lse - diag

    @staticmethod
    @once_differentiable
    def backward(ctx, g_row: Tensor | None, g_col: Tensor | None):  # type: ignore[override]
        a, b, scale, ra, rb, row_lse, col_lse = ctx.saved_tensors
        tile = ctx.tile
        n = a.shape[0]
        g_row = torch.zeros(n, dtype=a.dtype, device=a.device) if g_row is None else g_row
        g_col = torch.zeros(n, dtype=a.dtype, device=a.device) if g_col is None else g_col
        dah = torch.empty_like(a)
        dbh = torch.zeros_like(b)
        d_scale = torch.zeros((), dtype=a.dtype, device=a.device)
        neg_col = col_lse.neg()[None, :]
        work_p, work_q = _workspace(2, tile, a, b.shape[0])
        for r0 in range(0, n, tile):
            a_t = _rows(a, ra, r0, tile)
            a_s = a_t * scale
            lse_t = row_lse[r0 : r0 + tile, None]
            # p = l - lse_row; q = l - lse_col = p + lse_row - lse_col
            rows = a_s.shape[0]
            p = _logits(a_s, b, rb, work_p[:rows], shift=lse_t[:, 0])
            q = torch.add(p, neg_col, out=work_q[:rows]).add_(lse_t).exp_().mul_(g_col[None, :])
            grad = q.addcmul_(p.exp_(), g_row[r0 : r0 + tile, None])
            dbh.addmm_(grad.t(), a_s)
            if rb is not None:
                grad.mul_(rb[None, :])
            gb = torch.mm(grad, b)  # sum_j grad_ij b_hat_j
            d_scale += _rowdot(gb, a_t).sum()  # sum_ij grad_ij (a_hat_i . b_hat_j)
            dah[r0 : r0 + tile] = gb.mul_(scale)
        # the positives (diagonal) enter each term with a minus sign
        c = -(g_row + g_col)
        dah.addcmul_(b, (scale * c if rb is None else scale * c * rb)[:, None])
        dbh.addcmul_(a, (scale * c if ra is None else scale * c * ra)[:, None])
        d_scale += (c * _positives(a, b, ra, rb)).sum()
        da = _unnormalize_(dah, a, ra, ctx.eps)
        db = _unnormalize_(dbh, b, rb, ctx.eps)
        return da, db, d_scale.reshape(scale.shape), None, None, None


_SOFTMAX, _SIGMOID = "softmax", "sigmoid"


def _row_block(kind: str, a_s: Tensor, b: Tensor, rb: Tensor | None, bias: Tensor,
               work: list[Tensor]) -> tuple[Tensor, Tensor]:
    """``(values, P)`` of one row tile: ``values_i = f(l_i.)`` and ``P = df/dl`` (the row
    softmax for ``logsumexp``; for ``sum softplus(l + bias)`` the sigmoid, computed from the
    softplus ``s`` as ``-expm1(-s)``, exact in both tails)."""
    rows = a_s.shape[0]
    if kind == _SOFTMAX:
        blk = _logits(a_s, b, rb, work[0][:rows])
        row_max = blk.amax(1)
        blk.sub_(row_max[:, None]).exp_()
        total = blk.sum(1)
        return row_max + total.log(), blk.div_(total[:, None])
    blk = _logits(a_s, b, rb, work[0][:rows], bias=bias)
    soft = torch.ops.aten.softplus.out(blk, 1, 20, out=work[1][:rows])
    return soft.sum(1), soft.neg_().expm1_().neg_()


def _row_probs(kind: str, a_s: Tensor, b: Tensor, rb: Tensor | None, bias: Tensor, lse: Tensor,
               work: Tensor) -> Tensor:
    """``P`` of one row tile again (backward recompute), from the saved log-sum-exp."""
    out = work[: a_s.shape[0]]
    if kind == _SOFTMAX:
        return _logits(a_s, b, rb, out, shift=lse).exp_()
    return _logits(a_s, b, rb, out, bias=bias).sigmoid_()


class _TiledRows(torch.autograd.Function):
    """Row-separable terms ``row_i = f(l_i.) - (l_ii + bias)``: InfoNCE ``a -> b``
    (``f = logsumexp``, no bias) and SigLIP (``f = sum_j softplus(. + bias)``)."""

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, scale: Tensor, bias: Tensor, tile: int,  # type: ignore[override]
                kind: str, normalize: bool, eps: float) -> Tensor:
        n = a.shape[0]
        ra, rb = _inv_norms(a, normalize, eps), _inv_norms(b, normalize, eps)
        values = torch.empty(n, dtype=a.dtype, device=a.device)
        grads = any(ctx.needs_input_grad[:4])
        pb = torch.empty_like(a) if grads else None  # (P b)_i
        pta = torch.zeros_like(b) if grads else None  # (P^T a)_j, every row weighted alike
        psum = torch.empty(n, dtype=a.dtype, device=a.device)
        work = _workspace(1 if kind == _SOFTMAX else 2, tile, a, b.shape[0])
        for r0 in range(0, n, tile):
            a_t = _rows(a, ra, r0, tile)
            vals, probs = _row_block(kind, a_t * scale, b, rb, bias, work)
            values[r0 : r0 + tile] = vals
            if pb is not None and pta is not None:
                psum[r0 : r0 + tile] = probs.sum(1)
                pta.addmm_(probs.t(), a_t)
                if rb is not None:
                    probs.mul_(rb[None, :])
                torch.mm(probs, b, out=pb[r0 : r0 + tile])
        pos = _positives(a, b, ra, rb)
        ctx.save_for_backward(a, b, scale, bias, ra, rb, values)
        # kept on ctx, not saved: the first backward turns them into the gradients in place
        ctx.pb, ctx.pta, ctx.psum = pb, pta, psum
        ctx.tile, ctx.kind, ctx.eps, ctx.fresh = tile, kind, eps, True
        return values - (pos * scale + (bias if kind == _SIGMOID else 0))

    @staticmethod
    @once_differentiable
    def backward(ctx, g: Tensor):  # type: ignore[override]
        a, b, scale, bias, ra, rb, values = ctx.saved_tensors
        pb, pta, psum, tile, kind = ctx.pb, ctx.pta, ctx.psum, ctx.tile, ctx.kind
        # the saved buffers become the gradients (in place) on the first backward only
        reuse, ctx.fresh = ctx.fresh, False
        ctx.pb = ctx.pta = None
        dah = pb if reuse else torch.empty_like(a)
        uniform = reuse and bool((g == g[0]).all())
        if uniform:
            dbh = pta.mul_(g[0] * scale)
        else:
            dbh = torch.zeros_like(b)
            bh = _scaled(b, rb)  # this (rarer) path keeps a scaled copy of b
            (work,) = _workspace(1, tile, a, b.shape[0])
            for r0 in range(0, a.shape[0], tile):
                a_s = _rows(a, ra, r0, tile) * scale
                probs = _row_probs(kind, a_s, b, rb, bias, values[r0 : r0 + tile], work)
                if not reuse:
                    psum[r0 : r0 + tile] = probs.sum(1)
                    torch.mm(probs, bh, out=dah[r0 : r0 + tile])
                dbh.addmm_(probs.mul_(g[r0 : r0 + tile, None]).t(), a_s)
        # sum_j P_ij l_ij / scale, then the positives: d row_i / d l_jj = -1 on the diagonal
        pos = _positives(a, b, ra, rb)
        a_dot_pb = _rowdot(a, dah) if ra is None else _rowdot(a, dah) * ra
        d_scale = (g * (a_dot_pb - pos)).sum()
        if rb is None:
            dah.sub_(b)
        else:
            dah.addcmul_(b, rb[:, None], value=-1.0)
        dah.mul_((g * scale)[:, None])
        dbh.addcmul_(a, (g * scale if ra is None else g * scale * ra)[:, None], value=-1.0)
        d_bias = (g * (psum - 1)).sum() if kind == _SIGMOID else None
        da = _unnormalize_(dah, a, ra, ctx.eps)
        db = _unnormalize_(dbh, b, rb, ctx.eps)
        return (da, db, d_scale.reshape(scale.shape),
                None if d_bias is None else d_bias.reshape(bias.shape), None, None, None, None)


def tiled_infonce_terms(a: Tensor, b: Tensor, scale: Tensor, *, tile: int | None = None,
                        normalize: bool = False, eps: float = 1e-12) -> tuple[Tensor, Tensor]:
    """``(row, col)``: ``row_i = lse_j(l_ij) - l_ii`` (a -> b), ``col_j = lse_i(l_ij) - l_jj``
    (b -> a), ``l = scale * a @ b.T`` (rows unit-normalised first with ``normalize``), in row
    tiles of ``tile`` rows (``None``: the :data:`WORKSPACE_BYTES` budget)."""
    return _TiledInfoNCE.apply(a, b, scale, _tile_rows(tile, b), normalize, eps)


def tiled_row_terms(a: Tensor, b: Tensor, scale: Tensor, *, tile: int | None = None,
                    normalize: bool = False, eps: float = 1e-12) -> Tensor:
    """InfoNCE ``a -> b`` only: ``row_i = lse_j(l_ij) - l_ii``, one pass (see the module
    docstring)."""
    bias = torch.zeros((), dtype=a.dtype, device=a.device)
    return _TiledRows.apply(a, b, scale, bias, _tile_rows(tile, b), _SOFTMAX, normalize, eps)


def tiled_sigmoid_terms(a: Tensor, b: Tensor, scale: Tensor, bias: Tensor, *,
                        tile: int | None = None, normalize: bool = False,
                        eps: float = 1e-12) -> Tensor:
    """Per-row SigLIP terms ``sum_j softplus(-z_ij (l_ij + bias))`` (``z = +1`` on the
    diagonal, ``-1`` elsewhere), one pass (see the module docstring)."""
    return _TiledRows.apply(a, b, scale, bias, _tile_rows(tile, b), _SIGMOID, normalize, eps)
