"""Multi-similarity, circle, SupCon: oracles from the papers' formulas (loops, fp64), the MS
pair mining, ``indices=`` / reference-set / miner inputs, the class-level circle module, and
parity with pytorch-metric-learning."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import losslab
import losslab.functional as LF
from losslab._ops.pairs import ms_pair_mining
from tests.losses.metric_learning.common import (
    FUSED_TOL,
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
    cos,
    fused_data,
    needs_pml,
    pl,
    pm,
    pml_batch,
)

NAMES = ["multi_similarity", "circle", "supcon"]


def test_multi_similarity_oracle_with_mining():
    x, y = batch(seed=5)
    al, be, lam, eps = 2.0, 50.0, 0.5, 0.1
    n = len(y)
    total = 0.0
    for i in range(n):
        sp = [cos(x[i], x[j]) for j in range(n) if j != i and y[j] == y[i]]
        sn = [cos(x[i], x[j]) for j in range(n) if y[j] != y[i]]
        sp_m = [s for s in sp if s - eps < max(sn)]
        sn_m = [s for s in sn if s + eps > min(sp)]
        total += math.log1p(sum(math.exp(-al * (s - lam)) for s in sp_m)) / al
        total += math.log1p(sum(math.exp(be * (s - lam)) for s in sn_m)) / be
    torch.testing.assert_close(LF.multi_similarity_loss(x, y).item(), total / n, **ORACLE_TOL)


def test_multi_similarity_mining_matches_explicit_mined_pairs():
    """The fused path's mining equals the autograd path on the mined pairs."""
    x, y, _, _ = fused_data(n=20, seed=3)
    got = LF.multi_similarity_loss(x, y)
    s = F.normalize(x.detach(), dim=1) @ F.normalize(x.detach(), dim=1).t()
    pos = (y[:, None] == y[None]) & ~torch.eye(len(y), dtype=torch.bool)
    neg = y[:, None] != y[None]
    pos, neg = ms_pair_mining(s, pos, neg, 0.1)
    a1, p = torch.where(pos)
    a2, n = torch.where(neg)
    want = LF.multi_similarity_loss(x, y, indices=(a1, p, a2, n))
    torch.testing.assert_close(got, want, **FUSED_TOL)


def test_circle_oracle_pair_and_class_level():
    x, y = batch(seed=6)
    m, g = 0.25, 16.0
    n = len(y)

    def circle(sp, sn):
        a = sum(math.exp(g * max(0, s + m) * (s - m)) for s in sn)
        b = sum(math.exp(-g * max(0, 1 + m - s) * (s - 1 + m)) for s in sp)
        return math.log1p(a * b)

    vals = [circle([cos(x[i], x[j]) for j in range(n) if j != i and y[j] == y[i]],
                   [cos(x[i], x[j]) for j in range(n) if y[j] != y[i]]) for i in range(n)]
    torch.testing.assert_close(LF.circle_loss(x, y, margin=m, scale=g).item(),
                               sum(vals) / n, **ORACLE_TOL)
    w = torch.randn(4, 5, dtype=torch.float64)
    vals = [circle([cos(x[i], w[y[i]])], [cos(x[i], w[c]) for c in range(4) if c != y[i]])
            for i in range(n)]
    torch.testing.assert_close(LF.circle_loss(x, y, w, margin=m, scale=g).item(),
                               sum(vals) / n, **ORACLE_TOL)


def test_circle_module_class_level_owns_proxies():
    torch.manual_seed(0)
    m = losslab.create("circle", num_classes=4, embedding_dim=5, scale=16.0)
    assert m.proxies is not None and m.proxies.shape == (4, 5)
    assert m.config == {"num_classes": 4, "embedding_dim": 5}
    x, y = batch(seed=6)
    out = m(x.float(), y)
    torch.testing.assert_close(out, LF.circle_loss(x.float(), y, m.proxies, scale=16.0))
    out.backward()
    assert m.proxies.grad is not None and torch.count_nonzero(m.proxies.grad) > 0
    assert losslab.create("circle").proxies is None
    with pytest.raises(ValueError, match="together"):
        losslab.create("circle", num_classes=4)
    with pytest.raises(ValueError, match="class proxies"):
        m(x.float(), y, ref_embeddings=x.float(), ref_labels=y)


def test_supcon_oracle():
    x, y = batch(seed=7)
    n = len(y)
    t = 0.1
    vals = []
    for i in range(n):
        others = [j for j in range(n) if j != i]
        den = sum(math.exp(cos(x[i], x[j]) / t) for j in others)
        ps = [j for j in others if y[j] == y[i]]
        vals.append(-sum(math.log(math.exp(cos(x[i], x[p]) / t) / den) for p in ps) / len(ps))
    torch.testing.assert_close(LF.supcon_loss(x, y).item(), sum(vals) / n, **ORACLE_TOL)


@pytest.mark.parametrize("name", NAMES)
def test_indices_equal_explicit_pairs(name):
    check_indices_equal_explicit_pairs(name)


@pytest.mark.parametrize("name", NAMES)
def test_bad_reference_and_indices_raise(name):
    check_bad_reference_and_indices_raise(name)


@pytest.mark.parametrize("name", NAMES)
def test_miners_feed_losses(name):
    check_miners_feed(name)


def test_hyperparameters_are_checked_by_module_and_function():
    x, y = batch()
    for bad in ({"alpha": 0.0}, {"beta": -1.0}, {"metric": "euclidean"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            losslab.create("multi_similarity", **bad)
        with pytest.raises(ValueError, match=next(iter(bad))):
            LF.multi_similarity_loss(x, y, **bad)
    with pytest.raises(ValueError, match="scale"):
        LF.circle_loss(x, y, scale=0.0)
    with pytest.raises(ValueError, match="temperature"):
        losslab.create("supcon", temperature=0.0)


# -- issue #11: bad input and faults ---------------------------------------------------------

#: Finding 9: multi-similarity mines a positive only below the hardest negative and a negative
#: only above the easiest positive, so a batch without negatives (one class) or without
#: positives keeps no pair (zero with the paper's mining, the default); circle's loss is
#: log(1 + sum_n sum_p ...), 0 when either sum is empty; SupCon: an anchor without a positive
#: has no term (the mean over P(i) is empty), and one without a negative is left out as in PML
#: (the paper's L_out would give it lse - mean over its positives, >= log |P(i)|).
DECLARED = {"multi_similarity": ("one_class", "no_positives"),
            "circle": ("one_class", "no_positives"), "supcon": ("one_class", "no_positives")}
HALF_CASES = [("multi_similarity", {}), ("multi_similarity", {"mining": False, "metric": "dot"}),
              ("circle", {}), ("circle", {"num_classes": 4, "embedding_dim": 5}),
              ("supcon", {}), ("supcon", {"metric": "dot", "temperature": 1000.0})]


@pytest.mark.parametrize("form", ["labels", "ref", "indices"])
@pytest.mark.parametrize("name,hp", HALF_CASES, ids=[f"{n}-{h}" for n, h in HALF_CASES])
def test_half_inputs_are_computed_and_returned_in_float32(name, hp, form):
    """Finding 2: half inputs returned the input dtype (a float32 value rounded to fp16)."""
    if "num_classes" in hp and form != "labels":
        pytest.skip("the class-level form takes no ref_embeddings / indices")
    check_half_inputs_return_float32(name, ref=form == "ref", indices=form == "indices", **hp)


@pytest.mark.parametrize("name", NAMES)
def test_integer_label_dtypes_are_accepted_and_bool_rejected(name):
    check_integer_labels(name)


@pytest.mark.parametrize("mining", [True, False])
@pytest.mark.parametrize("name", NAMES)
def test_nan_propagates(name, mining):
    """A NaN embedding gave a finite multi-similarity loss: the mining's comparisons dropped
    its pairs (fused path)."""
    if name != "multi_similarity" and not mining:
        pytest.skip("no mining option")
    check_nan_propagates(name, **({} if name != "multi_similarity" else {"mining": mining}))


def test_nan_in_class_level_circle_proxies_propagates():
    x, y = batch()
    m = losslab.create("circle", num_classes=4, embedding_dim=5).double()
    with torch.no_grad():
        m.proxies[2, 1] = math.nan
    assert torch.isnan(m(x, y))


@pytest.mark.parametrize("name", NAMES)
def test_degenerate_declarations(name):
    check_degenerate_declarations(name, DECLARED[name])


def test_every_hyperparameter_is_validated():
    """Finding 5: NaN / string / out-of-range values of every hyperparameter."""
    x, y = batch()
    call = lambda fn, **kw: fn(x, y, **kw)  # noqa: E731
    check_bad_hyperparameters("multi_similarity", {
        "alpha": [0.0, math.nan], "beta": [-1.0, "50"], "base": [math.nan, None],
        "epsilon": [-0.1, math.inf], "mining": [1, None], "metric": ["euclidean"]}, call=call)
    check_bad_hyperparameters("circle", {
        "margin": [math.nan, "0.25"], "scale": [0.0, math.nan],
        "num_classes": [0, 2.5, "4"], "embedding_dim": [-1, math.nan]}, call=call)
    check_bad_hyperparameters("supcon", {
        "temperature": [0.0, math.nan, "0.1"], "metric": ["cosine_similarity"]}, call=call)


# -- PML parity --------------------------------------------------------------------------------


@needs_pml
@pytest.mark.parametrize("mining", [False, True])
def test_multi_similarity_matches_pml(mining):
    x, y = pml_batch(seed=7)
    theirs_loss = pl.MultiSimilarityLoss(alpha=2, beta=50, base=0.5)
    miner = pm.MultiSimilarityMiner(epsilon=0.1)

    def theirs(e, l, **k):
        if mining:
            return theirs_loss(e, l, miner(e, l, k.get("ref_emb"), k.get("ref_labels")), **k)
        return theirs_loss(e, l, **k)

    f = lambda e, l, **k: LF.multi_similarity_loss(e, l, mining=mining, **k)  # noqa: E731
    both(f, theirs, x, y)
    r, ry = pml_batch(seed=8)
    both(f, theirs, x, y, ref_embeddings=r, ref_labels=ry)


@needs_pml
def test_circle_matches_pml():
    x, y = pml_batch(seed=9)
    both(lambda e, l, **k: LF.circle_loss(e, l, **k), pl.CircleLoss(m=0.4, gamma=80), x, y)
    r, ry = pml_batch(seed=10)
    both(lambda e, l, **k: LF.circle_loss(e, l, margin=0.25, scale=256.0, **k),
         pl.CircleLoss(m=0.25, gamma=256), x, y, ref_embeddings=r, ref_labels=ry)


@needs_pml
def test_supcon_matches_pml():
    x, y = pml_batch(seed=13)
    both(lambda e, l, **k: LF.supcon_loss(e, l, temperature=0.1, **k),
         pl.SupConLoss(temperature=0.1), x, y)
    r, ry = pml_batch(seed=14)
    both(lambda e, l, **k: LF.supcon_loss(e, l, temperature=0.5, **k),
         pl.SupConLoss(temperature=0.5), x, y, ref_embeddings=r, ref_labels=ry)
