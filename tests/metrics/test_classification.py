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


# --------------------------------------------------------------------------------------------
# False Head Rate (long-tailed classification, arXiv 2303.06075)
# --------------------------------------------------------------------------------------------


def fhr_oracle(pred, target, c, fractions, rank=None):
    rank = list(range(c)) if rank is None else rank
    rates = []
    for h in fractions:
        border = int(c * h + 0.5)
        tail = [i for i in range(len(target)) if rank[int(target[i])] >= border]
        false_head = [i for i in tail if rank[int(pred[i])] < border]
        rates.append(len(false_head) / len(tail) if tail else 0.0)
    return sum(rates) / len(rates)


def test_false_head_rate_oracle_and_class_order():
    from losslab.metrics import false_head_rate

    logits, _, target = data(400, 10, seed=3)
    pred = logits.argmax(1)
    for fr in ((0.25, 0.5, 0.75), (0.3,), 0.5):
        seq = (fr,) if isinstance(fr, float) else fr
        assert false_head_rate(logits, target, head_fraction=fr) == pytest.approx(
            fhr_oracle(pred, target, 10, seq), abs=1e-12)
    # class_counts define the order: counts decreasing with the index give the index order
    counts = [1000 // (k + 1) for k in range(10)]
    assert false_head_rate(logits, target, class_counts=counts) == pytest.approx(
        false_head_rate(logits, target), abs=1e-12)
    # a permuted numbering with matching counts gives the same rate
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    inv = torch.argsort(perm)
    permuted_counts = [counts[int(perm[k])] for k in range(10)]
    assert false_head_rate(logits[:, perm], inv[target], class_counts=permuted_counts) == (
        pytest.approx(false_head_rate(logits, target), abs=1e-12))


def test_false_head_rate_extremes_and_bad_input():
    from losslab.metrics import false_head_rate

    target = torch.tensor([0, 1, 2, 3, 3, -100])
    always_head = torch.zeros(6, 4)
    always_head[:, 0] = 1.0
    # every tail sample predicted as class 0 (head for every split): FHR = 1
    assert false_head_rate(always_head, target) == 1.0
    perfect = torch.nn.functional.one_hot(target.clamp(min=0), 4).double()
    assert false_head_rate(perfect, target) == 0.0
    with pytest.raises(ValueError, match="head_fraction"):
        false_head_rate(perfect, target, head_fraction=1.0)
    with pytest.raises(ValueError, match="class_counts"):
        false_head_rate(perfect, target, class_counts=[1, 2])
