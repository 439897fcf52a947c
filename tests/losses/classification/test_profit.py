"""Tests of the profit-driven churn regret (losslab.losses.classification.profit).

Oracle: the campaign profit and the regret written per customer with Python loops in float64
(profit of the decision in hindsight minus the expected profit of the randomised decision).
Properties: the regret is >= 0 and 0 exactly at the hindsight-optimal decision; over a churn
probability, the expected regret is minimised by targeting exactly the customers with a
positive expected profit (the profit-optimal rule, with the individual CLV).
"""

from __future__ import annotations

import math

import pytest
import torch

import losslab
from losslab.functional import churn_regret_loss
from losslab.losses.classification.profit import churn_profit

D = torch.float64


def customers(n: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, generator=g, dtype=D) * 2
    churned = (torch.rand(n, generator=g, dtype=D) < 0.5).to(D)
    clv = torch.rand(n, generator=g, dtype=D) * 300
    return logits, torch.stack([churned, clv], 1)


def profit_ref(y: float, clv: float, delta: float, f: float, gamma: float) -> float:
    if y == 1:  # accepts with probability gamma: stays (CLV - delta); else churns anyway
        return gamma * (clv - delta) + (1 - gamma) * 0.0 - f
    return -delta - f  # a loyal customer takes the incentive


def test_oracle_loop() -> None:
    s, t = customers()
    for delta, f, gamma in ((10.0, 1.0, 0.3), (25.0, 3.0, 0.7), (0.0, 0.0, 1.0)):
        ref = []
        for si, (y, clv) in zip(s.tolist(), t.tolist()):
            v = profit_ref(y, clv, delta, f, gamma)
            p = 1 / (1 + math.exp(-si))
            best = max(v, 0.0)  # target or not, in hindsight
            ref.append(best - (p * v + (1 - p) * 0.0))
        out = churn_regret_loss(s, t, incentive=delta, contact_cost=f, acceptance=gamma,
                                reduction="none")
        torch.testing.assert_close(out, torch.tensor(ref, dtype=D))
        torch.testing.assert_close(
            churn_regret_loss(s, t, incentive=delta, contact_cost=f, acceptance=gamma),
            torch.tensor(ref, dtype=D).mean())


def test_empulse_peer_expected_cost_plus_the_hindsight_profit() -> None:
    """empulse's instance-dependent churn cost (B2Boost's) is -p v with the same profit model;
    the regret adds max(v, 0), which does not depend on the prediction."""
    empulse_metrics = pytest.importorskip("empulse.metrics")
    np = pytest.importorskip("numpy")
    s, t = customers(30, seed=5)
    p = torch.sigmoid(s)
    y, clv = t[:, 0], t[:, 1] + 15.0  # empulse: the incentive is a fraction (< 1) of the CLV
    for delta, f, gamma in ((10.0, 1.0, 0.3), (4.0, 0.5, 0.6)):
        cost = empulse_metrics.expected_cost_loss_churn(
            y.numpy().astype(int), p.numpy(), accept_rate=gamma, clv=clv.numpy(),
            incentive_fraction=(delta / clv).numpy(), contact_cost=f)
        v = churn_profit(y, clv, incentive=delta, contact_cost=f, acceptance=gamma)
        ours = churn_regret_loss(s, torch.stack([y, clv], 1), incentive=delta, contact_cost=f,
                                 acceptance=gamma)
        assert float(ours) == pytest.approx(float(np.asarray(cost)) + float(v.clamp_min(0).mean()),
                                            rel=1e-10)


def test_regret_is_nonnegative_and_zero_at_the_hindsight_decision() -> None:
    _, t = customers(50, seed=3)
    v = churn_profit(t[:, 0], t[:, 1])
    decision = (v > 0).to(D)
    hard = (decision * 2 - 1) * 60.0  # sigmoid(+-60) is 1 or 0 at float64 precision
    out = churn_regret_loss(hard, t, reduction="none")
    assert torch.all(out.abs() < 1e-12)
    s = torch.randn(50, dtype=D) * 3
    assert torch.all(churn_regret_loss(s, t, reduction="none") >= 0)
    # any other hard decision loses exactly the profit it misses
    flipped = 1 - decision
    out = churn_regret_loss((flipped * 2 - 1) * 60.0, t, reduction="none")
    torch.testing.assert_close(out, v.abs())


def test_expected_regret_is_minimised_by_the_profit_optimal_targeting() -> None:
    torch.manual_seed(0)
    clv = torch.tensor([5.0, 40.0, 100.0, 400.0, 1000.0], dtype=D)
    for pi in (0.05, 0.2, 0.5, 0.9):
        s = torch.zeros(5, dtype=D, requires_grad=True)
        opt = torch.optim.SGD([s], lr=0.5)
        for _ in range(400):
            opt.zero_grad()
            # expectation over the churn label: pi * regret(y=1) + (1 - pi) * regret(y=0)
            t1 = torch.stack([torch.ones(5, dtype=D), clv], 1)
            t0 = torch.stack([torch.zeros(5, dtype=D), clv], 1)
            loss = (pi * churn_regret_loss(s, t1, reduction="sum")
                    + (1 - pi) * churn_regret_loss(s, t0, reduction="sum"))
            loss.backward()
            opt.step()
        expected_profit = pi * 0.3 * (clv - 10) - (1 - pi) * 10 - 1
        assert torch.equal(torch.sigmoid(s.detach()) > 0.5, expected_profit > 0), pi


def test_individual_clv_changes_the_decision() -> None:
    # two churners with the same features: only the valuable one is worth targeting
    s = torch.zeros(2, dtype=D, requires_grad=True)
    t = torch.tensor([[1.0, 500.0], [1.0, 12.0]], dtype=D)
    churn_regret_loss(s, t, reduction="sum").backward()
    assert s.grad is not None
    assert s.grad[0] < 0 < s.grad[1]  # raise the first logit, lower the second


def test_module_shapes_and_bad_input() -> None:
    s, t = customers()
    m = losslab.create("churn_regret", incentive=5.0)
    torch.testing.assert_close(m(s, t), churn_regret_loss(s, t, incentive=5.0))
    torch.testing.assert_close(m(s[:, None], t), m(s, t))
    assert churn_regret_loss(s, t, reduction="none").shape == (12,)
    with pytest.raises(ValueError, match="churned"):
        churn_regret_loss(s, torch.stack([t[:, 0] * 2, t[:, 1]], 1))
    with pytest.raises(ValueError, match="lifetime"):
        churn_regret_loss(s, torch.stack([t[:, 0], t[:, 1] / 0], 1))
    with pytest.raises(ValueError, match=r"shape \[12, 2\]"):
        churn_regret_loss(s, t[:, :1])
    with pytest.raises(ValueError, match="acceptance"):
        churn_regret_loss(s, t, acceptance=1.5)
    with pytest.raises(ValueError, match="pred"):
        churn_regret_loss(s[:, None].repeat(1, 3), t)
