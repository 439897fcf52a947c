"""Validation of the ``scores`` kind's inputs, shared by the ranking losses and the ranking
metrics (which may not import losses)."""

from __future__ import annotations

import torch
from torch import Tensor

from losslab._core import check_float, check_same_device, compute_dtype, require

__all__ = ["prepare_scores"]


def prepare_scores(
    scores: Tensor, relevance: Tensor, mask: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """Validate ``(scores[Q, L], relevance[Q, L], mask)``; return them in the compute dtype
    with a bool mask (all True when ``mask`` is None). Relevance of an integer dtype is
    converted; bool relevance and a non-finite relevance at a real item are a ``ValueError``
    (padding, ``mask`` False, may hold anything)."""
    check_float("scores", scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must have shape [Q, L], got {tuple(scores.shape)}")
    if not isinstance(relevance, Tensor) or relevance.shape != scores.shape:
        shape = tuple(relevance.shape) if isinstance(relevance, Tensor) else type(relevance)
        raise ValueError(f"relevance must have the shape of scores {tuple(scores.shape)}, "
                         f"got {shape}")
    if relevance.is_complex() or relevance.dtype == torch.bool:
        raise ValueError(f"relevance must be real-valued, got dtype {relevance.dtype}")
    if mask is None:
        mask = torch.ones(scores.shape, dtype=torch.bool, device=scores.device)
    elif not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.shape != scores.shape:
        raise ValueError(f"mask must be a bool tensor of shape {tuple(scores.shape)}")
    check_same_device(scores=scores, relevance=relevance, mask=mask)
    cd = compute_dtype(scores.dtype)
    relevance = relevance.to(cd)
    require(torch.isfinite(relevance) | ~mask, "relevance must be finite at the real items "
            "(mask True), got NaN or inf; mark padding with mask=False")
    return scores.to(cd), relevance, mask
