r"""Fused linear distillation: KD or generalised JSD between a student LM head and a teacher
LM head, chunked over the tokens, without the ``N x V`` logits of either.

For each chunk of tokens both heads' logits are formed (``[chunk, V]`` each), turned into
log-probabilities at temperature :math:`T`, reduced to the per-token divergence and, when
the student needs gradients, to the logit gradient :math:`G` of the student, from which
``dhidden = G @ W_s``, ``dweight += G.T @ h_s`` and ``dbias += G.sum(0)`` are accumulated.
The teacher is a constant: its inputs get no gradient (pass them detached or under
``no_grad``; they are detached here).

Per token, with student :math:`q = \operatorname{softmax}(z^s / T)` and teacher :math:`p =
\operatorname{softmax}(z^t / T)`:

* ``divergence="kl"``: :math:`\ell = T^2\,\mathrm{KL}(p\,\|\,q)` (Hinton's soft term, equal to
  :func:`losslab.functional.kd_loss` with ``alpha=1``); :math:`\partial\ell/\partial z^s =
  T\,(q - p)`;
* ``divergence="jsd"``: :math:`\ell = \beta\,\mathrm{KL}(p\|m) + (1-\beta)\,\mathrm{KL}(q\|m)`,
  :math:`m = \beta p + (1-\beta) q` (:func:`losslab.functional.jsd_loss`, no :math:`T^2`);
  with :math:`u = (1-\beta)(\log q - \log m)`, :math:`\partial\ell/\partial z^s =
  q \odot (u - \sum_k q_k u_k) / T` (the :math:`P/M` terms of the derivative cancel because
  :math:`\beta p + (1-\beta) q = m`). ``beta=0`` is :math:`\mathrm{KL}(p\|q)` and ``beta=1``
  :math:`\mathrm{KL}(q\|p)` (the normalised limits, as :func:`~losslab.functional.jsd_loss`).

Strategies: for ``reduction="mean"``/``"sum"`` the student's gradients are computed in the
forward pass (two logits GEMMs and two gradient GEMMs per chunk, the naive computation's
four, and no recomputation) and scaled in backward; ``reduction="none"`` keeps only the
per-token losses and recomputes both heads' logits in backward (each token has its own
upstream gradient). Numerics as :mod:`losslab.kernels.linear_stats` (half GEMMs, float32
softmax, statistics and ``dW``/``db`` accumulation).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from losslab._core import check_choice, check_reduction, compute_dtype
from losslab.kernels.linear_ce.workspace import tokens_within
from losslab.kernels.linear_stats import (
    GradAccumulator,
    HeadOptions,
    check_head,
    chunk_logits,
    flat_target,
    head_options,
    logit_chain_,
)

__all__ = ["DIVERGENCES", "linear_kd"]

DIVERGENCES: tuple[str, ...] = ("kl", "jsd")


def _masked_kl_rows_(a: Tensor, log_a: Tensor, log_b: Tensor, out: Tensor) -> Tensor:
    """``sum_k a_k (log a_k - log b_k)`` per row with ``0 log 0 = 0``, using ``out`` (a
    ``[c, V]`` buffer) as the only temporary; returns the rows' sums."""
    torch.sub(log_a, log_b, out=out)
    out.masked_fill_(a == 0, 0.0)
    out.mul_(a)
    return out.sum(1)


def _chunk_divergence(log_q: Tensor, log_p: Tensor, divergence: str, beta: float,
                      temperature: float, want_grad: bool, work: tuple[Tensor, Tensor]
                      ) -> tuple[Tensor, Tensor | None, float]:
    """Fast path of one chunk: ``(loss [c], G [c, V] or None, scale)`` with the gradient with
    respect to the temperature-scaled student logits equal to ``scale * G`` (the constant is
    folded into the per-token coefficient by the caller). No masking: a probability-0 entry
    (``-inf`` log-probability) makes its row NaN, and the caller redoes such chunks with
    :func:`_chunk_divergence_masked`. ``log_q`` and ``log_p`` are overwritten (``G`` lives in
    ``log_q``'s storage); ``work`` holds two further ``[c, V]`` buffers."""
    w1, w2 = work
    if divergence == "kl" or beta == 0.0:
        t2 = temperature**2 if divergence == "kl" else 1.0
        p = torch.exp(log_p, out=w1)
        d = torch.sub(log_p, log_q, out=log_p).mul_(p)
        loss = d.sum(1).mul_(t2)
        if not want_grad:
            return loss, None, 1.0
        return loss, log_q.exp_().sub_(p), t2
    if beta == 1.0:  # reverse KL(q || p); G = q (u - sum q u), u = log q - log p
        q = torch.exp(log_q, out=w1)
        qu = torch.sub(log_q, log_p, out=log_p).mul_(q)
        loss = qu.sum(1)
        if not want_grad:
            return loss, None, 1.0
        return loss, qu.addcmul_(q, loss.unsqueeze(1), value=-1.0), 1.0
    log_m = torch.add(log_p, math.log(beta), out=w1)
    b2 = torch.add(log_q, math.log1p(-beta), out=w2)
    torch.logaddexp(log_m, b2, out=log_m)
    p = torch.exp(log_p, out=b2)
    kp = torch.sub(log_p, log_m, out=log_p).mul_(p).sum(1)
    q = torch.exp(log_q, out=b2)
    qu = torch.sub(log_q, log_m, out=log_p).mul_(q)
    kq = qu.sum(1)
    loss = kp.mul_(beta).add_(kq, alpha=1 - beta)
    if not want_grad:
        return loss, None, 1.0
    # G = q (u - sum q u), u = log q - log m; the factor (1 - beta) is the scale
    return loss, qu.addcmul_(q, kq.unsqueeze(1), value=-1.0), 1.0 - beta


def _chunk_divergence_masked(log_q: Tensor, log_p: Tensor, divergence: str, beta: float,
                      temperature: float, want_grad: bool) -> tuple[Tensor, Tensor | None]:
    """``(loss [c], dloss/dz_s [c, V] or None)`` of one chunk (``z_s`` the student logits
    after the temperature division, i.e. before the final ``/ T`` of the chain), with
    ``0 log 0 = 0`` wherever a distribution has probability 0 (masked vocabulary entries).
    The slow path of :func:`_chunk_divergence`, taken for chunks whose fast path gave NaN.

    Works in three ``[c, V]`` buffers beside ``log_q`` and ``log_p`` (which it overwrites:
    the gradient is returned in ``log_q``'s storage)."""
    b1, b2 = torch.empty_like(log_q), torch.empty_like(log_q)
    if divergence == "kl" or beta == 0.0:
        t2 = temperature**2 if divergence == "kl" else 1.0
        p = torch.exp(log_p, out=b1)
        loss = _masked_kl_rows_(p, log_p, log_q, b2).mul_(t2)
        if not want_grad:
            return loss, None
        return loss, log_q.exp_().sub_(p).mul_(t2)
    if beta == 1.0:
        q = torch.exp(log_q, out=b1)
        loss = _masked_kl_rows_(q, log_q, log_p, b2)
        if not want_grad:
            return loss, None
        u = torch.sub(log_q, log_p, out=b2).masked_fill_(q == 0, 0.0)
        weight = 1.0
    else:
        both = torch.isneginf(log_p) & torch.isneginf(log_q)
        any_both = bool(both.any())
        # log m = logaddexp(log p + log beta, log q + log(1 - beta)), in b1 (a class both
        # give probability 0 is -inf in log m, never a NaN from logaddexp(-inf, -inf))
        log_m = torch.add(log_p.masked_fill(both, 0.0) if any_both else log_p,
                          math.log(beta), out=b1)
        torch.add(log_q.masked_fill(both, 0.0) if any_both else log_q,
                  math.log1p(-beta), out=b2)
        torch.logaddexp(log_m, b2, out=log_m)
        log_m.masked_fill_(both, -math.inf)
        p = torch.exp(log_p, out=log_p)  # log_p is not needed any more
        # KL(p || m) from p (log p recomputed where p > 0; p = 0 entries count 0)
        loss = beta * _kl_from_probs_(p, log_m, b2)
        q = torch.exp(log_q, out=log_p)  # p's storage now holds q
        loss = loss + (1 - beta) * _masked_kl_rows_(q, log_q, log_m, b2)
        if not want_grad:
            return loss, None
        u = torch.sub(log_q, log_m, out=b2).masked_fill_(q == 0, 0.0)
        weight = 1 - beta
    # grad = weight * q (u - sum_k q_k u_k)
    qu = torch.mul(q, u, out=log_q)
    qu.addcmul_(q, qu.sum(1, keepdim=True), value=-1.0)
    if weight != 1.0:
        qu.mul_(weight)
    return loss, qu


def _kl_from_probs_(p: Tensor, log_m: Tensor, out: Tensor) -> Tensor:
    """``sum_k p_k (log p_k - log m_k)`` per row from probabilities ``p`` (0 log 0 = 0)."""
    torch.log(p, out=out)
    out.sub_(log_m)
    out.masked_fill_(p == 0, 0.0)
    out.mul_(p)
    return out.sum(1)


class KDWorkspace:
    """The ``[chunk, V]`` buffers one pass reuses for every chunk (allocated once): both
    heads' log-probabilities, two work buffers of the divergence (compute dtype) and, for
    half inputs, the half GEMM output."""

    def __init__(self, chunk: int, v: int, dtype: torch.dtype, device: torch.device) -> None:
        acc = compute_dtype(dtype)
        self.zs, self.zt, self.w1, self.w2 = (
            torch.empty(chunk, v, dtype=acc, device=device) for _ in range(4))
        self.half = torch.empty(chunk, v, dtype=dtype, device=device) if acc != dtype \
            else None

    def rows(self, c: int) -> tuple[Tensor, Tensor]:
        return self.w1[:c], self.w2[:c]


def _chunk_log_probs(hc: Tensor, ws: Tensor, bs: Tensor | None, htc: Tensor, wt: Tensor,
                     bt: Tensor | None, opts: HeadOptions, buf: KDWorkspace,
                     ) -> tuple[Tensor, Tensor | None, Tensor]:
    """``(log q, tanh of the student's softcap or None, log p)`` of one chunk, each
    log-softmax computed in place over the chunk's logits (one fused kernel per head)."""
    zs, th = chunk_logits(hc, ws, bs, opts, buf.zs, buf.half)
    zt, _ = chunk_logits(htc, wt, bt, opts, buf.zt, buf.half)
    torch.ops.aten._log_softmax.out(zs, 1, False, out=zs)
    torch.ops.aten._log_softmax.out(zt, 1, False, out=zt)
    return zs, th, zt


def _kd_pass(
    hs: Tensor, ws: Tensor, bs: Tensor | None, ht: Tensor, wt: Tensor, bt: Tensor | None,
    valid: Tensor, opts: HeadOptions, divergence: str, beta: float, g: Tensor | None,
    need: tuple[bool, bool, bool],
) -> tuple[Tensor, GradAccumulator | None]:
    """Per-token losses (0 at ignored tokens) and, with the per-token upstream gradient ``g``,
    the student's accumulated gradients flagged in ``need``."""
    n = hs.shape[0]
    acc = compute_dtype(hs.dtype)
    loss = torch.empty(n, dtype=acc, device=hs.device)
    gr = GradAccumulator.allocate(hs, ws, bs, need) if g is not None else None
    buf = KDWorkspace(min(opts.chunk_size, n), ws.shape[0], hs.dtype, hs.device)
    for s in range(0, n, opts.chunk_size):
        e = min(s + opts.chunk_size, n)
        want = gr is not None
        log_q, th, log_p = _chunk_log_probs(hs[s:e], ws, bs, ht[s:e], wt, bt, opts, buf)
        lc, gz, scale = _chunk_divergence(log_q, log_p, divergence, beta, opts.temperature,
                                          want, buf.rows(e - s))
        if bool(torch.isnan(lc).any()):  # a probability-0 entry: redo with 0 log 0 = 0
            log_q, th, log_p = _chunk_log_probs(hs[s:e], ws, bs, ht[s:e], wt, bt, opts, buf)
            lc, gz = _chunk_divergence_masked(log_q, log_p, divergence, beta,
                                              opts.temperature, want)
            scale = 1.0
        vc = valid[s:e]
        loss[s:e] = torch.where(vc, lc, 0.0)
        if gr is None or gz is None or g is None:
            continue
        # one pass: the upstream gradient, the divergence's constant and (without softcap)
        # the temperature's 1 / T
        coef = torch.where(vc, g[s:e].to(acc), 0.0) * scale
        if th is None:
            coef = coef / opts.temperature
            gz.mul_(coef.unsqueeze(1))
        else:
            logit_chain_(gz.mul_(coef.unsqueeze(1)), th, opts)
        gr.add_chunk(s, e, gz, hs[s:e], ws)
    return loss, gr


class _GradInForward(torch.autograd.Function):
    """Scalar loss (``weights`` per token: 1/count for "mean", 1 for "sum"); the student's
    gradients are computed in forward and scaled by the scalar upstream gradient."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, hs: Tensor, ws: Tensor, bs: Tensor | None, ht: Tensor, wt: Tensor,
        bt: Tensor | None, valid: Tensor, weights: Tensor, opts: HeadOptions,
        divergence: str, beta: float,
    ) -> Tensor:
        need = (ctx.needs_input_grad[0], ctx.needs_input_grad[1],
                bs is not None and ctx.needs_input_grad[2])
        loss, gr = _kd_pass(hs, ws, bs, ht, wt, bt, valid, opts, divergence, beta,
                            weights if any(need) else None, need)
        ctx.grads = gr.result(ws, bs) if gr is not None else (None, None, None)
        ctx.save_for_backward(hs, ws, bs, ht, wt, bt, valid, weights)
        ctx.args = (opts, divergence, beta, need)
        return (loss * weights).sum()

    @staticmethod
    def backward(ctx: Any, g_out: Tensor) -> tuple[Any, ...]:
        grads = ctx.grads
        if grads is None:
            # a second backward through the same graph (retain_graph, gradcheck): the
            # precomputed gradients were handed out already, so recompute them
            hs, ws, bs, ht, wt, bt, valid, weights = ctx.saved_tensors
            opts, divergence, beta, need = ctx.args
            _, gr = _kd_pass(hs, ws, bs, ht, wt, bt, valid, opts, divergence, beta,
                             weights * g_out, need)
            assert gr is not None
            return (*gr.result(ws, bs), None, None, None, None, None, None, None, None)
        ctx.grads = None
        out = tuple(x.mul_(g_out.to(x.dtype)) if x is not None else None for x in grads)
        return (*out, None, None, None, None, None, None, None, None)


class _Recompute(torch.autograd.Function):
    """Per-token losses; backward recomputes both heads' logits chunk by chunk."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, hs: Tensor, ws: Tensor, bs: Tensor | None, ht: Tensor, wt: Tensor,
        bt: Tensor | None, valid: Tensor, opts: HeadOptions, divergence: str, beta: float,
    ) -> Tensor:
        loss, _ = _kd_pass(hs, ws, bs, ht, wt, bt, valid, opts, divergence, beta, None,
                           (False, False, False))
        ctx.save_for_backward(hs, ws, bs, ht, wt, bt, valid)
        ctx.args = (opts, divergence, beta)
        return loss

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Any, ...]:
        hs, ws, bs, ht, wt, bt, valid = ctx.saved_tensors
        opts, divergence, beta = ctx.args
        need = (ctx.needs_input_grad[0], ctx.needs_input_grad[1],
                bs is not None and ctx.needs_input_grad[2])
        _, gr = _kd_pass(hs, ws, bs, ht, wt, bt, valid, opts, divergence, beta, g, need)
        assert gr is not None
        return (*gr.result(ws, bs), None, None, None, None, None, None, None)


def linear_kd(
    hidden: Tensor,
    weight: Tensor,
    teacher_hidden: Tensor,
    teacher_weight: Tensor,
    *,
    bias: Tensor | None = None,
    teacher_bias: Tensor | None = None,
    target: Tensor | None = None,
    ignore_index: int = -100,
    divergence: str = "kl",
    beta: float = 0.5,
    temperature: float = 1.0,
    softcap: float | None = None,
    reduction: str = "mean",
    chunk_size: int | None = None,
) -> Tensor:
    r"""KD or generalised JSD of a student head against a teacher head, fused and chunked.

    Equal to ``kd_loss(hidden @ weight.T + bias, teacher_hidden @ teacher_weight.T +
    teacher_bias, temperature=T, alpha=1)`` (``divergence="kl"``) or to ``jsd_loss(...,
    beta=beta, temperature=T)`` (``"jsd"``) over the counted tokens, without the ``N x V``
    logits of either head.

    Args:
        hidden: ``[..., d_s]`` student hidden states.
        weight: ``[V, d_s]`` student LM head.
        teacher_hidden: ``[..., d_t]`` teacher hidden states (same leading shape; the width
            may differ).
        teacher_weight: ``[V, d_t]`` teacher LM head (same vocabulary).
        bias, teacher_bias: optional ``[V]`` biases.
        target: optional token ids of the leading shape; tokens equal to ``ignore_index``
            are not counted (prompt and padding masks, as Liger's and TRL's ``labels``).
            Without it every token counts.
        ignore_index: the ignored target value (default -100).
        divergence: ``"kl"`` (default, :math:`T^2 \mathrm{KL}(p\|q)`) or ``"jsd"``.
        beta: :math:`\beta \in [0, 1]` of ``"jsd"`` (default 0.5).
        temperature: :math:`T > 0` of both heads (default 1.0).
        softcap: ``c`` of ``c tanh(x / c)`` applied to both heads' raw logits, or None.
        reduction: ``"mean"`` over the counted tokens (0 when none counts), ``"sum"``, or
            ``"none"`` (the leading shape, 0 at ignored tokens).
        chunk_size: tokens per chunk; None takes the fused cross-entropy's chunk policy
            with its 32 MiB-per-buffer budget (256 tokens at ``V = 32000``).
    """
    check_head("", hidden, weight, bias)
    check_head("teacher_", teacher_hidden, teacher_weight, teacher_bias)
    check_reduction(reduction)
    check_choice("divergence", divergence, DIVERGENCES)
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    v, d = weight.shape
    if teacher_weight.shape[0] != v:
        raise ValueError(f"teacher_weight must have the student's vocabulary V = {v} rows, got "
                         f"{teacher_weight.shape[0]}")
    lead = tuple(hidden.shape[:-1])
    if tuple(teacher_hidden.shape[:-1]) != lead:
        raise ValueError(f"teacher_hidden must have hidden's leading shape {lead}, got "
                         f"{tuple(teacher_hidden.shape[:-1])}")
    devices = {x.device for x in (hidden, teacher_hidden, teacher_weight, target)
               if isinstance(x, Tensor)}
    if len(devices) > 1:
        raise ValueError(f"inputs must be on one device, got {sorted(map(str, devices))}")
    n = math.prod(lead)
    if target is not None:
        _, valid = flat_target(target, lead, v, ignore_index)
    else:
        valid = torch.ones(n, dtype=torch.bool, device=hidden.device)
    if chunk_size is None:
        # about six float32 [chunk, V] buffers are live at once (both heads' log-probs and
        # the divergence's work buffers), within the fused cross-entropy's memory budget
        chunk_size = tokens_within(n, 6 * 4 * v)
    opts = head_options(n, v, hidden.dtype, softcap=softcap, temperature=temperature,
                        chunk_size=chunk_size)
    hs = hidden.reshape(-1, d).contiguous()
    ht = teacher_hidden.detach().reshape(-1, teacher_weight.shape[1]).contiguous()
    ws, wt = weight.contiguous(), teacher_weight.detach().contiguous()
    bt = teacher_bias.detach() if teacher_bias is not None else None
    acc = compute_dtype(hidden.dtype)
    if n == 0:
        zero = (hs.sum() * 0 + ws.sum() * 0).to(acc)
        return zero.expand(lead) if reduction == "none" else zero
    if reduction == "none":
        loss = _Recompute.apply(hs, ws, bias, ht, wt, bt, valid, opts, divergence, beta)
        return loss.reshape(lead)
    count = valid.sum()
    scale = 1.0 / count.clamp_min(1).to(acc) if reduction == "mean" else torch.ones(
        (), dtype=acc, device=hs.device)
    weights = valid.to(acc) * scale
    return _GradInForward.apply(hs, ws, bias, ht, wt, bt, valid, weights, opts, divergence,
                                beta)
