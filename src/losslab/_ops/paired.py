"""Shared plumbing of the ``paired`` kind: ``(a[N, D], b[N, D])``, row ``i`` of ``a`` paired
with row ``i`` of ``b`` (two views, an image and its caption, a student and a teacher hidden
state).

:func:`prepare_paired` validates the pair, casts it to the compute dtype (float32 for fp16/bf16
inputs) and optionally L2-normalises the rows with :func:`losslab.distances.normalize_rows`,
the one row normalisation of the library.
"""

from __future__ import annotations

from torch import Tensor

from losslab._core import check_matrix, check_same_device, compute_dtype
from losslab.distances import normalize_rows

__all__ = ["prepare_paired"]


def prepare_paired(a: Tensor, b: Tensor, *, normalize: bool) -> tuple[Tensor, Tensor]:
    """Validate a pair ``a[N, D]``, ``b[N, D]`` (float, one device, same shape) and return it in
    the compute dtype, with unit-norm rows when ``normalize`` is true.

    Raises:
        ValueError: naming ``a`` or ``b`` when one is not a float matrix, the widths or the
            numbers of rows differ, or they live on different devices.
    """
    check_matrix("a", a)
    check_matrix("b", b, dim=a.shape[1])
    if b.shape[0] != a.shape[0]:
        raise ValueError(
            f"a and b must have the same number of rows (row i of a pairs with row i of b), "
            f"got {a.shape[0]} and {b.shape[0]}"
        )
    check_same_device(a=a, b=b)
    dtype = compute_dtype(a.dtype)
    a, b = a.to(dtype), b.to(dtype)
    if normalize:
        a, b = normalize_rows(a), normalize_rows(b)
    return a, b
