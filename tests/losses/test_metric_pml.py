"""Peer parity with pytorch-metric-learning 2.9.0: values and gradients, fp64, to 1e-5.

PML is configured to our definition: ``LpDistance(normalize_embeddings=False)`` for euclidean
losses, ``CosineSimilarity()`` for cosine ones, and the reducer matching our ``mean_over``.
"""

from __future__ import annotations

import pytest
import torch

import losslab.functional as LF
from losslab import miners

pml = pytest.importorskip("pytorch_metric_learning")
from pytorch_metric_learning import distances as pd  # noqa: E402
from pytorch_metric_learning import losses as pl  # noqa: E402
from pytorch_metric_learning import miners as pm  # noqa: E402
from pytorch_metric_learning import reducers as pr  # noqa: E402

TOL = {"rtol": 1e-5, "atol": 1e-7}


def batch(n_classes=6, per_class=4, dim=8, seed=0, ref=False):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    labels = labels[torch.randperm(labels.numel(), generator=g)]
    x = torch.randn(labels.numel(), dim, generator=g, dtype=torch.float64)
    return x, labels


def both(ours, theirs, x, labels, **kw):
    xa = x.clone().requires_grad_(True)
    xb = x.clone().requires_grad_(True)
    va = ours(xa, labels, **kw)
    kb = {}
    if "ref_embeddings" in kw:
        kb = {"ref_emb": kw["ref_embeddings"], "ref_labels": kw["ref_labels"]}
    if "indices" in kw:
        kb["indices_tuple"] = kw["indices"]
    vb = theirs(xb, labels, **kb)
    va.backward()
    vb.backward()
    torch.testing.assert_close(va, vb, **TOL)
    torch.testing.assert_close(xa.grad, xb.grad, **TOL)
    return va


LP = pd.LpDistance(normalize_embeddings=False)


@pytest.mark.parametrize("power", [1.0, 2.0])
def test_contrastive(power):
    x, y = batch()
    pml_loss = pl.ContrastiveLoss(pos_margin=0.2, neg_margin=3.0, distance=pd.LpDistance(
        normalize_embeddings=False, power=power) if False else LP)
    if power == 1.0:
        both(lambda e, l, **k: LF.contrastive_loss(e, l, pos_margin=0.2, neg_margin=3.0,
                                                   mean_over="nonzero", **k), pml_loss, x, y)
    # mean over all pairs: MeanReducer averages pos and neg parts separately, as ours
    pml_all = pl.ContrastiveLoss(pos_margin=0.2, neg_margin=3.0, distance=LP,
                                 reducer=pr.MeanReducer())
    both(lambda e, l, **k: LF.contrastive_loss(e, l, pos_margin=0.2, neg_margin=3.0, **k),
         pml_all, x, y)


def test_contrastive_ref_and_indices():
    x, y = batch(seed=1)
    r, ry = batch(seed=2)
    pml_loss = pl.ContrastiveLoss(pos_margin=0.2, neg_margin=3.0, distance=LP)
    f = lambda e, l, **k: LF.contrastive_loss(e, l, pos_margin=0.2, neg_margin=3.0,  # noqa: E731
                                              mean_over="nonzero", **k)
    both(f, pml_loss, x, y, ref_embeddings=r, ref_labels=ry)
    idx = miners.batch_hard(x, y)
    both(f, pml_loss, x, y, indices=idx)


@pytest.mark.parametrize("mean_over,reducer", [("nonzero", None), ("all", pr.MeanReducer())])
def test_triplet_all(mean_over, reducer):
    x, y = batch(dim=4)
    kw = {"reducer": reducer} if reducer is not None else {}
    theirs = pl.TripletMarginLoss(margin=1.0, distance=LP, **kw)
    both(lambda e, l, **k: LF.triplet_loss(e, l, margin=1.0, mean_over=mean_over, **k),
         theirs, x, y)


def test_triplet_all_cosine_and_ref():
    x, y = batch(dim=4, seed=3)
    r, ry = batch(dim=4, seed=4)
    theirs = pl.TripletMarginLoss(margin=0.3, distance=pd.CosineSimilarity())
    f = lambda e, l, **k: LF.triplet_loss(e, l, margin=0.3, metric="cosine",  # noqa: E731
                                          mean_over="nonzero", **k)
    both(f, theirs, x, y)
    both(f, theirs, x, y, ref_embeddings=r, ref_labels=ry)


def test_triplet_batch_hard():
    x, y = batch(seed=5)
    miner = pm.BatchHardMiner(distance=LP)
    theirs_loss = pl.TripletMarginLoss(margin=0.5, distance=LP)

    def theirs(e, l):
        return theirs_loss(e, l, miner(e, l))

    both(lambda e, l: LF.triplet_loss(e, l, margin=0.5, strategy="batch_hard",
                                      mean_over="nonzero"), theirs, x, y)


def test_triplet_indices_and_smooth():
    x, y = batch(seed=6)
    idx = miners.semi_hard(x, y, margin=1.0)
    theirs = pl.TripletMarginLoss(margin=1.0, distance=LP)
    both(lambda e, l, **k: LF.triplet_loss(e, l, margin=1.0, mean_over="nonzero", **k), theirs,
         x, y, indices=idx)
    pairs = miners.multi_similarity(x, y, epsilon=0.5)
    both(lambda e, l, **k: LF.triplet_loss(e, l, margin=1.0, mean_over="nonzero", **k), theirs,
         x, y, indices=pairs)


@pytest.mark.parametrize("mining", [False, True])
def test_multi_similarity(mining):
    x, y = batch(seed=7)
    theirs_loss = pl.MultiSimilarityLoss(alpha=2, beta=50, base=0.5)
    miner = pm.MultiSimilarityMiner(epsilon=0.1)

    def theirs(e, l, **k):
        if mining:
            return theirs_loss(e, l, miner(e, l, k.get("ref_emb"), k.get("ref_labels")), **k)
        return theirs_loss(e, l, **k)

    f = lambda e, l, **k: LF.multi_similarity_loss(e, l, mining=mining, **k)  # noqa: E731
    both(f, theirs, x, y)
    r, ry = batch(seed=8)
    both(f, theirs, x, y, ref_embeddings=r, ref_labels=ry)


def test_circle():
    x, y = batch(seed=9)
    both(lambda e, l, **k: LF.circle_loss(e, l, **k), pl.CircleLoss(m=0.4, gamma=80), x, y)
    r, ry = batch(seed=10)
    both(lambda e, l, **k: LF.circle_loss(e, l, margin=0.25, scale=256.0, **k),
         pl.CircleLoss(m=0.25, gamma=256), x, y, ref_embeddings=r, ref_labels=ry)


def test_lifted_structure():
    x, y = batch(seed=11)
    both(lambda e, l, **k: LF.lifted_structure_loss(e, l, neg_margin=2.0, **k),
         pl.GeneralizedLiftedStructureLoss(neg_margin=2.0, distance=LP), x, y)


def test_npairs():
    x, y = batch(seed=12)
    both(lambda e, l, **k: LF.npairs_loss(e, l, l2_reg=0.0, **k),
         pl.NPairsLoss(distance=pd.DotProductSimilarity(normalize_embeddings=False)), x, y)


def test_supcon():
    x, y = batch(seed=13)
    both(lambda e, l, **k: LF.supcon_loss(e, l, temperature=0.1, **k),
         pl.SupConLoss(temperature=0.1), x, y)
    r, ry = batch(seed=14)
    both(lambda e, l, **k: LF.supcon_loss(e, l, temperature=0.5, **k),
         pl.SupConLoss(temperature=0.5), x, y, ref_embeddings=r, ref_labels=ry)


def test_tcm():
    x, y = batch(seed=15, dim=3)
    both(lambda e, l, **k: LF.tcm_loss(e, l, pos_margin=0.5, neg_margin=0.2, **k),
         pl.ThresholdConsistentMarginLoss(margin_plus=0.5, margin_minus=0.2), x, y)


# -- proxy losses: copy the proxies (PML's W is [D, C]) -------------------------------------


def proxy_both(ours, theirs, param, x, y, transpose):
    proxies = param.detach().clone()
    if transpose:
        proxies = proxies.t().contiguous()
    proxies.requires_grad_(True)
    xa = x.clone().requires_grad_(True)
    xb = x.clone().requires_grad_(True)
    va = ours(xa, y, proxies)
    vb = theirs(xb, y)
    va.backward()
    vb.backward()
    torch.testing.assert_close(va, vb, **TOL)
    torch.testing.assert_close(xa.grad, xb.grad, **TOL)
    g = param.grad.t() if transpose else param.grad
    torch.testing.assert_close(proxies.grad, g, **TOL)


def test_proxy_anchor():
    x, y = batch(seed=16)
    t = pl.ProxyAnchorLoss(num_classes=8, embedding_size=8, margin=0.1, alpha=32).double()
    proxy_both(lambda e, l, p: LF.proxy_anchor_loss(e, l, p), t, t.proxies, x, y, False)


def test_proxy_nca():
    x, y = batch(seed=17)
    t = pl.ProxyNCALoss(num_classes=6, embedding_size=8, softmax_scale=3.0).double()
    proxy_both(lambda e, l, p: LF.proxy_nca_loss(e, l, p, scale=3.0, exclude_positive=False),
               t, t.proxies, x, y, False)


def test_normalized_softmax():
    x, y = batch(seed=18)
    t = pl.NormalizedSoftmaxLoss(num_classes=6, embedding_size=8, temperature=0.05).double()
    proxy_both(lambda e, l, p: LF.normalized_softmax_loss(e, l, p), t, t.W, x, y, True)


def test_arcface():
    x, y = batch(seed=19)
    t = pl.ArcFaceLoss(num_classes=6, embedding_size=8, margin=28.6, scale=64).double()
    proxy_both(lambda e, l, p: LF.arcface_loss(e, l, p, margin=float(torch.deg2rad(
        torch.tensor(28.6, dtype=torch.float64)))), t, t.W, x, y, True)


def test_cosface():
    x, y = batch(seed=20)
    t = pl.CosFaceLoss(num_classes=6, embedding_size=8, margin=0.35, scale=64).double()
    proxy_both(lambda e, l, p: LF.cosface_loss(e, l, p), t, t.W, x, y, True)


# -- miners ----------------------------------------------------------------------------------


def as_set(*cols):
    return set(zip(*(c.tolist() for c in cols)))


def test_batch_hard_miner_matches_pml():
    x, y = batch(seed=21)
    ours = miners.batch_hard(x, y)
    theirs = pm.BatchHardMiner(distance=LP)(x, y)
    assert as_set(*ours) == as_set(*theirs)
    r, ry = batch(seed=22)
    ours = miners.batch_hard(x, y, ref_embeddings=r, ref_labels=ry, metric="cosine")
    theirs = pm.BatchHardMiner()(x, y, r, ry)
    assert as_set(*ours) == as_set(*theirs)


def test_ms_miner_matches_pml():
    x, y = batch(seed=23)
    ours = miners.multi_similarity(x, y, epsilon=0.1)
    theirs = pm.MultiSimilarityMiner(epsilon=0.1)(x, y)
    assert as_set(ours[0], ours[1]) == as_set(theirs[0], theirs[1])
    assert as_set(ours[2], ours[3]) == as_set(theirs[2], theirs[3])


def test_semi_hard_miner_is_subset_of_pml():
    x, y = batch(seed=24)
    ours = miners.semi_hard(x, y, margin=0.5)
    theirs = as_set(*pm.TripletMarginMiner(margin=0.5, type_of_triplets="semihard",
                                           distance=LP)(x, y))
    mine = as_set(*ours)
    assert mine and mine <= theirs
    # one per positive pair that has any semi-hard negative, and it is the nearest one
    d = torch.cdist(x, x)
    pairs = {(a, p) for a, p, _ in theirs}
    assert {(a, p) for a, p, _ in mine} == pairs
    for a, p, n in mine:
        cands = [nn for aa, pp, nn in theirs if (aa, pp) == (a, p)]
        assert d[a, n] == min(d[a, c] for c in cands)
