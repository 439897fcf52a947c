"""Regression metrics: Harrell's concordance index (survival) and the balanced MAE over target
bins (imbalanced regression). Results are Python floats (no gradient)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["balanced_mae", "bin_edges", "concordance_index"]


def _vector(name: str, x: object, n: int | None = None) -> Tensor:
    if not isinstance(x, Tensor) or x.ndim != 1 or (n is not None and x.shape[0] != n):
        shape = getattr(x, "shape", type(x).__name__)
        want = f"[{n}]" if n is not None else "[N]"
        raise ValueError(f"{name} must be a 1-d tensor of shape {want}, got {shape}")
    if x.dtype == torch.bool and name != "event":
        raise ValueError(f"{name} must be numeric, got a bool tensor")
    return x.detach().to(torch.float64).cpu()


def concordance_index(risk: Tensor, time: Tensor, event: Tensor) -> float:
    r"""Harrell's concordance index of predicted risks.

    Over the comparable pairs (``time_i < time_j`` and sample ``i`` had the event), the fraction
    in which the earlier failure has the higher risk, ties in risk counting 1/2:

    .. math::
        C = \frac{\sum_{i,j} [t_i < t_j] \delta_i ([r_i > r_j] + \tfrac12 [r_i = r_j])}
        {\sum_{i,j} [t_i < t_j] \delta_i}

    Args:
        risk: ``[N]`` predicted risk (higher = earlier event), e.g. the cumulative hazard of
            :func:`losslab.losses.regression.hazard_loss`'s logits.
        time: ``[N]`` observed times (or time bins).
        event: ``[N]`` event indicators (1 or True: event, 0: censored).

    Returns:
        C in [0, 1] (0.5 for random risks); NaN when no pair is comparable.

    Reference: Harrell, Califf, Pryor, Lee, Rosati, "Evaluating the Yield of Medical Tests",
    JAMA 1982. O(N^2) memory: for evaluation sets up to a few thousand samples per call.
    """
    r = _vector("risk", risk)
    t = _vector("time", time, r.shape[0])
    e = _vector("event", event, r.shape[0])
    if not bool(((e == 0) | (e == 1)).all()):
        raise ValueError("event must hold 0/1 indicators")
    comparable = (t.unsqueeze(1) < t.unsqueeze(0)) & (e.unsqueeze(1) == 1)
    diff = r.unsqueeze(1) - r.unsqueeze(0)
    score = (diff > 0).double() + 0.5 * (diff == 0).double()
    n = comparable.sum()
    if int(n) == 0:
        return float("nan")
    return float((score * comparable).sum() / n)


def bin_edges(target: Tensor, n_bins: int) -> Tensor:
    """``n_bins + 1`` equal-width edges over the range of ``target`` (the ConR / DIR
    convention of fixed-width label bins)."""
    y = _vector("target", target)
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    return torch.linspace(float(y.min()), float(y.max()), n_bins + 1, dtype=torch.float64)


def balanced_mae(pred: Tensor, target: Tensor, edges: Tensor) -> float:
    """Balanced mean absolute error: the MAE within each target bin, averaged over the bins
    that hold at least one sample, so every region of the label range counts equally (the
    metric of imbalanced regression, as the ConR / DIR papers report per-shot MAE).

    Args:
        pred, target: ``[N]`` predictions and targets (``[N, 1]`` is flattened).
        edges: increasing bin edges ``[B + 1]`` (e.g. :func:`bin_edges` of the training
            targets); targets outside fall into the first / last bin.

    Returns:
        The balanced MAE (NaN for an empty set).
    """
    p = _vector("pred", pred.reshape(-1) if isinstance(pred, Tensor) else pred)
    y = _vector("target", target.reshape(-1) if isinstance(target, Tensor) else target,
                p.shape[0])
    e = _vector("edges", edges)
    if e.numel() < 2 or not bool((e[1:] > e[:-1]).all()):
        raise ValueError("edges must be an increasing 1-d tensor of at least 2 values")
    if p.numel() == 0:
        return float("nan")
    b = (torch.bucketize(y, e[1:-1], right=True)).clamp(0, e.numel() - 2)
    err = (p - y).abs()
    sums = torch.zeros(e.numel() - 1, dtype=torch.float64).index_add(0, b, err)
    counts = torch.bincount(b, minlength=e.numel() - 1).double()
    used = counts > 0
    return float((sums[used] / counts[used]).mean())
