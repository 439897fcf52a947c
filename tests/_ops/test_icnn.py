"""losslab._ops.icnn: the released code's k reduction and the score from neighbour windows,
on hand-sized windows (the loss's oracle is in tests/losses/test_fewshot.py)."""

from __future__ import annotations

import math

import pytest
import torch

from losslab._ops.icnn import icnn_effective_k, icnn_score_from_neighbours


def test_effective_k() -> None:
    assert icnn_effective_k(4, 10) == (4, False)
    assert icnn_effective_k(4, 6) == (4, True)
    assert icnn_effective_k(4, 5) == (3, True)
    with pytest.raises(ValueError, match="at least 3 target points"):
        icnn_effective_k(4, 2)
    with pytest.raises(ValueError, match="k must be >= 1"):
        icnn_effective_k(0, 10)


def test_effective_k_of_a_tensor_count() -> None:
    """A 0-d tensor count (the padded episode's number of real classes under compile): the
    int form's values as tensors, and eagerly the same ValueError (a ``require``)."""
    for n in (3, 5, 6, 7, 10):
        k_eff, reduced = icnn_effective_k(4, torch.tensor(n))
        assert (int(k_eff), bool(reduced)) == icnn_effective_k(4, n)
    with pytest.raises(ValueError, match=r"at least 3 target points .*got 2$"):
        icnn_effective_k(4, torch.tensor(2))
    with pytest.raises(ValueError, match="k must be >= 1"):
        icnn_effective_k(0, torch.tensor(10))


@pytest.mark.parametrize("width", [None, 4, 2])
@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("gamma_one", [False, True])
def test_tensor_k_equals_int_k(width: int | None, k: int, gamma_one: bool) -> None:
    """k as a 0-d tensor (all columns, those past k masked; gamma divided by k; gamma_one a
    bool tensor) gives the int k's value and gradient, also with a masked window (padded
    columns at ``inf``) and a window narrower than k."""
    g = torch.Generator().manual_seed(0)
    d = torch.rand(5, 6, generator=g, dtype=torch.float64).sort(dim=1).values
    same = torch.rand(5, 6, generator=g) < 0.5
    same[0] = True  # a point with no other-class neighbour (delta = inf)
    w = None if width is None else torch.tensor(width)
    want_d = d.clone().requires_grad_(True)
    want = icnn_score_from_neighbours(want_d, same, k, gamma_one=gamma_one, width=w)
    got_d = d.clone()
    if width is not None:
        got_d[:, width:] = math.inf  # padded columns: unused
    got_d.requires_grad_(True)
    got = icnn_score_from_neighbours(got_d, same, torch.tensor(k),
                                     gamma_one=torch.tensor(gamma_one), width=w)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-15)
    (g_want,), (g_got,) = torch.autograd.grad(want, want_d), torch.autograd.grad(got, got_d)
    torch.testing.assert_close(g_got, g_want, rtol=0, atol=1e-15)


def test_score_of_perfectly_separated_windows_is_one() -> None:
    d = torch.tensor([[0.1, 0.2, 5.0], [0.1, 0.3, 6.0]], dtype=torch.float64)
    same = torch.tensor([[True, True, False], [True, True, False]])
    score = icnn_score_from_neighbours(d, same, 2)
    # lambda_sc = 1 - small ratios, lambda_dc = |0 + 0| (no other-class nb among the first k)
    ratio = (0.1 / (5.0 + 1e-7) + 0.2 / (5.0 + 1e-7)) / (2 + 1e-7)
    ratio2 = (0.1 / (6.0 + 1e-7) + 0.3 / (6.0 + 1e-7)) / (2 + 1e-7)
    lam_sc = 1 - (ratio + ratio2) / (2 + 1e-7)
    lam_dc = 1.0  # no point has an other-class neighbour among its first k: offset -1
    want = ((lam_sc + lam_dc) / 2 + 1.0) / 2
    assert float(score) == pytest.approx(want, rel=1e-12)


def test_score_is_at_least_a_quarter_and_nan_propagates() -> None:
    d = torch.tensor([[0.1, 0.2], [0.3, 0.4]], dtype=torch.float64)
    other = torch.zeros(2, 2, dtype=torch.bool)
    assert float(icnn_score_from_neighbours(d, other, 2)) >= 0.25
    d[0, 0] = math.nan
    assert torch.isnan(icnn_score_from_neighbours(d, other, 2))


def test_shape_errors() -> None:
    d = torch.rand(2, 3)
    with pytest.raises(ValueError, match="one shape"):
        icnn_score_from_neighbours(d, torch.ones(2, 2, dtype=torch.bool), 2)
    with pytest.raises(ValueError, match="k and the window"):
        icnn_score_from_neighbours(d, torch.ones(2, 3, dtype=torch.bool), 0)
