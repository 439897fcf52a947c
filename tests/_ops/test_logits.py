"""losslab._ops.logits: the functions of log p shared by the classification and robust
families (``one_minus_pt_power``, ``comp_sum_values``). The batch plumbing (``prepare``,
``finish``) is exercised by every logits loss in tests/losses."""

from __future__ import annotations

import math

import pytest
import torch

from losslab._ops.logits import comp_sum_values, one_minus_pt_power

D = torch.float64


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_one_minus_pt_power_formula(gamma: float) -> None:
    p = torch.tensor([1e-6, 0.1, 0.5, 0.9, 1.0 - 1e-9], dtype=D)
    want = torch.tensor([(1 - v) ** gamma for v in p.tolist()], dtype=D)
    torch.testing.assert_close(one_minus_pt_power(p.log(), gamma), want, rtol=1e-6, atol=0)


def test_one_minus_pt_power_finite_gradient_at_p_one() -> None:
    logp = torch.tensor([0.0, -1e-30, -0.5], dtype=D, requires_grad=True)  # p = 1, ~1, < 1
    out = one_minus_pt_power(logp, 0.5)
    (g,) = torch.autograd.grad(out.sum(), logp)
    assert torch.isfinite(g).all()
    assert g[0] == 0 and g[2] != 0


@pytest.mark.parametrize("tau", [0.0, 0.5, 1.0, 1.5, 2.0])
def test_comp_sum_values_formula(tau: float) -> None:
    p = torch.tensor([0.01, 0.3, 0.99], dtype=D)
    if tau == 1.0:
        want = [-math.log(v) for v in p.tolist()]
    else:
        want = [(1 - v ** (tau - 1)) / (tau - 1) for v in p.tolist()]
    torch.testing.assert_close(comp_sum_values(p.log(), tau), torch.tensor(want, dtype=D))


def test_comp_sum_values_linear_beyond_the_exponent_cap() -> None:
    logpt = torch.tensor([-200.0, -300.0], dtype=D, requires_grad=True)
    out = comp_sum_values(logpt, 0.0, max_exponent=60.0)
    assert torch.isfinite(out).all()
    (g,) = torch.autograd.grad(out.sum(), logpt)
    # tau = 0: u = -log p, exp continued by its tangent at 60: slope e^60 in u
    torch.testing.assert_close(g, torch.full((2,), -math.exp(60.0), dtype=D))
