r"""Multi-sample dropout as a head wrapper (Inoue, "Multi-Sample Dropout for Accelerated Training
and Better Generalization", arXiv 1905.09788).

The features before the head are dropped out :math:`K` times with independent masks, the head
(shared weights) is applied to each copy, and the training loss is the average of the :math:`K`
losses, :math:`\frac1K \sum_k \ell(h(m_k \odot x / (1 - p)), y)`. At inference dropout is off,
so the head runs once. The backbone runs once; only the head's cost grows with :math:`K`. The
average over masks lowers the variance of the gradient estimate (for :math:`K` independent masks,
the mask-induced variance falls as :math:`1/K`), which is the paper's explanation of the faster
training. The paper's example uses :math:`K = 8` and :math:`p = 0.5`.

Two pieces, so that it fits any loop, the lab's ``fit`` included:

* :class:`MultiSampleDropout` (the model's last module): in training mode returns the ``K`` head
  outputs stacked, ``[K, N, ...]``; in eval mode ``head(x)``;
* :class:`MultiSampleLoss` (around any loss): in training mode averages the loss over dim 0 of
  its first argument; in eval mode it is the plain loss.

:func:`multi_sample_dropout_loss` is the functional form.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MultiSampleDropout", "MultiSampleLoss", "multi_sample_dropout_loss"]


def _check(samples: int, p: float) -> None:
    if not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be an int >= 1, got {samples!r}")
    if not 0.0 <= p < 1.0:
        raise ValueError(f"p must be in [0, 1), got {p}")


def multi_sample_dropout_loss(features: Tensor, head: Callable[[Tensor], Tensor],
                              loss_fn: Callable[..., Tensor], *args: Any, samples: int = 8,
                              p: float = 0.5, **kwargs: Any) -> Tensor:
    """``mean_k loss_fn(head(dropout_k(features)), *args, **kwargs)`` over ``samples``
    independent dropout masks (always applied: this is the training loss)."""
    _check(samples, p)
    total = features.new_zeros(())
    for _ in range(samples):
        total = total + loss_fn(head(F.dropout(features, p, training=True)), *args, **kwargs)
    return total / samples


class MultiSampleDropout(nn.Module):
    """Wrap ``head``: ``samples`` dropout copies of the input in training mode (output
    ``[samples, N, ...]``), ``head(x)`` in eval mode."""

    def __init__(self, head: nn.Module, *, samples: int = 8, p: float = 0.5) -> None:
        super().__init__()
        _check(samples, p)
        self.head, self.samples, self.p = head, samples, float(p)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return self.head(x)
        return torch.stack([self.head(F.dropout(x, self.p, training=True))
                            for _ in range(self.samples)])


class MultiSampleLoss(nn.Module):
    """Wrap a loss: in training mode ``mean_k loss_fn(output[k], *rest)`` for an output of
    :class:`MultiSampleDropout`; in eval mode ``loss_fn(output, *rest)``."""

    def __init__(self, loss_fn: nn.Module) -> None:
        super().__init__()
        self.loss_fn = loss_fn

    def forward(self, output: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        if not self.training:
            return self.loss_fn(output, *args, **kwargs)
        if output.dim() < 2:
            raise ValueError(f"output must be [K, N, ...] from MultiSampleDropout in training "
                             f"mode, got shape {tuple(output.shape)}")
        losses = [self.loss_fn(o, *args, **kwargs) for o in output.unbind(0)]
        return torch.stack(losses).mean(0)
