"""The fused paths (closed-form gradient in the forward pass, :mod:`losslab.kernels.matrix_loss`)
against the autograd path that the same losses take with explicit ``indices=`` (all pairs or
all triplets of the labels): values and gradients, float64, in every regime the fused code
branches on (batch vs reference set with missing classes, distances vs similarities, dense vs
sparse gradient, the direct vs sorted all-triplets sweep, reductions)."""

from __future__ import annotations

import pytest
import torch

import losslab.functional as LF
from losslab.kernels import matrix_loss as _fused
from losslab.losses import metric

TOL = {"rtol": 1e-8, "atol": 1e-10}


def data(n=14, dim=6, classes=4, scale=1.0, seed=0, ref=False):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, dim, generator=g, dtype=torch.float64) * scale).requires_grad_(True)
    y = torch.randint(0, classes, (n,), generator=g)
    if not ref:
        return x, y, None, None
    r = (torch.randn(n + 3, dim, generator=g, dtype=torch.float64) * scale).requires_grad_(True)
    ry = torch.randint(0, classes + 2, (n + 3,), generator=g)  # some query classes missing
    ry[0] = y[0]
    return x, y, r, ry


def all_pairs(y, ry=None):
    ry = y if ry is None else ry
    same = y[:, None] == ry[None]
    if ry is y:
        same = same & ~torch.eye(len(y), dtype=torch.bool)
    a1, p = torch.where(same)
    a2, n = torch.where(y[:, None] != ry[None])
    return a1, p, a2, n


def all_triplets(y, ry=None):
    a1, p, a2, n = all_pairs(y, ry)
    i, j = torch.where(a1[:, None] == a2[None])
    return a1[i], p[i], n[j]


def check(fn, x, y, r, ry, idx, reduction, **hp):
    kw = {"ref_embeddings": r, "ref_labels": ry} if r is not None else {}
    leaves = [t for t in (x, r) if t is not None]
    out = fn(x, y, **kw, reduction=reduction, **hp)
    w = torch.linspace(0.5, 1.5, out.numel(), dtype=out.dtype).reshape(out.shape)
    got = torch.autograd.grad((out * w).sum(), leaves)
    ref = fn(x, y, **kw, indices=idx, reduction=reduction, **hp)
    want = torch.autograd.grad((ref * w).sum(), leaves)
    torch.testing.assert_close(out, ref, **TOL)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, **TOL)


REDUCTIONS = ("mean", "sum", "none")


@pytest.mark.parametrize("ref", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("metric_", ["euclidean", "squared_euclidean", "cosine"])
def test_contrastive(ref, reduction, metric_):
    x, y, r, ry = data(ref=ref, scale=0.4)
    hp = {"metric": metric_, "neg_margin": 0.9 if metric_ != "cosine" else 0.2,
          "pos_margin": 0.1 if metric_ != "cosine" else 0.8}
    check(LF.contrastive_loss, x, y, r, ry, all_pairs(y, ry), reduction, **hp)
    check(LF.contrastive_loss, x, y, r, ry, all_pairs(y, ry), reduction, power=2.0, **hp)


def test_contrastive_sparse_gradient(monkeypatch):
    """Far negatives: only the positive pairs have a gradient, kept sparse."""
    x, y, r, ry = data(scale=3.0)
    for ratio in (1, 10**9):  # sparse always / never
        monkeypatch.setattr(_fused, "SPARSE_RATIO", ratio)
        for ref in (False, True):
            x, y, r, ry = data(ref=ref, scale=3.0)
            for red in REDUCTIONS:
                check(LF.contrastive_loss, x, y, r, ry, all_pairs(y, ry), red, neg_margin=0.5)
                check(LF.contrastive_loss, x, y, r, ry, all_pairs(y, ry), red, metric="cosine",
                      neg_margin=0.3)
                check(LF.contrastive_loss, x, y, r, ry, all_pairs(y, ry), red,
                      metric="squared_euclidean", neg_margin=4.0)


@pytest.mark.parametrize("direct", [True, False])
@pytest.mark.parametrize("ref", [False, True])
@pytest.mark.parametrize("metric_", ["euclidean", "cosine"])
def test_triplet_all(monkeypatch, direct, ref, metric_):
    if not direct:
        monkeypatch.setattr(metric, "DIRECT_MAX_POSITIVES", 0)
    x, y, r, ry = data(ref=ref, scale=0.5)
    idx = all_triplets(y, ry)
    for red in REDUCTIONS:
        for mean_over in ("all", "nonzero"):
            check(LF.triplet_loss, x, y, r, ry, idx, red, metric=metric_, margin=0.3,
                  mean_over=mean_over)


@pytest.mark.parametrize("ref", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_similarity_losses(ref, reduction):
    x, y, r, ry = data(ref=ref)
    idx = all_pairs(y, ry)
    check(LF.multi_similarity_loss, x, y, r, ry, idx, reduction, mining=False)
    check(LF.circle_loss, x, y, r, ry, idx, reduction)
    check(LF.supcon_loss, x, y, r, ry, idx, reduction)


def test_multi_similarity_mining_matches_explicit_mined_pairs():
    x, y, _, _ = data(n=20, seed=3)
    got = LF.multi_similarity_loss(x, y)
    s = torch.nn.functional.normalize(x.detach(), dim=1) @ torch.nn.functional.normalize(
        x.detach(), dim=1).t()
    pos = (y[:, None] == y[None]) & ~torch.eye(len(y), dtype=torch.bool)
    neg = y[:, None] != y[None]
    pos, neg = metric.ms_pair_mining(s, pos, neg, 0.1)
    a1, p = torch.where(pos)
    a2, n = torch.where(neg)
    want = LF.multi_similarity_loss(x, y, indices=(a1, p, a2, n))
    torch.testing.assert_close(got, want, **TOL)


def test_batch_hard_matches_explicit_hardest_triplets():
    x, y, r, ry = data(ref=True, scale=0.7)
    for metric_ in ("euclidean", "cosine"):
        d = torch.cdist(x.detach(), r.detach()) if metric_ == "euclidean" else -(
            torch.nn.functional.normalize(x.detach(), dim=1)
            @ torch.nn.functional.normalize(r.detach(), dim=1).t())
        same = y[:, None] == ry[None]
        ok = same.any(1) & (~same).any(1)
        a = torch.where(ok)[0]
        p = d.masked_fill(~same, float("-inf")).argmax(1)[a]
        n = d.masked_fill(same, float("inf")).argmin(1)[a]
        for red in ("mean", "sum"):
            check(LF.triplet_loss, x, y, r, ry, (a, p, n), red, strategy="batch_hard",
                  metric=metric_, margin=0.3)


def test_members():
    y = torch.tensor([2, 0, 2, 1, 2])
    m = _fused.members(y, y, True)
    assert m.idx.shape == (5, 3)
    assert m.n_pos.tolist() == [2, 0, 2, 0, 2]
    assert m.n_neg.tolist() == [2, 4, 2, 4, 2]
    for i in range(5):
        got = set(m.idx[i][m.pos[i]].tolist())
        assert got == {j for j in range(5) if j != i and y[j] == y[i]}
    mat = torch.zeros(5, 5)
    m.fill_(mat, 1.0)
    torch.testing.assert_close(mat, (y[:, None] == y[None]).float())
    ref = torch.tensor([7, 0, 0])
    m = _fused.members(y, ref, False)
    assert m.n_pos.tolist() == [0, 2, 0, 0, 0]
    mat = torch.zeros(5, 3)
    m.fill_(mat, 1.0)
    torch.testing.assert_close(mat, (y[:, None] == ref[None]).float())


def test_gather_rows_backward_sums_repeated_indices():
    src = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    idx = torch.tensor([3, 3, 0, 6, 3, 0])
    assert torch.autograd.gradcheck(lambda s: _fused.gather_rows(s, idx), (src,))
    w = torch.arange(18.0, dtype=torch.float64).view(6, 3)
    (_fused.gather_rows(src, idx) * w).sum().backward()
    ref = torch.zeros(7, 3, dtype=torch.float64).index_add_(0, idx, w)
    assert torch.equal(src.grad, ref)
