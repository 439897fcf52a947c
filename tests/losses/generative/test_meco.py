"""Tests of MECO (losslab.losses.generative.meco).

Oracle: the plug-in NLL and the moving-average recursion of u, with the estimator's gradient,
as Python loops in float64. Properties: without state the gradient is exact (gradcheck);
importance sampling makes the partition-function estimate consistent (an unnormalised
Gaussian's log Z = log sqrt(2 pi)); minimising the loss recovers the mean of Gaussian data (the
paper's Gaussian mean-estimation example); log-space keeps huge log-densities finite; eval()
freezes the state.
"""

from __future__ import annotations

import math

import pytest
import torch

import losslab
from losslab.functional import meco_loss
from losslab.losses.generative.meco import MECOLoss

D = torch.float64
close = torch.testing.assert_close


def _batch(seed: int, n: int = 5, m: int = 7):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, generator=g, dtype=D), torch.randn(m, generator=g, dtype=D),
            -torch.rand(m, generator=g, dtype=D) - 0.5)


def test_stateless_oracle_and_exact_gradient() -> None:
    lf, ln, lq = _batch(0)
    ref = -sum(lf.tolist()) / 5 + math.log(sum(math.exp(a - b) for a, b in
                                               zip(ln.tolist(), lq.tolist())) / 7)
    close(meco_loss(lf, ln, lq), torch.tensor(ref, dtype=D))
    assert torch.autograd.gradcheck(lambda x, y: meco_loss(x, y, lq),
                                    (lf.requires_grad_(), ln.requires_grad_()))


def test_moving_average_recursion_and_estimator_gradient() -> None:
    m = losslab.create("meco", gamma=0.5).double()
    u = None
    for step in range(3):
        lf, ln, lq = _batch(step)
        lf.requires_grad_()
        ln.requires_grad_()
        out = m(lf, ln, lq)
        out.backward()
        ratios = [math.exp(a - b) for a, b in zip(ln.tolist(), lq.tolist())]
        g = sum(ratios) / 7
        u = g if u is None else 0.5 * u + 0.5 * g
        close(out, torch.tensor(-sum(lf.tolist()) / 5 + math.log(u), dtype=D))
        close(m.log_u, torch.tensor(math.log(u), dtype=D))
        close(lf.grad, torch.full((5,), -1 / 5, dtype=D))
        close(ln.grad, torch.tensor([r / (7 * u) for r in ratios], dtype=D))


def test_partition_function_estimate_is_consistent() -> None:
    g = torch.Generator().manual_seed(0)
    y = torch.randn(200000, generator=g, dtype=D) * 2.0  # q = N(0, 2^2)
    log_q = -0.5 * (y / 2.0) ** 2 - math.log(2.0 * math.sqrt(2 * math.pi))
    log_f = -0.5 * y**2  # Z = sqrt(2 pi)
    out = meco_loss(torch.zeros(1, dtype=D), log_f, log_q)  # = log Z estimate
    assert abs(float(out) - 0.5 * math.log(2 * math.pi)) < 5e-3


def test_minimising_recovers_the_gaussian_mean() -> None:
    torch.manual_seed(0)
    data = torch.randn(4000, dtype=D) + 1.5
    mu = torch.zeros((), dtype=D, requires_grad=True)
    loss = losslab.create("meco", gamma=0.9).double()
    opt = torch.optim.SGD([mu], lr=0.2)
    for _ in range(300):
        x = data[torch.randint(0, 4000, (128,))]
        y = torch.randn(128, dtype=D) * 3.0
        log_q = -0.5 * (y / 3.0) ** 2 - math.log(3.0 * math.sqrt(2 * math.pi))
        opt.zero_grad()
        loss(-0.5 * (x - mu) ** 2, -0.5 * (y - mu) ** 2, log_q).backward()
        opt.step()
    assert abs(float(mu) - 1.5) < 0.15


def test_huge_log_densities_stay_finite_and_eval_freezes_state() -> None:
    m = losslab.create("meco")
    assert isinstance(m, MECOLoss)
    lf = torch.full((4,), 1e4, requires_grad=True)
    ln = torch.full((6,), 1e4, requires_grad=True)
    out = m(lf, ln, torch.zeros(6))
    assert torch.isfinite(out)
    out.backward()
    assert ln.grad is not None and torch.isfinite(ln.grad).all()
    state = m.log_u.clone()
    m.eval()
    m(lf, ln + 5, torch.zeros(6))
    close(m.log_u, state)
    assert "log_u" in m.state_dict()


def test_bad_inputs() -> None:
    lf, ln, lq = _batch(0)
    with pytest.raises(ValueError, match="noise_log_q"):
        meco_loss(lf, ln, lq[:-1])
    with pytest.raises(ValueError, match="at least one noise sample"):
        meco_loss(lf, ln[:0], lq[:0])
    with pytest.raises(ValueError, match="gamma"):
        meco_loss(lf, ln, lq, gamma=0.0)
    with pytest.raises(ValueError, match="log_density"):
        meco_loss(lf.unsqueeze(1), ln, lq)
