"""Barlow Twins, VICReg, TLDR and the k-NN pair builder: loop oracles from the formulas (fp64),
lightly's BarlowTwinsLoss/VICRegLoss, TLDR's published loss restated, and the papers'
properties (zero at the optimum, invariances)."""

from __future__ import annotations

import math

import pytest
import torch

import losslab
from losslab.functional import barlow_twins_loss, tldr_loss, vicreg_loss
from losslab.losses.contrastive_ssl.redundancy import cross_correlation, knn_pairs
from tests.losses.contrastive_ssl.common import lightly_module, pairs


def columns(x: torch.Tensor) -> list[list[float]]:
    return x.detach().t().tolist()


def mean(v: list[float]) -> float:
    return sum(v) / len(v)


def standardized(col: list[float], eps: float) -> list[float]:
    m = mean(col)
    var = mean([(v - m) ** 2 for v in col])
    return [(v - m) / math.sqrt(var + eps) for v in col]


def barlow_oracle(a, b, lam, eps=1e-5):
    A = [standardized(c, eps) for c in columns(a)]
    B = [standardized(c, eps) for c in columns(b)]
    n, d = len(A[0]), len(A)
    total = 0.0
    for i in range(d):
        for j in range(d):
            c = sum(A[i][k] * B[j][k] for k in range(n)) / n
            total += (1 - c) ** 2 if i == j else lam * c**2
    return total


def vicreg_oracle(a, b, lam, mu, nu, gamma=1.0, eps=1e-4):
    A, B = columns(a), columns(b)
    n, d = len(A[0]), len(A)
    inv = sum((A[j][k] - B[j][k]) ** 2 for j in range(d) for k in range(n)) / (n * d)

    def var(col):
        m = mean(col)
        return sum((v - m) ** 2 for v in col) / (n - 1)

    def v(Z):
        return sum(max(0.0, gamma - math.sqrt(var(c) + eps)) for c in Z) / d

    def c(Z):
        ms = [mean(col) for col in Z]
        tot = 0.0
        for i in range(d):
            for j in range(d):
                if i != j:
                    cov = sum((Z[i][k] - ms[i]) * (Z[j][k] - ms[j]) for k in range(n)) / (n - 1)
                    tot += cov**2
        return tot / d

    return lam * inv + mu * (v(A) + v(B)) / 2 + nu * (c(A) + c(B))


def test_barlow_twins_and_tldr_match_loop_oracles() -> None:
    a, b = pairs(n=9, d=4)
    assert float(barlow_twins_loss(a, b, lam=0.1).detach()) == pytest.approx(
        barlow_oracle(a, b, 0.1), rel=1e-12)
    assert float(tldr_loss(a, b).detach()) == pytest.approx(
        barlow_oracle(a, b, 3.9e-3) / 32, rel=1e-12)


def test_vicreg_matches_loop_oracle() -> None:
    a, b = pairs(n=9, d=4)
    a2, b2 = a * 0.4, b * 0.4  # some dimensions below gamma: the hinge is active
    for x, y in ((a, b), (a2, b2)):
        got = float(vicreg_loss(x, y, lam=2.0, mu=3.0, nu=0.5).detach())
        assert got == pytest.approx(vicreg_oracle(x, y, 2.0, 3.0, 0.5), rel=1e-12)


def test_barlow_twins_matches_lightly() -> None:
    bt = lightly_module("barlow_twins_loss")
    a, b = pairs(n=10, d=6)
    ours = barlow_twins_loss(a, b)
    peer = bt.BarlowTwinsLoss(lambda_param=5e-3)(a, b)
    torch.testing.assert_close(ours, peer)
    for x, y in zip(torch.autograd.grad(ours, (a, b)), torch.autograd.grad(peer, (a, b))):
        torch.testing.assert_close(x, y)


def test_vicreg_matches_lightly() -> None:
    vic = lightly_module("vicreg_loss")
    a, b = pairs(n=10, d=6)
    ours = vicreg_loss(a * 0.7, b * 0.7)
    peer = vic.VICRegLoss()(a * 0.7, b * 0.7)
    torch.testing.assert_close(ours, peer)
    for x, y in zip(torch.autograd.grad(ours, (a, b)), torch.autograd.grad(peer, (a, b))):
        torch.testing.assert_close(x, y)


def test_tldr_matches_the_published_loss_restated() -> None:
    """naver/tldr ``loss.py``: ``c = z1.T @ z2 / batch_size`` of ``BatchNorm1d(affine=False)``
    outputs, ``(sum (diag(c) - 1)^2 + lambd sum offdiag(c)^2) * scale_loss`` (restated; TLDR
    is not packaged on the index)."""
    a, b = pairs(n=8, d=5)
    bn = torch.nn.BatchNorm1d(5, affine=False).double()
    c = bn(a).t() @ bn(b) / 8
    off = c.flatten()[:-1].view(4, 6)[:, 1:].flatten()
    restated = ((c.diagonal() - 1).pow(2).sum() + 3.9e-3 * off.pow(2).sum()) / 32
    torch.testing.assert_close(tldr_loss(a, b), restated)


def hadamard_views() -> torch.Tensor:
    """4 samples x 2 dims, standardised, decorrelated columns (+-1 patterns)."""
    return torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]],
                        dtype=torch.float64)


def test_redundancy_losses_are_zero_at_their_optimum() -> None:
    z = hadamard_views()
    assert float(barlow_twins_loss(z, z, lam=10.0, eps=0.0)) == pytest.approx(0.0, abs=1e-12)
    torch.testing.assert_close(cross_correlation(z, z, eps=0.0), torch.eye(2, dtype=torch.float64))
    # VICReg: equal views, std >= gamma, no covariance
    assert float(vicreg_loss(z * 2, z * 2)) == pytest.approx(0.0, abs=1e-12)
    # a collapsed embedding is penalised by the variance term only: mu * gamma
    const = torch.ones(4, 2, dtype=torch.float64)
    assert float(vicreg_loss(const, const, mu=3.0)) == pytest.approx(3.0 * (1 - 1e-2), rel=1e-9)


def test_barlow_twins_is_invariant_to_per_dimension_affine_maps() -> None:
    a, b = pairs(n=9, d=4)
    scale = torch.tensor([0.5, 3.0, 10.0, 1.5], dtype=torch.float64)
    shift = torch.tensor([1.0, -2.0, 0.0, 7.0], dtype=torch.float64)
    torch.testing.assert_close(barlow_twins_loss(a * scale + shift, b * scale.flip(0), eps=0.0),
                               barlow_twins_loss(a, b, eps=0.0))
    # swapping the views transposes C: same loss
    torch.testing.assert_close(barlow_twins_loss(b, a), barlow_twins_loss(a, b))


@pytest.mark.parametrize("name", ["barlow_twins", "vicreg", "tldr"])
def test_redundancy_losses_need_two_rows(name: str) -> None:
    a, b = pairs(n=1)
    with pytest.raises(ValueError, match="at least 2 rows"):
        losslab.spec(name).function(a, b)
    assert losslab.spec(name).reduction is None


def test_knn_pairs_draws_among_the_k_nearest_other_rows() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 3, generator=g, dtype=torch.float64)
    rows = x.tolist()
    nearest = []
    for i, r in enumerate(rows):
        d = sorted((sum((p - q) ** 2 for p, q in zip(r, s)), j)
                   for j, s in enumerate(rows) if j != i)
        nearest.append({j for _, j in d[:4]})
    seen = [set() for _ in rows]
    for seed in range(40):
        j = knn_pairs(x, k=4, generator=torch.Generator().manual_seed(seed))
        assert j.shape == (30,) and j.dtype == torch.long
        for i, ji in enumerate(j.tolist()):
            assert ji in nearest[i] and ji != i
            seen[i].add(ji)
    assert all(s == n for s, n in zip(seen, nearest))  # every neighbour gets drawn
    same = knn_pairs(x, k=4, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(same, knn_pairs(x, k=4, generator=torch.Generator().manual_seed(3)))
    with pytest.raises(ValueError, match="k must be at most"):
        knn_pairs(x[:3], k=3)
    with pytest.raises(ValueError, match="k must be"):
        knn_pairs(x, k=0)
    with pytest.raises(ValueError, match="x must be a float tensor"):
        knn_pairs(torch.ones(4, 2, dtype=torch.long))


@pytest.mark.slow
def test_tldr_trains_a_linear_encoder_on_knn_pairs() -> None:
    """End to end on a small problem: data on a noisy 1-D curve in 5-D; a linear 5 -> 2 map
    with a projector trained by TLDR on k-NN pairs lowers the loss."""
    g = torch.Generator().manual_seed(1)
    t = torch.rand(256, 1, generator=g)
    x = torch.cat([t, t**2, torch.sin(3 * t), 0.05 * torch.randn(256, 2, generator=g)], 1)
    enc = torch.nn.Sequential(torch.nn.Linear(5, 2), torch.nn.Linear(2, 16))
    opt = torch.optim.Adam(enc.parameters(), lr=1e-2)
    loss_fn = losslab.create("tldr")
    first = last = None
    for step in range(30):
        j = knn_pairs(x, k=5, generator=torch.Generator().manual_seed(step))
        loss = loss_fn(enc(x), enc(x[j]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = float(loss.detach()) if first is None else first
        last = float(loss.detach())
    assert last is not None and first is not None and last < 0.7 * first
