"""Oracles from the papers' formulas (explicit Python loops, fp64) for the pair/triplet losses,
plus ref_embeddings / indices / degenerate / bad-input cases."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import losslab
import losslab.functional as LF
from losslab import miners

TOL = {"rtol": 1e-9, "atol": 1e-10}


def batch(n_classes=4, per_class=3, dim=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n_classes).repeat_interleave(per_class)
    y = y[torch.randperm(y.numel(), generator=g)]
    return torch.randn(y.numel(), dim, generator=g, dtype=torch.float64), y


def dist(a, b):
    return float(torch.linalg.vector_norm(a - b))


def cos(a, b):
    return float(F.cosine_similarity(a, b, dim=0))


def pairs(y, ry=None):
    """(anchor, ref) positive and negative pairs, self excluded when ry is None."""
    ry = y if ry is None else ry
    pos = [(i, j) for i in range(len(y)) for j in range(len(ry))
           if y[i] == ry[j] and not (ry is y and i == j)]
    neg = [(i, j) for i in range(len(y)) for j in range(len(ry)) if y[i] != ry[j]]
    return pos, neg


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
        torch.testing.assert_close(got.item(), sum(terms) / len(terms), **TOL)
        nz = [t for t in terms if t > 0]
        got = LF.triplet_loss(x, y, margin=0.3, mean_over="nonzero", **kw)
        torch.testing.assert_close(got.item(), sum(nz) / len(nz), **TOL)


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
                               sum(bh) / n, **TOL)
    torch.testing.assert_close(LF.triplet_loss(x, y, strategy="soft_margin").item(),
                               sum(sm) / n, **TOL)
    sh = []
    for a, p in pos:
        dap = dist(x[a], x[p])
        dns = sorted(dist(x[a], x[q]) for aa, q in neg if aa == a)
        farther = [d for d in dns if d > dap]
        dn = farther[0] if farther else dns[-1]
        sh.append(max(0.0, dap - dn + 0.2))
    torch.testing.assert_close(LF.triplet_loss(x, y, strategy="semi_hard").item(),
                               sum(sh) / len(sh), **TOL)


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
                               **TOL)
    torch.testing.assert_close(LF.triplet_ratio_loss(x, y, chunk_size=1).item(),
                               sum(terms) / len(terms), **TOL)


def test_contrastive_oracle():
    x, y = batch(seed=4)
    pos, neg = pairs(y)
    lp = [max(0.0, dist(x[a], x[p]) - 0.5) ** 2 for a, p in pos]
    ln = [max(0.0, 3.0 - dist(x[a], x[q])) ** 2 for a, q in neg]
    got = LF.contrastive_loss(x, y, pos_margin=0.5, neg_margin=3.0, power=2)
    torch.testing.assert_close(got.item(), sum(lp) / len(lp) + sum(ln) / len(ln), **TOL)
    got = LF.contrastive_loss(x, y, pos_margin=0.5, neg_margin=3.0, power=2, reduction="sum")
    torch.testing.assert_close(got.item(), sum(lp) + sum(ln), **TOL)


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
    torch.testing.assert_close(LF.multi_similarity_loss(x, y).item(), total / n, **TOL)


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
                               sum(vals) / n, **TOL)
    w = torch.randn(4, 5, dtype=torch.float64)
    vals = [circle([cos(x[i], w[y[i]])], [cos(x[i], w[c]) for c in range(4) if c != y[i]])
            for i in range(n)]
    torch.testing.assert_close(LF.circle_loss(x, y, w, margin=m, scale=g).item(),
                               sum(vals) / n, **TOL)


def test_lifted_npairs_supcon_oracles():
    x, y = batch(seed=7)
    n = len(y)
    vals = []
    for i in range(n):
        lp = math.log(sum(math.exp(dist(x[i], x[j])) for j in range(n) if j != i and y[j] == y[i]))
        ln = math.log(sum(math.exp(1.0 - dist(x[i], x[j])) for j in range(n) if y[j] != y[i]))
        vals.append(max(0.0, lp + ln))
    torch.testing.assert_close(LF.lifted_structure_loss(x, y).item(), sum(vals) / n, **TOL)

    t = 0.1
    vals = []
    for i in range(n):
        others = [j for j in range(n) if j != i]
        den = sum(math.exp(cos(x[i], x[j]) / t) for j in others)
        ps = [j for j in others if y[j] == y[i]]
        vals.append(-sum(math.log(math.exp(cos(x[i], x[p]) / t) / den) for p in ps) / len(ps))
    torch.testing.assert_close(LF.supcon_loss(x, y).item(), sum(vals) / n, **TOL)

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
    torch.testing.assert_close(LF.npairs_loss(x, y).item(), sum(vals) / len(vals), **TOL)


def test_tcm_oracle():
    x, y = batch(seed=8, dim=2)
    pos, neg = pairs(y)
    sp = [cos(x[a], x[p]) for a, p in pos]
    sn = [cos(x[a], x[q]) for a, q in neg]
    hp = [0.9 - s for s in sp if s <= 0.9]
    hn = [s - 0.5 for s in sn if s >= 0.5]
    want = (sum(hp) / len(hp) if hp else 0.0) + (sum(hn) / len(hn) if hn else 0.0)
    torch.testing.assert_close(LF.tcm_loss(x, y).item(), want, **TOL)
    combo = losslab.combine({"multi_similarity": 1.0, "tcm": 0.5})
    torch.testing.assert_close(combo(x, y).item(),
                               (LF.multi_similarity_loss(x, y) + 0.5 * want).item(), **TOL)


PAIR_LOSSES = ["contrastive", "triplet", "triplet_ratio", "multi_similarity", "circle",
               "lifted_structure", "npairs", "supcon", "tcm"]


@pytest.mark.parametrize("name", PAIR_LOSSES)
def test_indices_equal_explicit_pairs(name):
    """Passing all label pairs as indices= gives the label-based value (mining off)."""
    x, y = batch(seed=9)
    hp = {"mining": False} if name == "multi_similarity" else {}
    if name == "triplet_ratio" or name == "triplet":
        pos, neg = pairs(y)
        trip = [(a, p, q) for a, p in pos for a2, q in neg if a2 == a]
        idx = tuple(torch.tensor(c) for c in zip(*trip))
    else:
        a1, p = torch.where((y[:, None] == y[None]) & ~torch.eye(len(y), dtype=torch.bool))
        a2, q = torch.where(y[:, None] != y[None])
        idx = (a1, p, a2, q)
    loss = losslab.create(name, **hp)
    torch.testing.assert_close(loss(x, y, indices=idx), loss(x, y), **TOL)


@pytest.mark.parametrize("name", [*PAIR_LOSSES, "metrix"])
def test_degenerate_batches_zero_loss_zero_grad(name):
    # one class / no positives; pair losses with per-pair terms (contrastive, tcm) are only
    # degenerate without any pair: a single sample
    ys = (torch.zeros(6, dtype=torch.long), torch.arange(6))
    if name in ("contrastive", "tcm"):
        ys = (torch.zeros(1, dtype=torch.long),)
    if name == "metrix":  # mixing creates soft positives when labels are all distinct
        ys = ys[:1]
    for y in ys:
        x = torch.randn(len(y), 4, dtype=torch.float64, requires_grad=True)
        out = losslab.create(name)(x, y)
        assert out.item() == 0.0
        out.backward()
        assert x.grad is not None and torch.all(x.grad == 0)


@pytest.mark.parametrize("name", PAIR_LOSSES)
def test_bad_inputs_raise(name):
    loss = losslab.create(name)
    x, y = torch.randn(6, 4), torch.tensor([0, 0, 1, 1, 2, 2])
    with pytest.raises(ValueError, match="embeddings"):
        loss(torch.randn(6), y)
    with pytest.raises(ValueError, match="labels"):
        loss(x, y[:5])
    with pytest.raises(ValueError, match="labels"):
        loss(x, y.float())
    with pytest.raises(ValueError, match="ref_"):
        loss(x, y, ref_embeddings=x)
    with pytest.raises(ValueError, match="ref_embeddings"):
        loss(x, y, ref_embeddings=torch.randn(3, 5), ref_labels=y[:3])
    with pytest.raises(ValueError, match="indices"):
        loss(x, y, indices=(torch.tensor([0]), torch.tensor([9]), torch.tensor([2])))
    with pytest.raises(ValueError, match="indices"):
        loss(x, y, indices=(torch.tensor([0]),))


@pytest.mark.parametrize("name", PAIR_LOSSES)
def test_gradcheck_and_reduction_shapes(name):
    x, y = batch(n_classes=3, per_class=2, dim=3, seed=10)
    x.requires_grad_(True)
    loss = losslab.create(name)
    if name != "circle":  # circle's weights alpha_p, alpha_n are not differentiated (paper)
        assert torch.autograd.gradcheck(lambda e: loss(e, y), (x,))
    if "reduction" in losslab.spec(name).defaults:
        none = losslab.create(name, reduction="none")(x, y)
        torch.testing.assert_close(none.sum(), losslab.create(name, reduction="sum")(x, y))


def test_half_precision_finite():
    x, y = batch(seed=11)
    for name in PAIR_LOSSES:
        for dt in (torch.float16, torch.bfloat16):
            out = losslab.create(name)(x.to(dt) * 30, y)
            assert torch.isfinite(out.float()).all(), name


def test_metrix_reduces_to_base_and_mixes():
    x, y = batch(seed=12)
    for base in ("contrastive", "multi_similarity"):
        m0 = losslab.create("metrix", base=base, weight=0.0)
        torch.testing.assert_close(m0(x, y), losslab.create(base)(x, y))
        m = losslab.create("metrix", base=base, seed=0)
        x1 = x.clone().requires_grad_(True)
        v = m(x1, y)
        v.backward()
        assert torch.isfinite(v) and v > losslab.create(base)(x, y)
    pa = losslab.create("metrix", base="proxy_anchor",
                        base_hparams={"num_classes": 4, "embedding_dim": 5}, seed=0)
    v = pa(x, y)
    v.backward()
    assert pa.base_loss.proxies.grad is not None


def test_metrix_mixed_loss_with_hard_labels_is_base_formula():
    """With lambda = 1 the mixed samples are the clean ones: mixed MS = MS on them (no mining)."""
    from losslab.losses.mixup import metrix_mixed_loss

    x, y = batch(seed=13)
    lam = torch.ones(len(y), dtype=torch.float64)
    got = metrix_mixed_loss(x, y, x, lam, y, (y + 1) % 4, base="multi_similarity")
    # clean MS over all pairs INCLUDING self-pairs (the mix of i with itself is a positive)
    from losslab.losses.metric import ms_terms

    s = F.normalize(x, dim=1) @ F.normalize(x, dim=1).t()
    same = (y[:, None] == y[None]).double()
    torch.testing.assert_close(got, ms_terms(s, same, 1 - same, 2.0, 50.0, 0.5).mean())


def test_miners_feed_losses():
    x, y = batch(seed=14)
    for idx in (miners.batch_hard(x, y), miners.semi_hard(x, y, margin=1.0),
                miners.multi_similarity(x, y),
                miners.distance_weighted(x, y, generator=torch.Generator().manual_seed(0))):
        for name in PAIR_LOSSES:
            assert torch.isfinite(losslab.create(name)(x, y, indices=idx))
