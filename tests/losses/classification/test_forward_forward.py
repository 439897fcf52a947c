"""Tests of Scalable Forward-Forward's goodness loss
(losslab.losses.classification.forward_forward).

Oracle: the goodness (mean of squared activations per class channel) and both objectives as
float64 Python loops. Peer: the softmax objective is torch's cross-entropy on the goodness.
Properties: the loss only depends on the squared activations (sign flips of a channel leave it
unchanged); it falls as the true class's goodness grows; a block whose goodness argmax is the
true class by a wide margin has a loss near 0 (the inference rule agrees with the loss).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import losslab
from losslab.functional import ff_goodness_loss
from losslab.losses.classification.forward_forward import ff_goodness

D = torch.float64


def block(n: int = 5, c: int = 4, h: int = 3, w: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, c, h, w, generator=g, dtype=D),
            torch.randint(0, c, (n,), generator=g))


def softplus(x: float) -> float:
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def goodness_ref(a: torch.Tensor) -> list[list[float]]:
    out = []
    for sample in a.tolist():
        row = []
        for channel in sample:
            vals = [x for line in channel for x in line]
            row.append(sum(x * x for x in vals) / len(vals))
        out.append(row)
    return out


def test_goodness_and_objectives_oracle() -> None:
    a, y = block()
    g = goodness_ref(a)
    torch.testing.assert_close(ff_goodness(a), torch.tensor(g, dtype=D))
    soft, logi = [], []
    for row, t in zip(g, y.tolist()):
        m = max(row)
        soft.append(m + math.log(sum(math.exp(x - m) for x in row)) - row[t])
        neg = [softplus(x - 1.5) for c, x in enumerate(row) if c != t]
        logi.append(softplus(1.5 - row[t]) + sum(neg) / len(neg))
    torch.testing.assert_close(ff_goodness_loss(a, y, reduction="none"),
                               torch.tensor(soft, dtype=D))
    torch.testing.assert_close(
        ff_goodness_loss(a, y, objective="logistic", threshold=1.5, reduction="none"),
        torch.tensor(logi, dtype=D))


def test_softmax_objective_is_cross_entropy_on_goodness() -> None:
    a, y = block(seed=3)
    torch.testing.assert_close(ff_goodness_loss(a, y),
                               F.cross_entropy(ff_goodness(a), y))
    flat = a.pow(2).flatten(2).mean(-1, keepdim=True).sqrt()  # squares: the goodness
    torch.testing.assert_close(ff_goodness_loss(flat[..., 0], y), ff_goodness_loss(a, y))


def test_sign_invariance_and_monotone_in_positive_goodness() -> None:
    a, y = block(seed=4)
    flip = a.clone()
    flip[:, 1] = -flip[:, 1]
    for obj in ("softmax", "logistic"):
        torch.testing.assert_close(ff_goodness_loss(flip, y, objective=obj),
                                   ff_goodness_loss(a, y, objective=obj))
        prev = None
        for gain in (1.0, 1.5, 2.0, 3.0):
            b = a.clone()
            b[torch.arange(5), y] *= gain  # more goodness for the true class only
            cur = ff_goodness_loss(b, y, objective=obj, reduction="none")
            if prev is not None:
                assert torch.all(cur < prev)
            prev = cur


def test_confident_block_has_small_loss_and_predicts_the_class() -> None:
    y = torch.tensor([0, 2, 1])
    a = torch.full((3, 3, 2, 2), 0.1, dtype=D)
    a[torch.arange(3), y] = 4.0  # goodness 16 for the true class, 0.01 for the others
    assert torch.equal(ff_goodness(a).argmax(1), y)
    assert ff_goodness_loss(a, y) < 1e-6
    assert ff_goodness_loss(a, y, objective="logistic", threshold=8.0) < 1e-3


def test_ignore_index_shapes_and_bad_input() -> None:
    a, y = block()
    y2 = y.clone()
    y2[0] = -100
    out = ff_goodness_loss(a, y2, reduction="none")
    assert out[0] == 0
    torch.testing.assert_close(ff_goodness_loss(a, y2), out[1:].mean())
    x = a.clone().requires_grad_(True)
    z = ff_goodness_loss(x, torch.full_like(y, -100))
    z.backward()
    assert z == 0 and x.grad is not None and torch.all(x.grad == 0)
    m = losslab.create("ff_goodness", objective="logistic")
    torch.testing.assert_close(m(a, y), ff_goodness_loss(a, y, objective="logistic"))
    with pytest.raises(ValueError, match=r"class ids in \[0, 4\)"):
        ff_goodness_loss(a, torch.full_like(y, 4))
    with pytest.raises(ValueError, match=r"shape \[5\]"):
        ff_goodness_loss(a, y[:-1])
    with pytest.raises(ValueError, match="objective"):
        ff_goodness_loss(a, y, objective="hinge")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least 2"):
        ff_goodness_loss(a[:, :1], torch.zeros(5, dtype=torch.long))
