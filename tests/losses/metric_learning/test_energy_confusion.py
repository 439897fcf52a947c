"""Energy confusion (ECAML): loop oracle (fp64), the official layer's weighting, invariances of
log-energy, combination with a base loss, reference sets, indices and degenerate batches."""

from __future__ import annotations

import math

import pytest
import torch

import losslab
import losslab.functional as LF
from tests.losses.metric_learning.common import (
    ORACLE_TOL,
    all_pairs,
    batch,
    check_bad_reference_and_indices_raise,
    check_half_inputs_return_float32,
    check_integer_labels,
    check_miners_feed,
    check_nan_propagates,
    dist,
    pairs,
)


def oracle(x, y, rx=None, ry=None, mode="negative"):
    ref, rl = (x, None) if rx is None else (rx, ry)
    pos, neg = pairs(y, rl)
    e_neg = sum(0.5 * dist(x[i], ref[j]) ** 2 for i, j in neg) / max(len(neg), 1)
    if mode == "negative":
        return math.log(e_neg) if neg else 0.0
    e_pos = sum(0.5 * dist(x[i], ref[j]) ** 2 for i, j in pos) / max(len(pos), 1)
    return math.log(e_neg + e_pos) if (neg or pos) else 0.0


@pytest.mark.parametrize("mode", ["negative", "all"])
def test_oracle(mode):
    x, y = batch(seed=1)
    torch.testing.assert_close(LF.energy_confusion_loss(x, y, pairs=mode).item(),
                               oracle(x, y, mode=mode), **ORACLE_TOL)
    r, ry = batch(seed=2, n_classes=5)
    got = LF.energy_confusion_loss(x, y, ref_embeddings=r, ref_labels=ry, pairs=mode)
    torch.testing.assert_close(got.item(), oracle(x, y, r, ry, mode), **ORACLE_TOL)
    torch.testing.assert_close(losslab.create("energy_confusion", pairs=mode)(x, y),
                               LF.energy_confusion_loss(x, y, pairs=mode))


def test_official_layer_weighting_on_its_batch_layout():
    """The official layer: pairs i < j, each weighted 1 / (number of pairs of its kind), the
    backward of log E. On its layout (two consecutive images per class, partners drawn from
    j >= i + 2) it only meets negatives; over every pair i < j its E is mean_P + mean_N."""
    x, _ = batch(n_classes=1, per_class=8, dim=3, seed=3)
    y = torch.arange(4).repeat_interleave(2)
    n = len(y)
    w_pos = sum(1 for i in range(n) for j in range(i + 1, n) if y[i] == y[j])
    w_neg = sum(1 for i in range(n) for j in range(i + 1, n) if y[i] != y[j])
    e = sum(0.5 * dist(x[i], x[j]) ** 2 / (w_pos if y[i] == y[j] else w_neg)
            for i in range(n) for j in range(i + 1, n))
    torch.testing.assert_close(LF.energy_confusion_loss(x, y, pairs="all").item(),
                               math.log(e), **ORACLE_TOL)


def test_log_energy_is_translation_invariant_and_log_scale_covariant():
    x, y = batch(seed=4)
    base = LF.energy_confusion_loss(x, y)
    torch.testing.assert_close(LF.energy_confusion_loss(x + 3.0, y), base, **ORACLE_TOL)
    torch.testing.assert_close(LF.energy_confusion_loss(2.5 * x, y), base + 2 * math.log(2.5),
                               **ORACLE_TOL)


def test_a_step_pulls_the_classes_together():
    x, y = batch(seed=5)
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(LF.energy_confusion_loss(x, y), x)
    _, neg = pairs(y)

    def mean_neg(z):
        return sum(dist(z[i], z[j]) for i, j in neg) / len(neg)

    assert mean_neg(x.detach() - 0.05 * g) < mean_neg(x.detach())


def test_combines_with_a_base_loss():
    x, y = batch(seed=6)
    combo = losslab.combine({"triplet": 1.0, "energy_confusion": 0.13})
    want = LF.triplet_loss(x, y) + 0.13 * LF.energy_confusion_loss(x, y)
    torch.testing.assert_close(combo(x, y), want, **ORACLE_TOL)


def test_indices_equal_the_label_pairs():
    x, y = batch(seed=7)
    for mode in ("negative", "all"):
        torch.testing.assert_close(
            LF.energy_confusion_loss(x, y, indices=all_pairs(y), pairs=mode),
            LF.energy_confusion_loss(x, y, pairs=mode), **ORACLE_TOL)


def test_one_class_is_zero_and_coincident_points_stay_finite():
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    out = LF.energy_confusion_loss(x, torch.zeros(5, dtype=torch.long))
    assert out.item() == 0.0
    out.backward()
    assert x.grad is not None and torch.count_nonzero(x.grad) == 0
    same = torch.ones(4, 3, dtype=torch.float64, requires_grad=True)
    out = LF.energy_confusion_loss(same, torch.tensor([0, 1, 2, 3]))
    assert torch.isfinite(out)
    out.backward()
    assert same.grad is not None and torch.isfinite(same.grad).all()
    # with positives, "all" has a term even for one class
    assert LF.energy_confusion_loss(x.detach(), torch.zeros(5, dtype=torch.long),
                                    pairs="all").item() != 0.0


def test_inputs_and_faults():
    check_bad_reference_and_indices_raise("energy_confusion")
    check_miners_feed("energy_confusion")
    check_integer_labels("energy_confusion")
    check_nan_propagates("energy_confusion")
    for form in ("labels", "ref", "indices"):
        check_half_inputs_return_float32("energy_confusion", ref=form == "ref",
                                         indices=form == "indices")
    with pytest.raises(ValueError, match="pairs"):
        losslab.create("energy_confusion", pairs="positive")
    with pytest.raises(ValueError, match="pairs"):
        LF.energy_confusion_loss(*batch(), pairs="both")
