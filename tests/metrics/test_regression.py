"""Regression metrics against loop oracles."""

from __future__ import annotations

import math

import pytest
import torch

from losslab.metrics.regression import balanced_mae, bin_edges, concordance_index


def test_concordance_index_oracle_and_properties() -> None:
    g = torch.Generator().manual_seed(0)
    n = 30
    time = torch.randint(0, 8, (n,), generator=g)
    event = torch.randint(0, 2, (n,), generator=g)
    risk = torch.randn(n, generator=g).round(decimals=1)  # some ties
    num = den = 0.0
    for i in range(n):
        for j in range(n):
            if time[i] < time[j] and event[i] == 1:
                den += 1
                num += 1.0 if risk[i] > risk[j] else 0.5 if risk[i] == risk[j] else 0.0
    assert concordance_index(risk, time, event) == pytest.approx(num / den)
    # perfect and reversed orderings; constant risk is 1/2
    assert concordance_index(-time.double(), time, torch.ones(n)) == 1.0
    assert concordance_index(time.double(), time, torch.ones(n)) == 0.0
    assert concordance_index(torch.zeros(n), time, event) == 0.5
    assert math.isnan(concordance_index(torch.zeros(3), torch.ones(3), torch.ones(3)))
    with pytest.raises(ValueError, match="event"):
        concordance_index(risk, time, torch.full((n,), 2))


def test_balanced_mae_oracle() -> None:
    y = torch.tensor([0.0, 0.1, 0.2, 0.3, 0.4, 5.0, 9.9, 10.0])
    p = y + torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, -2.0, 4.0, 0.0])
    edges = bin_edges(y, 2)  # [0, 5, 10]: bin 0 = [0, 5), bin 1 = [5, 10]
    ref = (1.0 + (2.0 + 4.0 + 0.0) / 3) / 2
    assert balanced_mae(p, y, edges) == pytest.approx(ref)
    # equal bins of equal size: the plain MAE
    assert balanced_mae(p[:5], y[:5], edges) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="edges"):
        balanced_mae(p, y, torch.tensor([1.0, 0.0]))


def test_concordance_index_lifelines_peer() -> None:
    lifelines_utils = pytest.importorskip("lifelines.utils")
    g = torch.Generator().manual_seed(1)
    n = 200
    time = torch.rand(n, generator=g, dtype=torch.float64) * 10  # no tied times
    event = (torch.rand(n, generator=g) < 0.6).long()
    risk = -time + 3 * torch.randn(n, generator=g, dtype=torch.float64)
    peer = lifelines_utils.concordance_index(time.numpy(), (-risk).numpy(), event.numpy())
    assert concordance_index(risk, time, event) == pytest.approx(peer, abs=1e-12)
