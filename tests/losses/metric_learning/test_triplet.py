"""Triplet (all / batch hard / semi hard / soft margin) and triplet ratio: oracles from the
papers' formulas (loops, fp64), the explicit-triplet form of batch hard, ``indices=`` /
reference-set / miner inputs, and parity with pytorch-metric-learning."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import losslab
import losslab.functional as LF
from losslab import miners
from tests.losses.metric_learning.common import (
    ORACLE_TOL,
    batch,
    both,
    check_against_reference,
    check_bad_hyperparameters,
    check_bad_reference_and_indices_raise,
    check_compiled_equals_eager,
    check_degenerate_declarations,
    check_half_inputs_return_float32,
    check_indices_equal_explicit_pairs,
    check_integer_labels,
    check_miners_feed,
    check_nan_propagates,
    dist,
    fused_data,
    lp_distance,
    needs_pml,
    pairs,
    pd,
    pl,
    pm,
    pml_batch,
    pr,
)

NAMES = ["triplet", "triplet_ratio"]


def test_triplet_all_oracle_and_ref():
    x, y = batch()
    r, ry = batch(seed=1)
    for ref in (None, (r, ry)):
        rx = x if ref is None else ref[0]
        pos, neg = pairs(y, None if ref is None else ry)
        terms = [max(0.0, dist(x[a], rx[p]) - dist(x[a], rx[n]) + 0.3)
                 for a, p in pos for a2, n in neg if a2 == a]
        kw = {} if ref is None else {"ref_embeddings": r, "ref_labels": ry}
        got = LF.triplet_loss(x, y, margin=0.3, **kw)
        torch.testing.assert_close(got.item(), sum(terms) / len(terms), **ORACLE_TOL)
        nz = [t for t in terms if t > 0]
        got = LF.triplet_loss(x, y, margin=0.3, mean_over="nonzero", **kw)
        torch.testing.assert_close(got.item(), sum(nz) / len(nz), **ORACLE_TOL)


def test_triplet_all_large_margin_many_ties_gradcheck():
    x, y = batch(dim=3)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda e: LF.triplet_loss(e, y, margin=0.5), (x,))


def test_batch_hard_soft_margin_semi_hard_oracles():
    x, y = batch(seed=2)
    pos, neg = pairs(y)
    n = len(y)
    bh, sm = [], []
    for a in range(n):
        dp = max(dist(x[a], x[p]) for aa, p in pos if aa == a)
        dn = min(dist(x[a], x[q]) for aa, q in neg if aa == a)
        bh.append(max(0.0, dp - dn + 0.2))
        sm.append(math.log1p(math.exp(dp - dn)))
    torch.testing.assert_close(LF.triplet_loss(x, y, strategy="batch_hard").item(),
                               sum(bh) / n, **ORACLE_TOL)
    torch.testing.assert_close(LF.triplet_loss(x, y, strategy="soft_margin").item(),
                               sum(sm) / n, **ORACLE_TOL)
    sh = []
    for a, p in pos:
        dap = dist(x[a], x[p])
        dns = sorted(dist(x[a], x[q]) for aa, q in neg if aa == a)
        farther = [d for d in dns if d > dap]
        dn = farther[0] if farther else dns[-1]
        sh.append(max(0.0, dap - dn + 0.2))
    torch.testing.assert_close(LF.triplet_loss(x, y, strategy="semi_hard").item(),
                               sum(sh) / len(sh), **ORACLE_TOL)


def test_batch_hard_matches_explicit_hardest_triplets():
    """Batch hard (selection without gradient, then the 2N selected pairs) equals the triplet
    loss on the hardest triplets listed as indices=: values and gradients."""
    x, y, r, ry = fused_data(ref=True, scale=0.7)
    for metric in ("euclidean", "cosine"):
        d = torch.cdist(x.detach(), r.detach()) if metric == "euclidean" else -(
            F.normalize(x.detach(), dim=1) @ F.normalize(r.detach(), dim=1).t())
        same = y[:, None] == ry[None]
        ok = same.any(1) & (~same).any(1)
        a = torch.where(ok)[0]
        p = d.masked_fill(~same, float("-inf")).argmax(1)[a]
        n = d.masked_fill(same, float("inf")).argmin(1)[a]
        for red in ("mean", "sum"):
            check_against_reference(LF.triplet_loss, x, y, r, ry, (a, p, n), red,
                                    strategy="batch_hard", metric=metric, margin=0.3)


def test_triplet_ratio_oracle():
    x, y = batch(seed=3)
    pos, neg = pairs(y)
    terms = []
    for a, p in pos:
        for a2, q in neg:
            if a2 != a:
                continue
            ep, en = math.exp(dist(x[a], x[p])), math.exp(dist(x[a], x[q]))
            dp, dn = ep / (ep + en), en / (ep + en)
            terms.append(dp**2 + (dn - 1) ** 2)
    torch.testing.assert_close(LF.triplet_ratio_loss(x, y).item(), sum(terms) / len(terms),
                               **ORACLE_TOL)
    torch.testing.assert_close(LF.triplet_ratio_loss(x, y, chunk_size=1).item(),
                               sum(terms) / len(terms), **ORACLE_TOL)


@pytest.mark.parametrize("name", NAMES)
def test_indices_equal_explicit_triplets(name):
    check_indices_equal_explicit_pairs(name)


@pytest.mark.parametrize("name", NAMES)
def test_bad_reference_and_indices_raise(name):
    check_bad_reference_and_indices_raise(name)


@pytest.mark.parametrize("name", NAMES)
def test_miners_feed_losses(name):
    check_miners_feed(name)


def test_hyperparameters_are_checked_at_construction():
    with pytest.raises(ValueError, match="strategy"):
        losslab.create("triplet", strategy="hardest")
    with pytest.raises(ValueError, match="chunk_size"):
        losslab.create("triplet_ratio", chunk_size=0)
    with pytest.raises(ValueError, match="chunk_size"):
        LF.triplet_ratio_loss(*batch(), chunk_size=-1)


# -- issue #11: bad input and faults ---------------------------------------------------------

#: Finding 9: a triplet needs a positive and a negative of its anchor; a one-class batch and a
#: batch of distinct labels have none (every strategy, and the ratio loss, are zero there).
DECLARED = {"triplet": ("one_class", "no_positives"),
            "triplet_ratio": ("one_class", "no_positives")}
HALF_CASES = [("triplet", {}), ("triplet", {"metric": "cosine"}),
              ("triplet", {"strategy": "batch_hard"}), ("triplet", {"strategy": "soft_margin"}),
              ("triplet", {"strategy": "semi_hard"}), ("triplet_ratio", {}),
              ("triplet_ratio", {"metric": "squared_euclidean", "chunk_size": 2})]


@pytest.mark.parametrize("form", ["labels", "ref", "indices"])
@pytest.mark.parametrize("name,hp", HALF_CASES, ids=[f"{n}-{h}" for n, h in HALF_CASES])
def test_half_inputs_are_computed_and_returned_in_float32(name, hp, form):
    """Finding 2: fp16 norm-200 embeddings made triplet_ratio NaN (fp16 distances)."""
    check_half_inputs_return_float32(name, ref=form == "ref", indices=form == "indices", **hp)


@pytest.mark.parametrize("strategy", ["all", "batch_hard", "semi_hard", "soft_margin"])
def test_integer_label_dtypes_are_accepted_and_bool_rejected(strategy):
    check_integer_labels("triplet", strategy=strategy)
    if strategy == "all":
        check_integer_labels("triplet_ratio")


@pytest.mark.parametrize("strategy", ["all", "batch_hard", "semi_hard", "soft_margin"])
def test_nan_propagates(strategy):
    check_nan_propagates("triplet", strategy=strategy)
    if strategy == "all":
        check_nan_propagates("triplet_ratio")


@pytest.mark.parametrize("strategy", ["all", "batch_hard", "semi_hard", "soft_margin"])
def test_degenerate_declarations(strategy):
    check_degenerate_declarations("triplet", DECLARED["triplet"], strategy=strategy)
    if strategy == "all":
        check_degenerate_declarations("triplet_ratio", DECLARED["triplet_ratio"])


def test_every_hyperparameter_is_validated():
    """Finding 5: a NaN or string margin, chunk_size 0 / -1 / 1.5 are ValueErrors."""
    x, y = batch()
    call = lambda fn, **kw: fn(x, y, **kw)  # noqa: E731
    check_bad_hyperparameters("triplet", {
        "margin": [math.nan, "0.2", -0.1, None], "strategy": ["hardest"],
        "metric": ["l1"], "mean_over": [None]}, call=call)
    check_bad_hyperparameters("triplet_ratio", {
        "chunk_size": [0, -1, 1.5, "8"], "metric": ["manhattan"]}, call=call)


# -- PML parity --------------------------------------------------------------------------------


@needs_pml
@pytest.mark.parametrize("mean_over", ["nonzero", "all"])
def test_triplet_all_matches_pml(mean_over):
    x, y = pml_batch(dim=4)
    kw = {"reducer": pr.MeanReducer()} if mean_over == "all" else {}
    theirs = pl.TripletMarginLoss(margin=1.0, distance=lp_distance(), **kw)
    both(lambda e, l, **k: LF.triplet_loss(e, l, margin=1.0, mean_over=mean_over, **k),
         theirs, x, y)


@needs_pml
def test_triplet_all_cosine_and_ref_match_pml():
    x, y = pml_batch(dim=4, seed=3)
    r, ry = pml_batch(dim=4, seed=4)
    theirs = pl.TripletMarginLoss(margin=0.3, distance=pd.CosineSimilarity())
    f = lambda e, l, **k: LF.triplet_loss(e, l, margin=0.3, metric="cosine",  # noqa: E731
                                          mean_over="nonzero", **k)
    both(f, theirs, x, y)
    both(f, theirs, x, y, ref_embeddings=r, ref_labels=ry)


@needs_pml
def test_triplet_batch_hard_matches_pml():
    x, y = pml_batch(seed=5)
    miner = pm.BatchHardMiner(distance=lp_distance())
    theirs_loss = pl.TripletMarginLoss(margin=0.5, distance=lp_distance())

    def theirs(e, l):
        return theirs_loss(e, l, miner(e, l))

    both(lambda e, l: LF.triplet_loss(e, l, margin=0.5, strategy="batch_hard",
                                      mean_over="nonzero"), theirs, x, y)


@needs_pml
def test_triplet_indices_match_pml():
    x, y = pml_batch(seed=6)
    idx = miners.semi_hard(x, y, margin=1.0)
    theirs = pl.TripletMarginLoss(margin=1.0, distance=lp_distance())
    both(lambda e, l, **k: LF.triplet_loss(e, l, margin=1.0, mean_over="nonzero", **k), theirs,
         x, y, indices=idx)
    mined_pairs = miners.multi_similarity(x, y, epsilon=0.5)
    both(lambda e, l, **k: LF.triplet_loss(e, l, margin=1.0, mean_over="nonzero", **k), theirs,
         x, y, indices=mined_pairs)


# -- adaptive-margin triplet (M2FNet) --------------------------------------------------------------


def _amt_oracle(x, y, rx=None, ry=None):
    """Every valid triplet, written out (fp64): [d_ap - (d_an + d_pn)/2 + m(s_ap, s_an)]_+."""
    ref, rl = (x, None) if rx is None else (rx, ry)
    pos, neg = pairs(y, rl)
    per = [0.0] * len(x)
    count = 0
    for a, p in pos:
        for a2, q in neg:
            if a2 != a:
                continue
            s_ap = float(F.cosine_similarity(x[a], ref[p], dim=0))
            s_an = float(F.cosine_similarity(x[a], ref[q], dim=0))
            m = (1 + 2 * math.exp(-4 * s_ap)) + (1 + 2 * math.exp(4 * s_an - 4))
            t = dist(x[a], ref[p]) - 0.5 * (dist(x[a], ref[q]) + dist(ref[p], ref[q])) + m
            per[a] += max(t, 0.0)
            count += 1
    return per, count


def test_adaptive_margin_triplet_oracle_ref_and_reductions():
    x, y = batch(seed=31)
    x = x * 0.7  # some triplets inside the margin, some outside (hinge active and inactive)
    per, count = _amt_oracle(x, y)
    fn = LF.adaptive_margin_triplet_loss
    torch.testing.assert_close(fn(x, y, reduction="none"), torch.tensor(per, dtype=x.dtype),
                               **ORACLE_TOL)
    torch.testing.assert_close(fn(x, y).item(), sum(per) / count, **ORACLE_TOL)
    torch.testing.assert_close(fn(x, y, chunk_size=2), fn(x, y), **ORACLE_TOL)
    r, ry = batch(seed=32, n_classes=5)
    per_r, count_r = _amt_oracle(x, y, r, ry)
    torch.testing.assert_close(fn(x, y, ref_embeddings=r, ref_labels=ry, reduction="sum").item(),
                               sum(per_r), **ORACLE_TOL)
    torch.testing.assert_close(
        fn(x, y, ref_embeddings=r, ref_labels=ry, chunk_size=3).item(), sum(per_r) / count_r,
        **ORACLE_TOL)


def test_adaptive_margin_grows_with_hardness():
    """m_sim falls as the positive gets similar, m_dissim rises as the negative does; each lies
    in [1 + 2 e^-4, 3] for similarities in [0, 1]."""
    from losslab.losses.metric_learning.triplet import adaptive_margin

    s = torch.linspace(0.0, 1.0, 11, dtype=torch.float64)
    zero = torch.zeros_like(s)
    m_sim = adaptive_margin(s, zero) - adaptive_margin(torch.ones_like(s), zero)  # vs s_ap = 1
    assert torch.all(m_sim[:-1] > 0) and torch.all(m_sim.diff() < 0)
    m_dis = adaptive_margin(torch.ones_like(s), s)
    assert torch.all(m_dis.diff() > 0)
    both_ends = adaptive_margin(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(both_ends, torch.tensor([2 + 4 * math.exp(-4), 6.0]))


def test_adaptive_margin_triplet_explicit_triplets_and_invariances():
    x, y = batch(seed=33)
    fn = LF.adaptive_margin_triplet_loss
    pos, neg = pairs(y)
    trip = [(a, p, q) for a, p in pos for a2, q in neg if a2 == a]
    idx = tuple(torch.tensor(c) for c in zip(*trip))
    torch.testing.assert_close(fn(x, y, indices=idx), fn(x, y), **ORACLE_TOL)
    q = torch.linalg.qr(torch.randn(5, 5, dtype=torch.float64,
                                    generator=torch.Generator().manual_seed(0))).Q
    torch.testing.assert_close(fn(x @ q, y), fn(x, y), **ORACLE_TOL)  # rotation invariance
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(fn(x[perm], y[perm]), fn(x, y), **ORACLE_TOL)


def test_adaptive_margin_triplet_inputs_and_faults():
    name = "adaptive_margin_triplet"
    check_indices_equal_explicit_pairs(name)
    check_bad_reference_and_indices_raise(name)
    check_miners_feed(name)
    check_integer_labels(name)
    check_nan_propagates(name)
    check_degenerate_declarations(name, ("one_class", "no_positives"))
    for form in ("labels", "ref", "indices"):
        check_half_inputs_return_float32(name, ref=form == "ref", indices=form == "indices")
    x, y = batch()
    check_bad_hyperparameters(name, {"chunk_size": [0, 1.5, "2"]},
                              call=lambda fn, **kw: fn(x, y, **kw))



@pytest.mark.slow
def test_adaptive_margin_triplet_compiled_equals_eager():
    """The compile-only static bound P_max = M (the positive slots past an anchor's count
    masked, no early exit) gives the eager value and gradient: unequal class sizes (P_max
    = 3 < M = 12), batches without a triplet (one class; all labels distinct) in the same
    graph, and a reference set with classes absent from it."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(12, 5, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 0, 1, 3, 3, 3])  # class sizes 4, 3, 2, 3
    r = torch.randn(7, 5, generator=g, dtype=torch.float64)
    rl = torch.tensor([0, 0, 1, 1, 1, 4, 4])
    m = losslab.create("adaptive_margin_triplet", chunk_size=5)  # 3 chunks, the last short
    check_compiled_equals_eager(m, x, [((labels,), {}), ((torch.zeros(12, dtype=torch.long),), {}),
                                  ((torch.arange(12),), {})])
    check_compiled_equals_eager(losslab.create("adaptive_margin_triplet", reduction="none"), x,
                           [((labels,), {"ref_embeddings": r, "ref_labels": rl})])
