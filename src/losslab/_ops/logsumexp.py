"""The log-sum-exp family, in one place.

Two kinds of helpers:

* autograd forms, for losses that let autograd differentiate (the ``indices=`` paths of the pair
  losses, Proxy-Anchor's and Metrix's soft-weighted sums): :func:`masked_logsumexp` and
  :func:`weighted_log1p_sum_exp`;
* in-place forms for the fused kernels (:mod:`losslab.kernels.matrix_loss`), which need the
  value *and* the softmax weights (the gradient) in one pass and overwrite their input with the
  weights: :func:`logsumexp_` and :func:`log1p_sum_exp_`, with :func:`fixed_shift` for logits
  whose range is known in advance (a constant shift saves a max pass).

Every helper is stable for any logits (shifted by a maximum) and gives an empty set its exact
value (``-inf`` for ``log sum``, 0 for ``log(1 + sum)``) with a zero gradient, never NaN.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "fixed_shift",
    "log1p_sum_exp_",
    "logsumexp_",
    "masked_logsumexp",
    "weighted_log1p_sum_exp",
]


def masked_logsumexp(x: Tensor, mask: Tensor, dim: int = 1) -> tuple[Tensor, Tensor]:
    """``log sum_{mask} exp(x)`` along ``dim`` and the non-empty flag.

    Empty rows give ``-inf`` in the value; their gradient is exactly zero (never NaN).
    """
    xm = x.masked_fill(~mask, float("-inf"))
    mx = xm.amax(dim=dim, keepdim=True).detach()
    mx = torch.where(torch.isfinite(mx), mx, torch.zeros_like(mx))
    s = torch.exp(xm - mx).sum(dim=dim)
    nonempty = mask.any(dim=dim)
    s = torch.where(nonempty, s, torch.ones_like(s))
    out = torch.log(s) + mx.squeeze(dim)
    return out.masked_fill(~nonempty, float("-inf")), nonempty


def weighted_log1p_sum_exp(x: Tensor, w: Tensor, dim: int = 1) -> Tensor:
    """``log(1 + sum_j w_j exp(x_j))`` along ``dim`` for weights ``w >= 0``, computed stably.

    Entries with ``w == 0`` contribute nothing and get zero gradient; an all-zero row gives 0.
    """
    active = w > 0
    xm = x.masked_fill(~active, float("-inf"))
    mx = xm.amax(dim=dim, keepdim=True).detach().clamp_min(0.0)
    mx = torch.where(torch.isfinite(mx), mx, torch.zeros_like(mx))
    terms = torch.where(active, w * torch.exp(xm - mx), torch.zeros_like(x))
    return torch.log(torch.exp(-mx.squeeze(dim)) + terms.sum(dim=dim)) + mx.squeeze(dim)


#: The widest logit range a constant shift may cover: exp(-span) must stay a normal number.
MAX_SHIFT_SPAN = {torch.float64: 600.0}
DEFAULT_SPAN = 60.0  # float32 (and half inputs, computed in float32)


def fixed_shift(upper: float, lower: float, dtype: torch.dtype) -> float | None:
    """A constant log-sum-exp shift for logits known to lie in ``[lower, upper]`` (e.g. affine in
    a cosine similarity), or ``None`` when that range is too wide for ``dtype`` (then the exact
    per-row maximum is used). Saves a max pass and a subtraction over the matrix."""
    return upper if upper - lower <= MAX_SHIFT_SPAN.get(dtype, DEFAULT_SPAN) else None


def log1p_sum_exp_(logits: Tensor, dim: int, shift: float | None = None,
                   scale: float = 1.0) -> tuple[Tensor, Tensor]:
    r""":math:`\log(1 + \sum_j e^{L_j})` along ``dim`` (``-inf`` entries are absent) and
    ``scale`` times the weights :math:`e^{L_j} / (1 + \sum e^{L})`, which overwrite ``logits``.

    Shifted by :math:`c = \max(0, \max_j L_j)` (no overflow; an empty set gives exactly 0), or
    by ``max(0, shift)`` when the caller knows an upper bound of the logits (:func:`fixed_shift`).
    """
    if shift is None:
        c = logits.amax(dim=dim, keepdim=True).clamp_min_(0.0)
        w = logits.sub_(c).exp_()
        e = torch.exp(-c)
    else:
        c0 = max(0.0, shift)
        w = (logits.sub_(c0) if c0 else logits).exp_()
        e = torch.full((), -c0, dtype=w.dtype, device=w.device).exp_()
        c = torch.full((), c0, dtype=w.dtype, device=w.device)
    total = w.sum(dim=dim, keepdim=True).add_(e)
    w.mul_(total.reciprocal() * scale)
    return (total.log_() + c).squeeze(dim), w


def logsumexp_(logits: Tensor, dim: int, shift: float | None = None) -> tuple[Tensor, Tensor]:
    """``logsumexp`` along ``dim`` (``-inf`` for an empty set) and the softmax weights (0 on an
    empty set), which overwrite ``logits``; ``shift``: a known upper bound (:func:`fixed_shift`)
    used instead of the per-row maximum."""
    if shift is None:
        c = logits.amax(dim=dim, keepdim=True)
        c = torch.where(torch.isfinite(c), c, 0.0)
        w = logits.sub_(c).exp_()
    else:
        c = torch.full((), shift, dtype=logits.dtype, device=logits.device)
        w = (logits.sub_(shift) if shift else logits).exp_()
    total = w.sum(dim=dim, keepdim=True)
    w.mul_(total.clamp_min(torch.finfo(w.dtype).tiny).reciprocal())
    return (total.log_() + c).squeeze(dim), w
