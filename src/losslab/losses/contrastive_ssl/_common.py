"""Helpers shared by the contrastive modules: the functional forms' hyperparameter check (which
admits learned scalar tensors), ``1 / temperature`` as a tensor, and the two-view logits of the
SimCLR-style losses (NT-Xent, DCL, hard-negative InfoNCE).

Imported by the package ``__init__`` and by its loss modules; imports no loss.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from losslab._hparams import HParamCheck
from losslab.distances import normalize_rows

__all__ = ["Negatives", "check_call", "inverse_temperature", "two_view_logits"]

#: Where an anchor's negatives come from: ``"cross"`` -- the other view only (``b_j``,
#: ``j != i``; CPC/CLIP); ``"both"`` -- every other embedding of both views (the ``2N - 2``
#: negatives of SimCLR's NT-Xent).
Negatives = Literal["cross", "both"]


def check_call(check: HParamCheck, **values: Any) -> None:
    """The functional forms' check: the declared rules for plain values; a tensor value (a
    learned ``temperature`` or ``bias``, passed by the module) must be a scalar."""
    plain = {}
    for k, v in values.items():
        if isinstance(v, Tensor):
            if v.numel() != 1:
                raise ValueError(f"{k} must be a scalar tensor (a learned {k}), got shape "
                                 f"{tuple(v.shape)}")
        else:
            plain[k] = v
    check(**plain)


def inverse_temperature(temperature: float | Tensor, like: Tensor) -> Tensor:
    """``1 / temperature`` as a 0-d tensor of ``like``'s dtype (differentiable for a tensor)."""
    if isinstance(temperature, Tensor):
        return (1.0 / temperature.reshape(())).to(like.dtype)
    return torch.tensor(1.0 / temperature, dtype=like.dtype, device=like.device)


def two_view_logits(a: Tensor, b: Tensor, scale: Tensor, negatives: Negatives, *,
                    normalize: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Logits of every anchor against its candidates, with the positive's column and the
    negatives' mask.

    ``"cross"``: anchors are the rows of ``a`` (``M = N``), candidates the rows of ``b``;
    ``"both"``: anchors and candidates are the ``2N`` rows of ``[a; b]``, anchor ``r``'s
    positive is ``r + N mod 2N`` and itself is neither positive nor negative.

    Returns:
        ``logits [M, K]`` (cosine or dot products times ``scale``), ``positive [M]`` (the
        positive's column per anchor) and ``negative [M, K]`` (bool mask of the negatives).
    """
    if normalize:
        a, b = normalize_rows(a), normalize_rows(b)
    n = a.shape[0]
    idx = torch.arange(n, device=a.device)
    if negatives == "cross":
        logits = (a @ b.t()) * scale
        positive = idx
        negative = idx.unsqueeze(1) != idx.unsqueeze(0)
        return logits, positive, negative
    z = torch.cat([a, b], 0)
    logits = (z @ z.t()) * scale
    rows = torch.arange(2 * n, device=a.device)
    positive = (rows + n) % (2 * n)
    not_self = rows.unsqueeze(1) != rows.unsqueeze(0)
    negative = not_self & (rows.unsqueeze(0) != positive.unsqueeze(1))
    return logits, positive, negative
