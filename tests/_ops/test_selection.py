"""Two-stage exact top-k (group maxima, then candidates) against torch.topk and a sort."""

from __future__ import annotations

import pytest
import torch

from losslab._ops.selection import group_size, topk_rows


def _reference(block: torch.Tensor, k: int) -> torch.Tensor:
    """The k largest values of every row, from a full sort in float64 (NaN ranked first)."""
    b = block.double().nan_to_num(nan=float("inf"), posinf=float("inf"))
    return b.sort(dim=1, descending=True, stable=True).values[:, :k]


@pytest.mark.parametrize(("c", "m", "k", "group"), [
    (5, 3000, 40, None), (3, 1000, 1, None), (4, 4096, 64, 8), (6, 2500, 30, 7),
    (2, 977, 10, 13), (3, 200, 5, 40),  # tail columns past the last full group
])
def test_values_equal_a_full_sort(c, m, k, group):
    g = torch.Generator().manual_seed(m + k)
    block = torch.randn(c, m, generator=g)
    idx = topk_rows(block, k, group=group)
    assert idx.shape == (c, k)
    assert all(row.unique().numel() == k for row in idx)  # k distinct columns per row
    got = block.gather(1, idx).double()
    torch.testing.assert_close(got, _reference(block, k), rtol=0, atol=0)
    # largest first
    assert bool((got[:, :-1] >= got[:, 1:]).all())


def test_ties_and_clusters_of_large_values():
    """Many equal values, and the largest values packed into a few groups (the case where
    the chosen groups hold more than one of the top k each)."""
    g = torch.Generator().manual_seed(0)
    block = torch.randint(0, 5, (8, 2000), generator=g).float()
    block[:, 125:2000:125] = 10.0 + torch.arange(15.0)  # 15 large values in one group of 16
    for k in (1, 20, 50, 90):
        got = block.gather(1, topk_rows(block, k, group=16)).double()
        torch.testing.assert_close(got, _reference(block, k), rtol=0, atol=0)
        for row in topk_rows(block, k, group=16):
            assert row.unique().numel() == k


def test_infinities_and_nan_like_torch_topk():
    g = torch.Generator().manual_seed(1)
    block = torch.randn(3, 1600, generator=g)
    block[0, 7] = float("nan")
    block[1, ::3] = float("-inf")
    block[2, 1599] = float("inf")  # in the tail with group=30 (1600 = 53 * 30 + 10)
    for group in (None, 30):
        idx = topk_rows(block, 25, group=group)
        got = block.gather(1, idx).double().nan_to_num(nan=float("inf"), posinf=float("inf"))
        torch.testing.assert_close(got, _reference(block, 25), rtol=0, atol=0)
    assert int(topk_rows(block, 1, group=30)[0, 0]) == 7  # NaN first, as torch.topk


def test_narrow_rows_fall_back_and_bad_arguments():
    block = torch.randn(4, 50)
    torch.testing.assert_close(topk_rows(block, 10), block.topk(10, dim=1).indices)
    assert group_size(100_000, 100) == 13
    assert group_size(10, 100) == 8 and group_size(10**8, 1) == 16
    with pytest.raises(ValueError, match="k must be in"):
        topk_rows(block, 51)
    with pytest.raises(ValueError, match="block must have shape"):
        topk_rows(block[0], 3)
    with pytest.raises(ValueError, match="group must be"):
        topk_rows(block, 3, group=0)
