r"""Gradient assembly: ``dhidden``, ``dweight`` and ``dbias`` from a chunk's probabilities
``p`` (or, with softcap, its materialised logit gradient ``G``) and the per-token
coefficients ``A, B, C`` of :mod:`.rows`.

Without softcap the logit gradient ``G = A p - B e_t - C w`` is never formed; its products are
folded into ``[chunk, d]`` operands (:func:`fold_grads_`):

* ``dh = G W = A (p W) - B W_t - C u`` with ``u = sum_k w_k W_k`` (:func:`weighted_row_sum`);
* ``dW += p^T (A h) - scatter_t(B h) - w (sum_n C_n h_n)`` (the last term once, at the end:
  :func:`finish_smoothing_terms_`);
* ``db += A p - scatter_t(B) - w sum_n C_n``.

``dweight`` is accumulated over the token chunks (:func:`add_weight_grad_`, float32 for half
inputs) or, with ``weight_grad="vocab_blocks"``, formed by a second pass over vocabulary blocks
(:func:`weight_grad_by_vocab_blocks`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from losslab._core import compute_dtype
from losslab.kernels.linear_ce.rows import ChunkCoefs
from losslab.kernels.linear_ce.workspace import (
    HALF_VOCAB_BLOCK,
    ChunkWorkspace,
    LceOptions,
    VocabBlockWorkspace,
)

__all__ = [
    "LceGrads",
    "add_weight_grad_",
    "block_logit_grad_",
    "finish_smoothing_terms_",
    "fold_grads_",
    "round_in_place",
    "weight_grad_by_vocab_blocks",
    "weighted_row_sum",
]


@dataclass
class LceGrads:
    """The gradients of one pass and what they are assembled from.

    ``dh`` (input dtype), ``dw`` (compute dtype: a float32 accumulator for half weights),
    ``db`` (compute dtype); ``coef_a/b/c`` the per-token coefficients ``A, B, C`` (kept for
    the ``vocab_blocks`` pass); label smoothing's ``C`` terms of the folded path: ``u`` =
    ``sum_k w_k W_k`` (for ``dh``), ``c_h_sum`` = ``sum_n C_n h_n`` (for ``dW``) and
    ``c_total`` = ``sum_n C_n`` (for ``db``).
    """

    dh: Tensor | None
    dw: Tensor | None
    db: Tensor | None
    coef_a: Tensor | None = None
    coef_b: Tensor | None = None
    coef_c: Tensor | None = None
    u: Tensor | None = None
    c_h_sum: Tensor | None = None
    c_total: Tensor | None = None

    @classmethod
    def allocate(
        cls, h: Tensor, w: Tensor, class_weight: Tensor | None, opts: LceOptions, *,
        need: tuple[bool, bool, bool], coefs: bool,
    ) -> LceGrads:
        """Outputs for the gradients flagged in ``need`` (``dh, dw, db``) and, with ``coefs``,
        the ``[n]`` coefficient vectors."""
        (n, d), v = h.shape, w.shape[0]
        acc, dev = compute_dtype(h.dtype), h.device
        need_dh, need_dw, need_db = need
        smoothing = opts.label_smoothing > 0
        folded = opts.softcap is None
        gr = cls(
            dh=torch.empty(n, d, dtype=h.dtype, device=dev) if need_dh else None,
            # Written (not added) by the first chunk's GEMM: no zero-fill pass over V x d.
            dw=torch.empty(v, d, dtype=acc, device=dev) if need_dw else None,
            db=torch.zeros(v, dtype=acc, device=dev) if need_db else None,
        )
        if smoothing and folded:
            gr.u = weighted_row_sum(w, class_weight, acc) if need_dh else None
            gr.c_h_sum = torch.zeros(d, dtype=acc, device=dev) if need_dw else None
            gr.c_total = torch.zeros((), dtype=acc, device=dev) if need_db else None
        if coefs:
            gr.coef_a = torch.zeros(n, dtype=acc, device=dev)
            gr.coef_b = torch.zeros(n, dtype=acc, device=dev)
            gr.coef_c = torch.zeros(n, dtype=acc, device=dev) if smoothing else None
        return gr

    def chunk_coefs(self, s: int, e: int) -> tuple[Tensor, Tensor, Tensor | None]:
        """Views of ``A, B, C`` for tokens ``[s, e)``."""
        assert self.coef_a is not None and self.coef_b is not None
        c = self.coef_c[s:e] if self.coef_c is not None else None
        return self.coef_a[s:e], self.coef_b[s:e], c

    def in_param_dtypes(self, w: Tensor, b: Tensor | None,
                        ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        """``(dh, dw, db)`` in the dtypes of ``hidden``, ``weight`` and ``bias`` (a float32
        ``dw`` accumulator of half weights is rounded in place)."""
        dw = round_in_place(self.dw, w.dtype) if self.dw is not None else None
        db = self.db.to(b.dtype) if self.db is not None and b is not None else None
        return self.dh, dw, db


def weighted_row_sum(weight: Tensor, class_weight: Tensor | None, acc: torch.dtype) -> Tensor:
    """``sum_k w_k weight_k`` (a ``[d]`` vector) in ``acc``, by vocabulary blocks."""
    out = torch.zeros(weight.shape[1], dtype=acc, device=weight.device)
    for s in range(0, weight.shape[0], HALF_VOCAB_BLOCK):
        blk = weight[s : s + HALF_VOCAB_BLOCK].to(acc)
        out += blk.sum(0) if class_weight is None else class_weight[s : s + HALF_VOCAB_BLOCK] @ blk
    return out


def add_weight_grad_(
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


def materialized_grads_(
    gr: LceGrads, ws: ChunkWorkspace, g: Tensor, hc: Tensor, w: Tensor, s: int,
) -> None:
    """``dh[chunk] = G W`` and ``dW += G^T h`` from the chunk's logit gradient ``G`` (softcap;
    ``db`` was added per row block)."""
    if gr.dh is not None:
        torch.mm(g, w, out=gr.dh[s : s + g.shape[0]])
    if gr.dw is not None:
        add_weight_grad_(gr.dw, g, hc, ws.wblk, ws.wblk32, first=s == 0)


def fold_grads_(
    gr: LceGrads, ws: ChunkWorkspace, p: Tensor, hc: Tensor, w: Tensor, target: Tensor,
    coefs: ChunkCoefs, s: int,
) -> None:
    """Add the chunk's (tokens ``[s, s + m)``) ``dh``, ``dW`` and ``db`` terms with the
    coefficients folded into the reused ``[chunk, d]`` buffers (no per-chunk temporaries:
    they fragmented the heap by a few MiB). ``p`` holds the probabilities."""
    if gr.dh is not None:
        _fold_dh_(gr, ws, p, w, target, coefs, s)
    if gr.dw is not None:
        _fold_dw_(gr, ws, p, hc, target, coefs, first=s == 0)
    if gr.db is not None:
        gr.db.index_add_(0, target, coefs.b, alpha=-1.0)
        if coefs.c is not None:
            assert gr.c_total is not None
            gr.c_total += coefs.c.sum()


def _fold_dh_(
    gr: LceGrads, ws: ChunkWorkspace, p: Tensor, w: Tensor, target: Tensor, coefs: ChunkCoefs,
    s: int,
) -> None:
    """``dh[chunk] = A (p W) - B W_t - C u`` (in float32 operands for half inputs)."""
    assert gr.dh is not None and ws.fold_a is not None and ws.fold_b is not None
    m = p.shape[0]
    half = ws.fold_half is not None
    ra, rb = ws.fold_a[:m], ws.fold_b[:m]
    dhs = gr.dh[s : s + m]
    torch.mm(p, w, out=dhs)
    if half:
        ra.copy_(dhs)
    g = ra if half else dhs
    g.mul_(coefs.a.unsqueeze(1))
    if ws.fold_half is not None:
        rb.copy_(torch.index_select(w, 0, target, out=ws.fold_half[:m]))
    else:
        torch.index_select(w, 0, target, out=rb)
    g.addcmul_(rb, coefs.b.unsqueeze(1), value=-1.0)
    if coefs.c is not None:
        assert gr.u is not None
        g.addr_(coefs.c, gr.u, alpha=-1.0)
    if half:
        dhs.copy_(g)


def _fold_dw_(
    gr: LceGrads, ws: ChunkWorkspace, p: Tensor, hc: Tensor, target: Tensor, coefs: ChunkCoefs,
    *, first: bool,
) -> None:
    """``dW += p^T (A h) - scatter_t(B h)``; ``sum_n C_n h_n`` is accumulated for the end."""
    assert gr.dw is not None and ws.fold_a is not None and ws.fold_b is not None
    m = p.shape[0]
    ra, rb = ws.fold_a[:m], ws.fold_b[:m]
    ra.copy_(hc).mul_(coefs.a.unsqueeze(1))
    hs = ws.fold_half[:m].copy_(ra) if ws.fold_half is not None else ra
    add_weight_grad_(gr.dw, p, hs, ws.wblk, ws.wblk32, first=first)
    rb.copy_(hc)
    if coefs.c is not None:
        assert gr.c_h_sum is not None
        gr.c_h_sum.addmv_(rb.t(), coefs.c)
    gr.dw.index_add_(0, target, rb.mul_(coefs.b.unsqueeze(1)), alpha=-1.0)


def finish_smoothing_terms_(gr: LceGrads, class_weight: Tensor | None) -> None:
    """Subtract label smoothing's ``C`` terms once after the last chunk (folded path):
    ``dW -= w (sum_n C_n h_n)^T`` and ``db -= w sum_n C_n``."""
    if gr.dw is not None and gr.c_h_sum is not None:
        w = class_weight
        if w is None:
            w = torch.ones(gr.dw.shape[0], dtype=gr.dw.dtype, device=gr.dw.device)
        gr.dw.addr_(w, gr.c_h_sum, alpha=-1.0)
    if gr.db is not None and gr.c_total is not None:
        gr.db.sub_(gr.c_total * (class_weight if class_weight is not None else 1.0))


def round_in_place(acc: Tensor, dtype: torch.dtype) -> Tensor:
    """``acc.to(dtype)`` for a narrower ``dtype``, written into the first bytes of ``acc``'s own
    storage block by block (no second ``V x d`` allocation). The result is a view of that
    storage, which keeps its original size."""
    if acc.dtype == dtype:
        return acc
    flat = acc.reshape(-1)
    n = flat.numel()
    # the storage overload of set_ (source, offset, size) is missing from the stubs
    out = torch.empty(0, dtype=dtype, device=acc.device).set_(
        acc.untyped_storage(), 0, (n,))  # pyright: ignore[reportCallIssue,reportArgumentType]
    blk = 1 << 20
    # Block i reads bytes [4 i B, 4 (i+1) B) and writes [2 i B, 2 (i+1) B): disjoint for i >= 1,
    # and never ahead of unread data; block 0 overlaps itself, so it goes through a copy.
    out[:blk].copy_(flat[:blk].to(dtype))
    for s in range(blk, n, blk):
        out[s : s + blk].copy_(flat[s : s + blk])
    return out.view(acc.shape)


# --------------------------------------------------------------------------------------------
# weight_grad="vocab_blocks": dW by a second pass over vocabulary blocks
# --------------------------------------------------------------------------------------------


def weight_grad_by_vocab_blocks(
    h: Tensor, w: Tensor, b: Tensor | None, target: Tensor, lse: Tensor, gr: LceGrads,
    class_weight: Tensor | None, opts: LceOptions,
) -> Tensor:
    r"""``dweight`` in ``weight``'s dtype by vocabulary blocks (the second pass of
    ``weight_grad="vocab_blocks"``).

    For each block of vocabulary rows the logits of all tokens are recomputed
    (``h @ W[block].T``), turned into the logit gradient
    ``(A exp(z - lse) - B e_t - C w) * cap'(z)`` with the per-token LSE and coefficients of the
    first pass (:func:`block_logit_grad_`), and ``dW[block] = G.T @ h`` is written once by
    one GEMM over all tokens (:func:`_write_block_grad_`): no ``V x d`` accumulator is
    re-read per token chunk, and for half inputs the sum over tokens happens inside the GEMM
    (float32 accumulation in the kernel, one rounding to the output). With more tokens than
    the block budget allows (:class:`~.workspace.VocabBlockWorkspace`), the tokens are split
    into groups whose partial GEMMs are summed. The elementwise work is a handful of
    whole-block in-place ops (few large ops: robust on a shared, oversubscribed CPU, where
    every small parallel op pays a thread-synchronisation cost).
    """
    (n, d), v = h.shape, w.shape[0]
    ca, cb = gr.coef_a, gr.coef_b
    assert ca is not None and cb is not None
    cw = class_weight.to(compute_dtype(h.dtype)) if class_weight is not None else None
    dw = torch.empty(v, d, dtype=h.dtype, device=h.device)
    ws = VocabBlockWorkspace.allocate(n, v, d, h.dtype, h.device, opts.softcap,
                                      opts.workspace_bytes)
    # exp(z - lse) * A = exp(z - (lse - log A)) when A >= 0 (A = 0 gives exp(-inf) = 0)
    fold = bool((ca >= 0).all())
    shift = (lse - torch.log(ca)) if fold else lse
    wt = w.t()
    for v0 in range(0, v, ws.block):
        v1 = min(v0 + ws.block, v)
        m = v1 - v0
        tr = target - v0
        onehot = ((tr >= 0) & (tr < m) & (cb != 0)).nonzero().squeeze(1)  # sorted token ids
        for g0 in range(0, n, ws.group):
            g1 = min(g0 + ws.group, n)
            z = ws.z[: (g1 - g0) * m].view(g1 - g0, m)
            torch.mm(h[g0:g1], wt[:, v0:v1], out=z)
            if b is not None:
                z.add_(b[v0:v1])
            block_logit_grad_(z, ws.x, ws.tanh, gr, shift, cw, onehot, tr, opts.softcap,
                              fold, (g0, g1), (v0, v1))
            _write_block_grad_(dw, z, h, ws, (g0, g1), (v0, v1))
    return dw


def block_logit_grad_(
    z: Tensor, x_buf: Tensor | None, tanh_buf: Tensor | None, gr: LceGrads, shift: Tensor,
    cw: Tensor | None, onehot: Tensor, tr: Tensor, cap: float | None, fold: bool,
    tokens: tuple[int, int], vocab: tuple[int, int],
) -> None:
    """``z <- (A exp(cap(z) - lse) - B e_t - C w) * cap'(z)`` for the block's tokens
    ``[g0, g1)`` and vocabulary rows ``[v0, v1)`` (in float32 for half inputs; ``A`` enters
    the exponent as ``shift = lse - log A`` when ``fold``). ``onehot`` lists the tokens whose
    target lies in the block and has ``B != 0``; ``tr`` = target - v0. ``x_buf`` (half
    inputs: the float32 side, None otherwise) and ``tanh_buf`` (softcap) are flat buffers of
    at least ``z.numel()`` entries; the float32 gradient stays in ``x_buf`` too."""
    (g0, g1), (v0, v1) = tokens, vocab
    ca, cb, cc = gr.coef_a, gr.coef_b, gr.coef_c
    assert ca is not None and cb is not None
    k, m = z.shape
    x = x_buf[: k * m].view(k, m) if x_buf is not None else z
    col = shift[g0:g1].unsqueeze(1)
    t = None
    if cap is not None:
        assert tanh_buf is not None
        t = tanh_buf[: k * m].view(k, m)
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
        if cw is None:
            x.sub_(cc[g0:g1].unsqueeze(1))
        else:
            x.addr_(cc[g0:g1], cw[v0:v1], alpha=-1.0)
    lo, hi = torch.searchsorted(onehot, torch.tensor([g0, g1], device=z.device)).tolist()
    if hi > lo:
        sel = onehot[lo:hi]
        x.index_put_((sel - g0, tr[sel]), -cb[sel], accumulate=True)
    if t is not None:
        x.mul_(t.square_().neg_().add_(1.0))
    if x is not z:
        z.copy_(x)


def _write_block_grad_(
    dw: Tensor, g: Tensor, h: Tensor, ws: VocabBlockWorkspace, tokens: tuple[int, int],
    vocab: tuple[int, int],
) -> None:
    """``dW[v0:v1] (+)= G^T h[g0:g1]``: written once when one group holds all tokens, else
    summed over the groups (in the float32 ``block_acc`` for half inputs)."""
    (g0, g1), (v0, v1) = tokens, vocab
    n = h.shape[0]
    if ws.group == n:
        torch.mm(g.t(), h, out=dw[v0:v1])
    elif ws.block_acc is not None:
        part = ws.block_acc[: v1 - v0]
        if g0 == 0:
            part.copy_(torch.mm(g.t(), h[g0:g1]))
        else:
            part.add_(torch.mm(g.t(), h[g0:g1]))
        if g1 == n:
            dw[v0:v1].copy_(part)
    elif g0 == 0:
        torch.mm(g.t(), h[g0:g1], out=dw[v0:v1])
    else:
        dw[v0:v1].addmm_(g.t(), h[g0:g1])
