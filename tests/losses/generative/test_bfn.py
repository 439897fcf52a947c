"""Tests of the Bayesian Flow Network losses (losslab.losses.generative.bfn).

Oracles: the three continuous-time losses as Python loops in float64 from the formulas
(-ln s1 * s1^(-2t) (x - x_hat)^2; the same with the mean of the discretised output
distribution, its bin masses from the Gaussian CDF via math.erf; K b1 t ||e_x - p||^2).
Properties: each loss is zero when the output distribution equals the data (the brief's
discrete test, plus the continuous and discretised analogues), the discrete-time weight of the
continuous-data loss tends to the continuous-time one as n -> inf, the Bayesian flows have the
paper's moments (mean gamma x, variance gamma (1 - gamma); theta uniform at t = 0), the
noise-prediction parameterisation recovers x from a perfect noise prediction.
"""

from __future__ import annotations

import math

import pytest
import torch

import losslab
from losslab.functional import bfn_continuous_loss, bfn_discrete_loss, bfn_discretised_loss
from losslab.losses.generative.bfn import (
    bfn_continuous_flow,
    bfn_continuous_output,
    bfn_discrete_flow,
    bfn_discretised_output,
    bfn_discretised_probs,
)

D = torch.float64
close = torch.testing.assert_close


def _phi(x: float, mu: float, sd: float) -> float:
    return 0.5 * (1 + math.erf((x - mu) / (sd * math.sqrt(2))))


def test_continuous_oracle() -> None:
    g = torch.Generator().manual_seed(0)
    x_hat, x = torch.randn(4, 3, generator=g, dtype=D), torch.randn(4, 3, generator=g, dtype=D)
    t = torch.rand(4, generator=g, dtype=D)
    s1 = 0.02
    ref = [[-math.log(s1) * s1 ** (-2 * float(t[n])) * (float(x[n, d]) - float(x_hat[n, d])) ** 2
            for d in range(3)] for n in range(4)]
    close(bfn_continuous_loss(x_hat, x, time=t, sigma_1=s1, reduction="none"),
          torch.tensor(ref, dtype=D))
    close(bfn_continuous_loss(x_hat, x, time=t, sigma_1=s1), torch.tensor(ref, dtype=D).mean())
    # per-element times give the same numbers
    close(bfn_continuous_loss(x_hat, x, time=t.unsqueeze(1).expand(4, 3), sigma_1=s1,
                              reduction="none"), torch.tensor(ref, dtype=D))


def test_discretised_oracle() -> None:
    g = torch.Generator().manual_seed(1)
    K, s1 = 5, 0.03
    pred = torch.randn(3, 2, 2, generator=g, dtype=D) * 0.7
    k = torch.randint(0, K, (3, 2), generator=g)
    x = (2 * k + 1).to(D) / K - 1
    t = torch.rand(3, generator=g, dtype=D)
    ref = []
    for n in range(3):
        row = []
        for d in range(2):
            mu, sd = float(pred[n, 0, d]), math.exp(float(pred[n, 1, d]))
            k_hat = 0.0
            for j in range(1, K + 1):
                lo = -math.inf if j == 1 else 2 * (j - 1) / K - 1
                hi = math.inf if j == K else 2 * j / K - 1
                p = (1.0 if hi == math.inf else _phi(hi, mu, sd)) - (
                    0.0 if lo == -math.inf else _phi(lo, mu, sd))
                k_hat += p * ((2 * j - 1) / K - 1)
            row.append(-math.log(s1) * s1 ** (-2 * float(t[n])) * (float(x[n, d]) - k_hat) ** 2)
        ref.append(row)
    close(bfn_discretised_loss(pred, x, time=t, num_bins=K, sigma_1=s1, reduction="none"),
          torch.tensor(ref, dtype=D))


def test_discrete_oracle_and_ignore_index() -> None:
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(4, 5, 3, generator=g, dtype=D)
    target = torch.randint(0, 5, (4, 3), generator=g)
    target[1, 2] = -100
    t = torch.rand(4, generator=g, dtype=D)
    b1 = 0.75
    ref = torch.zeros(4, 3, dtype=D)
    for n in range(4):
        for d in range(3):
            if int(target[n, d]) == -100:
                continue
            z = [math.exp(float(logits[n, c, d])) for c in range(5)]
            p = [v / sum(z) for v in z]
            ref[n, d] = 5 * b1 * float(t[n]) * sum(
                ((1.0 if c == int(target[n, d]) else 0.0) - p[c]) ** 2 for c in range(5))
    close(bfn_discrete_loss(logits, target, time=t, beta_1=b1, reduction="none"), ref)
    close(bfn_discrete_loss(logits, target, time=t, beta_1=b1), ref.sum() / 11)


def test_losses_vanish_when_the_output_equals_the_data() -> None:
    t = torch.tensor([0.1, 0.5, 0.9], dtype=D)
    target = torch.tensor([[0, 3], [2, 2], [1, 0]])
    logits = torch.nn.functional.one_hot(target, 4).movedim(-1, 1).to(D) * 1e4  # p_O = e_x
    out = bfn_discrete_loss(logits, target, time=t, reduction="none")
    assert float(out.abs().max()) == 0.0
    wrong = torch.nn.functional.one_hot((target + 1) % 4, 4).movedim(-1, 1).to(D) * 1e4
    close(bfn_discrete_loss(wrong, target, time=t, beta_1=3.0, reduction="none"),
          (4 * 3.0 * 2 * t).unsqueeze(1).expand(3, 2))
    x = torch.randn(3, 2, dtype=D)
    assert float(bfn_continuous_loss(x.clone(), x, time=t)) == 0.0
    K = 8
    centres = (2 * torch.randint(0, K, (3, 2)) + 1).to(D) / K - 1
    sharp = torch.stack([centres, torch.full_like(centres, -30.0)], 1)  # sigma_x = e^-30
    close(bfn_discretised_loss(sharp, centres, time=t, num_bins=K),
          torch.zeros((), dtype=D), atol=1e-12, rtol=0)


def test_discrete_time_weight_tends_to_the_continuous_time_weight() -> None:
    # L^n weight for continuous data: n/2 (1 - s1^(2/n)) / s1^(2i/n) at t = (i - 1)/n
    s1, n = 0.001, 10**6
    for t in (0.0, 0.3, 0.9):
        i = t * n + 1
        discrete = n / 2 * (1 - s1 ** (2 / n)) / s1 ** (2 * i / n)
        cont = float(bfn_continuous_loss(torch.zeros(1, 1, dtype=D), torch.ones(1, 1, dtype=D),
                                         time=torch.tensor([t], dtype=D), sigma_1=s1))
        assert abs(discrete - cont) / cont < 1e-4


def test_bayesian_flows_have_the_papers_moments() -> None:
    g = torch.Generator().manual_seed(0)
    s1 = 0.02
    x = torch.full((20000, 1), 0.6, dtype=D)
    t = torch.full((20000,), 0.5, dtype=D)
    mu = bfn_continuous_flow(x, t, sigma_1=s1, generator=g)
    gamma = 1 - s1 ** (2 * 0.5)
    assert abs(float(mu.mean()) - gamma * 0.6) < 0.01
    assert abs(float(mu.var()) - gamma * (1 - gamma)) < 0.01
    target = torch.tensor([2, 0, 1])
    theta0 = bfn_discrete_flow(target, torch.zeros(3), num_classes=4, generator=g)
    close(theta0, torch.full((3, 4), 0.25))
    theta = bfn_discrete_flow(target.repeat(4000), torch.ones(12000), num_classes=4,
                              beta_1=3.0, generator=g)
    assert theta.shape == (12000, 4)
    close(theta.sum(1), torch.ones(12000))
    # the data's class gets the largest mean input probability
    assert bool((theta.reshape(4000, 3, 4).mean(0).argmax(1) == target).all())


def test_noise_parameterisation_recovers_the_data() -> None:
    g = torch.Generator().manual_seed(3)
    s1, t = 0.001, torch.tensor([0.2, 0.7], dtype=D)
    x = torch.rand(2, 3, generator=g, dtype=D) * 1.6 - 0.8
    gamma = (1 - s1 ** (2 * t)).unsqueeze(1)
    eps = torch.randn(2, 3, generator=g, dtype=D)
    mu = gamma * x + (gamma * (1 - gamma)).sqrt() * eps
    close(bfn_continuous_output(eps, mu, t, sigma_1=s1), x)
    out = bfn_discretised_output(eps, torch.zeros_like(eps), mu, t, sigma_1=s1)
    close(out[:, 0], x)
    close(out[:, 1], (((1 - gamma) / gamma).sqrt().log()).expand(2, 3))
    # t < t_min: x_hat = 0, (mu_x, sigma_x) = (0, 1)
    t0 = torch.zeros(2, dtype=D)
    assert float(bfn_continuous_output(eps, mu, t0).abs().max()) == 0.0
    assert float(bfn_discretised_output(eps, eps, mu, t0).abs().max()) == 0.0


def test_discretised_bins_hold_all_the_mass() -> None:
    p = bfn_discretised_probs(torch.tensor([0.3, -2.0, 5.0], dtype=D),
                              torch.tensor([-1.0, 0.5, 2.0], dtype=D), 16)
    assert p.shape == (3, 16) and bool((p >= 0).all())
    close(p.sum(-1), torch.ones(3, dtype=D))


def test_time_is_required_and_checked() -> None:
    x = torch.randn(3, 2)
    m = losslab.create("bfn_continuous")
    with pytest.raises(ValueError, match="time"):
        m(x, x)
    with pytest.raises(ValueError, match="time"):
        m(x, x, time=torch.rand(2))
    with pytest.raises(ValueError, match="time"):
        m(x, x, time=torch.full((3,), 1.5))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        bfn_discretised_loss(torch.randn(3, 2, 2), x * 5, time=torch.rand(3))
    out = m(x[:0], x[:0], time=torch.rand(0))
    assert float(out) == 0.0


def test_one_training_step_per_data_type() -> None:
    """flow -> network -> output distribution -> loss -> backward, as in the paper's
    training procedure, for continuous, discretised and discrete data."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 8)
    t = torch.rand(5, generator=g)
    x = torch.rand(5, 4, generator=g) * 2 - 1
    mu = bfn_continuous_flow(x, t, generator=g)
    eps_hat = net(mu)[:, :4]
    loss = bfn_continuous_loss(bfn_continuous_output(eps_hat, mu, t), x, time=t)
    loss.backward()
    assert net.weight.grad is not None and torch.isfinite(net.weight.grad).all()
    net.zero_grad()
    K = 16
    xd = (2 * torch.randint(0, K, (5, 4), generator=g) + 1).float() / K - 1
    mu = bfn_continuous_flow(xd, t, generator=g)
    out = net(mu)
    pred = bfn_discretised_output(out[:, :4], out[:, 4:], mu, t)
    bfn_discretised_loss(pred, xd, time=t, num_bins=K).backward()
    assert net.weight.grad is not None and torch.isfinite(net.weight.grad).all()
    target = torch.randint(0, 3, (5, 4), generator=g)
    theta = bfn_discrete_flow(target, t, num_classes=3, generator=g)  # [5, 3, 4]
    head = torch.nn.Linear(3, 3)
    logits = head(theta.movedim(1, -1)).movedim(-1, 1)
    bfn_discrete_loss(logits, target, time=t).backward()
    assert head.weight.grad is not None and torch.isfinite(head.weight.grad).all()
