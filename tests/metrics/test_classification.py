"""Tests of losslab.metrics.classification against loop oracles and torchmetrics."""

from __future__ import annotations

import pytest
import torch

from losslab.metrics import (
    accuracy,
    adaptive_calibration_error,
    expected_calibration_error,
    reliability_diagram,
    top_k_accuracy,
)


def data(n=500, c=6, seed=0, temp=1.5):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=g, dtype=torch.float64) * temp
    target = torch.randint(0, c, (n,), generator=g)
    # make the model somewhat right
    logits[torch.arange(n // 2), target[: n // 2]] += 2.0
    return logits, torch.softmax(logits, 1), target


def ece_oracle(probs, target, n_bins):
    conf, pred = probs.max(1)
    n = len(target)
    total = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        members = [i for i in range(n) if lo < conf[i] <= hi or (b == 0 and conf[i] == 0)]
        if members:
            acc = sum(float(pred[i] == target[i]) for i in members) / len(members)
            cf = sum(float(conf[i]) for i in members) / len(members)
            total += len(members) / n * abs(acc - cf)
    return total


def adaptive_oracle(probs, target, n_bins):
    conf, pred = probs.max(1)
    order = sorted(range(len(target)), key=lambda i: float(conf[i]))
    n = len(order)
    total, start = 0.0, 0
    for b in range(n_bins):
        size = n // n_bins + (1 if b < n % n_bins else 0)
        members = order[start:start + size]
        start += size
        if members:
            acc = sum(float(pred[i] == target[i]) for i in members) / len(members)
            cf = sum(float(conf[i]) for i in members) / len(members)
            total += len(members) / n * abs(acc - cf)
    return total


def test_accuracy_and_top_k():
    logits, probs, target = data()
    ref1 = sum(int(logits[i].argmax() == target[i]) for i in range(500)) / 500
    assert accuracy(logits, target) == pytest.approx(ref1)
    assert accuracy(probs, target) == pytest.approx(ref1)
    ref3 = sum(int(target[i] in logits[i].argsort(descending=True)[:3].tolist())
               for i in range(500)) / 500
    assert top_k_accuracy(logits, target, k=3) == pytest.approx(ref3)
    assert top_k_accuracy(logits, target, k=10) == 1.0
    t2 = target.clone()
    t2[:100] = -100
    assert accuracy(logits, t2) == pytest.approx(accuracy(logits[100:], target[100:]))
    assert accuracy(logits, torch.full_like(target, -100)) == 0.0


@pytest.mark.parametrize("n_bins", [1, 10, 15])
def test_ece_oracles(n_bins):
    _, probs, target = data()
    assert expected_calibration_error(probs, target, n_bins=n_bins) == pytest.approx(
        ece_oracle(probs, target, n_bins), abs=1e-12)
    assert adaptive_calibration_error(probs, target, n_bins=n_bins) == pytest.approx(
        adaptive_oracle(probs, target, n_bins), abs=1e-12)
    assert expected_calibration_error(probs, target, n_bins=n_bins, adaptive=True) == \
        adaptive_calibration_error(probs, target, n_bins=n_bins)


@pytest.mark.parametrize("n_bins", [5, 15])
def test_ece_matches_torchmetrics(n_bins):
    tm = pytest.importorskip("torchmetrics.classification")
    _, probs, target = data(seed=3)
    probs = probs.float()
    peer = tm.MulticlassCalibrationError(num_classes=6, n_bins=n_bins, norm="l1")
    ref = float(peer(probs, target))
    assert expected_calibration_error(probs, target, n_bins=n_bins) == pytest.approx(ref, abs=1e-6)


def test_perfectly_calibrated_and_bins():
    # confidences exactly 0.75 and 75% correct -> ECE 0
    probs = torch.tensor([[0.75, 0.25]] * 8, dtype=torch.float64)
    target = torch.tensor([0, 0, 0, 1, 0, 0, 0, 1])
    assert expected_calibration_error(probs, target) == pytest.approx(0.0, abs=1e-12)
    bins = reliability_diagram(probs, target, n_bins=4)
    assert bins.count.tolist() == [0, 0, 8, 0]  # 0.75 falls in (0.5, 0.75]
    assert bins.accuracy[2] == pytest.approx(0.75)


def test_bad_inputs():
    _, probs, target = data(20)
    with pytest.raises(ValueError, match="probs"):
        expected_calibration_error(probs * 3, target)
    with pytest.raises(ValueError, match="target"):
        accuracy(probs, target.float())
    with pytest.raises(ValueError, match="target"):
        accuracy(probs, torch.full_like(target, 6))
    with pytest.raises(ValueError, match="k"):
        top_k_accuracy(probs, target, k=0)
    with pytest.raises(ValueError, match="n_bins"):
        expected_calibration_error(probs, target, n_bins=0)
