"""Shared helpers of the ranking family (kind ``scores``): input checks, masked softmax, pair
masks and DCG pieces. No loss is registered here."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from losslab._ops.scores import prepare_scores

__all__ = [
    "discounts",
    "gains",
    "ideal_dcg",
    "masked_log_softmax",
    "order_by",
    "pair_mask",
    "prepare_scores",
]


def masked_log_softmax(x: Tensor, m: Tensor) -> Tensor:
    """``log_softmax`` over the items of each list with ``m`` True, 0 elsewhere (finite, with
    finite gradients, for fully masked lists too)."""
    x = torch.where(m, x, torch.full_like(x, float("-inf")))
    x = torch.where(m.any(1, keepdim=True), x, torch.zeros_like(x))
    out = F.log_softmax(x, dim=1)
    return torch.where(m, out, torch.zeros_like(out))


def pair_mask(r: Tensor, m: Tensor) -> Tensor:
    """``[Q, L, L]`` bool: ``r_i > r_j`` with both items real."""
    return (r.unsqueeze(2) > r.unsqueeze(1)) & m.unsqueeze(2) & m.unsqueeze(1)


def order_by(key: Tensor, m: Tensor) -> Tensor:
    """Indices sorting each list by decreasing ``key`` (detached, stable: ties keep their
    position), padding last."""
    k = torch.where(m, key.detach(), torch.full_like(key, float("-inf")))
    return torch.sort(k, dim=1, descending=True, stable=True).indices


def gains(r: Tensor, gain: str) -> Tensor:
    """``2^r - 1`` (``"exp"``, the usual NDCG gain) or ``r`` (``"linear"``)."""
    return torch.pow(2.0, r) - 1 if gain == "exp" else r


def discounts(n: int, like: Tensor) -> Tensor:
    """``[n]``: ``1 / log2(1 + position)`` for positions ``1..n``."""
    pos = torch.arange(1, n + 1, dtype=like.dtype, device=like.device)
    return 1.0 / torch.log2(1.0 + pos)


def ideal_dcg(g: Tensor, m: Tensor, k: int | None = None) -> Tensor:
    """``[Q]``: the DCG@k of the ideal order of gains ``g`` (padding excluded)."""
    gs = torch.where(m, g, torch.zeros_like(g))
    gs = torch.sort(gs, dim=1, descending=True).values
    d = discounts(g.shape[1], g)
    if k is not None:
        d = torch.where(torch.arange(g.shape[1], device=g.device) < k, d, torch.zeros_like(d))
    return (gs * d).sum(1)
