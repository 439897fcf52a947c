"""Small numerical building blocks shared by several loss families.

Imports only torch: every function here is pure tensor math with a documented behaviour at the
edges of its domain (a zero base, an exponent below 1), so that the guard is written once.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["safe_pow"]


def safe_pow(base: Tensor, exponent: float) -> Tensor:
    r""":math:`\max(b, 0)^{e}` with a finite gradient where the base is 0.

    For :math:`0 < e < 1` the derivative :math:`e\, b^{e-1}` of :math:`b^e` is infinite at
    :math:`b = 0` (and ``torch.pow`` backpropagates NaN through a ``where`` that masks it). Here
    a base :math:`\le 0` gives the value 0 with a zero gradient, and a positive base gives
    ``base.pow(exponent)`` and its exact gradient. ``exponent == 0`` gives ones
    (:math:`x^0 = 1`, as ``torch.pow``), with a zero gradient.

    Used for :math:`(1 - p)^\gamma` of the focal family
    (:func:`losslab._ops.logits.one_minus_pt_power`) and :math:`(1 - TI)^{1/\gamma}` of the Focal
    Tversky loss.

    Args:
        base: any tensor; entries :math:`\le 0` are treated as 0.
        exponent: :math:`e \ge 0`.

    Returns:
        A tensor of the shape and dtype of ``base``.
    """
    if exponent < 0:
        raise ValueError(f"exponent must be >= 0, got {exponent!r}")
    if exponent == 0:
        return torch.ones_like(base)
    positive = base > 0
    ones = torch.ones_like(base)
    return torch.where(positive, torch.where(positive, base, ones).pow(exponent),
                       torch.zeros_like(base))
