"""Sinkhorn KD: a loop oracle of the official algorithm (fp64), POT as peer, properties."""

from __future__ import annotations

import math

import pytest
import torch

import losslab
from losslab.functional import sinkhorn_kd_loss
from losslab.losses.distillation.transport import sinkhorn_plan


def logits_pair(n: int = 5, c: int = 6, seed: int = 0, scale: float = 2.0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, c, generator=g, dtype=torch.float64) * scale
    t = torch.randn(n, c, generator=g, dtype=torch.float64) * scale
    return s.requires_grad_(True), t.requires_grad_(True)


def softmax_list(z: list[float], temp: float) -> list[float]:
    m = max(v / temp for v in z)
    e = [math.exp(v / temp - m) for v in z]
    return [v / sum(e) for v in e]


def oracle(s, t, temperature: float, epsilon: float, iterations: int) -> list[float]:
    """Plain loops: L1 costs, Gibbs kernel, alternating row/column normalisation (in the
    probability domain, as the official code), per-row transport cost."""
    q = [softmax_list(r, temperature) for r in s.tolist()]
    p = [softmax_list(r, temperature) for r in t.tolist()]
    n = len(q)
    cost = [[sum(abs(a - b) for a, b in zip(q[i], p[j])) for j in range(n)] for i in range(n)]
    k = [[math.exp(-cost[i][j] / epsilon) for j in range(n)] for i in range(n)]
    for _ in range(iterations):
        for i in range(n):
            r = sum(k[i])
            k[i] = [v / r for v in k[i]]
        for j in range(n):
            c = sum(k[i][j] for i in range(n))
            for i in range(n):
                k[i][j] /= c
    return [sum(k[i][j] * cost[i][j] for j in range(n)) for i in range(n)]


@pytest.mark.parametrize("temperature,epsilon,iterations", [(2.0, 0.1, 20), (1.0, 0.5, 3),
                                                            (4.0, 0.05, 50)])
def test_sinkhorn_kd_matches_loop_oracle(temperature: float, epsilon: float,
                                         iterations: int) -> None:
    s, t = logits_pair()
    want = torch.tensor(oracle(s, t, temperature, epsilon, iterations), dtype=torch.float64)
    got = sinkhorn_kd_loss(s, t, temperature=temperature, epsilon=epsilon,
                           iterations=iterations, reduction="none")
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(
        sinkhorn_kd_loss(s, t, temperature=temperature, epsilon=epsilon, iterations=iterations,
                         reduction="sum"), want.sum())
    m = losslab.create("sinkhorn_kd", temperature=temperature, epsilon=epsilon,
                       iterations=iterations)
    torch.testing.assert_close(m(s, t), want.mean())


def test_sinkhorn_plan_converges_to_pot_sinkhorn() -> None:
    """After many rounds the plan / N is POT's entropic OT plan for uniform marginals."""
    ot = pytest.importorskip("ot")
    g = torch.Generator().manual_seed(1)
    cost = torch.rand(6, 6, generator=g, dtype=torch.float64)
    eps = 0.2
    plan = sinkhorn_plan(cost, epsilon=eps, iterations=500) / 6
    a = torch.full((6,), 1 / 6, dtype=torch.float64)
    peer = ot.sinkhorn(a.numpy(), a.numpy(), cost.numpy(), eps, numItermax=5000,
                       stopThr=1e-14)
    torch.testing.assert_close(plan, torch.from_numpy(peer), atol=1e-10, rtol=1e-8)


def test_sinkhorn_kd_properties_and_bad_inputs() -> None:
    s, t = logits_pair(seed=2)
    # one row: the plan is 1 and the loss is the L1 distance of the two distributions
    q, p = torch.softmax(s[:1] / 2, 1), torch.softmax(t[:1] / 2, 1)
    torch.testing.assert_close(sinkhorn_kd_loss(s[:1], t[:1]), (q - p).abs().sum())
    # permuting the batch of the teacher changes nothing (batch-wise, not sample-wise)
    perm = torch.tensor([3, 1, 4, 0, 2])
    torch.testing.assert_close(sinkhorn_kd_loss(s, t), sinkhorn_kd_loss(s, t[perm]))
    assert float(sinkhorn_kd_loss(s, t).detach()) >= 0
    gs, gt = torch.autograd.grad(sinkhorn_kd_loss(s, t), (s, t))
    assert torch.isfinite(gs).all() and torch.isfinite(gt).all()
    # a tiny epsilon stays finite (log-domain rounds)
    assert torch.isfinite(sinkhorn_kd_loss(s, t, epsilon=1e-4)).all()
    with pytest.raises(ValueError, match="target"):
        sinkhorn_kd_loss(s, t, target=torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="iterations"):
        losslab.create("sinkhorn_kd", iterations=0)
    with pytest.raises(ValueError, match="epsilon"):
        losslab.create("sinkhorn_kd", epsilon=0.0)
