r"""``weight_grad="vocab_major"``: the fully vocabulary-major two-pass method.

The tokens are split into panels (all ``N`` tokens unless the budget forbids:
:func:`~.workspace.major_panel`); for each panel the vocabulary is walked twice in blocks of
``vb`` rows (:func:`~.workspace.major_block`, from the same memory budget):

1. **LSE pass** (:func:`_lse_panel_`, one GEMM per block): ``z = h_P W_b^T (+ b_b)``, softcap
   in place, then an online log-sum-exp per token (running maximum ``m`` and sum
   ``s = sum_k exp(z_k - m)``, rescaled by ``exp(m_old - m_new)`` when the maximum grows), the
   target's (capped) logit and, with label smoothing, ``sum_k w_k z_k``: ``O(N)`` statistics.
2. **Gradient pass** (:func:`_grad_panel_`, three GEMMs per block): the block's logits are
   recomputed, turned into the logit gradient ``G = (A exp(z - lse) - B e_t - C w) cap'(z)``
   with the per-token coefficients of :mod:`.rows` (:func:`~.grads.block_logit_grad_`), and
   ``dW_b = G^T h_P`` is **written once per block** (summed over panels when there are
   several), ``dh_P += G W_b``, ``db_b += sum_n G_n``.

Four GEMMs of shape ``panel x vb x d`` per block: 4/3 of the FLOPs of the naive
``logits -> softmax -> dlogits`` computation, every GEMM large (the panel is all the tokens),
no ``V x d`` accumulator re-read per token chunk (the cost of ``"token_chunks"`` with the small
chunks the budget allows at large ``V``) and no ``N x V`` buffer. Half inputs: GEMMs in the
input dtype, softmax and statistics in float32, ``dhidden`` accumulated over the vocabulary
blocks in a float32 panel buffer, ``dweight`` accumulated over tokens inside the GEMM
(float32 in the kernel, one rounding; one more per extra panel).

Without gradients only pass 1 runs (one GEMM per block). With the recompute strategy the
forward pass runs pass 1 and backward reuses its saved LSE (``lse=``) and runs pass 2 only.
"""

from __future__ import annotations

import torch
from torch import Tensor

from losslab._core import compute_dtype
from losslab.kernels.linear_ce.grads import LceGrads, block_logit_grad_
from losslab.kernels.linear_ce.rows import (
    add_zloss_coef_,
    logit_grad_coefs,
    record_token_stats_,
)
from losslab.kernels.linear_ce.workspace import LceOptions, VocabMajorWorkspace

__all__ = ["vocab_major_pass"]

#: ``(ce, smooth, lse, grads)`` as :data:`~.loop.PassResult`.
_Result = tuple[Tensor | None, Tensor | None, Tensor, LceGrads]


def vocab_major_pass(
    h: Tensor, w: Tensor, b: Tensor | None, target: Tensor, valid: Tensor,
    class_weight: Tensor | None, opts: LceOptions, *, stats: bool, g_loss: Tensor | None,
    g_lse: Tensor | None, need: tuple[bool, bool, bool], lse: Tensor | None = None,
) -> _Result:
    r"""The ``"vocab_major"`` counterpart of :func:`~.loop.chunk_loop` (same arguments and
    result): per-token ``ce`` / ``smooth`` statistics when ``stats``, the per-token LSE, and the
    gradients of ``sum_n g_loss[n] l_n + g_lse[n] lse_n`` for the inputs flagged in ``need``.
    ``opts.chunk_size`` is the token panel. A known per-token ``lse`` (float, from an earlier
    pass over the same inputs) skips the LSE pass when no statistics are wanted."""
    (n, d), v = h.shape, w.shape[0]
    acc, dev = compute_dtype(h.dtype), h.device
    eps = opts.label_smoothing
    want_grad = any(need) and (g_loss is not None or g_lse is not None)
    need = need if want_grad else (False, False, False)
    ce = torch.empty(n, dtype=acc, device=dev) if stats else None
    smooth = torch.empty(n, dtype=acc, device=dev) if stats and eps > 0 else None
    known = lse is not None and not stats
    lse_out = lse.to(acc) if known and lse is not None else torch.empty(n, dtype=acc,
                                                                         device=dev)
    cw = class_weight.to(acc) if class_weight is not None else None
    w_sum = float(v) if cw is None else cw.sum()
    gr = LceGrads(
        dh=torch.empty(n, d, dtype=h.dtype, device=dev) if need[0] else None,
        dw=torch.empty(v, d, dtype=w.dtype, device=dev) if need[1] else None,
        db=torch.zeros(v, dtype=acc, device=dev) if need[2] else None,
    )
    if want_grad:
        gr.coef_a = torch.zeros(n, dtype=acc, device=dev)
        gr.coef_b = torch.zeros(n, dtype=acc, device=dev)
        gr.coef_c = torch.zeros(n, dtype=acc, device=dev) if eps > 0 else None
    ws = VocabMajorWorkspace.allocate(n, v, d, h.dtype, dev, opts, grads=want_grad,
                                      dh=need[0])
    z_t = torch.empty(n, dtype=acc, device=dev)
    z_sum = torch.zeros(n, dtype=acc, device=dev) if smooth is not None else None
    shift = torch.empty(n, dtype=acc, device=dev) if want_grad else None
    for p0 in range(0, n, ws.panel):
        p1 = min(p0 + ws.panel, n)
        w_t = cw[target[p0:p1]] if cw is not None else None
        if not known:
            _lse_panel_(h, w, b, target, cw, ws, lse_out, z_t, z_sum, opts.softcap, (p0, p1))
        if ce is not None:
            record_token_stats_(ce[p0:p1], _part(smooth, p0, p1), z_t[p0:p1],
                                _part(z_sum, p0, p1), lse_out[p0:p1], valid[p0:p1], w_t,
                                w_sum)
        if not want_grad:
            continue
        assert shift is not None
        cf = logit_grad_coefs(*gr.chunk_coefs(p0, p1), _part(g_loss, p0, p1),
                              _part(g_lse, p0, p1), valid[p0:p1], w_t, label_smoothing=eps,
                              v=v, w_sum=w_sum)
        add_zloss_coef_(cf, lse_out[p0:p1], opts.logz_penalty)
        _grad_panel_(h, w, b, target, cw, ws, gr, lse_out, shift, opts.softcap, (p0, p1))
    gr.coef_a = gr.coef_b = gr.coef_c = None
    return ce, smooth, lse_out, gr


def _lse_panel_(
    h: Tensor, w: Tensor, b: Tensor | None, target: Tensor, cw: Tensor | None,
    ws: VocabMajorWorkspace, lse: Tensor, z_t: Tensor, z_sum: Tensor | None,
    cap: float | None, tokens: tuple[int, int],
) -> None:
    """Pass 1 over the vocabulary for the panel ``tokens = (p0, p1)``: ``lse[p0:p1]``, the
    target's (capped) logit ``z_t[p0:p1]`` and (label smoothing) ``z_sum[p0:p1] =
    sum_k w_k z_k``, by an online log-sum-exp over the blocks."""
    p0, p1 = tokens
    k, v = p1 - p0, w.shape[0]
    hp, tp = h[p0:p1], target[p0:p1]
    run_m = torch.full((k,), float("-inf"), dtype=lse.dtype, device=h.device)
    run_s = torch.zeros(k, dtype=lse.dtype, device=h.device)
    for v0 in range(0, v, ws.block):
        v1 = min(v0 + ws.block, v)
        m = v1 - v0
        z = ws.z[: k * m].view(k, m)
        torch.mm(hp, w[v0:v1].t(), out=z)
        if b is not None:
            z.add_(b[v0:v1])
        x = ws.x[: k * m].view(k, m).copy_(z) if ws.x is not None else z
        if cap is not None:
            x.div_(cap).tanh_().mul_(cap)
        sel = ((tp >= v0) & (tp < v1)).nonzero().squeeze(1)
        if sel.numel():
            z_t[p0 + sel] = x[sel, tp[sel] - v0]
        if z_sum is not None:
            zs = z_sum[p0:p1]
            if cw is None:
                zs += x.sum(1)
            else:
                zs.addmv_(x, cw[v0:v1])
        new_m = torch.maximum(run_m, x.amax(1))
        run_s.mul_(torch.exp(run_m - new_m))
        x.sub_(new_m.unsqueeze(1)).exp_()
        run_s += x.sum(1)
        run_m = new_m
    torch.add(run_m, run_s.log_(), out=lse[p0:p1])


def _grad_panel_(
    h: Tensor, w: Tensor, b: Tensor | None, target: Tensor, cw: Tensor | None,
    ws: VocabMajorWorkspace, gr: LceGrads, lse: Tensor, shift: Tensor, cap: float | None,
    tokens: tuple[int, int],
) -> None:
    """Pass 2 over the vocabulary for the panel ``tokens = (p0, p1)`` (its coefficients
    ``A, B, C`` are set): per block, the logit gradient ``G``, ``dW_b (+)= G^T h_P``,
    ``dh_P += G W_b`` and ``db_b += sum_n G_n``."""
    p0, p1 = tokens
    k, v = p1 - p0, w.shape[0]
    hp = h[p0:p1]
    ca, cb = gr.coef_a, gr.coef_b
    assert ca is not None and cb is not None
    # exp(z - lse) * A = exp(z - (lse - log A)) when A >= 0 (A = 0 gives exp(-inf) = 0)
    fold = bool((ca[p0:p1] >= 0).all())
    if fold:
        torch.sub(lse[p0:p1], torch.log(ca[p0:p1]), out=shift[p0:p1])
    else:
        shift[p0:p1] = lse[p0:p1]
    tr = torch.empty_like(target)  # target - v0 of the current block
    dh = gr.dh[p0:p1] if gr.dh is not None else None
    for v0 in range(0, v, ws.block):
        v1 = min(v0 + ws.block, v)
        m = v1 - v0
        wb = w[v0:v1]
        z = ws.z[: k * m].view(k, m)
        torch.mm(hp, wb.t(), out=z)
        if b is not None:
            z.add_(b[v0:v1])
        torch.sub(target, v0, out=tr)
        tp = tr[p0:p1]
        onehot = ((tp >= 0) & (tp < m) & (cb[p0:p1] != 0)).nonzero().squeeze(1) + p0
        block_logit_grad_(z, ws.x, ws.tanh, gr, shift, cw, onehot, tr, cap, fold, (p0, p1),
                          (v0, v1))
        if gr.db is not None:  # the float32 G (x) is still intact
            g32 = ws.x[: k * m].view(k, m) if ws.x is not None else z
            gr.db[v0:v1] += g32.sum(0)
        if gr.dw is not None:
            if p0 == 0:
                torch.mm(z.t(), hp, out=gr.dw[v0:v1])
            else:
                gr.dw[v0:v1].addmm_(z.t(), hp)
        if dh is None:
            continue
        if ws.dh_acc is None:  # fp32 / fp64: accumulate in the returned gradient
            if v0 == 0:
                torch.mm(z, wb, out=dh)
            else:
                dh.addmm_(z, wb)
        else:
            assert ws.dh_part is not None
            acc32, part = ws.dh_acc[:k], ws.dh_part[:k]
            torch.mm(z, wb, out=part)
            if v0 == 0:
                acc32.copy_(part)
            else:
                acc32.add_(part)
    if dh is not None and ws.dh_acc is not None:
        dh.copy_(ws.dh_acc[:k])


def _part(x: Tensor | None, s: int, e: int) -> Tensor | None:
    return x[s:e] if x is not None else None
