"""The two autograd Functions of the linear cross-entropy kernel (``strategy=``).

* :class:`GradInForward` (``"grad_in_forward"``, Liger-style): the gradients are computed
  during the forward pass; backward only scales them by the scalar upstream gradient.
* :class:`Recompute` (``"recompute"``, CCE-style): forward keeps only the per-token LSE;
  backward recomputes each chunk's logits.

Both take ``(h [N, d], w [V, d], b [V] | None, target [N], valid [N], class_weight [V] |
None, ..., opts)`` with ``target`` the class ids (ignored tokens mapped to 0) and ``valid``
the mask of the tokens that count, and return ``(loss, lse)``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from losslab._core import compute_dtype
from losslab.kernels.linear_ce.loop import chunk_loop, grad_pass
from losslab.kernels.linear_ce.rows import per_token_loss
from losslab.kernels.linear_ce.workspace import LceOptions

__all__ = ["GradInForward", "Recompute"]


def _needs(ctx: Any, b: Tensor | None) -> tuple[bool, bool, bool]:
    return (ctx.needs_input_grad[0], ctx.needs_input_grad[1],
            b is not None and ctx.needs_input_grad[2])


def _as(x: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    return x.to(dtype) if x is not None else None


class GradInForward(torch.autograd.Function):
    """Scalar loss (``"mean"``/``"sum"``; ``token_weight`` without grad); the gradients are
    computed in forward and scaled in backward. If the returned LSE is used in the graph,
    backward adds its term with one recomputation pass."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, h: Tensor, w: Tensor, b: Tensor | None, target: Tensor, valid: Tensor,
        class_weight: Tensor | None, token_weight: Tensor | None, scale: Tensor,
        opts: LceOptions,
    ) -> tuple[Tensor, Tensor]:
        need = _needs(ctx, b)
        # d(loss)/d(l_n) = token_weight_n * scale (scale = 1/denominator for "mean", 1 for "sum").
        g = scale.expand(h.shape[0]) if token_weight is None else token_weight * scale
        ce, smooth, lse, gr = grad_pass(h, w, b, target, valid, class_weight, opts, stats=True,
                                        g_loss=g, g_lse=None, need=need)
        assert ce is not None
        per_token = per_token_loss(ce, smooth, lse, valid, opts.label_smoothing,
                                   opts.logz_penalty, w.shape[0])
        if token_weight is not None:
            per_token = per_token * token_weight
        loss = per_token.sum() * scale
        ctx.grads = gr.in_param_dtypes(w, b)
        del gr
        ctx.opts = opts
        ctx.need = need
        ctx.save_for_backward(h, w, b, target, valid, class_weight, g)
        return loss, lse

    @staticmethod
    def backward(ctx: Any, g_loss: Tensor, g_lse: Tensor | None) -> tuple[Tensor | None, ...]:
        h, w, b, target, valid, class_weight, g = ctx.saved_tensors
        acc = compute_dtype(h.dtype)
        if g_lse is not None and not bool(g_lse.ne(0).any()):
            g_lse = None
        if ctx.grads is None:
            # A second backward through the same graph (retain_graph, gradcheck): the
            # precomputed gradients were handed out already, so recompute them.
            *_, gr = grad_pass(h, w, b, target, valid, class_weight, ctx.opts, stats=False,
                               g_loss=g * g_loss.to(acc), g_lse=_as(g_lse, acc),
                               need=ctx.need)
            return (*gr.in_param_dtypes(w, b), None, None, None, None, None, None)
        dh, dw, db = ctx.grads
        ctx.grads = None  # handed over to autograd (no copy, no in-place reuse later)
        if not bool(g_loss == 1):
            dh = dh.mul_(g_loss) if dh is not None else None
            dw = dw.mul_(g_loss) if dw is not None else None
            db = db.mul_(g_loss) if db is not None else None
        if g_lse is not None:
            need = (dh is not None, dw is not None, db is not None)
            *_, gr = grad_pass(h, w, b, target, valid, class_weight, ctx.opts, stats=False,
                               g_loss=None, g_lse=g_lse.to(acc), need=need)
            dh = dh + gr.dh if dh is not None else None
            dw = dw + gr.dw.to(dw.dtype) if dw is not None else None  # type: ignore[union-attr]
            db = db + gr.db.to(db.dtype) if db is not None else None  # type: ignore[union-attr]
        return dh, dw, db, None, None, None, None, None, None


class Recompute(torch.autograd.Function):
    """Per-token loss and LSE; forward keeps only the LSE, backward recomputes the logits
    (exact for any per-token upstream gradient: ``reduction="none"``, a ``token_weight``
    that requires grad)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, h: Tensor, w: Tensor, b: Tensor | None, target: Tensor, valid: Tensor,
        class_weight: Tensor | None, opts: LceOptions,
    ) -> tuple[Tensor, Tensor]:
        ce, smooth, lse, _ = chunk_loop(h, w, b, target, valid, class_weight, opts, stats=True,
                                        g_loss=None, g_lse=None, need=(False, False, False))
        assert ce is not None
        per_token = per_token_loss(ce, smooth, lse, valid, opts.label_smoothing,
                                   opts.logz_penalty, w.shape[0])
        ctx.opts = opts
        ctx.save_for_backward(h, w, b, target, valid, class_weight)
        # vocab_major's backward reuses the LSE (an O(N) copy: the caller may modify the
        # returned one in place) instead of repeating its LSE pass
        ctx.lse = lse.detach().clone() if opts.weight_grad == "vocab_major" else None
        return per_token, lse

    @staticmethod
    def backward(ctx: Any, g_loss: Tensor | None, g_lse: Tensor | None) -> tuple[Any, ...]:
        h, w, b, target, valid, class_weight = ctx.saved_tensors
        acc = compute_dtype(h.dtype)
        *_, gr = grad_pass(h, w, b, target, valid, class_weight, ctx.opts, stats=False,
                           g_loss=_as(g_loss, acc), g_lse=_as(g_lse, acc),
                           need=_needs(ctx, b), lse=ctx.lse)
        return (*gr.in_param_dtypes(w, b), None, None, None, None)
