"""EnsLoss: the derivative draw against a loop oracle of the algorithm, the convexity and
calibration of every drawn derivative (on real margins of a digits model), the surrogate's
gradient, and training on a binary digits task."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from losslab.lab.training import Batch, fit
from losslab.train import EnsLoss, ensloss_loss, sample_calibrated_derivatives

from .tasks import digits, minibatches, mlp

f64 = torch.float64


def oracle(z: list[float], xi: list[float], *, clip: float, tail: bool) -> list[float]:
    d = sorted(max(-math.exp(v), -clip) for v in xi)
    order = sorted(range(len(z)), key=lambda i: z[i])
    out = [0.0] * len(z)
    for rank, i in enumerate(order):
        out[i] = d[rank]
    return [(o / zi if tail and zi > 1 else o) - 1e-6 for o, zi in zip(out, z)]


@pytest.mark.parametrize("clip,tail", [(1.0, True), (3.0, False), (1.0, False)])
def test_draw_matches_the_loop_oracle(clip: float, tail: bool) -> None:
    z = torch.tensor([0.3, -1.2, 2.5, 0.0, 1.7, -0.4, 4.0], dtype=f64)
    xi = torch.randn(7, generator=torch.Generator().manual_seed(5), dtype=f64)
    got = sample_calibrated_derivatives(z, clip=clip, superlinear_tail=tail,
                                        generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(got, torch.tensor(oracle(z.tolist(), xi.tolist(), clip=clip,
                                                        tail=tail), dtype=f64))


def assert_convex_calibrated(z: torch.Tensor, d: torch.Tensor) -> None:
    order = torch.argsort(z)
    zs, ds = z[order].tolist(), d[order].tolist()
    # convex: the derivative is non-decreasing in the margin ...
    assert all(b >= a for a, b in itertools.pairwise(ds))
    # ... so the loss it integrates to has non-negative second differences
    phi = [0.0]
    for i in range(1, len(zs)):
        phi.append(phi[-1] + ds[i - 1] * (zs[i] - zs[i - 1]))
    for i in range(1, len(zs) - 1):
        lhs = (phi[i + 1] - phi[i]) * (zs[i] - zs[i - 1])
        rhs = (phi[i] - phi[i - 1]) * (zs[i + 1] - zs[i])
        assert lhs >= rhs - 1e-12
    # calibrated: phi'(0) < 0 (every drawn derivative is negative)
    assert max(ds) < 0


def test_every_draw_is_convex_and_calibrated_on_real_margins() -> None:
    xtr, ytr, _, _ = digits()
    model = mlp(0, out=1)
    y = (ytr >= 5).to(torch.float32) * 2 - 1
    with torch.no_grad():
        z = (model(xtr)[:, 0] * y).to(f64) * 5
    g = torch.Generator().manual_seed(0)
    for lam in (0.0, 0.5):
        for _ in range(20):
            idx = torch.randperm(z.shape[0], generator=g)[:128]
            assert_convex_calibrated(z[idx], sample_calibrated_derivatives(
                z[idx], lam=lam, generator=g))


def test_gradient_is_the_drawn_derivative() -> None:
    logits = torch.tensor([0.5, -2.0, 3.0, 0.1], dtype=f64, requires_grad=True)
    target = torch.tensor([1, 0, 1, 0])
    loss = ensloss_loss(logits, target, generator=torch.Generator().manual_seed(1))
    (grad,) = torch.autograd.grad(loss, logits)
    y = torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=f64)
    d = sample_calibrated_derivatives(y * logits.detach(),
                                      generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(grad, y * d / 4)
    # {-1, +1} labels are the same labels
    loss_pm = ensloss_loss(logits, y, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(loss_pm, loss)


def test_empty_batch_and_bad_input() -> None:
    x = torch.zeros(0, requires_grad=True)
    loss = ensloss_loss(x, torch.zeros(0))
    loss.backward()
    assert float(loss.detach()) == 0.0
    assert x.grad is not None and torch.equal(x.grad, torch.zeros(0))
    with pytest.raises(ValueError, match="target"):
        ensloss_loss(torch.zeros(3), torch.tensor([0, 2, 1]))
    with pytest.raises(ValueError, match="target"):
        ensloss_loss(torch.zeros(3), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="logits"):
        ensloss_loss(torch.zeros(3, 2), torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match="clip"):
        ensloss_loss(torch.zeros(3), torch.tensor([0, 1, 1]), clip=0.0)
    with pytest.raises(ValueError, match="reduction"):
        EnsLoss(reduction="max")  # type: ignore[arg-type]


def test_trains_a_binary_digits_classifier() -> None:
    xtr, ytr, xte, yte = digits()
    btr, bte = (ytr >= 5).long(), (yte >= 5).long()
    model = mlp(0, out=1)
    loss_fn = EnsLoss(seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for epoch in range(15):
        for idx in minibatches(xtr.shape[0], 64, epoch):
            opt.zero_grad()
            loss_fn(model(xtr[idx]), btr[idx]).backward()
            opt.step()
    with torch.no_grad():
        acc = float(((model(xte)[:, 0] > 0).long() == bte).float().mean())
    assert acc > 0.9, acc


def test_works_with_the_lab_fit_loop() -> None:
    xtr, ytr, xte, yte = digits()
    btr, bte = (ytr >= 5).long(), (yte >= 5).long()
    model = mlp(1, out=1)

    def batches(epoch):
        for idx in minibatches(xtr.shape[0], 64, epoch):
            yield Batch.supervised(xtr[idx], btr[idx])

    res = fit(model, EnsLoss(seed=1), batches, optimizer=torch.optim.SGD(
        model.parameters(), lr=0.1, momentum=0.9), epochs=6, steps_per_epoch=19)
    assert res.steps == 6 * 19
    with torch.no_grad():
        acc = float(((model(xte)[:, 0] > 0).long() == bte).float().mean())
    assert acc > 0.85, acc
