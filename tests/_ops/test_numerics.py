"""losslab._ops.numerics: safe_pow, the one power with a finite gradient at a zero base.

It replaced two guards (the focal factor ``(1 - p)^gamma`` of ``one_minus_pt_power`` and the
``_safe_pow`` of the Focal Tversky loss); both are written out below, as they were, and
safe_pow must agree with each bit for bit, in value and gradient.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from losslab._ops.numerics import safe_pow

D = torch.float64


def focal_guard(base: Tensor, gamma: float) -> Tensor:
    """The former guard of ``one_minus_pt_power`` (applied to ``base = -expm1(log p)``)."""
    if gamma == 0:
        return torch.ones_like(base)
    zero = base <= 0
    safe = torch.where(zero, torch.ones_like(base), base)
    return torch.where(zero, base.detach().clamp_min(0).pow(gamma), safe.pow(gamma))


def tversky_guard(base: Tensor, exponent: float) -> Tensor:
    """The former ``segmentation._safe_pow``."""
    base = base.clamp_min(0)
    pos = base > 0
    return torch.where(pos, torch.where(pos, base, torch.ones_like(base)).pow(exponent),
                       torch.zeros_like(base))


def edge_bases(dtype: torch.dtype = D) -> Tensor:
    return torch.tensor([-0.5, -1e-300 if dtype == D else -1e-30, 0.0, 1e-300 if dtype == D
                         else 1e-30, 1e-8, 0.25, 0.5, 1.0 - 1e-12, 1.0, 2.0, 7.5], dtype=dtype)


def value_and_grad(fn, base: Tensor, exponent: float) -> tuple[Tensor, Tensor]:
    x = base.clone().requires_grad_(True)
    out = fn(x, exponent)
    if not out.requires_grad:  # a constant (exponent 0): no gradient reaches the base
        return out, torch.zeros_like(base)
    (g,) = torch.autograd.grad(out.sum(), x)
    return out.detach(), g


@pytest.mark.parametrize("exponent", [0.25, 0.5, 0.75, 1.0, 4.0 / 3.0, 2.0, 3.0])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_identical_to_both_former_guards(exponent: float, dtype: torch.dtype) -> None:
    base = edge_bases(dtype)
    got = value_and_grad(safe_pow, base, exponent)
    for ref_fn in (focal_guard, tversky_guard):
        want = value_and_grad(ref_fn, base, exponent)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), ref_fn.__name__


def test_exponent_zero_is_one_like_the_focal_guard() -> None:
    base = edge_bases()
    got = value_and_grad(safe_pow, base, 0.0)
    want = value_and_grad(focal_guard, base, 0.0)
    assert torch.equal(got[0], torch.ones_like(base)) and torch.equal(got[0], want[0])
    assert torch.equal(got[1], torch.zeros_like(base))


@pytest.mark.parametrize("exponent", [0.3, 0.75])
def test_zero_base_has_zero_value_and_gradient_where_pow_does_not(exponent: float) -> None:
    x = torch.zeros(3, dtype=D, requires_grad=True)
    out = safe_pow(x, exponent)
    (g,) = torch.autograd.grad(out.sum(), x)
    assert torch.equal(out.detach(), torch.zeros(3, dtype=D))
    assert torch.equal(g, torch.zeros(3, dtype=D))
    y = torch.zeros(3, dtype=D, requires_grad=True)
    (g_plain,) = torch.autograd.grad(y.pow(exponent).sum(), y)
    assert not torch.isfinite(g_plain).all()  # the guard is needed: plain pow gives inf


def test_positive_base_is_plain_pow_with_its_gradient() -> None:
    x = torch.rand(50, dtype=D, generator=torch.Generator().manual_seed(0)) + 1e-3
    torch.testing.assert_close(safe_pow(x, 0.7), x.pow(0.7), rtol=0, atol=0)
    assert torch.autograd.gradcheck(lambda z: safe_pow(z, 0.7), (x.clone().requires_grad_(),))


def test_negative_exponent_raises() -> None:
    with pytest.raises(ValueError, match="exponent"):
        safe_pow(torch.ones(2), -0.5)
