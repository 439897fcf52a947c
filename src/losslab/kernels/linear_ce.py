r"""Memory-efficient fused linear + cross-entropy for large vocabularies.

``loss = cross_entropy(hidden @ weight.T + bias, target)`` without ever building the ``N x V``
logits: the tokens are processed in chunks of ``chunk_size`` rows; each chunk's logits live in
one reused buffer of ``chunk_size x V`` elements, are turned into probabilities in place by
one fused softmax per row block (the row's log-sum-exp is ``z_max - log p_max``: the
probability of the row maximum is at least ``1/V`` and never underflows), and from there into
the per-token loss, the per-token log-sum-exp and, when gradients are needed, the gradient
contributions ``dhidden``, ``dweight`` and ``dbias``.

Two strategies (``strategy=``):

* ``"grad_in_forward"`` (Liger-style): the gradients are computed during the forward pass
  (three matmuls per chunk, no recomputation); backward only scales them by the scalar
  upstream gradient. Valid for ``reduction="mean"``/``"sum"`` with a non-differentiable
  ``token_weight``. If the returned LSE is used in the graph, backward adds its term with one
  recomputation pass.
* ``"recompute"`` (CCE-style): forward keeps only the per-token LSE; backward recomputes each
  chunk's logits (four matmuls). Needed for ``reduction="none"`` (each token has its own
  upstream gradient — the bug several peers shipped was to apply it as a scalar) and for a
  ``token_weight`` that requires grad.

``"auto"`` picks grad-in-forward when it is valid, else recompute.

``weight_grad`` selects how ``dweight`` is formed: ``"token_chunks"`` adds each chunk's
``G_c.T @ h_c`` to one ``V x d`` accumulator (3 GEMMs, the default), and ``"vocab_blocks"``
runs a second pass over vocabulary blocks that recomputes their logits for all tokens and
writes ``dweight[block] = G.T @ h`` once (4 GEMMs, no accumulator: for half inputs the GEMM's
internal float32 accumulation over all tokens replaces a float32 ``V x d`` buffer, so it uses
less memory and more time).

Numerics: the loss, the LSE and ``dbias`` are accumulated in float32 (float64 for float64
inputs). For bfloat16/float16 inputs the matmuls run in the input dtype (as the naive
``hidden @ weight.T`` does) and the softmax is computed in float32 from the half logits;
``dweight`` is accumulated over tokens in float32 (inside one GEMM with ``"vocab_blocks"``; in
a float32 accumulator rounded once at the end with ``"token_chunks"``). The loss and LSE of
half inputs are returned in float32.

Dispatch point: :data:`BACKENDS` maps a backend name to its implementation; :func:`_backend`
picks one per call. Only the portable pure-PyTorch backend (``"torch"``, CPU and GPU) exists
now; a Triton kernel for CUDA (compared with Liger-Kernel and Cut Cross-Entropy) can be
registered there without changing the API.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from losslab._core import (
    HALF_DTYPES,
    check_choice,
    check_reduction,
    compute_dtype,
)

__all__ = [
    "BACKENDS",
    "STRATEGIES",
    "WEIGHT_GRADS",
    "auto_chunk_size",
    "auto_weight_grad",
]

Strategy = Literal["auto", "grad_in_forward", "recompute"]
STRATEGIES: tuple[str, ...] = ("auto", "grad_in_forward", "recompute")
WeightGrad = Literal["auto", "token_chunks", "vocab_blocks"]
WEIGHT_GRADS: tuple[str, ...] = ("auto", "token_chunks", "vocab_blocks")

#: Largest per-chunk logits buffer of :func:`auto_chunk_size` with ``weight_grad=
#: "token_chunks"`` (every chunk re-reads and re-writes the ``V x d`` weight-gradient
#: accumulator, so chunks are made as large as this allows, up to :data:`MAX_CHUNK`).
CHUNK_BYTES = 512 * 1024 * 1024
#: The same with ``weight_grad="vocab_blocks"`` (no accumulator: small chunks cost little).
VOCAB_BLOCKS_CHUNK_BYTES = 32 * 1024 * 1024
#: The same for half-precision inputs with ``weight_grad="token_chunks"``: their float32
#: ``V x d`` accumulator already costs ``V d`` bytes more than the half gradient, so the chunk
#: is kept small (256 tokens at V = 32000) to stay within 0.15x of the naive path's memory.
HALF_CHUNK_BYTES = 16 * 1024 * 1024
#: Fewest / most tokens per automatic chunk (smaller GEMMs lose efficiency on CPU).
MIN_CHUNK, MAX_CHUNK = 256, 1024
#: Bytes of the float32 row-block scratch used with half-precision inputs.
HALF_SCRATCH_BYTES = 2 * 1024 * 1024
#: Vocabulary rows per block of the half-precision ``dweight`` matmul (bounds its scratch).
HALF_VOCAB_BLOCK = 1024
#: Most / fewest vocabulary rows per block of the ``weight_grad="vocab_blocks"`` pass.
VOCAB_BLOCK, MIN_VOCAB_BLOCK = 8192, 256
#: Bytes of that pass's ``tokens x block`` buffers (tokens are grouped beyond it).
VOCAB_PASS_BYTES = 64 * 1024 * 1024



def auto_chunk_size(
    n_tokens: int, vocab_size: int, dtype: torch.dtype = torch.float32, *, softcap: bool = False,
    weight_grad: str = "token_chunks",
) -> int:
    """Tokens per chunk: as many as fit a logits buffer of :data:`CHUNK_BYTES` (512 MiB) with
    ``weight_grad="token_chunks"`` (:data:`HALF_CHUNK_BYTES`, 16 MiB, for float16/bfloat16)
    or :data:`VOCAB_BLOCKS_CHUNK_BYTES` (32 MiB) with ``"vocab_blocks"``, as a multiple of 64
    clamped to ``[MIN_CHUNK, MAX_CHUNK]`` = [256, 1024] and to ``n_tokens``.

    Per token and vocabulary entry the buffer holds the logits in the input dtype (plus a tanh
    buffer with ``softcap``; half inputs use a separate float32 row-block scratch). 1024 tokens
    keep the chunk GEMMs efficient on CPU and, with ``token_chunks``, the ``V x d``
    accumulator traffic low (it is read and written once per chunk).
    """
    softcap_scratch = softcap and dtype not in HALF_DTYPES
    per = dtype.itemsize + (compute_dtype(dtype).itemsize if softcap_scratch else 0)
    if weight_grad != "token_chunks":
        budget = VOCAB_BLOCKS_CHUNK_BYTES
    else:
        budget = HALF_CHUNK_BYTES if dtype in HALF_DTYPES else CHUNK_BYTES
    c = (budget // (per * max(vocab_size, 1))) // 64 * 64
    return max(1, min(max(MIN_CHUNK, min(MAX_CHUNK, c)), n_tokens))


@dataclass(frozen=True)
class _Opts:
    ignore_index: int
    label_smoothing: float
    softcap: float | None
    logz_penalty: float
    chunk_size: int
    weight_grad: str = "token_chunks"


@dataclass
class _Grads:
    dh: Tensor | None
    dw: Tensor | None  # accumulator dtype (fp32 for half / fp32 inputs)
    db: Tensor | None
    # per-token coefficients of the logit gradient ``A p - B e_t - C w`` (None: no gradient)
    coef_a: Tensor | None = None
    coef_b: Tensor | None = None
    coef_c: Tensor | None = None

    def in_param_dtypes(self, w: Tensor, b: Tensor | None) -> tuple[Tensor | None, ...]:
        """``(dh, dw, db)`` in the dtypes of ``hidden``, ``weight`` and ``bias`` (a float32
        ``dw`` accumulator of half weights is rounded in place)."""
        dw = _round_in_place(self.dw, w.dtype) if self.dw is not None else None
        db = self.db.to(b.dtype) if self.db is not None and b is not None else None
        return self.dh, dw, db


def _weighted_row_sum(weight: Tensor, cw: Tensor | None, acc: torch.dtype) -> Tensor:
    """``sum_k cw_k weight_k`` (a ``[d]`` vector) in ``acc``, by vocabulary blocks."""
    out = torch.zeros(weight.shape[1], dtype=acc, device=weight.device)
    for s in range(0, weight.shape[0], HALF_VOCAB_BLOCK):
        blk = weight[s : s + HALF_VOCAB_BLOCK].to(acc)
        out += blk.sum(0) if cw is None else cw[s : s + HALF_VOCAB_BLOCK] @ blk
    return out


def _chunk_loop(
    h: Tensor,
    w: Tensor,
    b: Tensor | None,
    tsafe: Tensor,
    valid: Tensor,
    cw: Tensor | None,
    opts: _Opts,
    *,
    stats: bool,
    g_loss: Tensor | None,
    g_lse: Tensor | None,
    need: tuple[bool, bool, bool],
    coefs: bool = False,
) -> tuple[Tensor | None, Tensor | None, Tensor | None, _Grads]:
    r"""The chunked pass shared by forward and backward.

    Returns ``(ce, smooth, lse, grads)``: per-token (unweighted by ``token_weight``)
    ``-w_t log p_t`` and ``-sum_k w_k log p_k`` (only when ``stats``; ``smooth`` only with label
    smoothing), the per-token LSE, and the gradients of
    ``sum_n g_loss[n] * l_n + g_lse[n] * lse_n`` where ``l_n`` is the per-token loss
    (label-smoothed, class-weighted CE plus z-loss) for the inputs flagged in ``need``.

    With per-token coefficients ``A, B, C`` the logit gradient of a token is
    ``A p - B e_t - C w`` (``w`` the class weights), so without softcap ``p`` never has to be
    modified: the coefficients are folded into the small ``[chunk, d]`` operands.
    """
    n, d = h.shape
    v = w.shape[0]
    dtype, dev = h.dtype, h.device
    acc = compute_dtype(dtype)
    half = dtype in HALF_DTYPES
    eps, lam, cap = opts.label_smoothing, opts.logz_penalty, opts.softcap
    want_grad = (any(need) or coefs) and (g_loss is not None or g_lse is not None)
    chunk = max(1, min(opts.chunk_size, n))

    ce = torch.empty(n, dtype=acc, device=dev) if stats else None
    smooth = torch.empty(n, dtype=acc, device=dev) if stats and eps > 0 else None
    lse_all = torch.empty(n, dtype=acc, device=dev)

    need_dh, need_dw, need_db = need if want_grad else (False, False, False)
    dh = torch.empty(n, d, dtype=dtype, device=dev) if need_dh else None
    # Written (not added) by the first chunk's GEMM: no zero-fill pass over V x d.
    dw = torch.empty(v, d, dtype=acc, device=dev) if need_dw else None
    db = torch.zeros(v, dtype=acc, device=dev) if need_db else None

    cwf = cw.to(acc) if cw is not None else None
    w_sum = float(v) if cwf is None else cwf.sum()
    u = _weighted_row_sum(w, cwf, acc) if (need_dh and eps > 0) else None
    c_h_sum = torch.zeros(d, dtype=acc, device=dev) if (need_dw and eps > 0) else None
    c_total = torch.zeros((), dtype=acc, device=dev) if (need_db and eps > 0) else None

    coef_a_all = torch.zeros(n, dtype=acc, device=dev) if want_grad else None
    coef_b_all = torch.zeros(n, dtype=acc, device=dev) if want_grad else None
    coef_c_all = torch.zeros(n, dtype=acc, device=dev) if want_grad and eps > 0 else None
    buf = torch.empty(chunk, v, dtype=dtype, device=dev)
    # Half inputs: the logits come out of a half matmul; the softmax runs on float32 copies of
    # row blocks of ``half_rows`` rows (a small scratch, so the half chunk can stay large).
    half_rows = max(16, min(chunk, HALF_SCRATCH_BYTES // (4 * v)))
    rows_max = half_rows if half else chunk
    tbuf = torch.empty(rows_max, v, dtype=acc, device=dev) if cap is not None else None
    scratch = torch.empty(half_rows, v, dtype=acc, device=dev) if half else None
    wblk = wblk32 = None
    if half and need_dw:
        assert scratch is not None
        # The float32 side of the dW accumulation reuses the softmax scratch (idle by then).
        vb = min(HALF_VOCAB_BLOCK, v)
        fit = scratch.numel() // d
        if fit >= min(vb, 64):
            vb = min(vb, fit)
            wblk32 = scratch.view(-1)[: vb * d].view(vb, d)
        else:
            wblk32 = torch.empty(vb, d, dtype=acc, device=dev)
        wblk = torch.empty(vb, d, dtype=dtype, device=dev)
    wt = w.t()
    materialize = cap is not None  # softcap: the logit gradient is not A p - B e_t - C w
    folded = want_grad and not materialize and (need_dh or need_dw)
    ra = torch.empty(chunk, d, dtype=acc, device=dev) if folded else None
    rb = torch.empty(chunk, d, dtype=acc, device=dev) if folded else None
    rh = torch.empty(chunk, d, dtype=dtype, device=dev) if folded and half else None

    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        m = e - s
        hc = h[s:e]
        logits = buf[:m]
        torch.mm(hc, wt, out=logits)
        if b is not None:
            logits.add_(b)
        coef_a = coef_a_all[s:e] if coef_a_all is not None else None
        coef_b = coef_b_all[s:e] if coef_b_all is not None else None
        coef_c = coef_c_all[s:e] if coef_c_all is not None else None
        vr = valid[s:e]
        w_t = cwf[tsafe[s:e]] if cwf is not None else None
        gl = None
        if want_grad:
            # Per-token coefficients of the logit gradient A p - B e_t - C w, for the whole
            # chunk; only the z-loss part of A (2 lam lse) waits for the LSE of its rows.
            assert coef_a is not None and coef_b is not None
            coef_a.zero_()
            if g_loss is not None:
                gl = torch.where(vr, g_loss[s:e], 0.0)
                gb = gl * (1.0 - eps) if w_t is None else gl * (1.0 - eps) * w_t
                coef_b.copy_(gb)
                coef_a.add_(gb).add_(gl * ((eps / v) * w_sum))
                if coef_c is not None:
                    torch.mul(gl, eps / v, out=coef_c)
            if g_lse is not None:
                coef_a.add_(g_lse[s:e])
        z_t = torch.empty(m, dtype=acc, device=dev)
        z_sum = torch.empty(m, dtype=acc, device=dev) if smooth is not None else None
        t_chunk = tsafe[s:e].unsqueeze(1)
        step = half_rows if half else m
        for r0 in range(0, m, step):
            r1 = min(r0 + step, m)
            if half:
                assert scratch is not None
                z = scratch[: r1 - r0].copy_(logits[r0:r1])
            else:
                z = logits[r0:r1]
            tb = None
            if cap is not None:
                assert tbuf is not None
                tb = tbuf[: r1 - r0]
                torch.div(z, cap, out=tb)
                tb.tanh_()
                torch.mul(tb, cap, out=z)
            z_t[r0:r1] = z.gather(1, t_chunk[r0:r1]).squeeze(1)
            if z_sum is not None:
                z_sum[r0:r1] = z.sum(1) if cwf is None else torch.mv(z, cwf)
            z_max = z.amax(1)
            # z <- p in place. The row's LSE follows from the probability of its maximum,
            # p_max = exp(z_max - lse) >= 1/V (never underflows): one fused softmax and two
            # row maxima instead of a log-softmax pass plus a softmax pass.
            torch.ops.aten._softmax.out(z, 1, False, out=z)
            lse = z_max.sub_(z.amax(1).log_())
            lse_all[s + r0 : s + r1] = lse
            if not want_grad:
                continue
            assert coef_a is not None and coef_b is not None
            ga = coef_a[r0:r1]
            if lam != 0.0 and gl is not None:
                ga.add_(gl[r0:r1] * (2.0 * lam) * lse)
            if materialize:
                assert tb is not None
                z.mul_(ga.unsqueeze(1))
                ar = torch.arange(r1 - r0, device=dev)
                z.index_put_((ar, t_chunk[r0:r1, 0]), -coef_b[r0:r1], accumulate=True)
                if coef_c is not None:
                    cc = coef_c[r0:r1]
                    if cwf is None:
                        z.sub_(cc.unsqueeze(1))
                    else:
                        z.addr_(cc, cwf, alpha=-1.0)
                tb.square_().neg_().add_(1.0)  # d softcap(x) / dx = 1 - tanh^2
                z.mul_(tb)
                if db is not None:
                    db += z.sum(0)
            elif db is not None:
                db += ga @ z
            if half:
                logits[r0:r1].copy_(z)
        if stats:
            assert ce is not None
            lse_c = lse_all[s:e]
            lp_t = z_t - lse_c
            ce[s:e] = torch.where(vr, -lp_t if w_t is None else -lp_t * w_t, 0.0)
            if smooth is not None:
                assert z_sum is not None
                # sum_k w_k log p_k = sum_k w_k z_k - (sum_k w_k) lse
                smooth[s:e] = torch.where(vr, z_sum.sub_(lse_c * w_sum).neg_(), 0.0)

        if not want_grad:
            continue
        assert coef_a is not None and coef_b is not None
        tc = tsafe[s:e]
        if materialize:
            # logits holds the full logit gradient of the chunk.
            if dh is not None:
                torch.mm(logits, w, out=dh[s:e])
            if dw is not None:
                _add_weight_grad(dw, logits, hc, wblk, wblk32, first=s == 0)
            continue
        # logits holds p; fold A, B, C into the small operands, in reused [chunk, d] buffers
        # (no per-chunk temporaries: they fragmented the heap by a few MiB).
        ra_ = ra[:m] if ra is not None else None
        rb_ = rb[:m] if rb is not None else None
        if dh is not None:
            assert ra_ is not None and rb_ is not None
            dhs = dh[s:e]
            torch.mm(logits, w, out=dhs)
            if half:
                ra_.copy_(dhs)
            g = ra_ if half else dhs
            g.mul_(coef_a.unsqueeze(1))
            if half:
                assert rh is not None
                rb_.copy_(torch.index_select(w, 0, tc, out=rh[:m]))
            else:
                torch.index_select(w, 0, tc, out=rb_)
            g.addcmul_(rb_, coef_b.unsqueeze(1), value=-1.0)
            if coef_c is not None:
                assert u is not None
                g.addr_(coef_c, u, alpha=-1.0)
            if half:
                dhs.copy_(g)
        if dw is not None:
            assert ra_ is not None and rb_ is not None
            ra_.copy_(hc).mul_(coef_a.unsqueeze(1))
            if half:
                assert rh is not None
                hs = rh[:m].copy_(ra_)
            else:
                hs = ra_
            _add_weight_grad(dw, logits, hs, wblk, wblk32, first=s == 0)
            rb_.copy_(hc)
            if coef_c is not None:
                assert c_h_sum is not None
                c_h_sum.addmv_(rb_.t(), coef_c)
            dw.index_add_(0, tc, rb_.mul_(coef_b.unsqueeze(1)), alpha=-1.0)
        if db is not None:
            db.index_add_(0, tc, coef_b, alpha=-1.0)
            if coef_c is not None:
                assert c_total is not None
                c_total += coef_c.sum()

    if not materialize:
        if dw is not None and c_h_sum is not None:
            dw.addr_(cwf if cwf is not None else torch.ones(v, dtype=acc, device=dev), c_h_sum,
                     alpha=-1.0)
        if db is not None and c_total is not None:
            db.sub_(c_total * (cwf if cwf is not None else 1.0))
    del buf, tbuf, scratch, wblk, wblk32, ra, rb, rh
    return ce, smooth, lse_all, _Grads(dh, dw, db, coef_a_all, coef_b_all, coef_c_all)


def _add_weight_grad(
    dw: Tensor, p: Tensor, hs: Tensor, wblk: Tensor | None, wblk32: Tensor | None,
    *, first: bool,
) -> None:
    """``dw += p.T @ hs`` (``dw = p.T @ hs`` when ``first``: ``dw`` may be uninitialised).

    Half operands go by vocabulary blocks: the block's half GEMM writes a small half scratch
    ``wblk``, which is widened into the float32 scratch ``wblk32`` (a view of the idle
    softmax scratch) and added to the float32 accumulator. (A mixed-dtype ``dw.add_(half)``
    would allocate a fresh float32 temporary per block; on this CPU that made the
    accumulation 4x slower.)
    """
    if wblk is None:
        if first:
            torch.mm(p.t(), hs, out=dw)
        else:
            dw.addmm_(p.t(), hs)
        return
    assert wblk32 is not None
    v = p.shape[1]
    for s in range(0, v, wblk.shape[0]):
        e = min(s + wblk.shape[0], v)
        out = wblk[: e - s]
        torch.mm(p[:, s:e].t(), hs, out=out)
        if first:
            dw[s:e].copy_(out)
        else:
            out32 = wblk32[: e - s]
            out32.copy_(out)
            dw[s:e].add_(out32)


def _weight_grad_by_vocab_blocks(
    h: Tensor, w: Tensor, b: Tensor | None, tsafe: Tensor, lse: Tensor, gr: _Grads,
    cw: Tensor | None, opts: _Opts,
) -> Tensor:
    r"""``dweight`` in ``weight``'s dtype by vocabulary blocks (the second pass of
    ``weight_grad="vocab_blocks"``).

    For each block of vocabulary rows the logits of all tokens are recomputed
    (``h @ W[block].T``), turned into the logit gradient
    ``(A exp(z - lse) - B e_t - C w) * cap'(z)`` with the per-token LSE and coefficients of the
    first pass, and ``dW[block] = G.T @ h`` is written once by one GEMM over all tokens: no
    ``V x d`` accumulator is re-read per token chunk, and for half inputs the sum over tokens
    happens inside the GEMM (float32 accumulation in the kernel, one rounding to the output).
    The block width is chosen so that the ``tokens x block`` buffers take about
    :data:`VOCAB_PASS_BYTES` (between :data:`MIN_VOCAB_BLOCK` and :data:`VOCAB_BLOCK`
    columns); with more tokens than that budget allows, the tokens are split into groups whose
    partial GEMMs are summed in a ``block x d`` float32 accumulator. The elementwise work is a
    handful of whole-block in-place ops (few large ops: robust on a shared, oversubscribed CPU,
    where every small parallel op pays a thread-synchronisation cost).
    """
    n, d = h.shape
    v = w.shape[0]
    dtype, dev = h.dtype, h.device
    acc = compute_dtype(dtype)
    half = dtype in HALF_DTYPES
    ca, cb, cc = gr.coef_a, gr.coef_b, gr.coef_c
    assert ca is not None and cb is not None
    cwf = cw.to(acc) if cw is not None else None
    cap = opts.softcap
    per = dtype.itemsize + (4 if half else 0) + (4 if cap is not None else 0)
    vb = max(MIN_VOCAB_BLOCK, min(VOCAB_BLOCK, VOCAB_PASS_BYTES // max(1, n * per)))
    vb = min(vb, v)
    grp = max(1, min(n, VOCAB_PASS_BYTES // (vb * per)))
    dw = torch.empty(v, d, dtype=dtype, device=dev)
    zbuf = torch.empty(grp * vb, dtype=dtype, device=dev)
    xbuf = torch.empty(grp * vb, dtype=acc, device=dev) if half else None
    tbuf = torch.empty(grp * vb, dtype=acc, device=dev) if cap is not None else None
    blk_acc = torch.empty(vb, d, dtype=acc, device=dev) if half and grp < n else None
    # exp(z - lse) * A = exp(z - (lse - log A)) when A >= 0 (A = 0 gives exp(-inf) = 0)
    fold = bool((ca >= 0).all())
    shift = (lse - torch.log(ca)) if fold else lse
    wt = w.t()
    for v0 in range(0, v, vb):
        v1 = min(v0 + vb, v)
        m = v1 - v0
        tr = tsafe - v0
        onehot = ((tr >= 0) & (tr < m) & (cb != 0)).nonzero().squeeze(1)  # sorted token ids
        for g0 in range(0, n, grp):
            g1 = min(g0 + grp, n)
            k = g1 - g0
            z = zbuf[: k * m].view(k, m)
            torch.mm(h[g0:g1], wt[:, v0:v1], out=z)
            if b is not None:
                z.add_(b[v0:v1])
            x = xbuf[: k * m].view(k, m) if xbuf is not None else z
            col = shift[g0:g1].unsqueeze(1)
            t = None
            if cap is not None:
                assert tbuf is not None
                t = tbuf[: k * m].view(k, m)
                torch.div(z, cap, out=t)
                t.tanh_()
                torch.mul(t, cap, out=x)
                x.sub_(col)
            elif x is not z:
                torch.sub(z, col, out=x)  # half -> float32 in one op
            else:
                x.sub_(col)
            x.exp_()
            if not fold:
                x.mul_(ca[g0:g1].unsqueeze(1))
            if cc is not None:
                if cwf is None:
                    x.sub_(cc[g0:g1].unsqueeze(1))
                else:
                    x.addr_(cc[g0:g1], cwf[v0:v1], alpha=-1.0)
            lo, hi = torch.searchsorted(onehot, torch.tensor([g0, g1], device=dev)).tolist()
            if hi > lo:
                sel = onehot[lo:hi]
                x.index_put_((sel - g0, tr[sel]), -cb[sel], accumulate=True)
            if t is not None:
                x.mul_(t.square_().neg_().add_(1.0))
            if x is not z:
                z.copy_(x)
            if grp == n:
                torch.mm(z.t(), h, out=dw[v0:v1])
            elif blk_acc is not None:
                part = blk_acc[:m]
                if g0 == 0:
                    part.copy_(torch.mm(z.t(), h[g0:g1]))
                else:
                    part.add_(torch.mm(z.t(), h[g0:g1]))
                if g1 == n:
                    dw[v0:v1].copy_(part)
            elif g0 == 0:
                torch.mm(z.t(), h[g0:g1], out=dw[v0:v1])
            else:
                dw[v0:v1].addmm_(z.t(), h[g0:g1])
    return dw


def _grad_pass(
    h: Tensor, w: Tensor, b: Tensor | None, tsafe: Tensor, valid: Tensor, cw: Tensor | None,
    opts: _Opts, *, stats: bool, g_loss: Tensor | None, g_lse: Tensor | None,
    need: tuple[bool, bool, bool],
) -> tuple[Tensor | None, Tensor | None, Tensor | None, _Grads]:
    """:func:`_chunk_loop`, with ``dweight`` from the token chunks (``weight_grad=
    "token_chunks"``: one float32/float64 accumulator, in the accumulator dtype) or from
    :func:`_weight_grad_by_vocab_blocks` (``"vocab_blocks"``: in ``weight``'s dtype)."""
    if opts.weight_grad != "vocab_blocks" or not need[1] or (g_loss is None and g_lse is None):
        return _chunk_loop(h, w, b, tsafe, valid, cw, opts, stats=stats, g_loss=g_loss,
                           g_lse=g_lse, need=need)
    ce, smooth, lse, gr = _chunk_loop(h, w, b, tsafe, valid, cw, opts, stats=stats,
                                      g_loss=g_loss, g_lse=g_lse,
                                      need=(need[0], False, need[2]), coefs=True)
    assert lse is not None
    gr.dw = _weight_grad_by_vocab_blocks(h, w, b, tsafe, lse, gr, cw, opts)
    gr.coef_a = gr.coef_b = gr.coef_c = None
    return ce, smooth, lse, gr


def _round_in_place(acc: Tensor, dtype: torch.dtype) -> Tensor:
    """``acc.to(dtype)`` for a narrower ``dtype``, written into the first bytes of ``acc``'s own
    storage block by block (no second ``V x d`` allocation). The result is a view of that
    storage, which keeps its original size."""
    if acc.dtype == dtype:
        return acc
    flat = acc.reshape(-1)
    n = flat.numel()
    out = torch.empty(0, dtype=dtype, device=acc.device).set_(acc.untyped_storage(), 0, (n,))
    blk = 1 << 20
    # Block i reads bytes [4 i B, 4 (i+1) B) and writes [2 i B, 2 (i+1) B): disjoint for i >= 1,
    # and never ahead of unread data; block 0 overlaps itself, so it goes through a copy.
    out[:blk].copy_(flat[:blk].to(dtype))
    for s in range(blk, n, blk):
        out[s : s + blk].copy_(flat[s : s + blk])
    return out.view(acc.shape)


def _loss_from_stats(
    ce: Tensor, smooth: Tensor | None, lse: Tensor, valid: Tensor, opts: _Opts, v: int
) -> Tensor:
    """Per-token loss (before ``token_weight``) from the statistics of the chunked pass."""
    eps = opts.label_smoothing
    loss = ce * (1.0 - eps) if eps > 0 else ce.clone()
    if smooth is not None:
        loss += smooth * (eps / v)
    if opts.logz_penalty != 0.0:
        loss += torch.where(valid, opts.logz_penalty * lse.square(), 0.0)
    return loss


class _GradInForward(torch.autograd.Function):
    """Scalar loss; gradients computed in forward, scaled in backward."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        h: Tensor,
        w: Tensor,
        b: Tensor | None,
        tsafe: Tensor,
        valid: Tensor,
        cw: Tensor | None,
        tw: Tensor | None,
        scale: Tensor,
        opts: _Opts,
    ) -> tuple[Tensor, Tensor]:
        need = (ctx.needs_input_grad[0], ctx.needs_input_grad[1],
                b is not None and ctx.needs_input_grad[2])
        # d(loss)/d(l_n) = token_weight_n * scale (scale = 1/denominator for "mean", 1 for "sum").
        g = scale.expand(h.shape[0]) if tw is None else tw * scale
        ce, smooth, lse, gr = _grad_pass(h, w, b, tsafe, valid, cw, opts, stats=True,
                                          g_loss=g, g_lse=None, need=need)
        assert ce is not None
        per_token = _loss_from_stats(ce, smooth, lse, valid, opts, w.shape[0])
        if tw is not None:
            per_token = per_token * tw
        loss = per_token.sum() * scale
        ctx.grads = gr.in_param_dtypes(w, b)
        del gr
        ctx.opts = opts
        ctx.need = need
        ctx.save_for_backward(h, w, b, tsafe, valid, cw, g)
        return loss, lse

    @staticmethod
    def backward(ctx: Any, g_loss: Tensor, g_lse: Tensor | None) -> tuple[Tensor | None, ...]:
        h, w, b, tsafe, valid, cw, g = ctx.saved_tensors
        acc = compute_dtype(h.dtype)
        if g_lse is not None and not bool(g_lse.ne(0).any()):
            g_lse = None
        if ctx.grads is None:
            # A second backward through the same graph (retain_graph, gradcheck): the
            # precomputed gradients were handed out already, so recompute them.
            *_, gr = _grad_pass(h, w, b, tsafe, valid, cw, ctx.opts, stats=False,
                                 g_loss=g * g_loss.to(acc),
                                 g_lse=g_lse.to(acc) if g_lse is not None else None,
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
            *_, gr = _grad_pass(h, w, b, tsafe, valid, cw, ctx.opts, stats=False,
                                 g_loss=None, g_lse=g_lse.to(acc), need=need)
            dh = dh + gr.dh if dh is not None else None
            dw = dw + gr.dw.to(dw.dtype) if dw is not None else None  # type: ignore[union-attr]
            db = db + gr.db.to(db.dtype) if db is not None else None  # type: ignore[union-attr]
        return dh, dw, db, None, None, None, None, None, None


class _Recompute(torch.autograd.Function):
    """Per-token loss and LSE; forward keeps only the LSE, backward recomputes the logits."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        h: Tensor,
        w: Tensor,
        b: Tensor | None,
        tsafe: Tensor,
        valid: Tensor,
        cw: Tensor | None,
        opts: _Opts,
    ) -> tuple[Tensor, Tensor]:
        ce, smooth, lse, _ = _chunk_loop(h, w, b, tsafe, valid, cw, opts, stats=True,
                                         g_loss=None, g_lse=None, need=(False, False, False))
        assert ce is not None
        per_token = _loss_from_stats(ce, smooth, lse, valid, opts, w.shape[0])
        ctx.opts = opts
        ctx.save_for_backward(h, w, b, tsafe, valid, cw)
        return per_token, lse

    @staticmethod
    def backward(ctx: Any, g_loss: Tensor | None, g_lse: Tensor | None) -> tuple[Any, ...]:
        h, w, b, tsafe, valid, cw = ctx.saved_tensors
        need = (ctx.needs_input_grad[0], ctx.needs_input_grad[1],
                b is not None and ctx.needs_input_grad[2])
        acc = compute_dtype(h.dtype)
        *_, gr = _grad_pass(
            h, w, b, tsafe, valid, cw, ctx.opts, stats=False,
            g_loss=g_loss.to(acc) if g_loss is not None else None,
            g_lse=g_lse.to(acc) if g_lse is not None else None, need=need,
        )
        return (*gr.in_param_dtypes(w, b), None, None, None, None)


def _torch_backend(
    h: Tensor, w: Tensor, b: Tensor | None, tsafe: Tensor, valid: Tensor, cw: Tensor | None,
    tw: Tensor | None, opts: _Opts, reduction: str, strategy: str,
) -> tuple[Tensor, Tensor]:
    acc = compute_dtype(h.dtype)
    tw_acc = tw.to(acc) if tw is not None else None
    if reduction == "mean":
        denom_terms = valid.to(acc)
        if cw is not None:
            denom_terms = denom_terms * cw.to(acc)[tsafe]
        if tw_acc is not None:
            denom_terms = denom_terms * tw_acc
        denom = denom_terms.sum()
        scale = torch.where(denom != 0, 1.0 / torch.where(denom != 0, denom, 1.0), 0.0)
    else:
        scale = torch.ones((), dtype=acc, device=h.device)
    tw_grad = tw is not None and tw.requires_grad and torch.is_grad_enabled()
    if strategy == "auto":
        strategy = "recompute" if reduction == "none" or tw_grad else "grad_in_forward"
    if strategy == "grad_in_forward" and (reduction == "none" or tw_grad):
        raise ValueError(
            "strategy='grad_in_forward' needs reduction 'mean' or 'sum' and a token_weight "
            "without grad; use strategy='recompute' (or 'auto')"
        )
    if strategy == "grad_in_forward":
        return _GradInForward.apply(  # type: ignore[no-any-return]
            h, w, b, tsafe, valid, cw, tw_acc.detach() if tw_acc is not None else None,
            scale, opts,
        )
    per_token, lse = _Recompute.apply(h, w, b, tsafe, valid, cw, opts)
    if tw_acc is not None:
        per_token = per_token * tw_acc
    if reduction == "none":
        return per_token, lse
    total = per_token.sum()
    return (total * scale if reduction == "mean" else total), lse


Backend = Callable[..., tuple[Tensor, Tensor]]
#: Implementations by name. Add e.g. a CUDA Triton kernel here and select it in :func:`_backend`.
BACKENDS: dict[str, Backend] = {"torch": _torch_backend}


def _backend(h: Tensor) -> Backend:
    """The dispatch point: every device uses the portable chunked PyTorch backend for now."""
    return BACKENDS["torch"]


def _validate(
    hidden: Any, weight: Any, target: Any, bias: Any, class_weight: Any, token_weight: Any,
    ignore_index: int, label_smoothing: float, softcap: float | None, logz_penalty: float,
    chunk_size: int | None, reduction: str, strategy: str, weight_grad: str = "auto",
) -> None:
    for name, x in (("hidden", hidden), ("weight", weight), ("target", target)):
        if not isinstance(x, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not hidden.is_floating_point():
        raise ValueError(f"hidden must be a floating-point tensor, got dtype {hidden.dtype}")
    if not weight.is_floating_point() or weight.ndim != 2:
        raise ValueError(
            f"weight must be a floating-point matrix [V, d], got dtype {weight.dtype} and "
            f"shape {tuple(weight.shape)}"
        )
    if hidden.ndim < 1 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"hidden must have shape [..., d] with d = weight.shape[1] = {weight.shape[1]}, "
            f"got {tuple(hidden.shape)}"
        )
    if weight.shape[0] < 1:
        raise ValueError("weight must have at least one row (vocabulary size V >= 1)")
    if hidden.dtype != weight.dtype:
        raise ValueError(
            f"hidden and weight must have one dtype, got {hidden.dtype} and {weight.dtype}"
        )
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise ValueError(f"target must be an integer tensor, got dtype {target.dtype}")
    if tuple(target.shape) != tuple(hidden.shape[:-1]):
        raise ValueError(
            f"target must have shape {tuple(hidden.shape[:-1])} (hidden's leading dims), got "
            f"{tuple(target.shape)}"
        )
    v = weight.shape[0]
    if bias is not None:
        if not isinstance(bias, Tensor) or bias.shape != (v,) or bias.dtype != weight.dtype:
            raise ValueError(
                f"bias must be a [{v}] tensor of dtype {weight.dtype}, got "
                f"{tuple(bias.shape) if isinstance(bias, Tensor) else type(bias).__name__}"
            )
    if class_weight is not None and (
        not isinstance(class_weight, Tensor) or not class_weight.is_floating_point()
        or class_weight.shape != (v,)
    ):
        raise ValueError(f"class_weight must be a float tensor of shape [{v}]")
    if token_weight is not None and (
        not isinstance(token_weight, Tensor) or not token_weight.is_floating_point()
        or tuple(token_weight.shape) != tuple(target.shape)
    ):
        raise ValueError(
            f"token_weight must be a float tensor of target's shape {tuple(target.shape)}"
        )
    devices = {x.device for x in (hidden, weight, target, bias, class_weight, token_weight)
               if isinstance(x, Tensor)}
    if len(devices) > 1:
        raise ValueError(f"inputs must be on one device, got {sorted(map(str, devices))}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing!r}")
    if softcap is not None and not softcap > 0:
        raise ValueError(f"softcap must be > 0 or None, got {softcap!r}")
    if not math.isfinite(logz_penalty) or logz_penalty < 0:
        raise ValueError(f"logz_penalty must be >= 0, got {logz_penalty!r}")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be an int >= 1 or None, got {chunk_size!r}")
    if not isinstance(ignore_index, int):
        raise ValueError(f"ignore_index must be an int, got {ignore_index!r}")
    check_reduction(reduction)
    check_choice("strategy", strategy, STRATEGIES)
    check_choice("weight_grad", weight_grad, WEIGHT_GRADS)


def auto_weight_grad(dtype: torch.dtype) -> str:
    """The ``weight_grad="auto"`` policy: ``"token_chunks"`` for every dtype (3 GEMMs; the
    4th GEMM of ``"vocab_blocks"`` made it 1.3x slower than naive bf16 on the CPU measured
    in ``docs/linear_cross_entropy.md``). ``"vocab_blocks"`` stays available: it needs no
    float32 ``V x d`` accumulator, so for half inputs it uses less memory."""
    return "token_chunks"
