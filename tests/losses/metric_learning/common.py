"""Helpers shared by the metric-learning tests: small fp64 batches, the pairs of a labelling,
the checks every pair/triplet loss runs (``indices=``, bad reference/index inputs, miners) and
the pytorch-metric-learning (PML) parity harness (tests that need PML skip without it)."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
import torch.nn.functional as F

import losslab
from losslab import miners

try:  # PML is a dev-only peer
    from pytorch_metric_learning import distances as pd
    from pytorch_metric_learning import losses as pl
    from pytorch_metric_learning import miners as pm
    from pytorch_metric_learning import reducers as pr
except ImportError:  # pragma: no cover - depends on the environment
    pd = pl = pm = pr = None

needs_pml = pytest.mark.skipif(pl is None, reason="pytorch-metric-learning is not installed")

ORACLE_TOL = {"rtol": 1e-9, "atol": 1e-10}
PML_TOL = {"rtol": 1e-5, "atol": 1e-7}


def batch(n_classes=4, per_class=3, dim=5, seed=0):
    """A shuffled fp64 batch of ``per_class`` samples of each of ``n_classes`` classes."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n_classes).repeat_interleave(per_class)
    y = y[torch.randperm(y.numel(), generator=g)]
    return torch.randn(y.numel(), dim, generator=g, dtype=torch.float64), y


def pml_batch(n_classes=6, per_class=4, dim=8, seed=0):
    """The batches of the PML parity tests."""
    return batch(n_classes, per_class, dim, seed)


def dist(a, b):
    return float(torch.linalg.vector_norm(a - b))


def cos(a, b):
    return float(F.cosine_similarity(a, b, dim=0))


def pairs(y, ry=None):
    """(anchor, ref) positive and negative pairs as Python lists, self excluded when ry is None."""
    ry = y if ry is None else ry
    pos = [(i, j) for i in range(len(y)) for j in range(len(ry))
           if y[i] == ry[j] and not (ry is y and i == j)]
    neg = [(i, j) for i in range(len(y)) for j in range(len(ry)) if y[i] != ry[j]]
    return pos, neg


def all_pairs(y, ry=None):
    """Every positive and negative pair of the labels as an ``(a1, p, a2, n)`` tuple."""
    ry = y if ry is None else ry
    same = y[:, None] == ry[None]
    if ry is y:
        same = same & ~torch.eye(len(y), dtype=torch.bool)
    a1, p = torch.where(same)
    a2, n = torch.where(y[:, None] != ry[None])
    return a1, p, a2, n


def all_triplets(y, ry=None):
    """Every valid triplet of the labels as an ``(a, p, n)`` tuple."""
    a1, p, a2, n = all_pairs(y, ry)
    i, j = torch.where(a1[:, None] == a2[None])
    return a1[i], p[i], n[j]


# -- checks every pair/triplet loss runs -------------------------------------------------------

TRIPLET_LOSSES = ("triplet", "triplet_ratio")


def check_indices_equal_explicit_pairs(name):
    """Passing all label pairs (triplets) as indices= gives the label-based value (MS mining
    off)."""
    x, y = batch(seed=9)
    hp = {"mining": False} if name == "multi_similarity" else {}
    if name in TRIPLET_LOSSES:
        pos, neg = pairs(y)
        trip = [(a, p, q) for a, p in pos for a2, q in neg if a2 == a]
        idx = tuple(torch.tensor(c) for c in zip(*trip))
    else:
        a1, p = torch.where((y[:, None] == y[None]) & ~torch.eye(len(y), dtype=torch.bool))
        a2, q = torch.where(y[:, None] != y[None])
        idx = (a1, p, a2, q)
    loss = losslab.create(name, **hp)
    torch.testing.assert_close(loss(x, y, indices=idx), loss(x, y), **ORACLE_TOL)


def check_bad_reference_and_indices_raise(name):
    """The reference set and miner tuples are validated (the contract suite covers the batch
    itself: shapes and dtypes of embeddings and labels)."""
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


def check_miners_feed(name):
    """Every miner's output is accepted by the loss and gives a finite value."""
    x, y = batch(seed=14)
    for idx in (miners.batch_hard(x, y), miners.semi_hard(x, y, margin=1.0),
                miners.multi_similarity(x, y),
                miners.distance_weighted(x, y, generator=torch.Generator().manual_seed(0))):
        assert torch.isfinite(losslab.create(name)(x, y, indices=idx))


def check_single_sample_is_zero(name):
    """A batch without any pair (one sample) is a zero loss with zero gradient (losses whose
    one-class batches still have positive pairs)."""
    y = torch.zeros(1, dtype=torch.long)
    x = torch.randn(1, 4, dtype=torch.float64, requires_grad=True)
    out = losslab.create(name)(x, y)
    assert out.item() == 0.0
    out.backward()
    assert x.grad is not None and torch.all(x.grad == 0)


# -- PML parity --------------------------------------------------------------------------------


def lp_distance():
    """PML's plain euclidean distance (our ``metric="euclidean"``)."""
    return pd.LpDistance(normalize_embeddings=False)


def both(ours, theirs, x, labels, **kw):
    """Our loss and PML's on the same batch: equal values and embedding gradients."""
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
    torch.testing.assert_close(va, vb, **PML_TOL)
    torch.testing.assert_close(xa.grad, xb.grad, **PML_TOL)
    return va


# -- fast path vs reference --------------------------------------------------------------------

FUSED_TOL = {"rtol": 1e-8, "atol": 1e-10}


def fused_data(n=14, dim=6, classes=4, scale=1.0, seed=0, ref=False):
    """A float64 batch (and, with ``ref``, a reference set missing some query classes)."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, dim, generator=g, dtype=torch.float64) * scale).requires_grad_(True)
    y = torch.randint(0, classes, (n,), generator=g)
    if not ref:
        return x, y, None, None
    r = (torch.randn(n + 3, dim, generator=g, dtype=torch.float64) * scale).requires_grad_(True)
    ry = torch.randint(0, classes + 2, (n + 3,), generator=g)  # some query classes missing
    ry[0] = y[0]
    return x, y, r, ry


def check_against_reference(fn, x, y, r, ry, idx, reduction, **hp):
    """``fn`` without ``indices`` (its fast path) equals ``fn`` with ``indices=idx`` (its
    autograd reference): values and gradients (through a weighted sum, so that every entry of
    a ``"none"`` reduction counts), fp64."""
    kw = {"ref_embeddings": r, "ref_labels": ry} if r is not None else {}
    leaves = [t for t in (x, r) if t is not None]
    out = fn(x, y, **kw, reduction=reduction, **hp)
    w = torch.linspace(0.5, 1.5, out.numel(), dtype=out.dtype).reshape(out.shape)
    got = torch.autograd.grad((out * w).sum(), leaves)
    ref = fn(x, y, **kw, indices=idx, reduction=reduction, **hp)
    want = torch.autograd.grad((ref * w).sum(), leaves)
    torch.testing.assert_close(out, ref, **FUSED_TOL)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, **FUSED_TOL)


# -- issue #11: bad input and faults (shared by the family's test files) ------------------------

PROXY_NAMES = ("proxy_nca", "proxy_anchor", "normalized_softmax", "arcface", "cosface",
               "madacos")
HALF_DTYPES = (torch.float16, torch.bfloat16)


def make_loss(name, dtype=torch.float64, **hp):
    """A seeded module of the family (proxy losses: 4 classes x 5 dims) in ``dtype``."""
    torch.manual_seed(0)
    if name in PROXY_NAMES:
        hp = {"num_classes": 4, "embedding_dim": 5, **hp}
    return losslab.create(name, **hp).to(dtype)


def _call(loss, x, y, **kw):
    torch.manual_seed(1234)
    return loss(x, y, **kw)


def check_half_inputs_return_float32(name, *, indices=False, ref=False, **hp):
    """Finding 2: fp16/bf16 embeddings of norm ~200 (a squared distance of 4e4 + 4e4 overflows
    fp16) are computed in float32 and the loss is returned in float32, equal to the float32 loss
    of the same (rounded) values and parameters; the gradient reaches the half input."""
    x, y = batch(seed=21)
    x = x / torch.linalg.vector_norm(x, dim=1, keepdim=True) * 200.0
    r, ry = batch(seed=22, n_classes=5)
    r = r * 90.0
    for dt in HALF_DTYPES:
        xh = x.to(dt).requires_grad_(True)
        kw = {}
        if ref:
            kw = {"ref_embeddings": r.to(dt), "ref_labels": ry}
        if indices:
            kw["indices"] = (all_triplets(y, ry if ref else None) if name in TRIPLET_LOSSES
                             else all_pairs(y, ry if ref else None))
        half = make_loss(name, dt, **hp)
        out = _call(half, xh, y, **kw)
        assert out.dtype == torch.float32, f"{name}: {dt} inputs returned {out.dtype}"
        kw32 = {k: (v.float() if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
                for k, v in kw.items()}
        # a fresh module: the same proxies (rounded to dt) and the same mixing (metrix's seed)
        want = _call(make_loss(name, dt, **hp).float(), xh.detach().float(), y, **kw32)
        want = want.detach()
        assert torch.isfinite(want).all()
        torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))
        out.sum().backward()
        assert xh.grad is not None and xh.grad.dtype == dt
        assert torch.isfinite(xh.grad).all()


def check_integer_labels(name, **hp):
    """Finding 7: labels (and ``ref_labels``, ``indices``) of any integer dtype give the int64
    result; bool labels are a ``ValueError``."""
    x, y = batch(seed=23)

    def loss(*args, **kw):  # a fresh module per call (metrix's seeded mixing)
        return make_loss(name, **hp)(*args, **kw)

    want = _call(loss, x, y)
    for dt in (torch.int32, torch.int16, torch.uint8):
        torch.testing.assert_close(_call(loss, x, y.to(dt)), want)
    with pytest.raises(ValueError, match="labels"):
        _call(loss, x, y > 1)
    if name in PROXY_NAMES:
        return
    r, ry = batch(seed=24)
    want = _call(loss, x, y, ref_embeddings=r, ref_labels=ry)
    got = _call(loss, x, y.to(torch.uint8), ref_embeddings=r, ref_labels=ry.to(torch.int32))
    torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match="ref_labels"):
        _call(loss, x, y, ref_embeddings=r, ref_labels=ry > 1)
    idx = all_triplets(y) if name in TRIPLET_LOSSES else all_pairs(y)
    got = _call(loss, x, y.to(torch.uint8), indices=tuple(t.to(torch.int32) for t in idx))
    torch.testing.assert_close(got, _call(loss, x, y, indices=idx))


def _without(idx, i):
    """The tuples of a miner-style index tuple that do not involve sample ``i``."""
    if len(idx) == 3:
        keep = (idx[0] != i) & (idx[1] != i) & (idx[2] != i)
        return tuple(t[keep] for t in idx)
    k1, k2 = (idx[0] != i) & (idx[1] != i), (idx[2] != i) & (idx[3] != i)
    return idx[0][k1], idx[1][k1], idx[2][k2], idx[3][k2]


def check_nan_propagates(name, **hp):
    """NaN in the embeddings (a sample with positives, a sample alone in its class, a sample in
    no listed pair), in the reference set or in the proxies gives a NaN loss, never a finite
    one (pair selection by comparisons -- hinges, mining, hard pairs -- must not skip it); inf
    gives a non-finite loss too."""
    x0, y = batch(seed=25)
    cases = []
    for bad in (math.nan, math.inf):
        x = x0.clone()
        x[0, 1] = bad
        cases.append((f"{bad} in a sample with positives", make_loss(name, **hp), x, y, {}))
    if name in PROXY_NAMES:
        loss = make_loss(name, **hp)
        with torch.no_grad():
            loss.proxies[1, 2] = math.nan
        cases.append(("nan in a proxy", loss, x0, y, {}))
    else:
        x = x0.clone()
        x[3, 0] = math.nan
        alone = y.clone()
        alone[3] = 99
        cases.append(("nan in a sample alone in its class", make_loss(name, **hp), x, alone, {}))
        r, ry = batch(seed=26)
        r[2, 2] = math.nan
        cases.append(("nan in ref_embeddings", make_loss(name, **hp), x0, y,
                      {"ref_embeddings": r, "ref_labels": ry}))
        x = x0.clone()
        x[0, 0] = math.nan
        idx = _without(all_triplets(y) if name in TRIPLET_LOSSES else all_pairs(y), 0)
        cases.append(("nan in a sample of no listed pair", make_loss(name, **hp), x, y,
                      {"indices": idx}))
    for label, loss, x, yy, kw in cases:
        out = _call(loss, x, yy, **kw)
        assert not torch.isfinite(out).all(), f"{name}: {label} gave {out}"
        if label.startswith("nan"):
            assert torch.isnan(out).any(), f"{name}: {label} gave {out}"


def check_degenerate_declarations(name, declared, **hp):
    """Finding 9: the loss declares exactly ``declared``; each declared batch (one class: every
    label equal; no positives: every label distinct) is an exact zero with an exact-zero
    gradient in fp64/fp32/bf16/fp16, and each undeclared one is a non-zero loss (the paper's
    loss is not zero there)."""
    assert losslab.spec(name).degenerate == declared
    x0 = batch(seed=27)[0] * 0.3  # close pairs: the undeclared cases have active terms
    n = x0.shape[0]
    for case, y in (("one_class", torch.zeros(n, dtype=torch.long)),
                    ("no_positives", torch.arange(n))):
        if name in PROXY_NAMES:
            continue  # labels index the proxies: no such batch
        for dt in (torch.float64, torch.float32, torch.bfloat16, torch.float16):
            x = x0.to(dt).clone().requires_grad_(True)
            out = _call(make_loss(name, dt, **hp), x, y)
            if case in declared:
                assert out.item() == 0.0, f"{name} {case} {dt}: {out.item()}"
                out.sum().backward()
                assert x.grad is not None and torch.count_nonzero(x.grad) == 0
            else:
                assert torch.isfinite(out).all() and out.item() != 0.0, (name, case, dt)


def check_bad_hyperparameters(name, bad, *, call=None):
    """Finding 5: every hyperparameter value in ``bad`` (name -> values: NaN, strings,
    out-of-range) is a ``ValueError`` naming it, at construction and in the function (which
    ``call(fn, **hparams)`` calls; module-only options such as ``num_classes`` are not
    passed to it)."""
    fn = losslab.spec(name).function
    params = inspect.signature(fn).parameters
    for key, values in bad.items():
        for value in values:
            with pytest.raises(ValueError, match=key):
                make_loss(name, **{key: value})
            if call is not None and key in params:
                with pytest.raises(ValueError, match=key):
                    call(fn, **{key: value})


def check_compiled_equals_eager(m: torch.nn.Module, x: torch.Tensor, calls: list[tuple]) -> None:
    """``torch.compile(m, fullgraph=True)`` (no graph break) gives the eager value and gradient
    (fp64) for every ``(args, kwargs)`` of ``calls``; one compiled module for all (inputs of
    one shape reuse its graph)."""
    torch._dynamo.reset()
    cm = torch.compile(m, fullgraph=True)
    for args, kwargs in calls:
        leaf = x.clone().requires_grad_(True)
        eager = m(leaf, *args, **kwargs)
        (g_eager,) = torch.autograd.grad(eager.sum(), leaf)
        compiled = cm(leaf, *args, **kwargs)
        (g_compiled,) = torch.autograd.grad(compiled.sum(), leaf)
        torch.testing.assert_close(compiled, eager)
        torch.testing.assert_close(g_compiled, g_eager)

