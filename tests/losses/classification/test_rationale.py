"""Rationale invariance (RIDG): oracle loops of the formula, the official code's per-step
computation with its bank update, and the properties the construction implies."""

from __future__ import annotations

import pytest
import torch

import losslab
from losslab.losses.classification.rationale import (
    class_mean_rationales,
    rationale_invariance_loss,
)


def _inputs(n: int = 9, c: int = 4, d: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(n, d, generator=g, dtype=torch.float64)
    w = torch.randn(c, d, generator=g, dtype=torch.float64)
    y = torch.randint(0, c, (n,), generator=g)
    return f, w, y


def _oracle(f, w, y, ref=None) -> float:
    """Explicit loops: rationale R_i[c][d] = w[c][d] * f[i][d]; class-mean reference; the sum
    over present classes of the within-class mean of mean_c sum_d (R - ref)^2."""
    n, d = f.shape
    c = w.shape[0]
    rat = [[[w[k, j].item() * f[i, j].item() for j in range(d)] for k in range(c)]
           for i in range(n)]
    classes = sorted(set(y.tolist()))
    total = 0.0
    for k in classes:
        members = [i for i in range(n) if y[i].item() == k]
        if ref is None:
            r = [[sum(rat[i][a][b] for i in members) / len(members) for b in range(d)]
                 for a in range(c)]
        else:
            r = ref[k].tolist()
        per = []
        for i in members:
            per.append(sum(sum((rat[i][a][b] - r[a][b]) ** 2 for b in range(d))
                           for a in range(c)) / c)
        total += sum(per) / len(per)
    return total


def test_oracle_batch_reference() -> None:
    f, w, y = _inputs()
    assert rationale_invariance_loss(f, w, y).item() == pytest.approx(_oracle(f, w, y), rel=1e-10)


def test_oracle_given_reference_and_reductions() -> None:
    f, w, y = _inputs(seed=1)
    ref = torch.randn(4, 4, 5, dtype=torch.float64)
    out = rationale_invariance_loss(f, w, y, reference=ref)
    assert out.item() == pytest.approx(_oracle(f, w, y, ref), rel=1e-10)
    per = rationale_invariance_loss(f, w, y, reference=ref, reduction="none")
    rat = w.unsqueeze(0) * f.unsqueeze(1)  # [N, C, D]
    torch.testing.assert_close(per, ((rat - ref[y]) ** 2).sum(2).mean(1))
    torch.testing.assert_close(rationale_invariance_loss(f, w, y, reference=ref,
                                                         reduction="sum"), per.sum())


def test_class_mean_rationales() -> None:
    f, w, y = _inputs(seed=2)
    means, present = class_mean_rationales(f, w, y)
    for k in range(4):
        if present[k]:
            torch.testing.assert_close(means[k], (w.unsqueeze(0) * f[y == k].unsqueeze(1)).mean(0))
        else:
            assert means[k].abs().sum() == 0


def test_zero_when_every_class_member_has_one_rationale() -> None:
    """Samples of a class with identical features have identical rationales: loss 0."""
    w = torch.randn(3, 4, dtype=torch.float64)
    base = torch.randn(3, 4, dtype=torch.float64)
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    f = base[y]
    assert rationale_invariance_loss(f, w, y).abs().item() < 1e-12


def test_gradient_reaches_features_and_weights_not_reference() -> None:
    f, w, y = _inputs(seed=3)
    f.requires_grad_()
    w.requires_grad_()
    ref = torch.randn(4, 4, 5, dtype=torch.float64, requires_grad=True)
    rationale_invariance_loss(f, w, y, reference=ref).backward()
    assert f.grad is not None and f.grad.abs().sum() > 0
    assert w.grad is not None and w.grad.abs().sum() > 0
    assert ref.grad is None


def test_module_matches_official_training_steps() -> None:
    """Two steps of the official update: the bank starts at the first batch's class means and
    moves by bank = (1 - m) bank + m batch_mean; the loss uses the updated bank."""
    m = losslab.create("rationale_invariance", num_classes=4, feature_dim=5, momentum=0.1)
    m = m.double()
    bank = torch.zeros(4, 4, 5, dtype=torch.float64)
    init = torch.ones(4, dtype=torch.bool)
    for seed in (4, 5):
        f, w, y = _inputs(seed=seed)
        rational = w.unsqueeze(0) * f.unsqueeze(1)  # [N, C, D]
        expected = 0.0
        for k in torch.unique(y).tolist():
            mean_k = rational[y == k].mean(0)
            if init[k]:
                bank[k] = mean_k
                init[k] = False
            else:
                bank[k] = 0.9 * bank[k] + 0.1 * mean_k
            expected += ((rational[y == k] - bank[k]) ** 2).sum(2).mean().item()
        # the official sums over D and averages over (C, members), as ours
        assert m(f, w, y).item() == pytest.approx(expected, rel=1e-10)


def test_module_eval_does_not_update() -> None:
    m = losslab.create("rationale_invariance", num_classes=4, feature_dim=5).double()
    f, w, y = _inputs(seed=6)
    m(f, w, y)
    before = m.reference.clone()
    m.eval()
    m(*_inputs(seed=7))
    torch.testing.assert_close(m.reference, before)


def test_bad_inputs() -> None:
    f, w, y = _inputs()
    with pytest.raises(ValueError, match="reference"):
        rationale_invariance_loss(f, w, y, reference=torch.zeros(4, 4, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="target"):
        rationale_invariance_loss(f, w, y.float())
    with pytest.raises(ValueError, match="weight must be"):
        losslab.create("rationale_invariance", num_classes=3, feature_dim=5)(f, w, y)
