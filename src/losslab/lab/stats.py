"""Confidence intervals over seeds (Student-t), without scipy."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["mean_t_interval", "t_quantile_975"]

# t_{0.975, df} for df = 1..30 (scipy.stats.t.ppf(0.975, df), 6 decimals).
_T975 = (
    12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004, 2.262157,
    2.228139, 2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905, 2.109816, 2.100922,
    2.093024, 2.085963, 2.079614, 2.073873, 2.068658, 2.063899, 2.059539, 2.055529, 2.051831,
    2.048407, 2.045230, 2.042272,
)


def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom.

    Tabulated for ``df <= 30``; above, the Cornish-Fisher expansion around the normal quantile
    (error < 1e-5 for df > 30).
    """
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959963984540054
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    return z + g1 / df + g2 / df**2 + g3 / df**3


def mean_t_interval(values: Sequence[float]) -> tuple[float, float, float, int]:
    """``(mean, half_width, std, n)``: ``mean ± t_{0.975,n-1} * s / sqrt(n)`` with ``s`` the
    sample standard deviation (``ddof=1``). One value: half-width and std are NaN."""
    a = np.asarray(values, dtype=np.float64).ravel()
    n = int(a.size)
    if n == 0:
        raise ValueError("values must not be empty")
    mean = float(a.mean())
    if n == 1:
        return mean, math.nan, math.nan, 1
    s = float(a.std(ddof=1))
    return mean, t_quantile_975(n - 1) * s / math.sqrt(n), s, n
