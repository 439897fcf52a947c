"""Aggregate-label losses against loop oracles and the paper's identities (arXiv 2401.11081)."""

from __future__ import annotations

import math

import pytest
import torch

from losslab.functional import bag_level_loss, instance_level_loss, interpolated_aggregate_loss
from losslab.losses.aggregate import laplace_bag_targets, random_bags


def data(seed: int = 0, n: int = 12, n_bags: int = 4, classes: int = 3):
    g = torch.Generator().manual_seed(seed)
    bag_index = torch.arange(n) % n_bags
    pred = torch.randn(n, generator=g, dtype=torch.float64)
    logits = torch.randn(n, classes, generator=g, dtype=torch.float64)
    y = torch.randn(n_bags, generator=g, dtype=torch.float64)
    props = torch.softmax(torch.randn(n_bags, classes, generator=g, dtype=torch.float64), 1)
    frac = torch.rand(n_bags, generator=g, dtype=torch.float64)
    return bag_index, pred, logits, y, props, frac


def members(bag_index: torch.Tensor, a: int) -> list[int]:
    return [i for i, b in enumerate(bag_index.tolist()) if b == a]


def test_mse_oracles() -> None:
    bag_index, pred, _, y, _, _ = data()
    bag, ins = [], []
    for a in range(4):
        m = members(bag_index, a)
        mean = sum(float(pred[i]) for i in m) / len(m)
        bag.append((float(y[a]) - mean) ** 2)
        ins.append(sum((float(y[a]) - float(pred[i])) ** 2 for i in m) / len(m))
    torch.testing.assert_close(bag_level_loss(pred, bag_index, y, reduction="none"),
                               torch.tensor(bag, dtype=torch.float64))
    torch.testing.assert_close(instance_level_loss(pred, bag_index, y, reduction="none"),
                               torch.tensor(ins, dtype=torch.float64))


def test_ce_and_bce_oracles() -> None:
    bag_index, _, logits, _, props, frac = data(1)
    for a in range(4):
        m = members(bag_index, a)
        probs = [torch.softmax(logits[i], 0).tolist() for i in m]
        mean_p = [sum(p[c] for p in probs) / len(m) for c in range(3)]
        bag = -sum(float(props[a, c]) * math.log(mean_p[c]) for c in range(3))
        ins = sum(-sum(float(props[a, c]) * math.log(p[c]) for c in range(3)) for p in probs)
        got_bag = bag_level_loss(logits, bag_index, props, base="ce", reduction="none")[a]
        got_ins = instance_level_loss(logits, bag_index, props, base="ce", reduction="none")[a]
        assert float(got_bag) == pytest.approx(bag, rel=1e-12)
        assert float(got_ins) == pytest.approx(ins / len(m), rel=1e-12)
    z = logits[:, 0]
    for a in range(4):
        m = members(bag_index, a)
        p = sum(1 / (1 + math.exp(-float(z[i]))) for i in m) / len(m)
        t = float(frac[a])
        expected = -(t * math.log(p) + (1 - t) * math.log(1 - p))
        got = bag_level_loss(z, bag_index, frac, base="bce", reduction="none")[a]
        assert float(got) == pytest.approx(expected, rel=1e-10)


def test_instance_loss_is_bag_loss_plus_within_bag_variance() -> None:
    """The paper's identity for the squared loss: L_ins = L_bag + R."""
    bag_index, pred, _, y, _, _ = data(2, n=30, n_bags=5)
    var = torch.stack([pred[bag_index == a].var(unbiased=False) for a in range(5)])
    torch.testing.assert_close(
        instance_level_loss(pred, bag_index, y, reduction="none"),
        bag_level_loss(pred, bag_index, y, reduction="none") + var,
    )
    for rho in (0.0, 0.3, 1.0):
        torch.testing.assert_close(
            interpolated_aggregate_loss(pred, bag_index, y, rho=rho, reduction="none"),
            bag_level_loss(pred, bag_index, y, reduction="none") + rho * var,
        )


def test_ce_bag_level_is_stable_for_extreme_logits() -> None:
    bag_index, _, logits, _, props, _ = data(3)
    out = bag_level_loss(logits * 1e3, bag_index, props, base="ce")
    assert torch.isfinite(out)


def test_validation() -> None:
    bag_index, pred, _, y, props, _ = data()
    with pytest.raises(ValueError, match="bags \\[3\\] have none"):
        bag_level_loss(pred[:3], bag_index[:3], y)
    with pytest.raises(ValueError, match="base must be one of"):
        bag_level_loss(pred, bag_index, y, base="l1")
    with pytest.raises(ValueError, match="base='ce' needs"):
        bag_level_loss(pred, bag_index, props, base="ce")
    with pytest.raises(ValueError, match="rho must be in"):
        interpolated_aggregate_loss(pred, bag_index, y, rho=1.5)


def test_random_bags_and_private_targets() -> None:
    g = torch.Generator().manual_seed(0)
    idx = random_bags(20, 5, generator=g)
    assert torch.bincount(idx).tolist() == [5, 5, 5, 5]
    labels = torch.randn(20, dtype=torch.float64) * 10
    exact = torch.stack([labels[idx == a].clamp(-1, 1).mean() for a in range(4)])
    noisy = [laplace_bag_targets(labels, idx, epsilon=1.0, bound=1.0, generator=g)
             for _ in range(4000)]
    stacked = torch.stack(noisy)
    torch.testing.assert_close(stacked.mean(0), exact, atol=0.03, rtol=0)
    # Laplace(b) has variance 2 b^2 with b = (2 * bound / k) / epsilon = 0.4.
    torch.testing.assert_close(stacked.var(0), torch.full((4,), 2 * 0.4**2, dtype=torch.float64),
                               atol=0.03, rtol=0)
