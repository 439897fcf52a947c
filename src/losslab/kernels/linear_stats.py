r"""Chunked per-token statistics of a linear head: target log-probability, entropy and
log-sum-exp of ``softmax(softcap(hidden @ weight.T + bias) / temperature)`` without the
``N x V`` logits.

:func:`linear_token_stats` is the "selected-token log-prob + entropy" primitive of RL and
preference trainers (PPO/GRPO ratios and entropy bonuses, DPO sequence log-probs). The tokens
are processed in chunks of ``chunk_size`` rows (by default as many as fit the fused
cross-entropy's memory budget, :func:`~losslab.kernels.linear_ce.workspace.tokens_within`);
forward keeps only
``O(N)`` statistics and backward recomputes each chunk's logits, so every output can have its
own per-token upstream gradient (the three outputs are ``reduction="none"`` by nature).

Per token, with logits :math:`z` (after softcap and temperature), :math:`p =
\operatorname{softmax}(z)`, target :math:`t` and :math:`\mu = \sum_k p_k z_k`:

.. math::
    \mathrm{lse} = \log \textstyle\sum_k e^{z_k}, \quad
    \log p_t = z_t - \mathrm{lse}, \quad H = \mathrm{lse} - \mu,

and the gradient of :math:`g_{lp} \log p_t + g_H H + g_{lse}\,\mathrm{lse}` with respect to
:math:`z` is

.. math::
    G = g_{lp}\,(e_t - p) - g_H\, p \odot (z - \mu) + g_{lse}\, p,

chained through the temperature (:math:`1/T`) and the softcap (:math:`1 - \tanh^2(x/c)`),
then ``dhidden = G @ W``, ``dweight = G.T @ hidden``, ``dbias = G.sum(0)``.

Numerics: the logits GEMM runs in the input dtype (as the naive ``hidden @ weight.T``); the
softmax, the statistics and :math:`G` are float32 for fp16/bf16 inputs (float64 for float64);
``dweight`` and ``dbias`` are accumulated over the chunks in float32 (float64) and rounded once.
Statistics are returned in that compute dtype.

This module also holds the chunk helpers shared with :mod:`losslab.kernels.linear_kd`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from losslab._core import compute_dtype
from losslab.kernels.linear_ce.workspace import tokens_within

__all__ = ["HeadOptions", "TokenStats", "chunk_logits", "linear_token_stats", "logit_chain_"]


@dataclass(frozen=True)
class HeadOptions:
    """The resolved options of a head: ``softcap`` ``c`` (None: off), ``temperature`` and
    the tokens per chunk."""

    softcap: float | None
    temperature: float
    chunk_size: int


@dataclass(frozen=True)
class TokenStats:
    """Per-token outputs of :func:`linear_token_stats` (each of the target's shape)."""

    logprob: Tensor
    entropy: Tensor
    lse: Tensor


def chunk_logits(hc: Tensor, w: Tensor, b: Tensor | None, opts: HeadOptions,
                 out: Tensor | None = None, half_out: Tensor | None = None,
                 ) -> tuple[Tensor, Tensor | None]:
    """``(z, tanh)``: one chunk's logits in the compute dtype, after bias, softcap and
    temperature, and ``tanh(x / c)`` (softcap only, for the backward chain).

    ``out`` (compute dtype, at least ``[chunk, V]``) receives them when given, and for half
    inputs ``half_out`` (input dtype) receives the GEMM's half logits first: a pass that
    reuses these buffers allocates nothing per chunk but the softcap's ``tanh``."""
    acc = compute_dtype(hc.dtype)
    c, v = hc.shape[0], w.shape[0]
    if out is None:
        x = torch.mm(hc, w.t())
        if b is not None:
            x.add_(b)
        x = x.to(acc)  # (a fresh float32 buffer for half inputs)
    elif acc == hc.dtype:
        x = torch.mm(hc, w.t(), out=out[:c, :v])
        if b is not None:
            x.add_(b)
    else:
        xh = torch.mm(hc, w.t(), out=half_out[:c, :v]) if half_out is not None \
            else torch.mm(hc, w.t())
        if b is not None:
            xh.add_(b)
        x = out[:c, :v].copy_(xh)
    th = None
    if opts.softcap is not None:
        th = torch.div(x, opts.softcap).tanh_()
        torch.mul(th, opts.softcap, out=x)
    if opts.temperature != 1.0:
        x.div_(opts.temperature)
    return x, th


def logit_chain_(g: Tensor, th: Tensor | None, opts: HeadOptions) -> Tensor:
    """The gradient with respect to the raw logits ``h W^T + b`` from the gradient ``g`` with
    respect to the final ones (in place): ``/ T`` and ``* (1 - tanh^2)``."""
    if opts.temperature != 1.0:
        g.div_(opts.temperature)
    if th is not None:
        g.mul_(1 - th * th)
    return g


@dataclass
class GradAccumulator:
    """``dh`` (input dtype) and the compute-dtype ``dW``/``db`` sums of a chunked pass."""

    dh: Tensor | None
    dw: Tensor | None
    db: Tensor | None

    @classmethod
    def allocate(cls, h: Tensor, w: Tensor, b: Tensor | None,
                 need: tuple[bool, bool, bool]) -> GradAccumulator:
        acc = compute_dtype(h.dtype)
        return cls(
            dh=torch.empty_like(h) if need[0] else None,
            dw=torch.zeros(w.shape, dtype=acc, device=w.device) if need[1] else None,
            db=torch.zeros(w.shape[0], dtype=acc, device=w.device)
            if need[2] and b is not None else None,
        )

    def add_chunk(self, s: int, e: int, g: Tensor, hc: Tensor, w: Tensor) -> None:
        """Add one chunk's logit gradient ``g`` (compute dtype) of tokens ``[s, e)``."""
        gh = g.to(hc.dtype)
        if self.dh is not None:
            torch.mm(gh, w, out=self.dh[s:e])
        if self.dw is not None:
            if self.dw.dtype == gh.dtype:
                self.dw.addmm_(gh.t(), hc)  # no [V, d] temporary
            else:  # half GEMM, added to the float32 accumulator
                self.dw += torch.mm(gh.t(), hc)
        if self.db is not None:
            self.db += g.sum(0)

    def result(self, w: Tensor, b: Tensor | None) -> tuple[Tensor | None, ...]:
        return (self.dh, self.dw.to(w.dtype) if self.dw is not None else None,
                self.db.to(b.dtype) if self.db is not None and b is not None else None)


def _stats_pass(
    h: Tensor, w: Tensor, b: Tensor | None, target: Tensor, valid: Tensor, opts: HeadOptions,
    grads: tuple[Tensor | None, Tensor | None, Tensor | None] | None,
    need: tuple[bool, bool, bool] = (False, False, False),
) -> tuple[Tensor, Tensor, Tensor, GradAccumulator | None]:
    """One pass over the token chunks: ``(logprob, entropy, lse, grads)``; with ``grads =
    (g_lp, g_H, g_lse)`` (per-token upstream gradients, None for an unused output) the input
    gradients flagged in ``need`` are accumulated."""
    n = h.shape[0]
    acc = compute_dtype(h.dtype)
    lp = torch.empty(n, dtype=acc, device=h.device)
    ent = torch.empty(n, dtype=acc, device=h.device)
    lse = torch.empty(n, dtype=acc, device=h.device)
    gr = GradAccumulator.allocate(h, w, b, need) if grads is not None else None
    for s in range(0, n, opts.chunk_size):
        e = min(s + opts.chunk_size, n)
        hc, tc, vc = h[s:e], target[s:e], valid[s:e]
        z, th = chunk_logits(hc, w, b, opts)
        lse_c = torch.logsumexp(z, 1)
        p = torch.exp(z - lse_c.unsqueeze(1))
        # p z with 0 * (-inf) = 0: a vocabulary entry masked by a -inf bias has p = 0
        pz = torch.where(p > 0, p * z, 0.0)
        mu = pz.sum(1)
        z_t = z.gather(1, tc.unsqueeze(1)).squeeze(1)
        lp[s:e] = torch.where(vc, z_t - lse_c, 0.0)
        ent[s:e] = lse_c - mu
        lse[s:e] = lse_c
        if gr is None or grads is None:
            continue
        g_lp, g_h, g_lse = (x[s:e].to(acc) if x is not None else None for x in grads)
        coef_p = torch.zeros(e - s, dtype=acc, device=h.device)
        g = torch.zeros_like(z)
        if g_lp is not None:
            g_lp = torch.where(vc, g_lp, 0.0)
            coef_p -= g_lp
            g.scatter_add_(1, tc.unsqueeze(1), g_lp.unsqueeze(1))
        if g_lse is not None:
            coef_p += g_lse
        g.addcmul_(p, coef_p.unsqueeze(1))
        if g_h is not None:
            g.sub_((pz - p * mu.unsqueeze(1)) * g_h.unsqueeze(1))
        gr.add_chunk(s, e, logit_chain_(g, th, opts), hc, w)
    return lp, ent, lse, gr


class _TokenStats(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, h: Tensor, w: Tensor, b: Tensor | None, target: Tensor, valid: Tensor,
        opts: HeadOptions,
    ) -> tuple[Tensor, Tensor, Tensor]:
        lp, ent, lse, _ = _stats_pass(h, w, b, target, valid, opts, None)
        ctx.opts = opts
        ctx.save_for_backward(h, w, b, target, valid)
        return lp, ent, lse

    @staticmethod
    def backward(ctx: Any, g_lp: Tensor | None, g_h: Tensor | None, g_lse: Tensor | None
                 ) -> tuple[Any, ...]:
        h, w, b, target, valid = ctx.saved_tensors
        need = (ctx.needs_input_grad[0], ctx.needs_input_grad[1],
                b is not None and ctx.needs_input_grad[2])
        *_, gr = _stats_pass(h, w, b, target, valid, ctx.opts, (g_lp, g_h, g_lse), need)
        assert gr is not None
        return (*gr.result(w, b), None, None, None)


def check_head(name: str, hidden: Any, weight: Any, bias: Any) -> None:
    """Raise a ``ValueError`` naming the bad argument of a ``(hidden[..., d], weight[V, d],
    bias[V])`` head (``name`` prefixes the argument names, e.g. ``"teacher_"``)."""
    for arg, x in ((f"{name}hidden", hidden), (f"{name}weight", weight)):
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise ValueError(f"{arg} must be a floating-point torch.Tensor, got "
                             f"{getattr(x, 'dtype', type(x).__name__)}")
    if weight.ndim != 2 or weight.shape[0] < 1:
        raise ValueError(f"{name}weight must be a [V, d] matrix with V >= 1, got "
                         f"{tuple(weight.shape)}")
    if hidden.ndim < 1 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(f"{name}hidden must have shape [..., d] with d = {name}weight.shape[1]"
                         f" = {weight.shape[1]}, got {tuple(hidden.shape)}")
    if hidden.dtype != weight.dtype:
        raise ValueError(f"{name}hidden and {name}weight must have one dtype, got "
                         f"{hidden.dtype} and {weight.dtype}")
    if bias is not None and (not isinstance(bias, Tensor) or tuple(bias.shape) !=
                             (weight.shape[0],) or bias.dtype != weight.dtype):
        raise ValueError(f"{name}bias must be a [{weight.shape[0]}] tensor of dtype "
                         f"{weight.dtype}")
    devices = {x.device for x in (hidden, weight, bias) if isinstance(x, Tensor)}
    if len(devices) > 1:
        raise ValueError(f"{name}hidden, {name}weight and {name}bias must be on one device, "
                         f"got {sorted(map(str, devices))}")


def head_options(n: int, v: int, dtype: torch.dtype, *, softcap: float | None,
                 temperature: float, chunk_size: int | None) -> HeadOptions:
    """Validate the head options; ``chunk_size=None`` takes the budget's chunk (a logits
    buffer in the input dtype and a float32 work buffer per token and class)."""
    if softcap is not None and not softcap > 0:
        raise ValueError(f"softcap must be > 0 or None, got {softcap}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    if chunk_size is None:
        chunk_size = tokens_within(n, v * (dtype.itemsize + 4))
    return HeadOptions(softcap=float(softcap) if softcap is not None else None,
                       temperature=float(temperature), chunk_size=int(chunk_size))


def flat_target(target: Any, lead: tuple[int, ...], v: int, ignore_index: int
                ) -> tuple[Tensor, Tensor]:
    """``(target [N] with ignored tokens mapped to 0, valid [N])``; raises a ``ValueError``
    for a non-integer target, a wrong shape or ids outside ``[0, V)``."""
    if not isinstance(target, Tensor) or target.is_floating_point() or target.is_complex() \
            or target.dtype == torch.bool:
        raise ValueError(f"target must be an integer tensor, got "
                         f"{getattr(target, 'dtype', type(target).__name__)}")
    if tuple(target.shape) != lead:
        raise ValueError(f"target must have shape {lead} (hidden's leading dims), got "
                         f"{tuple(target.shape)}")
    t = target.reshape(-1).long()
    valid = t != ignore_index
    bad = valid & ((t < 0) | (t >= v))
    if bool(bad.any()):
        raise ValueError(f"target has value(s) {sorted(set(t[bad].tolist()))[:5]} outside "
                         f"[0, {v}) that are not ignore_index={ignore_index}")
    return torch.where(valid, t, 0), valid


def linear_token_stats(
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    *,
    bias: Tensor | None = None,
    ignore_index: int = -100,
    softcap: float | None = None,
    temperature: float = 1.0,
    chunk_size: int | None = None,
) -> TokenStats:
    r"""Per-token target log-probability, entropy and log-sum-exp of a linear head, chunked.

    Args:
        hidden: ``[..., d]`` hidden states (any leading shape, e.g. ``[B, L, d]``).
        weight: ``[V, d]`` output-embedding matrix (the LM head).
        target: ``hidden.shape[:-1]`` token ids in ``[0, V)`` or ``ignore_index``.
        bias: optional ``[V]`` bias.
        ignore_index: target value whose log-probability is reported as 0 with no gradient
            (default -100); the entropy and LSE of those tokens are still computed.
        softcap: ``c`` of ``c * tanh(x / c)`` applied to the raw logits (Gemma-2), or None.
        temperature: :math:`T > 0` dividing the (capped) logits, as RL trainers sample with
            (default 1.0).
        chunk_size: tokens per chunk; None takes the fused cross-entropy's memory budget
            (:func:`~losslab.kernels.linear_ce.workspace.tokens_within`, 48 MiB).

    Returns:
        :class:`TokenStats` ``(logprob, entropy, lse)``, each of ``target``'s shape, in float32
        for half inputs. All three are differentiable (per-token upstream gradients; one
        backward recomputes the logits once for all of them).

    ``logprob`` equals ``log_softmax(z, -1).gather(-1, target)`` and ``entropy`` equals
    ``-(softmax(z) * log_softmax(z)).sum(-1)`` of ``z = softcap(hidden @ weight.T + bias) / T``.
    """
    check_head("", hidden, weight, bias)
    v, d = weight.shape
    lead = tuple(hidden.shape[:-1])
    t, valid = flat_target(target, lead, v, ignore_index)
    if target.device != hidden.device:
        raise ValueError(f"target must be on hidden's device {hidden.device}, got "
                         f"{target.device}")
    opts = head_options(t.numel(), v, hidden.dtype, softcap=softcap, temperature=temperature,
                        chunk_size=chunk_size)
    h = hidden.reshape(-1, d)
    h = h if h.is_contiguous() else h.contiguous()
    w = weight if weight.is_contiguous() else weight.contiguous()
    if h.shape[0] == 0:
        zero = (h.sum() * 0 + w.sum() * 0).to(compute_dtype(h.dtype)).expand(lead)
        return TokenStats(zero, zero, zero)
    lp, ent, lse = _TokenStats.apply(h, w, bias, t, valid, opts)
    return TokenStats(lp.reshape(lead), ent.reshape(lead), lse.reshape(lead))
