r"""EnsLoss: an ensemble of convex calibrated losses inside one ERM run, by resampling the loss
*derivative* every batch (Ben Dai, "EnsLoss: Stochastic Calibrated Loss Ensembles for Preventing
Overfitting in Classification", arXiv 2409.00908, ICML 2025).

Binary classification with labels :math:`y \in \{-1, +1\}`, a score :math:`f(x)` and the margin
:math:`z = y f(x)`. A margin loss :math:`\phi` that is convex is classification-calibrated iff it
is differentiable at 0 with :math:`\phi'(0) < 0` (Bartlett, Jordan and McAuliffe 2006). EnsLoss
states these conditions on the derivative -- :math:`\phi'` non-decreasing (convexity) and
negative at 0 (calibration) -- and, in each batch, draws a random derivative that satisfies them
instead of fixing :math:`\phi` ("doubly stochastic gradient descent": random batches and random
calibrated loss-derivatives). The per-batch draw, as in the official implementation
(``statmlben/ensLoss``; the abstract fixes the principle, the paper's algorithm text was not
read here):

1. draw :math:`N` values :math:`d = -\mathrm{BoxCox}^{-1}_\lambda(\xi)`,
   :math:`\xi \sim \mathcal N(0, 1)` (:math:`\lambda = 0`: :math:`d = -e^{\xi}`, log-normal);
   clip to :math:`d \ge -c` (``clip``, default 1, as the official code);
2. sort them and give the most negative to the smallest margin: the derivative is then a
   non-decreasing function of the margin over the batch (the implied loss is convex);
3. superlinear tail (``superlinear_tail``): for :math:`z > 1`, :math:`d \leftarrow d / z`
   (keeps the order, flattens the loss for confidently right samples);
4. subtract :math:`10^{-6}`: every derivative is strictly negative, so :math:`\phi'(0) < 0`.

The loss returned is the surrogate :math:`\frac1N \sum_i \mathrm{sg}(d_i)\, z_i` (``sg`` = stop
gradient): its gradient with respect to :math:`z_i` is exactly :math:`d_i / N`. Its *value* is
not an estimate of any fixed loss (it is negative); monitor a fixed loss (BCE, accuracy) instead.

Shapes: ``logits`` ``[N]`` (or ``[N, 1]``), ``target`` ``[N]`` in ``{0, 1}`` or ``{-1, +1}``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from losslab._core import Reduction, check_reduction, reduce

__all__ = ["EnsLoss", "ensloss_loss", "sample_calibrated_derivatives"]

_SHIFT = 1e-6


def _inverse_box_cox(x: Tensor, lam: float) -> Tensor:
    if lam == 0.0:
        return torch.exp(x)
    return torch.clamp(1.0 + lam * x, min=0.0) ** (1.0 / lam)


def sample_calibrated_derivatives(
    margins: Tensor,
    *,
    lam: float = 0.0,
    clip: float | None = 1.0,
    superlinear_tail: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""One draw of EnsLoss's loss-derivatives for a batch of margins ``[N]`` (see the module
    docstring): strictly negative, non-decreasing in the margin. Returned detached."""
    if margins.dim() != 1:
        raise ValueError(f"margins must be 1-d [N], got shape {tuple(margins.shape)}")
    if clip is not None and not clip > 0:
        raise ValueError(f"clip must be > 0 or None, got {clip}")
    z = margins.detach()
    n = z.shape[0]
    xi = torch.randn(n, generator=generator, device=z.device if generator is None
                     else generator.device, dtype=torch.float64).to(z.device)
    d = -_inverse_box_cox(xi, float(lam))
    if clip is not None:
        d = torch.clamp(d, min=-float(clip))
    d, _ = torch.sort(d)
    out = torch.empty_like(d)
    out[torch.argsort(z, stable=True)] = d
    if superlinear_tail:
        zz = z.to(torch.float64)
        out = torch.where(zz > 1.0, out / zz.clamp_min(1.0), out)
    return (out - _SHIFT).to(z.dtype)


def _signed_target(target: Tensor, n: int) -> Tensor:
    if target.shape != (n,):
        raise ValueError(f"target must have shape ({n},), got {tuple(target.shape)}")
    t = target.to(torch.float64)
    if bool(((t == 0) | (t == 1)).all()):
        return 2.0 * t - 1.0
    if bool(((t == -1) | (t == 1)).all()):
        return t
    raise ValueError("target must hold binary labels in {0, 1} or {-1, +1}")


def ensloss_loss(
    logits: Tensor,
    target: Tensor,
    *,
    lam: float = 0.0,
    clip: float | None = 1.0,
    superlinear_tail: bool = True,
    generator: torch.Generator | None = None,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""EnsLoss surrogate :math:`\mathrm{sg}(d_i)\, y_i f(x_i)` with a fresh calibrated
    derivative draw (module docstring). ``reduction="mean"`` averages over the batch (the
    derivatives are drawn per batch, so ``"mean"`` is the paper's). An empty batch gives a zero
    loss with zero gradient.

    Args:
        logits: scores ``[N]`` or ``[N, 1]``.
        target: ``[N]`` labels in ``{0, 1}`` or ``{-1, +1}``.
        lam: the Box-Cox parameter :math:`\lambda` of the derivative distribution (0: log-normal).
        clip: the largest derivative magnitude (official code: 1), ``None`` for none.
        superlinear_tail: divide the derivatives of margins above 1 by the margin.
        generator: for reproducible draws.
    """
    check_reduction(reduction)
    if not torch.is_floating_point(logits):
        raise ValueError(f"logits must be a floating tensor, got {logits.dtype}")
    if logits.dim() == 2 and logits.shape[1] == 1:
        logits = logits[:, 0]
    if logits.dim() != 1:
        raise ValueError(f"logits must be [N] or [N, 1] (binary scores), got shape "
                         f"{tuple(logits.shape)}")
    n = logits.shape[0]
    y = _signed_target(target, n).to(logits.device, logits.dtype)
    if n == 0:
        return logits.sum() * 0.0
    z = y * logits
    d = sample_calibrated_derivatives(z, lam=lam, clip=clip, superlinear_tail=superlinear_tail,
                                      generator=generator)
    return reduce(d * z, reduction)


class EnsLoss(nn.Module):
    """Module form of :func:`ensloss_loss`; ``seed`` makes its derivative draws reproducible
    (its own generator), else they use torch's global generator."""

    def __init__(self, *, lam: float = 0.0, clip: float | None = 1.0,
                 superlinear_tail: bool = True, seed: int | None = None,
                 reduction: Reduction = "mean") -> None:
        super().__init__()
        check_reduction(reduction)
        self.lam, self.clip, self.superlinear_tail = float(lam), clip, bool(superlinear_tail)
        self.reduction: Reduction = reduction
        self.generator = (torch.Generator().manual_seed(seed) if seed is not None else None)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return ensloss_loss(logits, target, lam=self.lam, clip=self.clip,
                            superlinear_tail=self.superlinear_tail, generator=self.generator,
                            reduction=self.reduction)
