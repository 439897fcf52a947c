"""The shared helpers of _core: reduction and validation."""

from __future__ import annotations

import pytest
import torch

from losslab._core import reduce, zero_loss


def test_reduce_modes_and_weights() -> None:
    v = torch.tensor([1.0, 2.0, 3.0])
    assert reduce(v, "sum") == 6.0
    assert reduce(v, "mean") == 2.0
    torch.testing.assert_close(reduce(v, "none"), v)
    w = torch.tensor([1.0, 0.0, 1.0])
    assert reduce(v, "mean", weights=w) == 2.0
    assert reduce(v, "mean", count=4.0) == 1.5
    with pytest.raises(ValueError, match="reduction must be one of"):
        reduce(v, "avg")


def test_mean_over_nothing_is_a_connected_zero() -> None:
    x = torch.randn(3, requires_grad=True)
    for out in (reduce(x[:0], "mean"), reduce(x, "mean", weights=torch.zeros(3)),
                reduce(x, "mean", count=torch.tensor(0.0))):
        assert out.item() == 0.0 and out.requires_grad
        (g,) = torch.autograd.grad(out, x, allow_unused=True, materialize_grads=True)
        assert torch.count_nonzero(g) == 0
    z = zero_loss(x)
    z.backward()
    assert z.item() == 0.0 and torch.count_nonzero(x.grad) == 0



def episode():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    q = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    return s, y, q, y




def test_check_labels_converts_integer_dtypes_and_rejects_bool():
    from losslab._core import check_labels

    for dtype in (torch.int32, torch.uint8, torch.int16):
        out = check_labels("labels", torch.tensor([0, 1, 2], dtype=dtype), 3, of="x")
        assert out.dtype == torch.int64 and out.tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="labels must be an integer tensor of labels, got a bool"):
        check_labels("labels", torch.tensor([True, False, True]), 3, of="x")


def test_check_probabilities():
    from losslab._core import check_probabilities

    p = torch.softmax(torch.randn(4, 5), 1)
    check_probabilities("target", p)
    check_probabilities("target", p.to(torch.bfloat16))
    check_probabilities("target", p.to(torch.float16))
    nan = p.clone()
    nan[0, 0] = float("nan")
    neg = p.clone()
    neg[0, 0], neg[0, 1] = -0.2, neg[0, 1] + neg[0, 0] + 0.2
    for bad, msg in ((p * 2, "sum to 1"), (neg, ">= 0"), (nan, "finite")):
        with pytest.raises(ValueError, match=msg):
            check_probabilities("target", bad)
