"""Tiled contrastive losses: InfoNCE/CLIP and SigLIP without an ``N x N`` logits matrix.

Row tiles of ``tile x N`` similarities are computed, reduced and dropped; the backward pass
recomputes them (flash-attention style, as Inf-CL, arXiv 2410.17243). Memory is
``O(tile * N + N * D)`` instead of ``O(N^2)``; the gradients are exact.

Both functions take L2-normalised (or raw) embeddings ``a[N, D]``, ``b[N, D]`` and a scalar
scale, and return per-row loss terms, so that any reduction or per-row weight works in the
backward pass (the per-row gradient is applied tile by tile).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["tiled_infonce_terms", "tiled_sigmoid_terms"]


class _TiledInfoNCE(torch.autograd.Function):
    """Row and column InfoNCE terms of ``logits = scale * a @ b.T`` (diagonal = positives)."""

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, scale: Tensor, tile: int) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        n = a.shape[0]
        row_lse = torch.empty(n, dtype=a.dtype, device=a.device)
        col_lse = torch.full((n,), float("-inf"), dtype=a.dtype, device=a.device)
        for r0 in range(0, n, tile):
            blk = torch.mm(a[r0 : r0 + tile], b.t()).mul_(scale)
            row_lse[r0 : r0 + tile] = torch.logsumexp(blk, dim=1)
            col_lse = torch.logaddexp(col_lse, torch.logsumexp(blk, dim=0))
        diag = (a * b).sum(1) * scale
        ctx.save_for_backward(a, b, scale, row_lse, col_lse)
        ctx.tile = tile
        return row_lse - diag, col_lse - diag

    @staticmethod
    def backward(ctx, g_row: Tensor, g_col: Tensor):  # type: ignore[override]
        a, b, scale, row_lse, col_lse = ctx.saved_tensors
        tile = ctx.tile
        n = a.shape[0]
        g_row = torch.zeros(n, dtype=a.dtype, device=a.device) if g_row is None else g_row
        g_col = torch.zeros(n, dtype=a.dtype, device=a.device) if g_col is None else g_col
        da = torch.empty_like(a)
        db = torch.zeros_like(b)
        d_scale = torch.zeros((), dtype=a.dtype, device=a.device)
        col_shift = col_lse.unsqueeze(0)
        for r0 in range(0, n, tile):
            a_t = a[r0 : r0 + tile]
            sim = torch.mm(a_t, b.t())
            logits = sim * scale
            grad = (logits - row_lse[r0 : r0 + tile, None]).exp_().mul_(g_row[r0 : r0 + tile, None])
            grad.add_((logits.sub_(col_shift)).exp_().mul_(g_col.unsqueeze(0)))
            d_scale += torch.dot(grad.reshape(-1), sim.reshape(-1))
            da[r0 : r0 + tile] = torch.mm(grad, b).mul_(scale)
            db.addmm_(grad.t(), a_t, alpha=float(scale))
        # the positives (diagonal) enter each term with a minus sign
        c = -(g_row + g_col)
        pos = (a * b).sum(1)
        da += scale * c.unsqueeze(1) * b
        db += scale * c.unsqueeze(1) * a
        d_scale += (c * pos).sum()
        return da, db, d_scale.reshape(scale.shape), None


class _TiledSigmoid(torch.autograd.Function):
    """Per-row SigLIP terms ``sum_j softplus(-z_ij (scale * a_i.b_j + bias))``, z = +1 on
    the diagonal, -1 elsewhere."""

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, scale: Tensor, bias: Tensor, tile: int) -> Tensor:  # type: ignore[override]
        n = a.shape[0]
        rows = torch.empty(n, dtype=a.dtype, device=a.device)
        for r0 in range(0, n, tile):
            blk = torch.mm(a[r0 : r0 + tile], b.t()).mul_(scale).add_(bias)
            rows[r0 : r0 + tile] = torch.nn.functional.softplus(blk).sum(1)
        diag = (a * b).sum(1) * scale + bias
        ctx.save_for_backward(a, b, scale, bias)
        ctx.tile = tile
        return rows - diag  # softplus(-x) = softplus(x) - x on the diagonal

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        a, b, scale, bias = ctx.saved_tensors
        tile = ctx.tile
        n = a.shape[0]
        da = torch.empty_like(a)
        db = torch.zeros_like(b)
        d_scale = torch.zeros((), dtype=a.dtype, device=a.device)
        d_bias = torch.zeros((), dtype=a.dtype, device=a.device)
        for r0 in range(0, n, tile):
            a_t = a[r0 : r0 + tile]
            sim = torch.mm(a_t, b.t())
            grad = (sim * scale).add_(bias).sigmoid_().mul_(g[r0 : r0 + tile, None])
            d_scale += torch.dot(grad.reshape(-1), sim.reshape(-1))
            d_bias += grad.sum()
            da[r0 : r0 + tile] = torch.mm(grad, b).mul_(scale)
            db.addmm_(grad.t(), a_t, alpha=float(scale))
        pos = (a * b).sum(1)
        da -= scale * g.unsqueeze(1) * b
        db -= scale * g.unsqueeze(1) * a
        d_scale -= (g * pos).sum()
        d_bias -= g.sum()
        return da, db, d_scale.reshape(scale.shape), d_bias.reshape(bias.shape), None


def tiled_infonce_terms(a: Tensor, b: Tensor, scale: Tensor, *, tile: int = 1024
                        ) -> tuple[Tensor, Tensor]:
    """``(row, col)``: ``row_i = lse_j(l_ij) - l_ii`` (a -> b), ``col_j = lse_i(l_ij) - l_jj``
    (b -> a), ``l = scale * a @ b.T``, computed in row tiles of ``tile``."""
    return _TiledInfoNCE.apply(a, b, scale, tile)


def tiled_sigmoid_terms(a: Tensor, b: Tensor, scale: Tensor, bias: Tensor, *,
                        tile: int = 1024) -> Tensor:
    """Per-row SigLIP terms computed in row tiles of ``tile``."""
    return _TiledSigmoid.apply(a, b, scale, bias, tile)
