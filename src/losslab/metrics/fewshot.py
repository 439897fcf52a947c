"""Few-shot evaluation statistics."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["mean_confidence_interval"]


def mean_confidence_interval(values: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """Mean and 95% half-width ``1.96 * std / sqrt(n)`` (population std, as the few-shot
    literature and the SuSana Distancia code compute it over test episodes).

    One value gives a half-width of 0; an empty sequence is a ``ValueError``.
    """
    a = np.asarray(values, dtype=np.float64).ravel()
    if a.size == 0:
        raise ValueError("values must not be empty")
    if not np.all(np.isfinite(a)):
        raise ValueError("values must be finite")
    return float(a.mean()), float(1.96 * a.std() / math.sqrt(a.size))
