"""Contrastive, lifted structure, N-pairs: oracles from the papers' formulas (loops, fp64),
``indices=`` / reference-set / miner inputs, and parity with pytorch-metric-learning."""

from __future__ import annotations

import math

import pytest
import torch

import losslab
import losslab.functional as LF
from losslab import miners
from tests.losses.metric_learning.common import (
    ORACLE_TOL,
    batch,
    both,
    check_bad_hyperparameters,
    check_bad_reference_and_indices_raise,
    check_compiled_equals_eager,
    check_degenerate_declarations,
    check_half_inputs_return_float32,
    check_indices_equal_explicit_pairs,
    check_integer_labels,
    check_miners_feed,
    check_nan_propagates,
    check_single_sample_is_zero,
    cos,
    dist,
    lp_distance,
    needs_pml,
    pairs,
    pd,
    pl,
    pml_batch,
    pr,
)

NAMES = ["contrastive", "lifted_structure", "npairs"]


def test_contrastive_oracle():
    x, y = batch(seed=4)
    pos, neg = pairs(y)
    lp = [max(0.0, dist(x[a], x[p]) - 0.5) ** 2 for a, p in pos]
    ln = [max(0.0, 3.0 - dist(x[a], x[q])) ** 2 for a, q in neg]
    got = LF.contrastive_loss(x, y, pos_margin=0.5, neg_margin=3.0, power=2)
    torch.testing.assert_close(got.item(), sum(lp) / len(lp) + sum(ln) / len(ln), **ORACLE_TOL)
    got = LF.contrastive_loss(x, y, pos_margin=0.5, neg_margin=3.0, power=2, reduction="sum")
    torch.testing.assert_close(got.item(), sum(lp) + sum(ln), **ORACLE_TOL)


def test_contrastive_similarity_oracle():
    x, y = batch(seed=15)
    pos, neg = pairs(y)
    lp = [max(0.0, 0.8 - cos(x[a], x[p])) for a, p in pos]
    ln = [max(0.0, cos(x[a], x[q]) - 0.1) for a, q in neg]
    got = LF.contrastive_loss(x, y, pos_margin=0.8, neg_margin=0.1, metric="cosine")
    torch.testing.assert_close(got.item(), sum(lp) / len(lp) + sum(ln) / len(ln), **ORACLE_TOL)


def test_lifted_structure_and_npairs_oracles():
    x, y = batch(seed=7)
    n = len(y)
    vals = []
    for i in range(n):
        lp = math.log(sum(math.exp(dist(x[i], x[j])) for j in range(n) if j != i and y[j] == y[i]))
        ln = math.log(sum(math.exp(1.0 - dist(x[i], x[j])) for j in range(n) if y[j] != y[i]))
        vals.append(max(0.0, lp + ln))
    torch.testing.assert_close(LF.lifted_structure_loss(x, y).item(), sum(vals) / n,
                               **ORACLE_TOL)

    # N-pairs: first anchor of each class and its first positive
    chosen = {}
    for i in range(n):
        if int(y[i]) not in chosen:
            chosen[int(y[i])] = (i, next(j for j in range(n) if j != i and y[j] == y[i]))
    ap = [chosen[c] for c in sorted(chosen, key=lambda c: chosen[c][0])]
    vals = []
    for i, (a, p) in enumerate(ap):
        s = [float(x[a] @ x[q]) for _, q in ap]
        vals.append(math.log1p(sum(math.exp(s[j] - s[i]) for j in range(len(ap)) if j != i))
                    + 0.002 * 0.5 * (float(x[a] @ x[a]) + float(x[p] @ x[p])))
    torch.testing.assert_close(LF.npairs_loss(x, y).item(), sum(vals) / len(vals), **ORACLE_TOL)


@pytest.mark.parametrize("name", NAMES)
def test_indices_equal_explicit_pairs(name):
    check_indices_equal_explicit_pairs(name)


@pytest.mark.parametrize("name", NAMES)
def test_bad_reference_and_indices_raise(name):
    check_bad_reference_and_indices_raise(name)


@pytest.mark.parametrize("name", NAMES)
def test_miners_feed_losses(name):
    check_miners_feed(name)


def test_contrastive_without_pairs_is_zero():
    check_single_sample_is_zero("contrastive")


def test_hyperparameters_are_checked_at_construction():
    with pytest.raises(ValueError, match="power"):
        losslab.create("contrastive", power=0.0)
    with pytest.raises(ValueError, match="mean_over"):
        losslab.create("contrastive", mean_over="most")
    with pytest.raises(ValueError, match="metric"):
        losslab.create("contrastive", metric="manhattan")
    with pytest.raises(ValueError, match="metric"):
        losslab.create("npairs", metric="euclidean")


# -- issue #11: bad input and faults ---------------------------------------------------------

#: Finding 9, decided from the papers: a contrastive loss has a term per positive pair and
#: per negative pair, so a one-class batch (positives only) and a batch of distinct labels
#: (negatives only) are not zero; lifted structure needs a positive and a negative per anchor
#: (the log of an empty sum is -inf, the hinge 0); an N-pair example needs two classes with a
#: pair (one class: a single pair, no negative; distinct labels: no pair).
DECLARED = {"contrastive": (), "lifted_structure": ("one_class", "no_positives"),
            "npairs": ("one_class", "no_positives")}
HALF_CASES = [("contrastive", {}),
              ("contrastive", {"metric": "squared_euclidean", "neg_margin": 9e4}),
              ("contrastive", {"metric": "cosine", "pos_margin": 0.9, "neg_margin": 0.3}),
              ("lifted_structure", {}), ("npairs", {}), ("npairs", {"metric": "cosine"})]


@pytest.mark.parametrize("form", ["labels", "ref", "indices"])
@pytest.mark.parametrize("name,hp", HALF_CASES, ids=[f"{n}-{h}" for n, h in HALF_CASES])
def test_half_inputs_are_computed_and_returned_in_float32(name, hp, form):
    """Finding 2: fp16 norm-200 embeddings made lifted_structure NaN and npairs inf."""
    check_half_inputs_return_float32(name, ref=form == "ref", indices=form == "indices", **hp)


@pytest.mark.parametrize("name", NAMES)
def test_integer_label_dtypes_are_accepted_and_bool_rejected(name):
    """Finding 7: npairs crashed on uint8 labels (scatter index)."""
    check_integer_labels(name)


@pytest.mark.parametrize("name", NAMES)
def test_nan_propagates(name):
    """NaN in a sample alone in its class gave a finite contrastive loss (fused path)."""
    check_nan_propagates(name)


@pytest.mark.parametrize("name", NAMES)
def test_degenerate_declarations(name):
    check_degenerate_declarations(name, DECLARED[name])


def test_every_hyperparameter_is_validated():
    """Finding 5: NaN margins, string values and out-of-range values are ValueErrors."""
    x, y = batch()
    call = lambda fn, **kw: fn(x, y, **kw)  # noqa: E731
    check_bad_hyperparameters("contrastive", {
        "pos_margin": [math.nan, "0.2", None], "neg_margin": [math.inf, True],
        "power": [0.0, -1.0, math.nan], "metric": ["manhattan"], "mean_over": ["most"]},
        call=call)
    check_bad_hyperparameters("lifted_structure", {
        "pos_margin": [math.nan], "neg_margin": ["1"], "metric": [None]}, call=call)
    check_bad_hyperparameters("npairs", {
        "l2_reg": [-0.1, math.nan, "0"], "metric": ["euclidean"]}, call=call)


# -- PML parity --------------------------------------------------------------------------------


@needs_pml
@pytest.mark.parametrize("power", [1.0, 2.0])
def test_contrastive_matches_pml(power):
    x, y = pml_batch()
    lp = lp_distance()
    pml_loss = pl.ContrastiveLoss(pos_margin=0.2, neg_margin=3.0, distance=lp)
    if power == 1.0:
        both(lambda e, l, **k: LF.contrastive_loss(e, l, pos_margin=0.2, neg_margin=3.0,
                                                   mean_over="nonzero", **k), pml_loss, x, y)
    # mean over all pairs: MeanReducer averages pos and neg parts separately, as ours
    pml_all = pl.ContrastiveLoss(pos_margin=0.2, neg_margin=3.0, distance=lp,
                                 reducer=pr.MeanReducer())
    both(lambda e, l, **k: LF.contrastive_loss(e, l, pos_margin=0.2, neg_margin=3.0, **k),
         pml_all, x, y)


@needs_pml
def test_contrastive_ref_and_indices_match_pml():
    x, y = pml_batch(seed=1)
    r, ry = pml_batch(seed=2)
    pml_loss = pl.ContrastiveLoss(pos_margin=0.2, neg_margin=3.0, distance=lp_distance())
    f = lambda e, l, **k: LF.contrastive_loss(e, l, pos_margin=0.2, neg_margin=3.0,  # noqa: E731
                                              mean_over="nonzero", **k)
    both(f, pml_loss, x, y, ref_embeddings=r, ref_labels=ry)
    idx = miners.batch_hard(x, y)
    both(f, pml_loss, x, y, indices=idx)


@needs_pml
def test_lifted_structure_matches_pml():
    x, y = pml_batch(seed=11)
    both(lambda e, l, **k: LF.lifted_structure_loss(e, l, neg_margin=2.0, **k),
         pl.GeneralizedLiftedStructureLoss(neg_margin=2.0, distance=lp_distance()), x, y)


@needs_pml
def test_npairs_matches_pml():
    x, y = pml_batch(seed=12)
    both(lambda e, l, **k: LF.npairs_loss(e, l, l2_reg=0.0, **k),
         pl.NPairsLoss(distance=pd.DotProductSimilarity(normalize_embeddings=False)), x, y)


@pytest.mark.slow
def test_npairs_compiled_equals_eager():
    """The compile-only static pair slots (one per sample, the samples past the first anchor
    of each class and those without a positive masked) give the eager value and gradient:
    unsorted labels with a singleton class, the degenerate batches (one pair; all labels
    distinct) in the same graph, ``"sum"`` with cosine and no regulariser, and a reference
    set where some anchors have no positive."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(12, 5, generator=g, dtype=torch.float64)
    labels = torch.tensor([2, 1, 2, 0, 5, 1, 0, 0, 1, 3, 3, 2])  # class 5: no positive
    one_pair = torch.tensor([0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    r = torch.randn(7, 5, generator=g, dtype=torch.float64)
    rl = torch.tensor([0, 0, 1, 1, 1, 4, 4])  # classes 2, 3, 5 absent
    check_compiled_equals_eager(losslab.create("npairs"), x, [
        ((labels,), {}), ((one_pair,), {}), ((torch.arange(12),), {})])
    check_compiled_equals_eager(
        losslab.create("npairs", metric="cosine", l2_reg=0.0, reduction="sum"), x,
        [((labels,), {"ref_embeddings": r, "ref_labels": rl})])
