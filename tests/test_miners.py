"""Miners: oracles from their definitions (loops), seeding, ref sets, bad input (NaN, label
dtypes, half inputs, hyperparameters), and parity with pytorch-metric-learning's miners."""

from __future__ import annotations

import math

import pytest
import torch

from losslab import miners
from tests.losses.metric_learning.common import lp_distance, needs_pml, pm, pml_batch


def batch(seed=0, n_classes=4, per_class=4, dim=6):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n_classes).repeat_interleave(per_class)
    return torch.randn(y.numel(), dim, generator=g, dtype=torch.float64), y


def test_batch_hard_oracle():
    x, y = batch()
    d = torch.cdist(x, x)
    a, p, n = miners.batch_hard(x, y)
    assert a.tolist() == list(range(len(y)))
    for i, j, k in zip(a.tolist(), p.tolist(), n.tolist()):
        ps = [q for q in range(len(y)) if q != i and y[q] == y[i]]
        ns = [q for q in range(len(y)) if y[q] != y[i]]
        assert d[i, j] == max(d[i, q] for q in ps)
        assert d[i, k] == min(d[i, q] for q in ns)


def test_semi_hard_oracle_and_ref():
    x, y = batch(seed=1)
    r, ry = batch(seed=2)
    d = torch.cdist(x, r)
    a, p, n = miners.semi_hard(x, y, margin=1.0, ref_embeddings=r, ref_labels=ry)
    got = set(zip(a.tolist(), p.tolist(), n.tolist()))
    want = set()
    for i in range(len(y)):
        for j in range(len(ry)):
            if ry[j] != y[i]:
                continue
            c = [k for k in range(len(ry)) if ry[k] != y[i] and d[i, j] < d[i, k] <= d[i, j] + 1]
            if c:
                want.add((i, j, min(c, key=lambda k: d[i, k])))
    assert got == want


def test_distance_weighted_seeded_and_valid():
    x, y = batch(seed=3, dim=16)
    o1 = miners.distance_weighted(x, y, generator=torch.Generator().manual_seed(0))
    o2 = miners.distance_weighted(x, y, generator=torch.Generator().manual_seed(0))
    for u, v in zip(o1, o2):
        assert torch.equal(u, v)
    a, p, n = o1
    xn = torch.nn.functional.normalize(x, dim=1)
    assert torch.all(y[a] == y[p]) and torch.all(y[a] != y[n]) and torch.all(a != p)
    assert torch.all((xn[a] - xn[n]).norm(dim=1) < 1.4)


def test_distance_weighted_follows_inverse_density():
    """Empirical frequencies of the negatives of one anchor follow the weights."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(40, 8, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 0] + [1] * 38)
    counts = torch.zeros(40)
    for s in range(300):
        a, _, n = miners.distance_weighted(x, y, generator=torch.Generator().manual_seed(s))
        counts += torch.bincount(n[a == 0], minlength=40)
    xn = torch.nn.functional.normalize(x, dim=1)
    d = (xn[0] - xn).norm(dim=1).clamp_min(0.5)
    w = d ** (2 - 8) * (1 - d * d / 4).clamp_min(1e-30) ** (-(8 - 3) / 2)
    w[:2] = 0
    w[(xn[0] - xn).norm(dim=1) >= 1.4] = 0
    w = w / w.sum()
    freq = counts / counts.sum()
    assert (freq - w).abs().max() < 0.05


def test_multi_similarity_oracle():
    x, y = batch(seed=5)
    s = torch.nn.functional.normalize(x, dim=1) @ torch.nn.functional.normalize(x, dim=1).t()
    a1, p, a2, n = miners.multi_similarity(x, y, epsilon=0.1)
    got_p, got_n = set(zip(a1.tolist(), p.tolist())), set(zip(a2.tolist(), n.tolist()))
    wp, wn = set(), set()
    for i in range(len(y)):
        ps = [j for j in range(len(y)) if j != i and y[j] == y[i]]
        ns = [j for j in range(len(y)) if y[j] != y[i]]
        wp |= {(i, j) for j in ps if s[i, j] - 0.1 < max(s[i, k] for k in ns)}
        wn |= {(i, j) for j in ns if s[i, j] + 0.1 > min(s[i, k] for k in ps)}
    assert got_p == wp and got_n == wn


def test_miners_no_grad():
    x, y = batch()
    x.requires_grad_(True)
    for t in miners.batch_hard(x, y):
        assert not t.requires_grad


# -- issue #11: bad input and faults ---------------------------------------------------------

MINERS = {
    "batch_hard": lambda x, y, **k: miners.batch_hard(x, y, **k),
    "semi_hard": lambda x, y, **k: miners.semi_hard(x, y, margin=1.0, **k),
    "multi_similarity": lambda x, y, **k: miners.multi_similarity(x, y, **k),
    "distance_weighted": lambda x, y, **k: miners.distance_weighted(
        x, y, generator=torch.Generator().manual_seed(0), **k),
}


@pytest.mark.parametrize("name", MINERS)
def test_non_finite_embeddings_raise(name):
    """A NaN sample was silently skipped (semi hard, multi-similarity, distance weighted) or
    picked as every anchor's hardest pair (batch hard): the loss on the tuples then hid it."""
    x, y = batch(seed=6)
    _, ry = batch(seed=7)
    for bad in (math.nan, math.inf):
        xb = x.clone()
        xb[2, 1] = bad
        with pytest.raises(ValueError, match="embeddings must be finite"):
            MINERS[name](xb, y)
        with pytest.raises(ValueError, match="ref_embeddings must be finite"):
            MINERS[name](x, y, ref_embeddings=xb, ref_labels=ry)


@pytest.mark.parametrize("name", MINERS)
def test_integer_label_dtypes_give_the_int64_tuples_and_bool_is_rejected(name):
    """Finding 7 for the miners."""
    x, y = batch(seed=8)
    r, ry = batch(seed=9)
    want = MINERS[name](x, y, ref_embeddings=r, ref_labels=ry)
    for dt in (torch.int32, torch.uint8):
        got = MINERS[name](x, y.to(dt), ref_embeddings=r, ref_labels=ry.to(dt))
        assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
    with pytest.raises(ValueError, match="labels"):
        MINERS[name](x, y > 1)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("name", MINERS)
def test_half_embeddings_are_mined_on_float32_distances(name, dtype):
    """Finding 2 for the miners: fp16 embeddings of norm ~200 had inf distances, and batch hard
    picked sample 0 as every anchor's nearest negative."""
    x, y = batch(seed=10)
    x = (x / torch.linalg.vector_norm(x, dim=1, keepdim=True) * 200).to(dtype)
    got = MINERS[name](x, y)
    want = MINERS[name](x.float(), y)
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))


def test_hyperparameters_are_validated():
    x, y = batch()
    for bad in (math.nan, "0.2", -1.0):
        with pytest.raises(ValueError, match="margin"):
            miners.semi_hard(x, y, margin=bad)
        with pytest.raises(ValueError, match="epsilon"):
            miners.multi_similarity(x, y, epsilon=bad)
        with pytest.raises(ValueError, match="cutoff"):
            miners.distance_weighted(x, y, cutoff=bad)
        with pytest.raises(ValueError, match="nonzero_loss_cutoff"):
            miners.distance_weighted(x, y, nonzero_loss_cutoff=bad)


# -- PML parity --------------------------------------------------------------------------------


def as_set(*cols):
    return set(zip(*(c.tolist() for c in cols)))


@needs_pml
def test_batch_hard_miner_matches_pml():
    x, y = pml_batch(seed=21)
    ours = miners.batch_hard(x, y)
    theirs = pm.BatchHardMiner(distance=lp_distance())(x, y)
    assert as_set(*ours) == as_set(*theirs)
    r, ry = pml_batch(seed=22)
    ours = miners.batch_hard(x, y, ref_embeddings=r, ref_labels=ry, metric="cosine")
    theirs = pm.BatchHardMiner()(x, y, r, ry)
    assert as_set(*ours) == as_set(*theirs)


@needs_pml
def test_ms_miner_matches_pml():
    x, y = pml_batch(seed=23)
    ours = miners.multi_similarity(x, y, epsilon=0.1)
    theirs = pm.MultiSimilarityMiner(epsilon=0.1)(x, y)
    assert as_set(ours[0], ours[1]) == as_set(theirs[0], theirs[1])
    assert as_set(ours[2], ours[3]) == as_set(theirs[2], theirs[3])


@needs_pml
def test_semi_hard_miner_is_subset_of_pml():
    x, y = pml_batch(seed=24)
    ours = miners.semi_hard(x, y, margin=0.5)
    theirs = as_set(*pm.TripletMarginMiner(margin=0.5, type_of_triplets="semihard",
                                           distance=lp_distance())(x, y))
    mine = as_set(*ours)
    assert mine and mine <= theirs
    # one per positive pair that has any semi-hard negative, and it is the nearest one
    d = torch.cdist(x, x)
    pos_pairs = {(a, p) for a, p, _ in theirs}
    assert {(a, p) for a, p, _ in mine} == pos_pairs
    for a, p, n in mine:
        cands = [nn for aa, pp, nn in theirs if (aa, pp) == (a, p)]
        assert d[a, n] == min(d[a, c] for c in cands)
