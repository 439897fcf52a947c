"""Proxy losses (Proxy-NCA, Proxy-Anchor, normalized softmax, ArcFace, CosFace, MadaCos):
oracles from the papers' formulas (loops, fp64), the module shell that owns the proxies, and
parity with pytorch-metric-learning (values and gradients, proxies included)."""

from __future__ import annotations

import math

import pytest
import torch

import losslab
import losslab.functional as LF
from losslab.losses.metric_learning.proxy import ProxyLossModule
from tests.losses.metric_learning.common import (
    ORACLE_TOL,
    PML_TOL,
    batch,
    check_bad_hyperparameters,
    check_half_inputs_return_float32,
    check_integer_labels,
    check_nan_propagates,
    cos,
    needs_pml,
    pl,
    pml_batch,
)

PROXY_LOSSES = ["proxy_nca", "proxy_anchor", "normalized_softmax", "arcface", "cosface",
                "madacos"]


def proxies(c=4, d=5, seed=100):
    return torch.randn(c, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def log_softmax_at(logits, target):
    mx = max(logits)
    return logits[target] - mx - math.log(sum(math.exp(v - mx) for v in logits))


def test_proxy_anchor_oracle():
    x, y = batch(seed=20)
    w = proxies()
    margin, alpha = 0.1, 32.0
    c = w.shape[0]
    pos_terms, neg_terms = [], []
    for p in range(c):
        xp = [i for i in range(len(y)) if y[i] == p]
        xn = [i for i in range(len(y)) if y[i] != p]
        if xp:
            pos_terms.append(math.log1p(sum(math.exp(-alpha * (cos(x[i], w[p]) - margin))
                                            for i in xp)))
        neg_terms.append(math.log1p(sum(math.exp(alpha * (cos(x[i], w[p]) + margin))
                                        for i in xn)))
    want = sum(pos_terms) / len(pos_terms) + sum(neg_terms) / c
    torch.testing.assert_close(LF.proxy_anchor_loss(x, y, w).item(), want, **ORACLE_TOL)
    # a class without samples: no positive term, its negative term still counts
    y2 = torch.where(y == 3, 2, y)
    pos2 = [math.log1p(sum(math.exp(-alpha * (cos(x[i], w[p]) - margin))
                           for i in range(len(y2)) if y2[i] == p)) for p in range(3)]
    neg2 = [math.log1p(sum(math.exp(alpha * (cos(x[i], w[p]) + margin))
                           for i in range(len(y2)) if y2[i] != p)) for p in range(c)]
    torch.testing.assert_close(LF.proxy_anchor_loss(x, y2, w).item(),
                               sum(pos2) / 3 + sum(neg2) / c, **ORACLE_TOL)
    per = LF.proxy_anchor_loss(x, y2, w, reduction="none")
    torch.testing.assert_close(per[3].item(), neg2[3], **ORACLE_TOL)


@pytest.mark.parametrize("exclude_positive", [True, False])
def test_proxy_nca_oracle(exclude_positive):
    x, y = batch(seed=21)
    w = proxies()
    s = 3.0
    vals = []
    for i in range(len(y)):
        xn = x[i] / x[i].norm()
        d = [float(((xn - w[z] / w[z].norm()) ** 2).sum()) for z in range(w.shape[0])]
        zs = [z for z in range(w.shape[0]) if not (exclude_positive and z == y[i])]
        den = math.log(sum(math.exp(-s * d[z]) for z in zs))
        vals.append(-(-s * d[int(y[i])] - den))
    got = LF.proxy_nca_loss(x, y, w, scale=s, exclude_positive=exclude_positive)
    torch.testing.assert_close(got.item(), sum(vals) / len(vals), **ORACLE_TOL)


def test_normalized_softmax_arcface_cosface_oracles():
    x, y = batch(seed=22)
    w = proxies()
    c = w.shape[0]
    ns, arc, cf = [], [], []
    for i in range(len(y)):
        t = int(y[i])
        cs = [cos(x[i], w[j]) for j in range(c)]
        ns.append(-log_softmax_at([v / 0.05 for v in cs], t))
        theta = math.acos(max(-1.0, min(1.0, cs[t])))
        tgt = math.cos(theta + 0.5) if theta + 0.5 <= math.pi else cs[t] - 0.5 * math.sin(0.5)
        arc.append(-log_softmax_at([64.0 * (tgt if j == t else v) for j, v in enumerate(cs)], t))
        cf.append(-log_softmax_at([64.0 * (v - 0.35 if j == t else v)
                                   for j, v in enumerate(cs)], t))
    n = len(y)
    torch.testing.assert_close(LF.normalized_softmax_loss(x, y, w).item(), sum(ns) / n,
                               **ORACLE_TOL)
    torch.testing.assert_close(LF.arcface_loss(x, y, w).item(), sum(arc) / n, **ORACLE_TOL)
    torch.testing.assert_close(LF.cosface_loss(x, y, w).item(), sum(cf) / n, **ORACLE_TOL)


def test_madacos_oracle_and_target_probability_of_the_median_sample():
    x, y = batch(n_classes=4, per_class=5, seed=23)
    w = proxies()
    rho, min_scale, prior = 0.1, 1.0, 100.0
    c = w.shape[0]
    cs = [[cos(x[i], w[j]) for j in range(c)] for i in range(len(y))]
    target = [cs[i][int(y[i])] for i in range(len(y))]
    order = sorted(range(len(y)), key=lambda i: target[i])
    med = order[(len(y) - 1) // 2]  # the lower median, as the official code
    c_med = target[med]
    s = max(min_scale, math.log(prior * (1 - rho) / rho) / (1 - c_med))
    b = sum(math.exp(s * cs[med][j]) for j in range(c) if j != int(y[med]))
    m = max(0.0, c_med - math.log(b * rho / (1 - rho)) / s)
    vals = [-log_softmax_at([s * (v - m if j == int(y[i]) else v) for j, v in enumerate(cs[i])],
                            int(y[i])) for i in range(len(y))]
    got = LF.madacos_loss(x, y, w, alpha=rho, min_scale=min_scale, prior=prior,
                          reduction="none")
    torch.testing.assert_close(got, torch.tensor(vals, dtype=torch.float64), **ORACLE_TOL)
    if m > 0:  # the margin sets the median sample's target probability to rho
        torch.testing.assert_close(math.exp(-vals[med]), rho, **ORACLE_TOL)


@pytest.mark.parametrize("name", PROXY_LOSSES)
def test_module_owns_proxies_and_passes_them(name):
    torch.manual_seed(0)
    m = losslab.create(name, num_classes=4, embedding_dim=5)
    assert isinstance(m, ProxyLossModule)
    assert m.config == {"num_classes": 4, "embedding_dim": 5}
    assert (m.num_classes, m.embedding_dim) == (4, 5)
    assert "num_classes" not in m.hparams and "num_classes=4" in repr(m)
    assert [n for n, _ in m.named_parameters()] == ["proxies"]
    x, y = batch()
    x = x.float().requires_grad_(True)
    out = m(x, y)
    hp = {k: v for k, v in m.hparams.items()}
    torch.testing.assert_close(out, losslab.spec(name).function(x, y, m.proxies, **hp))
    out.backward()
    assert m.proxies.grad is not None
    with pytest.raises(ValueError, match="class proxies"):
        m(x, y, ref_embeddings=x, ref_labels=y)
    with pytest.raises(ValueError, match="indices"):
        m(x, y, indices=(y, y, y))
    with pytest.raises(ValueError, match="labels must lie"):
        m(x, y + 4)
    with pytest.raises(ValueError, match="num_classes"):
        losslab.create(name, num_classes=0, embedding_dim=5)


def test_proxy_initialisations_follow_the_papers_code():
    torch.manual_seed(0)
    pa = losslab.create("proxy_anchor", num_classes=300, embedding_dim=200)
    # kaiming normal, fan_out (= num_classes rows): std sqrt(2 / 300)
    assert abs(float(pa.proxies.detach().std()) - math.sqrt(2 / 300)) < 0.005
    mc = losslab.create("madacos", num_classes=30, embedding_dim=64)
    assert float(mc.proxies.detach().abs().max()) <= 1 / 8


# -- issue #11: bad input and faults ---------------------------------------------------------

# Finding 9: the proxy losses declare no degenerate batch: a sample is compared with every
# class proxy, so a one-class batch is an ordinary batch (a loss of its own), and labels must
# index the proxies (no "every label distinct" batch beyond C samples).


@pytest.mark.parametrize("name", PROXY_LOSSES)
def test_no_degenerate_batch_is_declared(name):
    assert losslab.spec(name).degenerate == ()
    x, _ = batch()
    out = losslab.create(name, num_classes=4, embedding_dim=5).double()(x, torch.zeros(12).long())
    assert torch.isfinite(out) and out.item() != 0.0


@pytest.mark.parametrize("name", PROXY_LOSSES)
def test_half_inputs_are_computed_and_returned_in_float32(name):
    """Finding 2: half embeddings and proxies returned the input dtype."""
    check_half_inputs_return_float32(name)


def test_half_embeddings_with_float32_proxies_compute_in_float32():
    x, y = batch()
    p = proxies().float().requires_grad_(True)
    xh = (x * 90).half().requires_grad_(True)
    for name in PROXY_LOSSES:
        fn = losslab.spec(name).function
        out = fn(xh, y, p)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, fn(xh.detach().float(), y, p.detach()))
        out.backward()
        assert xh.grad.dtype == torch.float16 and p.grad.dtype == torch.float32


@pytest.mark.parametrize("name", PROXY_LOSSES)
def test_integer_label_dtypes_are_accepted_and_bool_rejected(name):
    check_integer_labels(name)


@pytest.mark.parametrize("name", PROXY_LOSSES)
def test_nan_propagates(name):
    check_nan_propagates(name)


def test_every_hyperparameter_is_validated():
    """Finding 5: NaN / string / out-of-range values, and the proxies' shape, are ValueErrors
    naming the argument (a string num_classes was a TypeError)."""
    x, y = batch()
    p = proxies()
    call = lambda fn, **kw: fn(x, y, p, **kw)  # noqa: E731
    shape = {"num_classes": [0, "4", 2.5, None], "embedding_dim": [-1, math.nan, None]}
    check_bad_hyperparameters("proxy_nca", {"scale": [0.0, math.nan, "1"],
                                            "exclude_positive": [1, None], **shape}, call=call)
    check_bad_hyperparameters("proxy_anchor", {"margin": [math.nan, "0.1"],
                                               "alpha": [0.0, math.inf], **shape}, call=call)
    check_bad_hyperparameters("normalized_softmax", {"temperature": [0.0, math.nan], **shape},
                              call=call)
    check_bad_hyperparameters("arcface", {"margin": [math.nan, -0.1, math.pi, "0.5"],
                                          "scale": [0.0, math.nan], **shape}, call=call)
    check_bad_hyperparameters("cosface", {"margin": [math.nan, "0.35"],
                                          "scale": [-1.0, None], **shape}, call=call)
    check_bad_hyperparameters("madacos", {"alpha": [0.0, 1.0, math.nan],
                                          "min_scale": [0.0, "32"], "prior": [-1.0, math.nan],
                                          **shape}, call=call)


# -- PML parity: copy the proxies (PML's W is [D, C]) ------------------------------------------


def proxy_both(ours, theirs, param, x, y, transpose):
    w = param.detach().clone()
    if transpose:
        w = w.t().contiguous()
    w.requires_grad_(True)
    xa = x.clone().requires_grad_(True)
    xb = x.clone().requires_grad_(True)
    va = ours(xa, y, w)
    vb = theirs(xb, y)
    va.backward()
    vb.backward()
    torch.testing.assert_close(va, vb, **PML_TOL)
    torch.testing.assert_close(xa.grad, xb.grad, **PML_TOL)
    g = param.grad.t() if transpose else param.grad
    torch.testing.assert_close(w.grad, g, **PML_TOL)


@needs_pml
def test_proxy_anchor_matches_pml():
    x, y = pml_batch(seed=16)
    t = pl.ProxyAnchorLoss(num_classes=8, embedding_size=8, margin=0.1, alpha=32).double()
    proxy_both(lambda e, l, p: LF.proxy_anchor_loss(e, l, p), t, t.proxies, x, y, False)


@needs_pml
def test_proxy_nca_matches_pml():
    x, y = pml_batch(seed=17)
    t = pl.ProxyNCALoss(num_classes=6, embedding_size=8, softmax_scale=3.0).double()
    proxy_both(lambda e, l, p: LF.proxy_nca_loss(e, l, p, scale=3.0, exclude_positive=False),
               t, t.proxies, x, y, False)


@needs_pml
def test_normalized_softmax_matches_pml():
    x, y = pml_batch(seed=18)
    t = pl.NormalizedSoftmaxLoss(num_classes=6, embedding_size=8, temperature=0.05).double()
    proxy_both(lambda e, l, p: LF.normalized_softmax_loss(e, l, p), t, t.W, x, y, True)


@needs_pml
def test_arcface_matches_pml():
    x, y = pml_batch(seed=19)
    t = pl.ArcFaceLoss(num_classes=6, embedding_size=8, margin=28.6, scale=64).double()
    proxy_both(lambda e, l, p: LF.arcface_loss(e, l, p, margin=float(torch.deg2rad(
        torch.tensor(28.6, dtype=torch.float64)))), t, t.W, x, y, True)


@needs_pml
def test_cosface_matches_pml():
    x, y = pml_batch(seed=20)
    t = pl.CosFaceLoss(num_classes=6, embedding_size=8, margin=0.35, scale=64).double()
    proxy_both(lambda e, l, p: LF.cosface_loss(e, l, p), t, t.W, x, y, True)
