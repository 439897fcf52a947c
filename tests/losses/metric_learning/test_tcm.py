"""TCM regulariser: oracle (loops, fp64), combination with a base loss, inputs, and parity with
pytorch-metric-learning."""

from __future__ import annotations

import math

import pytest
import torch

import losslab
import losslab.functional as LF
from tests.losses.metric_learning.common import (
    ORACLE_TOL,
    batch,
    both,
    check_bad_hyperparameters,
    check_bad_reference_and_indices_raise,
    check_degenerate_declarations,
    check_half_inputs_return_float32,
    check_indices_equal_explicit_pairs,
    check_integer_labels,
    check_miners_feed,
    check_nan_propagates,
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


# -- issue #11: bad input and faults ---------------------------------------------------------


def test_no_degenerate_batch_is_declared():
    """Finding 9: TCM's two parts are each averaged over their own hard pairs, so a one-class
    batch (hard positives only) and a batch of distinct labels (hard negatives only) give the
    other part alone, not zero (as in the paper and PML)."""
    check_degenerate_declarations("tcm", ())
    x, _ = batch(seed=8, dim=2)
    one = torch.zeros(len(x), dtype=torch.long)
    pos, _ = pairs(one)
    hp = [0.9 - s for s in (cos(x[a], x[p]) for a, p in pos) if s <= 0.9]
    torch.testing.assert_close(LF.tcm_loss(x, one).item(), sum(hp) / len(hp), **ORACLE_TOL)


@pytest.mark.parametrize("form", ["labels", "ref", "indices"])
def test_half_inputs_are_computed_and_returned_in_float32(form):
    """Finding 2: tcm ran wholly in bf16 (similarities, hard-pair tests and means)."""
    check_half_inputs_return_float32("tcm", ref=form == "ref", indices=form == "indices")
    check_half_inputs_return_float32("tcm", ref=form == "ref", indices=form == "indices",
                                     pos_margin=0.2, neg_margin=-0.2)


def test_integer_label_dtypes_are_accepted_and_bool_rejected():
    check_integer_labels("tcm")


def test_nan_propagates():
    """NaN in ref_embeddings gave a finite TCM loss (the hard-pair tests dropped its pairs)."""
    check_nan_propagates("tcm")


def test_every_hyperparameter_is_validated():
    """Finding 5: NaN / string margins and weights, margins outside the cosine range."""
    x, y = batch()
    check_bad_hyperparameters("tcm", {
        "pos_margin": [math.nan, "0.9", 1.5], "neg_margin": [-2.0, None],
        "pos_weight": [-1.0, math.inf], "neg_weight": [math.nan, "1"]},
        call=lambda fn, **kw: fn(x, y, **kw))


@needs_pml
def test_tcm_matches_pml():
    x, y = pml_batch(seed=15, dim=3)
    both(lambda e, l, **k: LF.tcm_loss(e, l, pos_margin=0.5, neg_margin=0.2, **k),
         pl.ThresholdConsistentMarginLoss(margin_plus=0.5, margin_minus=0.2), x, y)
