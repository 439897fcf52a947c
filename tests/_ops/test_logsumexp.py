"""The log-sum-exp family (losslab._ops.logsumexp) against torch.logsumexp: values, weights,
empty sets, extreme logits, constant shifts."""

from __future__ import annotations

import math

import pytest
import torch

from losslab._ops.logsumexp import (
    fixed_shift,
    log1p_sum_exp_,
    logsumexp_,
    masked_logsumexp,
    weighted_log1p_sum_exp,
)

NEG = float("-inf")


def logits():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 7, generator=g, dtype=torch.float64) * 30  # beyond exp's range
    x[1] = NEG  # an empty row
    x[2, 3:] = NEG
    return x


@pytest.mark.parametrize("dim", [0, 1])
def test_logsumexp_in_place(dim):
    x = logits()
    want = torch.logsumexp(x, dim=dim)
    want_w = torch.softmax(x, dim=dim).nan_to_num(0.0)
    got, w = logsumexp_(x.clone(), dim=dim)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(w, want_w)


@pytest.mark.parametrize("dim", [0, 1])
def test_log1p_sum_exp_in_place(dim):
    x = logits()
    padded = torch.cat([x, torch.zeros_like(x.sum(dim, keepdim=True))], dim=dim)  # the "1"
    want = torch.logsumexp(padded, dim=dim)
    want_w = torch.softmax(padded, dim=dim).narrow(dim, 0, x.shape[dim])
    got, w = log1p_sum_exp_(x.clone(), dim=dim, scale=2.0)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(w, 2.0 * want_w)
    if dim == 1:
        assert got[1].item() == 0.0  # an empty row: log(1 + 0) = 0 exactly


def test_constant_shift_equals_the_row_maximum():
    g = torch.Generator().manual_seed(1)
    s = torch.rand(4, 6, generator=g, dtype=torch.float32) * 2 - 1  # cosines
    beta, base = 20.0, 0.5  # logits in [-30, 10]: a span float32 can shift by a constant
    shift = fixed_shift(beta * (1 - base), -beta * (1 + base), s.dtype)
    assert shift == beta * (1 - base)
    x = beta * (s - base)
    for fn in (logsumexp_, log1p_sum_exp_):
        a, wa = fn(x.clone(), 1)
        b, wb = fn(x.clone(), 1, shift=shift)
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(wa, wb)
    assert fixed_shift(100.0, -100.0, torch.float32) is None  # too wide for float32
    assert fixed_shift(100.0, -100.0, torch.float64) == 100.0


def test_autograd_forms():
    x = logits().clamp_min(-1e3).requires_grad_(True)  # finite inputs, masks for the empties
    mask = torch.ones(5, 7, dtype=torch.bool)
    mask[1] = False
    mask[2, 3:] = False
    got, nonempty = masked_logsumexp(x, mask)
    assert nonempty.tolist() == [True, False, True, True, True]
    want = torch.logsumexp(x.detach().masked_fill(~mask, NEG), dim=1)
    torch.testing.assert_close(got.detach(), want)
    got.masked_fill(~nonempty, 0.0).sum().backward()
    assert torch.isfinite(x.grad).all() and torch.all(x.grad[1] == 0)
    x.grad = None
    w = mask.double() * 0.5
    got = weighted_log1p_sum_exp(x, w)
    want = torch.logsumexp(torch.cat([x.detach() + math.log(0.5), torch.zeros(5, 1,
                           dtype=torch.float64)], 1).masked_fill(
        torch.cat([~mask, torch.zeros(5, 1, dtype=torch.bool)], 1), NEG), dim=1)
    torch.testing.assert_close(got.detach(), want)
    assert got[1].item() == 0.0
    got.sum().backward()
    assert torch.isfinite(x.grad).all() and torch.all(x.grad[~mask] == 0)
