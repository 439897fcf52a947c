r"""Fused linear preference inputs: the per-sequence log-probabilities of chosen and rejected
completions straight from an LM head, chunked, without the ``N x V`` logits.

Preference losses (DPO, IPO, KTO, SimPO, CPO, ORPO, ...) need, per completion :math:`y` of
:math:`T` positions with targets :math:`t_1..t_T` (``ignore_index`` at prompt and padding
positions),

.. math::
    \log\pi_\theta(y\mid x) = \sum_{j:\,t_j \ne \text{ignore}} \log\operatorname{softmax}
        (h_j W^\top + b)_{t_j}, \qquad L(y) = \#\{j : t_j \ne \text{ignore}\}.

Two strategies, neither of which holds ``N x V`` values in the forward or the backward pass:

* ``"recompute"`` (:func:`linear_preference_logps`): the token log-probabilities are
  :func:`losslab.kernels.linear_ce.linear_cross_entropy` with ``reduction="none"``, negated
  (chunks of tokens, the per-token LSE kept, each chunk's logits recomputed in backward: four
  GEMMs), summed per sequence here; any function of the sequence log-probs can follow, and
  each sequence's upstream gradient is applied per token exactly.
* ``"grad_in_forward"`` (:func:`linear_pair_loss`, Liger's chunked preference losses): the
  pairs are processed in *groups* whose chosen and rejected tokens are formed together (at
  least one whole pair); per group the logits are turned into probabilities in place, the
  group's sequence log-probs and its per-pair losses are computed, and since a pair's loss
  depends only on that pair, the per-sequence gradient :math:`g = \partial\ell/\partial\log
  \pi(y)` is known at once: the logit gradient :math:`g\,(e_t - p)` of each token is folded
  into ``dhidden``, ``dweight`` and ``dbias`` in the same pass (three GEMMs, as the naive
  computation). Backward scales them by the scalar upstream gradient, so it serves
  ``reduction="mean"``/``"sum"``. A pair whose tokens do not fit the group workspace is
  processed in token chunks in two passes (log-probs, then gradients: four GEMMs).

The losses themselves live in :mod:`losslab.losses.preference`
(:func:`losslab.losses.preference.linear_preference_loss` combines them with these), since
kernels import no loss family: :func:`linear_pair_loss` takes the per-pair loss as a callable.

Layout (Liger's ``LigerFusedLinearPreferenceBase``, TRL's concatenated forward): ``hidden``
``[2B, T, d]`` and ``target`` ``[2B, T]`` stack the ``B`` chosen completions first and the
``B`` rejected ones second; row ``i`` of each half belongs to pair ``i``. Targets are aligned
with the hidden states (position ``j``'s hidden state predicts ``target[:, j]``: shift before
calling, as for :func:`~losslab.kernels.linear_ce.linear_cross_entropy`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from losslab._core import compute_dtype
from losslab.kernels.linear_ce import linear_cross_entropy
from losslab.kernels.linear_ce.rows import softcap_, softmax_rows_
from losslab.kernels.linear_ce.workspace import WORKSPACE_BYTES, tokens_within
from losslab.kernels.linear_stats import GradAccumulator, check_head, flat_target

__all__ = [
    "GROUP_WORKSPACE_BYTES",
    "PairLogps",
    "PairLossFn",
    "linear_pair_loss",
    "linear_preference_logps",
    "linear_sequence_logps",
]

#: Largest logits workspace of one pair group of :func:`linear_pair_loss` (bytes of the
#: ``[group tokens, V]`` buffers): pairs are grouped up to it, and a pair larger than it falls
#: back to two passes over 48 MiB token chunks. 256 MiB holds one pair of 2 x 1024 tokens at
#: V = 32000 in float32 (a pair must be formed whole for the one-pass gradient).
GROUP_WORKSPACE_BYTES = 256 * 1024 * 1024

#: ``pair_loss(chosen_logps[g], rejected_logps[g], chosen_length[g], rejected_length[g],
#: pairs) -> [g]`` per-pair losses of the pairs ``pairs`` (a slice of ``range(B)``).
PairLossFn = Callable[[Tensor, Tensor, Tensor, Tensor, slice], Tensor]


@dataclass(frozen=True)
class PairLogps:
    """Per-pair outputs of :func:`linear_preference_logps`, each ``[B]``: summed log-probs of
    the chosen and rejected completions (differentiable) and their numbers of scored tokens
    (float, no gradient)."""

    chosen: Tensor
    rejected: Tensor
    chosen_length: Tensor
    rejected_length: Tensor


def linear_sequence_logps(
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    *,
    bias: Tensor | None = None,
    ignore_index: int = -100,
    softcap: float | None = None,
    chunk_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    r"""Summed target log-probabilities per sequence of a linear head, chunked.

    Args:
        hidden: ``[S, T, d]`` hidden states of ``S`` sequences of ``T`` positions.
        weight: ``[V, d]`` LM head.
        target: ``[S, T]`` token ids in ``[0, V)`` or ``ignore_index`` (not scored).
        bias: optional ``[V]`` bias.
        ignore_index: target value of unscored positions (default -100).
        softcap: ``c`` of ``c * tanh(x / c)`` on the logits (Gemma-2), or None.
        chunk_size: tokens per chunk; None takes the fused cross-entropy's 48 MiB budget.

    Returns:
        ``(logps [S], lengths [S])``: :math:`\sum_j \log p(t_j)` over the scored positions
        (float32 for half inputs, differentiable with respect to ``hidden``, ``weight`` and
        ``bias``) and the number of scored positions (same dtype, no gradient).
    """
    check_head("", hidden, weight, bias)
    if hidden.ndim != 3:
        raise ValueError(f"hidden must have shape [S, T, d] (sequences, positions, width), "
                         f"got {tuple(hidden.shape)}")
    flat_target(target, tuple(hidden.shape[:-1]), weight.shape[0], ignore_index)
    ce = linear_cross_entropy(
        hidden, weight, target, bias=bias, ignore_index=ignore_index, label_smoothing=0.0,
        class_weight=None, reduction="none", softcap=softcap, logz_penalty=0.0,
        token_weight=None, return_lse=False, chunk_size=chunk_size, strategy="recompute",
        weight_grad="auto", workspace_bytes=None)
    assert isinstance(ce, Tensor)
    acc = compute_dtype(hidden.dtype)
    lengths = (target != ignore_index).sum(1).to(acc)
    # the per-token cross-entropy is -log p(t) and 0 (no gradient) at ignored positions
    return -ce.to(acc).sum(1), lengths


def linear_preference_logps(
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    *,
    bias: Tensor | None = None,
    ignore_index: int = -100,
    softcap: float | None = None,
    chunk_size: int | None = None,
) -> PairLogps:
    r"""Chosen and rejected sequence log-probs of a stacked preference batch, chunked.

    Args:
        hidden: ``[2B, T, d]``: the ``B`` chosen completions' hidden states, then the ``B``
            rejected ones (pair ``i`` is rows ``i`` and ``B + i``).
        weight, target, bias, ignore_index, softcap, chunk_size: as
            :func:`linear_sequence_logps` (``target`` is ``[2B, T]``).

    Returns:
        :class:`PairLogps` with ``[B]`` tensors.
    """
    check_head("", hidden, weight, bias)
    if hidden.ndim != 3 or hidden.shape[0] % 2:
        raise ValueError(f"hidden must have shape [2B, T, d] (B chosen rows, then B rejected "
                         f"rows), got {tuple(hidden.shape)}")
    logps, lengths = linear_sequence_logps(hidden, weight, target, bias=bias,
                                           ignore_index=ignore_index, softcap=softcap,
                                           chunk_size=chunk_size)
    b = hidden.shape[0] // 2
    return PairLogps(logps[:b], logps[b:], lengths[:b], lengths[b:])


# --------------------------------------------------------------------------------------------
# Gradients in the forward pass, per pair group
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    b: int  # pairs
    t: int  # positions per completion
    pairs_per_group: int  # 0: a pair does not fit, two passes over token chunks
    chunk: int  # tokens per chunk of the two-pass fallback
    softcap: float | None
    scale: float  # 1/B for "mean", 1 for "sum"


class _Head:
    """The head's operands and the reused buffers of one pass (``[rows, V]`` logits in the
    compute dtype, plus the half GEMM output and the softcap's ``tanh``)."""

    def __init__(self, w: Tensor, b: Tensor | None, rows: int, softcap: float | None) -> None:
        self.w, self.b, self.softcap = w, b, softcap
        acc = compute_dtype(w.dtype)
        v = w.shape[0]
        self.z = torch.empty(rows, v, dtype=acc, device=w.device)
        self.half = torch.empty(rows, v, dtype=w.dtype, device=w.device) \
            if acc != w.dtype else None
        self.tanh = torch.empty(rows, v, dtype=acc, device=w.device) \
            if softcap is not None else None

    def probs(self, hc: Tensor, tc: Tensor, valid: Tensor) -> tuple[Tensor, Tensor | None,
                                                                    Tensor]:
        """``(p, tanh, logp)``: the rows' softmax (in the logits buffer), ``tanh(x / c)`` and
        the target log-probs (0 where not valid)."""
        c = hc.shape[0]
        z = self.z[:c]
        if self.half is None:
            torch.mm(hc, self.w.t(), out=z)
            if self.b is not None:
                z.add_(self.b)
        else:
            zh = torch.mm(hc, self.w.t(), out=self.half[:c])
            if self.b is not None:
                zh.add_(self.b)
            z.copy_(zh)
        th = None
        if self.softcap is not None:
            assert self.tanh is not None
            th = self.tanh[:c]
            softcap_(z, self.softcap, th)
        z_t = torch.empty(c, dtype=z.dtype, device=z.device)
        lse = softmax_rows_(z, tc, None, z_t, None)
        return z, th, torch.where(valid, z_t - lse, 0.0)

    @staticmethod
    def logit_grad_(p: Tensor, th: Tensor | None, tc: Tensor, g: Tensor) -> Tensor:
        """``p <- g (e_t - p) * (1 - tanh^2)`` in place (``g`` per row, 0 where not valid):
        the gradient of ``g log p_t`` with respect to the raw logits."""
        p.mul_(-g.unsqueeze(1))
        rows = torch.arange(p.shape[0], device=p.device)
        p.index_put_((rows, tc), g, accumulate=True)
        if th is not None:
            th.square_().neg_().add_(1.0)
            p.mul_(th)
        return p


def _pair_rows(b: int, t: int, p0: int, p1: int) -> tuple[slice, slice]:
    """Flat token ranges of the chosen and the rejected rows of pairs ``[p0, p1)``."""
    return slice(p0 * t, p1 * t), slice((b + p0) * t, (b + p1) * t)


def _group_loss(
    pair_loss: PairLossFn, sl: slice, lp_c: Tensor, lp_r: Tensor, n_c: Tensor, n_r: Tensor,
    scale: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(sum of the pairs' losses, d/d chosen_logps, d/d rejected_logps)``, scaled."""
    with torch.enable_grad():
        c = lp_c.detach().requires_grad_(True)
        r = lp_r.detach().requires_grad_(True)
        values = pair_loss(c, r, n_c, n_r, sl)
        if not isinstance(values, Tensor) or tuple(values.shape) != (sl.stop - sl.start,):
            raise ValueError(f"pair_loss must return one loss per pair "
                             f"({sl.stop - sl.start}), got "
                             f"{getattr(values, 'shape', type(values).__name__)}")
        total = values.sum()
        gc, gr = torch.autograd.grad(total * scale, (c, r), allow_unused=True)
    gc = gc if gc is not None else torch.zeros_like(c)
    gr = gr if gr is not None else torch.zeros_like(r)
    return total.detach(), gc, gr


def _pair_pass(h: Tensor, w: Tensor, bias: Tensor | None, t: Tensor, valid: Tensor,
               lengths: Tensor, pair_loss: PairLossFn, plan: _Plan,
               need: tuple[bool, bool, bool]) -> tuple[Tensor, Tensor, GradAccumulator]:
    """The forward pass with the gradients: ``(loss, sequence logps [2B], grads)``."""
    acc = compute_dtype(h.dtype)
    gr = GradAccumulator.allocate(h, w, bias, need)
    seq = torch.zeros(2 * plan.b, dtype=acc, device=h.device)
    total = torch.zeros((), dtype=acc, device=h.device)
    big = plan.pairs_per_group == 0
    group = 1 if big else plan.pairs_per_group
    rows = plan.chunk if big else 2 * group * plan.t
    head = _Head(w, bias, rows, plan.softcap)
    for p0 in range(0, plan.b, group):
        p1 = min(p0 + group, plan.b)
        sc, sr = _pair_rows(plan.b, plan.t, p0, p1)
        sl = slice(p0, p1)
        ranges = [(sc.start, sc.stop), (sr.start, sr.stop)]
        if not big:  # both halves of the group in one buffer, one pass
            hc = torch.cat([h[sc], h[sr]])
            tc, vc = torch.cat([t[sc], t[sr]]), torch.cat([valid[sc], valid[sr]])
            p, th, lp = head.probs(hc, tc, vc)
            lp_seq = lp.view(2 * (p1 - p0), plan.t).sum(1)
            g_rows = (p1 - p0) * plan.t
            lp_c, lp_r = lp_seq[: p1 - p0], lp_seq[p1 - p0:]
            loss, g_c, g_r = _group_loss(pair_loss, sl, lp_c, lp_r, lengths[p0:p1],
                                         lengths[plan.b + p0: plan.b + p1], plan.scale)
            g_tok = torch.cat([g_c, g_r]).repeat_interleave(plan.t)
            g_tok = torch.where(vc, g_tok, 0.0)
            gmat = head.logit_grad_(p, th, tc, g_tok)
            gh = gmat.to(hc.dtype)
            if gr.dh is not None:
                dh = torch.mm(gh, w)
                gr.dh[sc] = dh[:g_rows]
                gr.dh[sr] = dh[g_rows:]
            if gr.dw is not None:
                if gr.dw.dtype == gh.dtype:
                    gr.dw.addmm_(gh.t(), hc)
                else:
                    gr.dw += torch.mm(gh.t(), hc)
            if gr.db is not None:
                gr.db += gmat.sum(0)
        else:  # one pair too large for the group workspace: log-probs, then gradients
            lps = []
            for s0, s1 in ranges:
                tot = torch.zeros((), dtype=acc, device=h.device)
                for s in range(s0, s1, plan.chunk):
                    e = min(s + plan.chunk, s1)
                    _, _, lp = head.probs(h[s:e], t[s:e], valid[s:e])
                    tot = tot + lp.sum()
                lps.append(tot.reshape(1))
            lp_c, lp_r = lps
            lp_seq = torch.cat(lps)
            loss, g_c, g_r = _group_loss(pair_loss, sl, lp_c, lp_r, lengths[p0:p1],
                                         lengths[plan.b + p0: plan.b + p1], plan.scale)
            for (s0, s1), g in zip(ranges, (g_c, g_r), strict=True):
                for s in range(s0, s1, plan.chunk):
                    e = min(s + plan.chunk, s1)
                    p, th, _ = head.probs(h[s:e], t[s:e], valid[s:e])
                    g_tok = torch.where(valid[s:e], g.expand(e - s), 0.0)
                    gr.add_chunk(s, e, head.logit_grad_(p, th, t[s:e], g_tok), h[s:e], w)
        seq[p0:p1] = lp_c.detach()
        seq[plan.b + p0: plan.b + p1] = lp_r.detach()
        total = total + loss
    return total * plan.scale, seq, gr


class _PairGradInForward(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, h: Tensor, w: Tensor, b: Tensor | None, t: Tensor, valid: Tensor,
        lengths: Tensor, pair_loss: PairLossFn, plan: _Plan,
    ) -> tuple[Tensor, Tensor]:
        need = (ctx.needs_input_grad[0], ctx.needs_input_grad[1],
                b is not None and ctx.needs_input_grad[2])
        loss, seq, gr = _pair_pass(h, w, b, t, valid, lengths, pair_loss, plan, need)
        dh, dw, db = gr.result(w, b)
        ctx.save_for_backward(*(x if x is not None else torch.empty(0) for x in (dh, dw, db)))
        ctx.has = (dh is not None, dw is not None, db is not None)
        ctx.mark_non_differentiable(seq)
        return loss, seq

    @staticmethod
    def backward(ctx: Any, g: Tensor, _g_seq: Tensor | None) -> tuple[Any, ...]:
        saved = ctx.saved_tensors
        out = [x * g.to(x.dtype) if has else None
               for x, has in zip(saved, ctx.has, strict=True)]
        return (*out, None, None, None, None, None)


def linear_pair_loss(
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    pair_loss: PairLossFn,
    *,
    bias: Tensor | None = None,
    ignore_index: int = -100,
    softcap: float | None = None,
    reduction: str = "mean",
    group_workspace_bytes: int = GROUP_WORKSPACE_BYTES,
    chunk_size: int | None = None,
) -> tuple[Tensor, PairLogps]:
    r"""A per-pair preference loss of a stacked ``[2B, T, d]`` batch, reduced over the pairs,
    with its gradients computed in the forward pass (``"grad_in_forward"``, see the module
    docstring).

    Args:
        hidden, weight, target, bias, ignore_index, softcap: as
            :func:`linear_preference_logps`.
        pair_loss: ``pair_loss(chosen_logps[g], rejected_logps[g], chosen_length[g],
            rejected_length[g], pairs)`` -> ``[g]`` losses of the pairs ``pairs`` (a
            ``slice`` of ``range(B)``, for per-pair extras such as reference log-probs). It
            must be differentiable in the log-probs and must not mix pairs (each pair's loss
            depends on that pair only, true of every loss of
            :mod:`losslab.losses.preference`).
        reduction: ``"mean"`` over pairs (0 for ``B = 0``) or ``"sum"``.
        group_workspace_bytes: bytes of the logits buffers of one pair group (default
            :data:`GROUP_WORKSPACE_BYTES`); pairs larger than it take two passes over
            :data:`~losslab.kernels.linear_ce.workspace.WORKSPACE_BYTES` token chunks.
        chunk_size: tokens per chunk of that two-pass fallback (None: the 48 MiB budget).

    Returns:
        ``(loss, logps)``: the reduced loss (differentiable in ``hidden``, ``weight``,
        ``bias``) and the detached :class:`PairLogps` (for logging rewards and margins).
    """
    check_head("", hidden, weight, bias)
    if hidden.ndim != 3 or hidden.shape[0] % 2:
        raise ValueError(f"hidden must have shape [2B, T, d] (B chosen rows, then B rejected "
                         f"rows), got {tuple(hidden.shape)}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum' (gradients in the forward pass), "
                         f"got {reduction!r}")
    if softcap is not None and not softcap > 0:
        raise ValueError(f"softcap must be > 0 or None, got {softcap}")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    if not isinstance(group_workspace_bytes, int) or group_workspace_bytes < 1:
        raise ValueError(f"group_workspace_bytes must be a positive int, got "
                         f"{group_workspace_bytes!r}")
    two_b, t_len, d = hidden.shape
    v = weight.shape[0]
    tt, valid = flat_target(target, (two_b, t_len), v, ignore_index)
    if target.device != hidden.device:
        raise ValueError(f"target must be on hidden's device {hidden.device}, got "
                         f"{target.device}")
    acc = compute_dtype(hidden.dtype)
    b = two_b // 2
    lengths = valid.view(two_b, t_len).sum(1).to(acc)
    if b == 0 or t_len == 0:
        zero = (hidden.sum() * 0 + weight.sum() * 0).to(acc)
        if bias is not None:
            zero = zero + bias.sum().to(acc) * 0
        if b > 0:  # empty completions: the losses of log-probs 0
            lp0 = torch.zeros(b, dtype=acc, device=hidden.device)
            vals = pair_loss(lp0, lp0, lengths[:b], lengths[b:], slice(0, b))
            zero = zero + vals.sum().to(acc) / (b if reduction == "mean" else 1)
        z0 = torch.zeros(b, dtype=acc, device=hidden.device)
        return zero, PairLogps(z0, z0, lengths[:b], lengths[b:])
    bytes_per_token = v * (hidden.dtype.itemsize + 4 + (4 if softcap is not None else 0))
    per_group = group_workspace_bytes // max(1, 2 * t_len * bytes_per_token)
    plan = _Plan(b=b, t=t_len, pairs_per_group=int(min(per_group, b)),
                 chunk=chunk_size or tokens_within(2 * t_len, bytes_per_token,
                                                   workspace_bytes=WORKSPACE_BYTES),
                 softcap=float(softcap) if softcap is not None else None,
                 scale=1.0 / b if reduction == "mean" else 1.0)
    h = hidden.reshape(-1, d)
    h = h if h.is_contiguous() else h.contiguous()
    w = weight if weight.is_contiguous() else weight.contiguous()
    loss, seq = _PairGradInForward.apply(h, w, bias, tt, valid, lengths, pair_loss, plan)
    return loss, PairLogps(seq[:b], seq[b:], lengths[:b], lengths[b:])
