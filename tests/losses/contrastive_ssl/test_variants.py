"""DCL, hard-negative InfoNCE, multi-positive InfoNCE and infonce's NT-Xent option: loop oracles
from the formulas (fp64), lightly's DCL/DCLW and NT-Xent, PML's NTXentLoss, and the papers'
properties."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

import losslab
from losslab.functional import (
    dcl_loss,
    hard_negative_infonce_loss,
    infonce_loss,
    multi_positive_infonce_loss,
)
from tests.losses.contrastive_ssl.common import lightly_module, lightly_ntxent_module, pairs


def unit(x: torch.Tensor) -> list[list[float]]:
    return torch.nn.functional.normalize(x.detach(), dim=1).tolist()


def dot(x: list[float], y: list[float]) -> float:
    return sum(p * q for p, q in zip(x, y))


def views(a: torch.Tensor, b: torch.Tensor) -> list[list[float]]:
    """The 2N unit embeddings z = [a; b] (anchor r's positive is r + N mod 2N)."""
    return unit(a) + unit(b)


# ---------------------------------------------------------------------------------------------
# NT-Xent (infonce negatives="both")
# ---------------------------------------------------------------------------------------------


def nt_xent_oracle(a, b, tau):
    z = views(a, b)
    m = len(z)
    n = m // 2
    out = []
    for r in range(m):
        p = (r + n) % m
        den = sum(math.exp(dot(z[r], z[k]) / tau) for k in range(m) if k != r)
        out.append(-dot(z[r], z[p]) / tau + math.log(den))
    return [(out[i] + out[i + n]) / 2 for i in range(n)]


def test_nt_xent_matches_loop_oracle() -> None:
    a, b = pairs()
    got = infonce_loss(a, b, temperature=0.3, negatives="both", reduction="none")
    torch.testing.assert_close(got, torch.tensor(nt_xent_oracle(a, b, 0.3), dtype=torch.float64))
    mean = infonce_loss(a, b, temperature=0.3, negatives="both").detach()
    assert float(mean) == pytest.approx(sum(nt_xent_oracle(a, b, 0.3)) / 7, rel=1e-12)


def test_nt_xent_matches_pml_ntxent_on_both_views() -> None:
    losses = pytest.importorskip("pytorch_metric_learning.losses")
    a, b = pairs(n=9)
    labels = torch.arange(9).repeat(2)
    pml = losses.NTXentLoss(temperature=0.1)(torch.cat([a, b]), labels)
    ours = infonce_loss(a, b, temperature=0.1, negatives="both")
    torch.testing.assert_close(ours, pml)
    for x, y in zip(torch.autograd.grad(ours, (a, b)), torch.autograd.grad(pml, (a, b))):
        torch.testing.assert_close(x, y)


def test_nt_xent_matches_lightly_formula() -> None:
    """lightly's ``NTXentLoss`` (``lightly/loss/ntx_ent_loss.py``) needs lightly.models, which
    imports torchvision; its formula is restated from lightly 1.6.0: ``out = normalize(cat(
    out0, out1))``, ``logits = out @ out.T / t`` with the diagonal removed, cross-entropy with
    label ``(i + N) mod 2N`` over the ``2N - 1`` remaining columns, mean over the ``2N``
    rows."""
    a, b = pairs(n=6)
    out = torch.nn.functional.normalize(torch.cat([a, b]), dim=1)
    n2 = out.shape[0]
    logits = out @ out.t() / 0.5
    logits = logits[~torch.eye(n2, dtype=torch.bool)].view(n2, n2 - 1)
    labels = torch.arange(n2) % (n2 // 2) + (n2 // 2)
    labels = torch.where(torch.arange(n2) < n2 // 2, labels - 1, labels - n2 // 2)
    restated = torch.nn.functional.cross_entropy(logits, labels)
    torch.testing.assert_close(infonce_loss(a, b, temperature=0.5, negatives="both"), restated)


def test_nt_xent_matches_lightly_ntxentloss() -> None:
    """lightly's own ``NTXentLoss`` (no memory bank, one process), loaded by file."""
    ntx = lightly_ntxent_module()
    a, b = pairs(n=7, d=5, seed=3)
    for tau in (0.5, 0.1):
        peer = ntx.NTXentLoss(temperature=tau)(a, b)
        ours = infonce_loss(a, b, temperature=tau, negatives="both")
        torch.testing.assert_close(ours, peer)
        for x, y in zip(torch.autograd.grad(ours, (a, b)), torch.autograd.grad(peer, (a, b))):
            torch.testing.assert_close(x, y)


def test_nt_xent_options() -> None:
    a, b = pairs()
    with pytest.raises(ValueError, match="chunk_size must be None"):
        infonce_loss(a, b, negatives="both", chunk_size=4)
    with pytest.raises(ValueError, match="negatives"):
        bad: Any = "all"
        infonce_loss(a, b, negatives=bad)
    m = losslab.create("infonce", negatives="both", temperature=0.3).double()
    torch.testing.assert_close(m(a, b), infonce_loss(a, b, negatives="both", temperature=0.3))
    # both views as negatives only adds negatives: the loss is larger than the cross form's
    assert float(infonce_loss(a, b, negatives="both").detach()) > float(
        infonce_loss(a, b, symmetric=True).detach())


# ---------------------------------------------------------------------------------------------
# DCL
# ---------------------------------------------------------------------------------------------


def dcl_oracle(a, b, tau, negatives="both", weights=None):
    za, zb = unit(a), unit(b)
    n = len(za)
    w = weights or [1.0] * n
    out = []
    for view, other in ((za, zb), (zb, za)):
        for i in range(n):
            pos = dot(view[i], other[i]) / tau
            cands = [other[j] for j in range(n) if j != i]
            if negatives == "both":
                cands += [view[j] for j in range(n) if j != i]
            neg = math.log(sum(math.exp(dot(view[i], c) / tau) for c in cands))
            out.append(-w[i] * pos + neg)
        if negatives == "cross":
            break
    if negatives == "cross":
        return out
    return [(out[i] + out[i + n]) / 2 for i in range(n)]


@pytest.mark.parametrize("negatives", ["both", "cross"])
def test_dcl_matches_loop_oracle(negatives: Any) -> None:
    a, b = pairs()
    got = dcl_loss(a, b, temperature=0.2, negatives=negatives, reduction="none")
    torch.testing.assert_close(got, torch.tensor(dcl_oracle(a, b, 0.2, negatives),
                                                 dtype=torch.float64))


def test_dclw_weights_match_the_von_mises_fisher_formula() -> None:
    a, b = pairs()
    za, zb = unit(a), unit(b)
    e = [math.exp(dot(x, y) / 0.5) for x, y in zip(za, zb)]
    w = [2 - v / (sum(e) / len(e)) for v in e]
    got = dcl_loss(a, b, temperature=0.2, weighting=True, reduction="none")
    torch.testing.assert_close(got, torch.tensor(dcl_oracle(a, b, 0.2, "both", w),
                                                 dtype=torch.float64))


def test_dcl_matches_lightly() -> None:
    dcl = lightly_module("dcl_loss")
    a, b = pairs(n=8)
    for ours, peer in ((dcl_loss(a, b, temperature=0.1), dcl.DCLLoss(temperature=0.1)(a, b)),
                       (dcl_loss(a, b, temperature=0.1, weighting=True, sigma=0.5),
                        dcl.DCLWLoss(temperature=0.1, sigma=0.5)(a, b))):
        torch.testing.assert_close(ours, peer)
        for x, y in zip(torch.autograd.grad(ours, (a, b)), torch.autograd.grad(peer, (a, b))):
            torch.testing.assert_close(x, y)


def test_dcl_is_infonce_without_the_positive_in_the_denominator() -> None:
    """Per anchor, InfoNCE - DCL = log(1 + e^{s_ii/tau} / sum_neg e^{s_ik/tau}) = -log(1 - p_i)
    (p_i the positive's softmax probability): DCL is InfoNCE with the coupling removed, and
    its gradient w.r.t. the positive logit is -1 (no factor 1 - p_i)."""
    a, b = pairs()
    za, zb = (torch.nn.functional.normalize(x.detach(), dim=1) for x in (a, b))
    logits = za @ zb.t() / 0.25
    pos = logits.diagonal()
    neg = torch.logsumexp(logits.masked_fill(torch.eye(7, dtype=torch.bool), -math.inf), 1)
    p = torch.softmax(logits, 1).diagonal()
    diff = (infonce_loss(a, b, temperature=0.25, reduction="none")
            - dcl_loss(a, b, temperature=0.25, negatives="cross", reduction="none"))
    torch.testing.assert_close(diff.detach(), torch.nn.functional.softplus(pos - neg))
    torch.testing.assert_close(diff.detach(), -torch.log1p(-p))
    assert float(dcl_loss(a, b).detach()) < float(infonce_loss(a, b, negatives="both").detach())
    # the gradient of anchor i's DCL term w.r.t. its positive logit is exactly -1
    lg = logits.clone().requires_grad_(True)
    neg_lse = torch.logsumexp(lg.masked_fill(torch.eye(7, dtype=torch.bool), -math.inf), 1)
    (g,) = torch.autograd.grad((neg_lse - lg.diagonal()).sum(), lg)
    torch.testing.assert_close(g.diagonal(), -torch.ones(7, dtype=torch.float64))


def test_dcl_needs_two_pairs() -> None:
    a, b = pairs(n=1)
    with pytest.raises(ValueError, match="at least 2 pairs"):
        dcl_loss(a, b)


# ---------------------------------------------------------------------------------------------
# Hard-negative InfoNCE
# ---------------------------------------------------------------------------------------------


def hard_oracle(a, b, tau, frac):
    za, zb = unit(a), unit(b)
    n = len(za)
    out = []
    for i in range(n):
        negs = sorted((dot(za[i], zb[j]) for j in range(n) if j != i), reverse=True)
        k = max(1, math.ceil(frac * len(negs) - 1e-9))
        pos = dot(za[i], zb[i]) / tau
        den = math.exp(pos) + sum(math.exp(s / tau) for s in negs[:k])
        out.append(-pos + math.log(den))
    return out


@pytest.mark.parametrize("frac", [0.2, 0.5, 1.0])
def test_hard_negative_infonce_matches_loop_oracle(frac: float) -> None:
    a, b = pairs(n=9)
    got = hard_negative_infonce_loss(a, b, temperature=0.3, hard_fraction=frac,
                                     reduction="none")
    torch.testing.assert_close(got, torch.tensor(hard_oracle(a, b, 0.3, frac),
                                                 dtype=torch.float64))


def test_hard_negative_infonce_limits() -> None:
    a, b = pairs(n=9)
    # keeping every negative is InfoNCE (both negative sources)
    for neg in ("cross", "both"):
        torch.testing.assert_close(
            hard_negative_infonce_loss(a, b, hard_fraction=1.0, negatives=neg, reduction="none"),
            infonce_loss(a, b, temperature=0.2, negatives=neg, reduction="none"))
    # fewer negatives, smaller loss; easy negatives get no gradient
    vals = [float(hard_negative_infonce_loss(a, b, hard_fraction=f).detach())
            for f in (0.1, 0.5, 1.0)]
    assert vals[0] < vals[1] < vals[2]
    a2 = a.detach().clone()
    b2 = b.detach().clone().requires_grad_(True)
    loss = hard_negative_infonce_loss(a2[:1].expand(9, -1).contiguous(), b2,
                                      hard_fraction=1 / 8, reduction="none")[0]
    (g,) = torch.autograd.grad(loss, b2)
    assert int((g.abs().sum(1) > 0).sum()) == 2  # the positive and the hardest negative


@pytest.mark.slow
@pytest.mark.parametrize(("negatives", "frac"), [("cross", 0.2), ("both", 0.5)])
def test_hard_negative_infonce_compiled_equals_eager(negatives: Any, frac: float) -> None:
    """The number of hard negatives is a function of N alone (no ``.item()``): compiled
    without a graph break, the eager value and gradient."""
    a, b = pairs(n=9)
    m = losslab.create("hard_negative_infonce", negatives=negatives, hard_fraction=frac)
    torch._dynamo.reset()
    assert torch._dynamo.explain(m)(a, b).graph_break_count == 0
    eager = m(a, b)
    g_eager = torch.autograd.grad(eager, (a, b))
    got = torch.compile(m, fullgraph=True)(a, b)
    g_got = torch.autograd.grad(got, (a, b))
    torch.testing.assert_close(got, eager)
    torch.testing.assert_close(g_got, g_eager)


# ---------------------------------------------------------------------------------------------
# Multi-positive InfoNCE
# ---------------------------------------------------------------------------------------------


def multi_oracle(q, d, pos, hard, tau):
    zq, zd = unit(q), unit(d)
    zh = [unit(h) for h in hard] if hard is not None else [[] for _ in zq]
    out = []
    for i in range(len(zq)):
        P = [j for j in range(len(zd)) if pos[i][j]]
        negs = [dot(zq[i], zd[j]) / tau for j in range(len(zd)) if not pos[i][j]]
        negs += [dot(zq[i], h) / tau for h in zh[i]]
        if not P:
            out.append(0.0)
            continue
        terms = []
        for p in P:
            s = dot(zq[i], zd[p]) / tau
            terms.append(-s + math.log(math.exp(s) + sum(math.exp(v) for v in negs)))
        out.append(sum(terms) / len(P))
    return out


def test_multi_positive_infonce_matches_loop_oracle() -> None:
    g = torch.Generator().manual_seed(3)
    q = torch.randn(4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    d = torch.randn(7, 5, generator=g, dtype=torch.float64, requires_grad=True)
    hard = torch.randn(4, 2, 5, generator=g, dtype=torch.float64, requires_grad=True)
    pos = torch.zeros(4, 7, dtype=torch.bool)
    pos[0, [0, 4]] = True
    pos[1, 1] = True
    pos[2, [2, 5, 6]] = True  # query 3 has no positive: contributes 0, not counted
    got = multi_positive_infonce_loss(q, d, positives=pos, hard_negatives=hard,
                                      temperature=0.1, reduction="none")
    expected = multi_oracle(q, d, pos.tolist(), hard, 0.1)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64))
    mean = multi_positive_infonce_loss(q, d, positives=pos, hard_negatives=hard, temperature=0.1)
    assert float(mean.detach()) == pytest.approx(sum(expected) / 3, rel=1e-12)
    m = losslab.create("multi_positive_infonce", temperature=0.1).double()
    torch.testing.assert_close(m(q, d, positives=pos, hard_negatives=hard), mean)


def test_multi_positive_infonce_reduces_to_infonce() -> None:
    a, b = pairs()
    torch.testing.assert_close(multi_positive_infonce_loss(a, b, temperature=0.1),
                               infonce_loss(a, b, temperature=0.1))
    # a hard negative equal to a shared in-batch document row counts as one more negative
    extra = b.detach()[:1].expand(7, 1, -1)
    with_hard = multi_positive_infonce_loss(a, b, hard_negatives=extra, temperature=0.1)
    assert float(with_hard.detach()) > float(infonce_loss(a, b, temperature=0.1).detach())


def test_multi_positive_infonce_bad_inputs() -> None:
    a, b = pairs()
    with pytest.raises(ValueError, match="positives must be a bool"):
        multi_positive_infonce_loss(a, b, positives=torch.eye(7))
    with pytest.raises(ValueError, match=r"positives must have shape \[7, 7\]"):
        multi_positive_infonce_loss(a, b, positives=torch.eye(6, dtype=torch.bool))
    with pytest.raises(ValueError, match="hard_negatives must have shape"):
        multi_positive_infonce_loss(a, b, hard_negatives=torch.randn(7, 2, 4,
                                                                     dtype=torch.float64))
    with pytest.raises(ValueError, match="same number of rows"):
        multi_positive_infonce_loss(a, b[:5])
    with pytest.raises(ValueError, match="index"):
        losslab.create("multi_positive_infonce")(a, b, index=torch.arange(7))
