"""Exact top-k of the rows of a wide matrix, in two stages (group maxima, then candidates).

``torch.topk`` on CPU copies every row into a buffer of (value, index) pairs and runs a
partial sort on it: for a ``[c, M]`` block with ``M = 100 000`` and ``k = 100`` that is about
as slow as the ``[c, 128] x [128, M]`` product which produced the block
(``benchmarks/README.md``, retrieval). :func:`topk_rows` reads each row once instead:

1. the first ``G g`` columns (``G = M // g``) are cut into ``G`` groups of ``g`` columns
   ``{j, j + G, ..., j + (g - 1) G}`` (strided, so that the group maxima are an elementwise
   maximum of ``g`` contiguous slices: one vectorised pass, no index buffer);
2. the ``k`` groups with the largest maxima are chosen (``torch.topk`` on ``[c, G]``);
3. the ``k * g`` entries of the chosen groups, plus the ``M - G g`` columns past the last full
   group, are the candidates; ``torch.topk`` of the candidates is the answer.

Why it is exact: let ``t`` be the k-th largest group maximum. The chosen groups hold ``k``
entries ``>= t`` (their maxima), so the k-th largest candidate ``c_k`` is ``>= t``. Every entry
outside the candidates lies in an unchosen group, whose maximum is ``<= t <= c_k``. So no
entry outside the candidates is larger than ``c_k``: the k largest values of the row are the k
largest candidates (as a multiset; between equal values the order is the one ``torch.topk``
gives on the candidates). NaN: ``amax`` propagates it and ``topk`` ranks it above every number,
so the argument holds in topk's order (NaN first), as ``torch.topk`` on the whole row.

Work per row: one pass over ``M`` entries plus two top-k's on ``M / g`` and ``k g`` entries.
Measured on the 2-core CPU of ``benchmarks/README.md`` (rows of 20 000-100 000 scores, k = 10
to 500), 8 to 16 columns per group were best, 1.4-4.6x faster than ``torch.topk`` of the row;
:func:`group_size` picks in that range.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["group_size", "topk_rows"]

#: Two stages only pay when the row is at least this many times ``k`` wide.
MIN_WIDTH_RATIO = 32

#: The range of the default group width (:func:`group_size`).
MIN_GROUP, MAX_GROUP = 8, 16


def group_size(width: int, k: int) -> int:
    """The default group width: ``sqrt(width / k) / 2.5`` clamped to ``[8, 16]`` (the measured
    optimum: the pass over the groups is cheaper per entry than a top-k, so fewer, wider
    groups than the balance ``sqrt(width / k)`` of the two top-k's)."""
    return min(MAX_GROUP, max(MIN_GROUP, round(math.sqrt(width / max(k, 1)) / 2.5)))


def topk_rows(block: Tensor, k: int, *, group: int | None = None) -> Tensor:
    """Indices ``[c, k]`` of the ``k`` largest entries of every row of ``block`` ``[c, M]``,
    largest first: the values of ``block.topk(k, dim=1).indices``, exactly (see the module
    docstring); ties between equal values may come in another order.

    Args:
        block: ``[c, M]`` floating-point matrix, ``1 <= k <= M``.
        group: the group width ``g`` (default :func:`group_size`). Rows narrower than
            ``MIN_WIDTH_RATIO * k`` (default group only), ``g < 2`` or fewer than ``k`` groups
            go straight to ``torch.topk``.
    """
    if block.ndim != 2:
        raise ValueError(f"block must have shape [c, M], got {tuple(block.shape)}")
    c, m = block.shape
    if not 1 <= k <= m:
        raise ValueError(f"k must be in [1, {m}] (the row width), got {k}")
    g = group_size(m, k) if group is None else int(group)
    if g < 1:
        raise ValueError(f"group must be >= 1, got {group}")
    n_groups = m // g
    if g < 2 or n_groups < k or (group is None and m < MIN_WIDTH_RATIO * k):
        return block.topk(k, dim=1, largest=True, sorted=True).indices
    full = n_groups * g
    gmax = block[:, :full].reshape(c, g, n_groups).amax(dim=1)  # [c, G]
    top_groups = gmax.topk(k, dim=1, largest=True, sorted=False).indices  # [c, k]
    offsets = torch.arange(g, device=block.device) * n_groups
    cols = (top_groups.unsqueeze(2) + offsets).flatten(1)  # [c, k g]
    if full < m:  # the columns past the last full group are always candidates
        tail = torch.arange(full, m, device=block.device).expand(c, m - full)
        cols = torch.cat([cols, tail], dim=1)
    pick = block.gather(1, cols).topk(k, dim=1, largest=True, sorted=True).indices
    return cols.gather(1, pick)
