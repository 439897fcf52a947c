r"""Per-row-block math of the chunked pass: softcap, the fused softmax and its LSE, the
per-token statistics of the loss, and the per-token coefficients of the logit gradient.

Notation (one token, logits :math:`z` over :math:`V` classes, target :math:`t`, class weights
:math:`w`, smoothing :math:`\varepsilon`, z-loss coefficient :math:`\lambda`, upstream
gradients :math:`g` of the per-token loss and :math:`g_{\mathrm{lse}}` of the LSE): the
gradient of :math:`g\,\ell + g_{\mathrm{lse}}\,\mathrm{lse}` with respect to the logits is

.. math::
    A\,p - B\,e_t - C\,w, \qquad
    A = g\big((1-\varepsilon) w_t + \tfrac{\varepsilon}{V} \textstyle\sum_k w_k
        + 2\lambda\,\mathrm{lse}\big) + g_{\mathrm{lse}}, \quad
    B = g\,(1-\varepsilon)\,w_t, \quad C = g\,\tfrac{\varepsilon}{V},

so that without softcap ``p`` never has to be modified: the coefficients are folded into the
small ``[chunk, d]`` operands (:mod:`.grads`). With softcap the gradient is formed in place
(:func:`materialize_logit_grad_`) and multiplied by ``cap'(x) = 1 - tanh^2(x / c)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "ChunkCoefs",
    "add_zloss_coef_",
    "logit_grad_coefs",
    "materialize_logit_grad_",
    "per_token_loss",
    "record_token_stats_",
    "softcap_",
    "softmax_rows_",
]


def softcap_(z: Tensor, cap: float, tanh: Tensor) -> None:
    """``z <- c tanh(z / c)`` in place; ``tanh`` receives ``tanh(z / c)`` (for ``cap'``)."""
    torch.div(z, cap, out=tanh)
    tanh.tanh_()
    torch.mul(tanh, cap, out=z)


def softmax_rows_(
    z: Tensor, target: Tensor, class_weight: Tensor | None, z_target: Tensor,
    z_sum: Tensor | None,
) -> Tensor:
    """``z <- softmax(z)`` row-wise in place; returns the rows' LSE.

    Before the softmax, ``z_target`` receives ``z[i, target[i]]`` and ``z_sum`` (if given)
    ``sum_k w_k z[i, k]``. The LSE follows from the probability of the row maximum,
    ``p_max = exp(z_max - lse) >= 1/V`` (never underflows): one fused softmax and two row
    maxima instead of a log-softmax pass plus a softmax pass.
    """
    z_target.copy_(z.gather(1, target.unsqueeze(1)).squeeze(1))
    if z_sum is not None:
        z_sum.copy_(z.sum(1) if class_weight is None else torch.mv(z, class_weight))
    z_max = z.amax(1)
    torch.ops.aten._softmax.out(z, 1, False, out=z)
    return z_max.sub_(z.amax(1).log_())


def record_token_stats_(
    ce: Tensor, smooth: Tensor | None, z_target: Tensor, z_sum: Tensor | None, lse: Tensor,
    valid: Tensor, w_target: Tensor | None, w_sum: float | Tensor,
) -> None:
    """Write the chunk's ``ce = -w_t log p_t`` and (label smoothing) ``smooth = -sum_k w_k
    log p_k`` (0 for ignored tokens); ``z_sum`` is overwritten."""
    lp_t = z_target - lse
    ce.copy_(torch.where(valid, -lp_t if w_target is None else -lp_t * w_target, 0.0))
    if smooth is not None:
        assert z_sum is not None
        # sum_k w_k log p_k = sum_k w_k z_k - (sum_k w_k) lse
        smooth.copy_(torch.where(valid, z_sum.sub_(lse * w_sum).neg_(), 0.0))


def per_token_loss(
    ce: Tensor, smooth: Tensor | None, lse: Tensor, valid: Tensor, label_smoothing: float,
    logz_penalty: float, v: int,
) -> Tensor:
    """Per-token loss (before ``token_weight``) from the statistics of the chunked pass."""
    eps = label_smoothing
    loss = ce * (1.0 - eps) if eps > 0 else ce.clone()
    if smooth is not None:
        loss += smooth * (eps / v)
    if logz_penalty != 0.0:
        loss += torch.where(valid, logz_penalty * lse.square(), 0.0)
    return loss


@dataclass
class ChunkCoefs:
    """Views of one chunk's coefficients ``A, B, C`` (``C`` only with label smoothing) and
    ``g_valid``, the upstream gradient of the per-token loss with ignored tokens zeroed
    (None when only the LSE has an upstream gradient)."""

    a: Tensor
    b: Tensor
    c: Tensor | None
    g_valid: Tensor | None

    def rows(self, r0: int, r1: int) -> ChunkCoefs:
        """The coefficients of rows ``[r0, r1)`` of the chunk."""
        return ChunkCoefs(self.a[r0:r1], self.b[r0:r1],
                          self.c[r0:r1] if self.c is not None else None,
                          self.g_valid[r0:r1] if self.g_valid is not None else None)


def logit_grad_coefs(
    a: Tensor, b: Tensor, c: Tensor | None, g_loss: Tensor | None, g_lse: Tensor | None,
    valid: Tensor, w_target: Tensor | None, *, label_smoothing: float, v: int,
    w_sum: float | Tensor,
) -> ChunkCoefs:
    """Write one chunk's ``A`` (all but its z-loss part ``2 lam lse g``, which waits for the
    LSE: :func:`add_zloss_coef_`), ``B`` and ``C`` into ``a``, ``b``, ``c`` (``b`` and ``c``
    are zero-initialised by the caller and stay 0 without ``g_loss``)."""
    eps = label_smoothing
    a.zero_()
    gl = None
    if g_loss is not None:
        gl = torch.where(valid, g_loss, 0.0)
        gb = gl * (1.0 - eps) if w_target is None else gl * (1.0 - eps) * w_target
        b.copy_(gb)
        a.add_(gb).add_(gl * ((eps / v) * w_sum))
        if c is not None:
            torch.mul(gl, eps / v, out=c)
    if g_lse is not None:
        a.add_(g_lse)
    return ChunkCoefs(a, b, c, gl)


def add_zloss_coef_(coefs: ChunkCoefs, lse: Tensor, logz_penalty: float) -> None:
    """``A += 2 lam lse g`` for rows whose LSE is now known (no-op without z-loss)."""
    if logz_penalty != 0.0 and coefs.g_valid is not None:
        coefs.a.add_(coefs.g_valid * (2.0 * logz_penalty) * lse)


def materialize_logit_grad_(
    p: Tensor, tanh: Tensor, coefs: ChunkCoefs, target: Tensor, class_weight: Tensor | None,
) -> None:
    """``p <- (A p - B e_t - C w) * (1 - tanh^2)`` in place: the gradient with respect to the
    uncapped logits of a softcapped row block (``tanh`` is overwritten)."""
    p.mul_(coefs.a.unsqueeze(1))
    rows = torch.arange(p.shape[0], device=p.device)
    p.index_put_((rows, target), -coefs.b, accumulate=True)
    if coefs.c is not None:
        if class_weight is None:
            p.sub_(coefs.c.unsqueeze(1))
        else:
            p.addr_(coefs.c, class_weight, alpha=-1.0)
    tanh.square_().neg_().add_(1.0)  # d softcap(x) / dx = 1 - tanh^2
    p.mul_(tanh)
