"""Tests of the surrogate rejection loss (losslab.losses.classification.reject).

Oracle: exp(alpha (r - a) / 2) + c exp(-beta r) in float64 Python loops. Properties of the
paper's construction: the surrogate bounds the rejection loss 1_{a=-1} 1_{r>0} + c 1_{r<=0}
from above; the minimiser of the conditional surrogate risk has the closed form
log(2 beta c / (alpha A(eta))) / (alpha/2 + beta), and with beta from 2 beta c / alpha = I_c it
accepts exactly when the predictor's conditional error 1 - eta is below c (Bayes-optimal
rejection: the calibration behind the H-consistency guarantee); other betas move the threshold
to A^{-1}(2 beta c / alpha).
"""

from __future__ import annotations

import math

import pytest
import torch

import losslab
from losslab import functional as LF
from losslab.losses.classification.reject import default_beta, rejection_loss

D = torch.float64


def close(a, b, **kw):
    kw.setdefault("rtol", 1e-10)
    kw.setdefault("atol", 1e-12)
    torch.testing.assert_close(torch.as_tensor(a, dtype=D), torch.as_tensor(b, dtype=D), **kw)


def batch(n=12, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(n, generator=g, dtype=D) * scale
    a = torch.where(torch.rand(n, generator=g) < 0.6, 1.0, -1.0).to(D)
    return r, a


def oracle(r, a, cost, alpha, beta):
    out = []
    for ri, ai in zip(r.tolist(), a.tolist()):
        out.append(math.exp(alpha / 2 * (ri - ai)) + cost * math.exp(-beta * ri))
    return torch.tensor(out, dtype=D)


def i_c(cost, alpha):
    return cost * math.exp(alpha / 2) + (1 - cost) * math.exp(-alpha / 2)


@pytest.mark.parametrize("cost,alpha,beta", [(0.05, 4.0, None), (0.2, 2.0, 3.0), (0.5, 1.0, 0.7)])
def test_oracle(cost, alpha, beta):
    r, a = batch()
    b = alpha * i_c(cost, alpha) / (2 * cost) if beta is None else beta
    want = oracle(r, a, cost, alpha, b)
    close(LF.rejection_surrogate_loss(r, a, cost=cost, alpha=alpha, beta=beta,
                                      reduction="none"), want)
    close(LF.rejection_surrogate_loss(r, a, cost=cost, alpha=alpha, beta=beta), want.mean())
    close(LF.rejection_surrogate_loss(r, a, cost=cost, alpha=alpha, beta=beta,
                                      reduction="sum"), want.sum())


def test_default_beta_satisfies_the_relation():
    for cost, alpha in ((0.05, 2.0), (0.05, 4.0), (0.3, 3.5)):
        b = default_beta(cost, alpha)
        assert math.isclose(2 * b * cost / alpha, i_c(cost, alpha), rel_tol=1e-12)
    # the paper's Figure 2 setting (c = 0.05, alpha = 2)
    assert math.isclose(default_beta(0.05, 2.0), (0.05 * math.e + 0.95 / math.e) / 0.05,
                        rel_tol=1e-12)


@pytest.mark.parametrize("cost,alpha,beta", [(0.05, 4.0, None), (0.2, 2.0, 0.5), (0.4, 1.0, 6.0)])
def test_surrogate_bounds_the_rejection_loss(cost, alpha, beta):
    r, a = batch(400, seed=3, scale=2.0)
    sur = LF.rejection_surrogate_loss(r, a, cost=cost, alpha=alpha, beta=beta, reduction="none")
    target = rejection_loss(r, a, cost=cost, reduction="none")
    assert bool((sur >= target).all())
    # the rejection loss by hand
    for ri, ai, ti in zip(r.tolist(), a.tolist(), target.tolist()):
        assert ti == ((1.0 if ai < 0 else 0.0) if ri > 0 else cost)


def _conditional_risk(r, eta, cost, alpha, beta):
    """E_a[loss(r, a)] with P(a = +1) = eta, through the function (not a closed form)."""
    one = torch.ones_like(r)
    pos = LF.rejection_surrogate_loss(r, one, cost=cost, alpha=alpha, beta=beta,
                                      reduction="none")
    neg = LF.rejection_surrogate_loss(r, -one, cost=cost, alpha=alpha, beta=beta,
                                      reduction="none")
    return eta * pos + (1 - eta) * neg


@pytest.mark.parametrize("cost,alpha", [(0.05, 2.0), (0.05, 4.0), (0.25, 3.0)])
def test_conditional_minimiser_rejects_exactly_when_the_error_exceeds_the_cost(cost, alpha):
    beta = default_beta(cost, alpha)
    grid = torch.linspace(-3, 3, 600_001, dtype=D)
    for err in (0.0, 0.01, 0.6 * cost, 0.95 * cost, 1.05 * cost, 2 * cost, 0.5, 0.9, 1.0):
        eta = 1 - err
        risk = _conditional_risk(grid, eta, cost, alpha, None)
        r_num = float(grid[risk.argmin()])
        a_eta = eta * math.exp(-alpha / 2) + (1 - eta) * math.exp(alpha / 2)
        r_star = math.log(2 * beta * cost / (alpha * a_eta)) / (alpha / 2 + beta)
        assert abs(r_num - r_star) < 2e-5, (err, r_num, r_star)
        assert (r_star > 0) == (err < cost), (err, r_star)  # Bayes rule: accept iff err < c


def test_other_beta_moves_the_threshold():
    cost, alpha, beta = 0.1, 2.0, 4.0
    # accept iff A(eta) < 2 beta c / alpha, A(eta) = e^{-a/2} + (1 - eta)(e^{a/2} - e^{-a/2})
    lo, hi = math.exp(-alpha / 2), math.exp(alpha / 2)
    threshold = (2 * beta * cost / alpha - lo) / (hi - lo)  # on the error 1 - eta
    assert 0 < threshold < cost  # a smaller beta rejects more
    grid = torch.linspace(-4, 4, 400_001, dtype=D)
    for err in (0.5 * threshold, 0.9 * threshold, 1.1 * threshold, 0.5 * (threshold + cost)):
        risk = _conditional_risk(grid, 1 - err, cost, alpha, beta)
        assert (float(grid[risk.argmin()]) > 0) == (err < threshold)


def test_learned_rejector_follows_bayes_rule_on_a_finite_sample():
    # a rejector with one free score per input group (the class of all functions on 4 groups)
    # trained on labels drawn with group-wise error rates; it accepts exactly the groups whose
    # empirical error is below c.
    cost = 0.2
    errors = torch.tensor([0.05, 0.15, 0.3, 0.6], dtype=D)
    g = torch.Generator().manual_seed(0)
    group = torch.arange(4).repeat_interleave(2000)
    a = torch.where(torch.rand(8000, generator=g, dtype=D) < errors[group], -1.0, 1.0).to(D)
    r = torch.zeros(4, dtype=D, requires_grad=True)
    opt = torch.optim.LBFGS([r], max_iter=200, tolerance_grad=1e-12, tolerance_change=1e-14,
                            line_search_fn="strong_wolfe")

    def step():
        opt.zero_grad()
        loss = LF.rejection_surrogate_loss(r[group], a, cost=cost, alpha=2.0)
        loss.backward()
        return loss

    opt.step(step)
    emp = torch.stack([(a[group == k] < 0).double().mean() for k in range(4)])
    assert torch.equal(r.detach() > 0, emp < cost)


def test_module_gradcheck_and_spec():
    r, a = batch(6)
    r = r.requires_grad_()
    m = losslab.create("rejection_surrogate", cost=0.1, alpha=2.0)
    assert torch.autograd.gradcheck(lambda x: m(x, a), (r * 0.5,), eps=1e-6, atol=1e-6)
    close(m(r, a), LF.rejection_surrogate_loss(r, a, cost=0.1, alpha=2.0))
    s = losslab.spec("rejection_surrogate")
    assert s.arxiv == "2301.09044" and s.kind == "regression"


def test_any_shape_and_half_inputs():
    r, a = batch(12)
    got = LF.rejection_surrogate_loss(r.reshape(3, 4), a.reshape(3, 4), reduction="none")
    close(got, LF.rejection_surrogate_loss(r, a, reduction="none").reshape(3, 4))
    out = LF.rejection_surrogate_loss((r * 0.1).half(), a.half())
    assert out.dtype == torch.float32 and torch.isfinite(out)


@pytest.mark.parametrize("bad", [torch.tensor([1.0, 0.0, -1.0]), torch.tensor([1.0, 2.0, 1.0]),
                                 torch.tensor([0.5, -1.0, 1.0])])
def test_target_must_be_plus_minus_one(bad):
    with pytest.raises(ValueError, match="target"):
        LF.rejection_surrogate_loss(torch.zeros(3), bad)


def test_bad_shapes_and_hyperparameters():
    with pytest.raises(ValueError, match="target"):
        LF.rejection_surrogate_loss(torch.zeros(3), torch.ones(4))
    with pytest.raises(ValueError, match="target"):
        LF.rejection_surrogate_loss(torch.zeros(3), torch.ones(3, dtype=torch.long))
    with pytest.raises(ValueError, match="cost"):
        LF.rejection_surrogate_loss(torch.zeros(3), torch.ones(3), cost=1.0)
    with pytest.raises(ValueError, match="beta"):
        LF.rejection_surrogate_loss(torch.zeros(3), torch.ones(3), beta=0.0)
