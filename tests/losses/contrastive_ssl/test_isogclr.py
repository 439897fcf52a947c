"""iSogCLR: a loop oracle restating the authors' algorithm (LibAUC ``GCLoss_v1`` with
``enable_isogclr=True``; its code moves tensors to CUDA, so it cannot run here) over several
steps, values, surrogate gradients and the per-sample state; state_dict and eval mode."""

from __future__ import annotations

import math

import pytest
import torch

import losslab
from losslab.functional import isogclr_loss


def dot(x: list[float], y: list[float]) -> float:
    return sum(p * q for p, q in zip(x, y))


class Oracle:
    """Per-sample state and one step of the algorithm, in Python floats (fp64)."""

    def __init__(self, num: int, tau0: float, gamma: float = 0.9, rho: float = 0.3,
                 eta: float = 0.01, beta: float = 0.9, lo: float = 0.05, hi: float = 0.7):
        self.u: list[float] = [0.0] * num
        self.tau: list[float] = [tau0] * num
        self.mom: list[float] = [0.0] * num
        self.h = (gamma, rho, eta, beta, lo, hi)

    def step(self, a: torch.Tensor, b: torch.Tensor, index: list[int]) -> list[float]:
        gamma, rho, eta, beta, lo, hi = self.h
        za: list[list[float]] = torch.nn.functional.normalize(a, dim=1).tolist()
        zb: list[list[float]] = torch.nn.functional.normalize(b, dim=1).tolist()
        n = len(za)
        m = 2 * (n - 1)
        losses, u_views, grads = [0.0] * n, [[0.0, 0.0] for _ in range(n)], [0.0] * n
        for v, (view, other) in enumerate(((za, zb), (zb, za))):
            for i in range(n):
                k = index[i]
                tau = self.tau[k]
                negs = [dot(view[i], other[j]) for j in range(n) if j != i]
                negs += [dot(view[i], view[j]) for j in range(n) if j != i]
                g = sum(math.exp(s / tau) for s in negs) / m
                u = g if self.u[k] == 0 else (1 - gamma) * self.u[k] + gamma * g
                w = [math.exp(s / tau) / u for s in negs]
                pos = dot(view[i], other[i])
                losses[i] += -pos + sum(wi * s for wi, s in zip(w, negs)) / m
                u_views[i][v] = u
                grads[i] += (math.log(u) + rho - sum(wi * s / tau for wi, s in zip(w, negs))
                             / m) / 2
        for i in range(n):
            k = index[i]
            self.u[k] = sum(u_views[i]) / 2
            self.mom[k] = (1 - beta) * self.mom[k] + beta * grads[i]
            self.tau[k] = min(hi, max(lo, self.tau[k] - eta * self.mom[k]))
        return losses


def batch(seed, n=6, d=4):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, d, generator=g, dtype=torch.float64)
    return a, a + 0.4 * torch.randn(n, d, generator=g, dtype=torch.float64)


def test_isogclr_matches_the_algorithm_over_several_steps() -> None:
    loss = losslab.create("isogclr", num_samples=10, temperature=0.25).double()
    oracle = Oracle(10, 0.25)  # 0.25: exact in the float32 buffer
    for step, index in enumerate(([0, 1, 2, 3, 4, 5], [4, 5, 6, 7, 8, 9], [0, 2, 4, 6, 8, 9])):
        a, b = batch(step)
        expected = oracle.step(a, b, index)
        got = loss(a, b, index=torch.tensor(index))
        assert float(got) == pytest.approx(sum(expected) / 6, rel=1e-10)
        state = dict(loss.named_buffers())
        torch.testing.assert_close(state["u"], torch.tensor(oracle.u, dtype=torch.float64))
        torch.testing.assert_close(state["tau"], torch.tensor(oracle.tau, dtype=torch.float64))
        torch.testing.assert_close(state["tau_grad"],
                                   torch.tensor(oracle.mom, dtype=torch.float64))
    tau = dict(loss.named_buffers())["tau"]
    assert tau.min() >= 0.05 and tau.max() <= 0.7
    assert not torch.allclose(tau[:6], torch.full((6,), 0.25, dtype=torch.float64))


def test_isogclr_gradient_is_the_weighted_estimator() -> None:
    """d loss / d s(x_i, z) = w_iz / m for negatives and -1 for the positive: the gradient of
    tau_i log E exp(h/tau_i) with the moving-average u_i in place of the batch mean."""
    a, b = batch(0)
    za = torch.nn.functional.normalize(a, dim=1).requires_grad_(True)
    zb = torch.nn.functional.normalize(b, dim=1).requires_grad_(True)
    out = isogclr_loss(za, zb, temperature=0.3, normalize=False, reduction="sum")
    ga, gb = torch.autograd.grad(out, (za, zb))
    z = torch.cat([za, zb]).detach()
    n, m = 6, 10
    expected = torch.zeros_like(z)
    for r in range(2 * n):
        p = (r + n) % (2 * n)
        negs = [k for k in range(2 * n) if k not in (r, p)]
        e = torch.stack([torch.exp(z[r] @ z[k] / 0.3) for k in negs])
        w = e / (e.sum() / m)  # first visit: u = g
        expected[r] -= z[p]
        expected[p] -= z[r]
        for wk, k in zip(w, negs):
            expected[r] += wk / m * z[k]
            expected[k] += wk / m * z[r]
    torch.testing.assert_close(torch.cat([ga, gb]), expected)


def test_isogclr_state_dict_eval_and_bad_inputs() -> None:
    m1 = losslab.create("isogclr", num_samples=8).double()
    a, b = batch(1)
    m1(a, b, index=torch.arange(6))
    m2 = losslab.create("isogclr", num_samples=8).double()
    m2.load_state_dict(m1.state_dict())
    for k, v in m1.named_buffers():
        torch.testing.assert_close(dict(m2.named_buffers())[k], v)
    m2.eval()
    before = dict(m2.named_buffers())["tau"].clone()
    m2(a, b, index=torch.arange(6))
    torch.testing.assert_close(dict(m2.named_buffers())["tau"], before)  # eval: no update
    with pytest.raises(ValueError, match="needs index"):
        m1(a, b)
    with pytest.raises(ValueError, match=r"index must hold dataset ids in \[0, 8\)"):
        m1(a, b, index=torch.arange(6) + 5)
    with pytest.raises(ValueError, match="needs num_samples"):
        losslab.create("isogclr")
    with pytest.raises(ValueError, match="tau_min must be <= tau_max"):
        losslab.create("isogclr", num_samples=4, tau_min=0.5, tau_max=0.1, temperature=0.3)
    with pytest.raises(ValueError, match="temperature"):
        losslab.create("isogclr", num_samples=4, temperature=0.9)
    with pytest.raises(ValueError, match="at least 2 pairs"):
        isogclr_loss(a[:1], b[:1])
