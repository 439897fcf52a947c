"""TCM regulariser: oracle (loops, fp64), combination with a base loss, inputs, and parity with
pytorch-metric-learning."""

from __future__ import annotations

import pytest
import torch

import losslab
import losslab.functional as LF
from tests.losses.metric_learning.common import (
    ORACLE_TOL,
    batch,
    both,
    check_bad_reference_and_indices_raise,
    check_indices_equal_explicit_pairs,
    check_miners_feed,
    check_single_sample_is_zero,
    cos,
    needs_pml,
    pairs,
    pl,
    pml_batch,
)


def test_tcm_oracle():
    x, y = batch(seed=8, dim=2)
    pos, neg = pairs(y)
    sp = [cos(x[a], x[p]) for a, p in pos]
    sn = [cos(x[a], x[q]) for a, q in neg]
    hp = [0.9 - s for s in sp if s <= 0.9]
    hn = [s - 0.5 for s in sn if s >= 0.5]
    want = (sum(hp) / len(hp) if hp else 0.0) + (sum(hn) / len(hn) if hn else 0.0)
    torch.testing.assert_close(LF.tcm_loss(x, y).item(), want, **ORACLE_TOL)
    combo = losslab.combine({"multi_similarity": 1.0, "tcm": 0.5})
    torch.testing.assert_close(combo(x, y).item(),
                               (LF.multi_similarity_loss(x, y) + 0.5 * want).item(),
                               **ORACLE_TOL)


def test_indices_equal_explicit_pairs():
    check_indices_equal_explicit_pairs("tcm")


def test_bad_reference_and_indices_raise():
    check_bad_reference_and_indices_raise("tcm")


def test_miners_feed_tcm():
    check_miners_feed("tcm")


def test_without_pairs_is_zero():
    check_single_sample_is_zero("tcm")


def test_weights_are_checked_by_module_and_function():
    with pytest.raises(ValueError, match="pos_weight"):
        losslab.create("tcm", pos_weight=-1.0)
    with pytest.raises(ValueError, match="neg_weight"):
        LF.tcm_loss(*batch(), neg_weight=-0.5)


@needs_pml
def test_tcm_matches_pml():
    x, y = pml_batch(seed=15, dim=3)
    both(lambda e, l, **k: LF.tcm_loss(e, l, pos_margin=0.5, neg_margin=0.2, **k),
         pl.ThresholdConsistentMarginLoss(margin_plus=0.5, margin_minus=0.2), x, y)
