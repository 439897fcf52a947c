"""tbatch_item_sum / tbatch_full_sum (arXiv 2308.06862, formulas from the official code):
loop oracles in float64, JODIE's original loss as ``reduction="mean"``, and the property the
paper is about: with sums, an interaction's weight does not depend on the size of its t-batch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import losslab
from losslab.losses.ranking.tbatch import tbatch_full_sum_loss, tbatch_item_sum_loss


def _pair(n: int = 7, d: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g, dtype=torch.float64),
            torch.randn(n, d, generator=g, dtype=torch.float64))


def _oracle(a: torch.Tensor, b: torch.Tensor, full: bool) -> float:
    total = 0.0
    n, d = a.shape
    for i in range(n):
        row = 0.0
        for k in range(d):
            row += (float(a[i, k]) - float(b[i, k])) ** 2
        total += row if full else row / d
    return total


def test_oracles() -> None:
    a, b = _pair()
    item = tbatch_item_sum_loss(a, b, reduction="sum").item()
    full = tbatch_full_sum_loss(a, b, reduction="sum").item()
    assert item == pytest.approx(_oracle(a, b, False), rel=1e-12)
    assert full == pytest.approx(_oracle(a, b, True), rel=1e-12)
    none = tbatch_full_sum_loss(a, b, reduction="none")
    assert none.shape == (7,)
    assert none[2].item() == pytest.approx(_oracle(a[2:3], b[2:3], True), rel=1e-12)


def test_official_forms() -> None:
    a, b = _pair(seed=1)
    n, d = a.shape
    # jodie: MSELoss(); jodie-sum: N * MSELoss(); jodie-full-sum: MSELoss(reduction="sum")
    item_sum = tbatch_item_sum_loss(a, b, reduction="sum")
    full_sum = tbatch_full_sum_loss(a, b, reduction="sum")
    torch.testing.assert_close(tbatch_item_sum_loss(a, b, reduction="mean"), F.mse_loss(a, b))
    torch.testing.assert_close(item_sum, n * F.mse_loss(a, b))
    torch.testing.assert_close(full_sum, F.mse_loss(a, b, reduction="sum"))
    torch.testing.assert_close(full_sum, d * item_sum)


def test_weight_of_an_interaction_does_not_depend_on_its_tbatch_size() -> None:
    a, b = _pair(n=12, seed=2)
    sizes = [1, 2, 9]  # t-batches of very different sizes
    for fn in (tbatch_item_sum_loss, tbatch_full_sum_loss):
        x = a.clone().requires_grad_(True)
        total = sum(fn(part_a, part_b, reduction="sum") for part_a, part_b in
                    zip(x.split(sizes), b.split(sizes), strict=True))
        assert isinstance(total, torch.Tensor)
        torch.testing.assert_close(total, fn(a, b, reduction="sum"))  # grouping-invariant
        total.backward()
        assert x.grad is not None
        scale = 2.0 if fn is tbatch_full_sum_loss else 2.0 / a.shape[1]
        torch.testing.assert_close(x.grad, scale * (a - b))
    # JODIE's per-t-batch mean: the lone interaction of the 1-batch weighs 9x one of the 9-batch
    x = a.clone().requires_grad_(True)
    sum(tbatch_item_sum_loss(pa, pb, reduction="mean") for pa, pb in
        zip(x.split(sizes), b.split(sizes), strict=True)).backward()  # type: ignore[union-attr]
    assert x.grad is not None
    w_first = (x.grad[0] / (a - b)[0]).mean().item()
    w_last = (x.grad[-1] / (a - b)[-1]).mean().item()
    assert w_first == pytest.approx(9 * w_last, rel=1e-10)


def test_empty_tbatch_and_registry() -> None:
    a = torch.zeros(0, 4, dtype=torch.float64, requires_grad=True)
    with pytest.raises(ValueError, match="at least 1 row"):
        tbatch_item_sum_loss(a, a.detach())
    loss = losslab.create("tbatch_full_sum")
    assert losslab.spec("tbatch_item_sum").arxiv == "2308.06862"
    x, y = _pair(seed=3)
    torch.testing.assert_close(loss(x, y), tbatch_full_sum_loss(x, y))
    with pytest.raises(ValueError, match="b must have 5 columns"):
        loss(x, y[:, :4])
