"""WDR: a loop oracle of the official formula (fp64), scipy's moments as peer, properties."""

from __future__ import annotations

import math

import pytest
import torch

import losslab
from losslab.functional import wdr_loss


def layers(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 3, 2, generator=g, dtype=torch.float64).requires_grad_(True),
            (torch.rand(10, generator=g, dtype=torch.float64) ** 3).requires_grad_(True),
            torch.randn(5, 6, generator=g, dtype=torch.float64).exp().requires_grad_(True)]


def oracle(ws, rs: float, rk: float, kappa: float) -> list[float]:
    out = []
    for w in ws:
        x = w.detach().reshape(-1).tolist()
        n = len(x)
        mean = sum(x) / n
        sd = math.sqrt(sum((v - mean) ** 2 for v in x) / (n - 1))
        skew = sum(((v - mean) / sd) ** 3 for v in x) / n
        kurt = sum(((v - mean) / sd) ** 4 for v in x) / n
        out.append(rs * skew**2 + rk * (kurt - kappa) ** 2)
    return out


@pytest.mark.parametrize("rs,rk,kappa", [(1.0, 0.015, 1.8), (0.3, 1.0, 3.0)])
def test_wdr_matches_loop_oracle(rs: float, rk: float, kappa: float) -> None:
    ws = layers()
    want = torch.tensor(oracle(ws, rs, rk, kappa), dtype=torch.float64)
    got = wdr_loss(*ws, skew_rate=rs, kurtosis_rate=rk, kurtosis_target=kappa,
                   reduction="none")
    torch.testing.assert_close(got, want)
    m = losslab.create("wdr", skew_rate=rs, kurtosis_rate=rk, kurtosis_target=kappa)
    torch.testing.assert_close(m(*ws), want.mean())


def test_wdr_moments_match_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    (w,) = layers(seed=1)[2:]
    x = w.detach().reshape(-1).numpy()
    n = x.size
    c = (n - 1) / n  # scipy's biased moments vs the unbiased standard deviation here
    skew = float(stats.skew(x)) * c**1.5
    kurt = float(stats.kurtosis(x, fisher=False)) * c**2
    assert float(wdr_loss(w, kurtosis_rate=0.0).detach()) == pytest.approx(skew**2, rel=1e-10)
    assert float(wdr_loss(w, skew_rate=0.0, kurtosis_rate=1.0).detach()) == pytest.approx(
        (kurt - 1.8) ** 2, rel=1e-10)


def test_wdr_properties_and_bad_inputs() -> None:
    ws = layers(seed=2)
    # invariant to an affine change of a layer (standardised moments)
    torch.testing.assert_close(wdr_loss(ws[0] * 3.0 + 1.0), wdr_loss(ws[0]))
    # a symmetric layer has zero skew; a large uniform sample is near the kurtosis target
    sym = torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0], dtype=torch.float64)
    assert float(wdr_loss(sym, kurtosis_rate=0.0)) == pytest.approx(0.0, abs=1e-15)
    uni = torch.linspace(-1, 1, 100001, dtype=torch.float64)
    assert float(wdr_loss(uni, skew_rate=0.0, kurtosis_rate=1.0)) < 1e-6
    # gradient descent on the loss reduces it
    w = ws[2].detach().clone().requires_grad_(True)
    before = float(wdr_loss(w).detach())
    for _ in range(20):
        (g,) = torch.autograd.grad(wdr_loss(w), w)
        w = (w - 0.5 * g).detach().requires_grad_(True)
    assert float(wdr_loss(w).detach()) < before
    assert float(wdr_loss()) == 0.0 and wdr_loss(reduction="none").shape == (0,)
    with pytest.raises(ValueError, match=r"weights\[1\]"):
        wdr_loss(ws[0], torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"weights\[0\]"):
        wdr_loss(torch.ones(3, dtype=torch.long))
    with pytest.raises(ValueError, match="kurtosis_rate"):
        losslab.create("wdr", kurtosis_rate=-1.0)
