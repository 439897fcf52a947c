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
