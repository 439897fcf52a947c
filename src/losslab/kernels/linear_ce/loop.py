r"""The pass over token chunks shared by forward and backward (:func:`chunk_loop`) and its
``weight_grad`` variant (:func:`grad_pass`).

Three levels: token chunks (:func:`chunk_loop`: one ``[chunk, V]`` logits GEMM per chunk),
row blocks of a chunk (:func:`_row_blocks`: softcap, softmax, LSE, with gradients the z-loss
coefficient and, with softcap, the materialised logit gradient), and the gradient assembly of
:mod:`.grads` (folded, or from the materialised gradient).
"""

from __future__ import annotations

import torch
from torch import Tensor

from losslab._core import compute_dtype
from losslab.kernels.linear_ce.grads import (
    LceGrads,
    finish_smoothing_terms_,
    fold_grads_,
    materialized_grads_,
    weight_grad_by_vocab_blocks,
)
from losslab.kernels.linear_ce.rows import (
    ChunkCoefs,
    add_zloss_coef_,
    logit_grad_coefs,
    materialize_logit_grad_,
    record_token_stats_,
    softcap_,
    softmax_rows_,
)
from losslab.kernels.linear_ce.vocab_major import vocab_major_pass
from losslab.kernels.linear_ce.workspace import ChunkWorkspace, LceOptions

__all__ = ["PassResult", "chunk_loop", "grad_pass"]

#: ``(ce, smooth, lse, grads)`` of one pass (see :func:`chunk_loop`).
PassResult = tuple[Tensor | None, Tensor | None, Tensor, LceGrads]


def chunk_loop(
    h: Tensor, w: Tensor, b: Tensor | None, target: Tensor, valid: Tensor,
    class_weight: Tensor | None, opts: LceOptions, *, stats: bool, g_loss: Tensor | None,
    g_lse: Tensor | None, need: tuple[bool, bool, bool], coefs: bool = False,
    lse: Tensor | None = None,
) -> PassResult:
    r"""One pass over the tokens in chunks of ``opts.chunk_size`` rows.

    ``target`` holds the class ids with ignored tokens mapped to 0 (``valid`` marks the
    others). Returns ``(ce, smooth, lse, grads)``: per-token (before ``token_weight``)
    ``-w_t log p_t`` and ``-sum_k w_k log p_k`` (only when ``stats``; ``smooth`` only with
    label smoothing), the per-token LSE, and the gradients of
    ``sum_n g_loss[n] * l_n + g_lse[n] * lse_n`` (``l_n`` the label-smoothed, class-weighted
    CE plus z-loss) for the inputs flagged in ``need`` (``dh, dw, db``); with ``coefs`` the
    per-token coefficients ``A, B, C`` are kept in ``grads`` even if ``need`` is all False.

    ``opts.weight_grad == "vocab_major"`` runs :func:`~.vocab_major.vocab_major_pass`
    instead (vocabulary blocks of whole token panels; ``lse``, the per-token LSE of an
    earlier pass over the same inputs, lets it skip its LSE pass when no ``stats`` are
    wanted). The token-chunk passes ignore ``lse``.
    """
    if opts.weight_grad == "vocab_major":
        return vocab_major_pass(h, w, b, target, valid, class_weight, opts, stats=stats,
                                g_loss=g_loss, g_lse=g_lse, need=need, lse=lse)
    (n, d), v = h.shape, w.shape[0]
    acc, dev = compute_dtype(h.dtype), h.device
    eps = opts.label_smoothing
    want_grad = (any(need) or coefs) and (g_loss is not None or g_lse is not None)
    need = need if want_grad else (False, False, False)
    ce = torch.empty(n, dtype=acc, device=dev) if stats else None
    smooth = torch.empty(n, dtype=acc, device=dev) if stats and eps > 0 else None
    lse = torch.empty(n, dtype=acc, device=dev)
    cw = class_weight.to(acc) if class_weight is not None else None
    w_sum = float(v) if cw is None else cw.sum()
    gr = LceGrads.allocate(h, w, cw, opts, need=need, coefs=want_grad)
    folded = want_grad and opts.softcap is None and (need[0] or need[1])
    ws = ChunkWorkspace.allocate(n, v, d, h.dtype, dev, opts, smooth_sum=smooth is not None,
                                 weight_grad=need[1], folded=folded)
    for s in range(0, n, ws.chunk):
        e = min(s + ws.chunk, n)
        hc, tc, vr = h[s:e], target[s:e], valid[s:e]
        logits = ws.logits[: e - s]
        torch.mm(hc, w.t(), out=logits)
        if b is not None:
            logits.add_(b)
        w_t = cw[tc] if cw is not None else None
        cf = None
        if want_grad:
            cf = logit_grad_coefs(*gr.chunk_coefs(s, e), _part(g_loss, s, e),
                                  _part(g_lse, s, e), vr, w_t, label_smoothing=eps, v=v,
                                  w_sum=w_sum)
        _row_blocks(logits, tc, cw, ws, lse[s:e], cf, gr.db, opts)
        if ce is not None:
            record_token_stats_(ce[s:e], _part(smooth, s, e), ws.z_target[: e - s],
                                _part(ws.z_sum, 0, e - s), lse[s:e], vr, w_t, w_sum)
        if cf is None:
            continue
        if opts.softcap is not None:  # logits holds the chunk's full logit gradient
            materialized_grads_(gr, ws, logits, hc, w, s)
        else:  # logits holds p
            fold_grads_(gr, ws, logits, hc, w, tc, cf, s)
    if opts.softcap is None:
        finish_smoothing_terms_(gr, cw)
    return ce, smooth, lse, gr


def _row_blocks(
    logits: Tensor, target: Tensor, cw: Tensor | None, ws: ChunkWorkspace, lse: Tensor,
    coefs: ChunkCoefs | None, db: Tensor | None, opts: LceOptions,
) -> None:
    """The row blocks of one chunk: softcap, target logit (and smoothing sum) into the
    workspace, ``logits <- p`` and its LSE into ``lse``; with ``coefs`` (gradients wanted),
    the z-loss part of ``A``, the logit gradient in place of ``p`` (softcap) and the
    ``db`` term of the block's rows. Half inputs: each block runs on a float32 copy in
    ``ws.scratch`` and is copied back (only when gradients are wanted)."""
    half = ws.scratch is not None
    cap = opts.softcap
    for r0 in range(0, logits.shape[0], ws.rows):
        r1 = min(r0 + ws.rows, logits.shape[0])
        z = ws.scratch[: r1 - r0].copy_(logits[r0:r1]) if ws.scratch is not None \
            else logits[r0:r1]
        tanh = ws.tanh[: r1 - r0] if ws.tanh is not None else None
        if cap is not None:
            assert tanh is not None
            softcap_(z, cap, tanh)
        lse_rows = softmax_rows_(z, target[r0:r1], cw, ws.z_target[r0:r1],
                                 _part(ws.z_sum, r0, r1))
        lse[r0:r1] = lse_rows
        if coefs is None:
            continue
        cr = coefs.rows(r0, r1)
        add_zloss_coef_(cr, lse_rows, opts.logz_penalty)
        if tanh is not None:
            materialize_logit_grad_(z, tanh, cr, target[r0:r1], cw)
            if db is not None:
                db += z.sum(0)
        elif db is not None:
            db += cr.a @ z
        if half:
            logits[r0:r1].copy_(z)


def _part(x: Tensor | None, s: int, e: int) -> Tensor | None:
    return x[s:e] if x is not None else None


def grad_pass(
    h: Tensor, w: Tensor, b: Tensor | None, target: Tensor, valid: Tensor,
    class_weight: Tensor | None, opts: LceOptions, *, stats: bool, g_loss: Tensor | None,
    g_lse: Tensor | None, need: tuple[bool, bool, bool], lse: Tensor | None = None,
) -> PassResult:
    """:func:`chunk_loop`, with ``dweight`` from the token chunks (``weight_grad=
    "token_chunks"``: one float32/float64 accumulator, in the accumulator dtype), from
    :func:`~.grads.weight_grad_by_vocab_blocks` (``"vocab_blocks"``: in ``weight``'s dtype) or
    by the vocabulary-major passes (``"vocab_major"``: in ``weight``'s dtype; ``lse`` as in
    :func:`chunk_loop`)."""
    if opts.weight_grad != "vocab_blocks" or not need[1] or (g_loss is None and g_lse is None):
        return chunk_loop(h, w, b, target, valid, class_weight, opts, stats=stats,
                          g_loss=g_loss, g_lse=g_lse, need=need, lse=lse)
    ce, smooth, lse, gr = chunk_loop(h, w, b, target, valid, class_weight, opts, stats=stats,
                                     g_loss=g_loss, g_lse=g_lse,
                                     need=(need[0], False, need[2]), coefs=True)
    gr.dw = weight_grad_by_vocab_blocks(h, w, b, target, lse, gr, class_weight, opts)
    gr.coef_a = gr.coef_b = gr.coef_c = None
    return ce, smooth, lse, gr
