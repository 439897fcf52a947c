"""Pairwise hinge, LambdaLoss, ApproxNDCG, NeuralNDCG and Poly-1 listwise: loop oracles from
the papers' formulas (fp64), the peers' own code for the pairwise losses (allRank's
``lambdaLoss``, Rax's pairwise losses and lambdaweights; loaders in ``peers.py``; the listwise
peers are in ``test_listwise.py``), and the papers' limit properties."""

from __future__ import annotations

import functools
import math

import pytest
import torch

import losslab
from losslab.functional import (
    approx_ndcg_loss,
    lambda_loss,
    neural_ndcg_loss,
    pairwise_hinge_loss,
    poly1_listwise_loss,
    ranknet_loss,
)
from tests.losses.ranking.peers import allrank_losses, rax

pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")


def _lists(seed: int = 0, Q: int = 4, L: int = 6):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(Q, L, generator=g, dtype=torch.float64, requires_grad=True)
    r = torch.randint(0, 4, (Q, L), generator=g).to(torch.float64)
    m = torch.ones(Q, L, dtype=torch.bool)
    m[1, 4:] = False
    m[3, :] = False  # empty list
    r[2] = 0.0  # a list with no relevant item
    return s, r, m


def _items(m, q):
    return [i for i in range(m.shape[1]) if m[q, i]]


def _dcg_ideal(gains: list[float], k: int | None = None) -> float:
    gs = sorted(gains, reverse=True)[: (k or len(gains))]
    return sum(g / math.log2(2 + p) for p, g in enumerate(gs))


def _ndcg(scores: list[float], rel: list[float], k: int | None = None) -> float:
    order = sorted(range(len(scores)), key=lambda i: -scores[i])[: (k or len(scores))]
    dcg = sum((2 ** rel[i] - 1) / math.log2(2 + p) for p, i in enumerate(order))
    idcg = _dcg_ideal([2 ** x - 1 for x in rel], k)
    return dcg / idcg if idcg > 0 else 0.0


def test_pairwise_hinge_matches_loop_oracle() -> None:
    s, r, m = _lists()
    want = []
    for q in range(4):
        it = _items(m, q)
        t = [max(0.0, 1.0 - (float(s[q, i]) - float(s[q, j]))) for i in it for j in it
             if float(r[q, i]) > float(r[q, j])]
        want.append(sum(t) / len(t) if t else 0.0)
    got = pairwise_hinge_loss(s, r, mask=m, reduction="none")
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64))
    assert float(pairwise_hinge_loss(s, r, mask=m)) == pytest.approx(sum(want) / 2)
    # zero once every pair is ordered by more than the margin
    s2 = (r * 5).requires_grad_(True)
    assert float(pairwise_hinge_loss(s2, r)) == 0.0


def _lambda_oracle(s, r, m, weighting: str, k=None, mu=10.0, sigma=1.0) -> list[float]:
    out = []
    for q in range(s.shape[0]):
        it = _items(m, q)
        order = sorted(it, key=lambda i: -float(s[q, i]))  # positions by predicted score
        rel = [float(r[q, i]) for i in order]
        sc = [float(s[q, i]) for i in order]
        idcg = _dcg_ideal([2 ** x - 1 for x in rel], k)
        if idcg == 0:
            out.append(0.0)
            continue
        G = [(2 ** x - 1) / idcg for x in rel]
        D = [math.log2(2 + p) for p in range(len(order))]  # D at position p + 1
        total = 0.0
        for a in range(len(order)):
            for b in range(len(order)):
                if rel[a] <= rel[b]:
                    continue
                if k is not None and not (a < k and b < k):
                    continue
                dd = abs(a - b)
                l2 = abs(1 / math.log2(1 + dd) - 1 / math.log2(2 + dd)) * abs(G[a] - G[b])
                lr = abs(1 / D[a] - 1 / D[b]) * abs(G[a] - G[b])
                w = {"ndcg_loss2": l2, "lambdarank": lr, "ndcg_loss2pp": mu * l2 + lr,
                     "ndcg_loss1": G[a] / D[a]}[weighting]
                p = 1 / (1 + math.exp(-sigma * (sc[a] - sc[b])))
                total -= w * math.log2(p)
        out.append(total)
    return out


@pytest.mark.parametrize("weighting", ["ndcg_loss2", "lambdarank", "ndcg_loss2pp", "ndcg_loss1"])
@pytest.mark.parametrize("k", [None, 3])
def test_lambda_loss_matches_loop_oracle(weighting: str, k: int | None) -> None:
    s, r, m = _lists(1)
    want = _lambda_oracle(s, r, m, weighting, k=k, sigma=1.5)
    got = lambda_loss(s, r, mask=m, weighting=weighting, k=k, sigma=1.5, reduction="none")
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64))
    (g,) = torch.autograd.grad(got.sum(), s)
    assert torch.isfinite(g).all() and torch.count_nonzero(g[2:]) == 0


_ALLRANK_SCHEMES = {"lambdarank": "lambdaRank_scheme", "ndcg_loss2": "ndcgLoss2_scheme",
                    "ndcg_loss2pp": "ndcgLoss2PP_scheme"}


@pytest.mark.parametrize("weighting", sorted(_ALLRANK_SCHEMES))
@pytest.mark.parametrize("k", [None, 4])
def test_lambda_loss_matches_allrank_lambda_loss(weighting: str, k: int | None) -> None:
    """allRank's own ``lambdaLoss`` (``reduction="sum"``: the pairs of one list), list by
    list; allRank computes its discounts in float32, hence the tolerance."""
    A = allrank_losses()
    g = torch.Generator().manual_seed(5)
    y_pred = torch.randn(3, 7, generator=g, dtype=torch.float64)
    y_true = torch.randint(0, 3, (3, 7), generator=g).to(torch.float64)
    y_true[:, 0] = 2.0
    for q in range(3):
        x = y_pred[q:q + 1].clone().requires_grad_(True)
        y = y_true[q:q + 1]
        peer = A.lambdaLoss(x, y.clone(), weighing_scheme=_ALLRANK_SCHEMES[weighting], k=k,
                            sigma=1.5, mu=10.0, reduction="sum")
        ours = lambda_loss(x, y, weighting=weighting, k=k, sigma=1.5, mu=10.0, reduction="sum")
        torch.testing.assert_close(ours, peer, rtol=1e-6, atol=1e-7)
        (g1,) = torch.autograd.grad(ours, x)
        (g2,) = torch.autograd.grad(peer, x)
        torch.testing.assert_close(g1, g2, rtol=1e-6, atol=1e-7)


def _rax_per_list(loss, s: torch.Tensor, r: torch.Tensor, **kw):
    import jax
    import numpy as np

    per_list = jax.jit(jax.vmap(jax.value_and_grad(lambda x, y: loss(x, y, **kw))))
    v, g = per_list(jax.numpy.asarray(s.numpy()), jax.numpy.asarray(r.numpy()))
    return torch.from_numpy(np.asarray(v)), torch.from_numpy(np.asarray(g))


def _ours_per_list(fn, s: torch.Tensor, r: torch.Tensor, **kw):
    x = s.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(fn(x, r, reduction="sum", **kw), x)
    return fn(s.detach(), r, reduction="none", **kw), g


def test_ranknet_and_hinge_match_rax_and_allrank_ranknet() -> None:
    R = rax()
    s, r, _ = _lists(7)
    s, r = s.detach(), r.clone()
    r[:, 0] = 3.0  # a pair in every list
    for ours, theirs in ((ranknet_loss, R.pairwise_logistic_loss),
                         (pairwise_hinge_loss, R.pairwise_hinge_loss)):
        a, b = _ours_per_list(ours, s, r), _rax_per_list(theirs, s, r)
        torch.testing.assert_close(a[0], b[0])
        torch.testing.assert_close(a[1], b[1])
    # allRank's rankNet: BCE-with-logits over the pairs, averaged over the pairs of the batch
    # (its float32 targets make the result float32)
    A = allrank_losses()
    for q in range(s.shape[0]):
        x = s[q:q + 1].clone().requires_grad_(True)
        peer = A.rankNet(x, r[q:q + 1].clone())
        ours_q = ranknet_loss(x, r[q:q + 1])
        torch.testing.assert_close(ours_q, peer.double(), rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(torch.autograd.grad(ours_q, x)[0],
                                   torch.autograd.grad(peer, x)[0], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(("weighting", "lambdaweight"), [("lambdarank", "dcg_lambdaweight"),
                                                         ("ndcg_loss2", "dcg2_lambdaweight")])
def test_lambda_loss_matches_rax_lambdaweights(weighting: str, lambdaweight: str) -> None:
    """Rax's pairwise logistic loss with its normalised DCG lambdaweights, summed over pairs:
    Rax scales its weights by the list size ``n`` and uses the natural logarithm, so
    ``ours = rax / (n ln 2)``."""
    R = rax()
    import jax

    s, r, _ = _lists(8)
    s, r = s.detach(), r.clone()
    r[:, 0] = 3.0
    n = s.shape[1]
    weight_fn = functools.partial(getattr(R, lambdaweight), normalize=True)
    theirs = _rax_per_list(R.pairwise_logistic_loss, s, r, lambdaweight_fn=weight_fn,
                           reduce_fn=jax.numpy.sum)
    ours = _ours_per_list(lambda_loss, s, r, weighting=weighting)
    torch.testing.assert_close(ours[0], theirs[0] / (n * math.log(2)))
    torch.testing.assert_close(ours[1], theirs[1] / (n * math.log(2)))


def test_lambda_loss_without_weights_is_ranknet_in_base_two() -> None:
    s, r, m = _lists(2)
    n_pairs = torch.tensor([float(((r[q, :, None] > r[q, None, :]) & m[q, :, None]
                                   & m[q, None, :]).sum()) for q in range(4)], dtype=torch.float64)
    torch.testing.assert_close(
        lambda_loss(s, r, mask=m, weighting="none", reduction="none"),
        ranknet_loss(s, r, mask=m, reduction="none") * n_pairs / math.log(2))


def _approx_oracle(s, r, m, T: float) -> list[float]:
    out = []
    for q in range(s.shape[0]):
        it = _items(m, q)
        gains = [2 ** float(r[q, i]) - 1 for i in it]
        idcg = _dcg_ideal(gains)
        if idcg == 0:
            out.append(0.0)
            continue
        total = 0.0
        for a, i in enumerate(it):
            pos = 1 + sum(1 / (1 + math.exp(-(float(s[q, j]) - float(s[q, i])) / T))
                          for j in it if j != i)
            total += gains[a] / math.log2(1 + pos)
        out.append(-total / idcg)
    return out


@pytest.mark.parametrize("T", [1.0, 0.3])
def test_approx_ndcg_matches_loop_oracle(T: float) -> None:
    s, r, m = _lists(3)
    got = approx_ndcg_loss(s, r, mask=m, temperature=T, reduction="none")
    torch.testing.assert_close(got, torch.tensor(_approx_oracle(s, r, m, T),
                                                 dtype=torch.float64))
    out = approx_ndcg_loss(s, r, mask=m, temperature=T)
    (grad,) = torch.autograd.grad(out, s)
    assert torch.isfinite(grad).all() and torch.count_nonzero(grad[2:]) == 0
    assert torch.count_nonzero(grad[1, 4:]) == 0


def test_approx_and_neural_ndcg_tend_to_minus_ndcg() -> None:
    g = torch.Generator().manual_seed(4)
    s = torch.randn(3, 6, generator=g, dtype=torch.float64) * 3
    r = torch.randint(0, 4, (3, 6), generator=g).to(torch.float64)
    r[:, 0] = 3.0
    want = torch.tensor([-_ndcg(s[q].tolist(), r[q].tolist()) for q in range(3)],
                        dtype=torch.float64)
    torch.testing.assert_close(approx_ndcg_loss(s, r, temperature=1e-4, reduction="none"),
                               want, atol=1e-6, rtol=0)
    torch.testing.assert_close(neural_ndcg_loss(s, r, temperature=1e-4, reduction="none"),
                               want, atol=1e-6, rtol=0)
    want3 = torch.tensor([-_ndcg(s[q].tolist(), r[q].tolist(), k=3) for q in range(3)],
                         dtype=torch.float64)
    torch.testing.assert_close(neural_ndcg_loss(s, r, temperature=1e-4, k=3,
                                                reduction="none"), want3, atol=1e-6, rtol=0)


def _neural_oracle(s, r, m, T: float, iters: int, k=None) -> list[float]:
    out = []
    for q in range(s.shape[0]):
        it = _items(m, q)
        n = len(it)
        sc = [float(s[q, i]) for i in it]
        gains = [2 ** float(r[q, i]) - 1 for i in it]
        idcg = _dcg_ideal(gains, k)
        if idcg == 0:
            out.append(0.0)
            continue
        P = []
        for pos in range(1, n + 1):
            logits = [((n + 1 - 2 * pos) * sc[j] - sum(abs(sc[j] - x) for x in sc)) / T
                      for j in range(n)]
            mx = max(logits)
            e = [math.exp(v - mx) for v in logits]
            P.append([v / sum(e) for v in e])
        for _ in range(iters):
            for j in range(n):  # columns
                c = sum(P[i][j] for i in range(n))
                for i in range(n):
                    P[i][j] /= c
            for i in range(n):  # rows
                c = sum(P[i])
                P[i] = [v / c for v in P[i]]
        cut = n if k is None else min(k, n)
        dcg = sum(sum(P[i][j] * gains[j] for j in range(n)) / math.log2(2 + i)
                  for i in range(cut))
        out.append(-dcg / idcg)
    return out


@pytest.mark.parametrize("iters,k", [(0, None), (5, None), (50, 3)])
def test_neural_ndcg_matches_loop_oracle(iters: int, k: int | None) -> None:
    s, r, m = _lists(6)
    got = neural_ndcg_loss(s, r, mask=m, temperature=0.7, sinkhorn_iters=iters, k=k,
                           reduction="none")
    torch.testing.assert_close(got, torch.tensor(_neural_oracle(s, r, m, 0.7, iters, k),
                                                 dtype=torch.float64))
    (g,) = torch.autograd.grad(got.sum(), s)
    assert torch.isfinite(g).all() and torch.count_nonzero(g[2:]) == 0
    assert torch.count_nonzero(g[1, 4:]) == 0


def test_neural_ndcg_padding_equals_the_unpadded_list() -> None:
    s, r, m = _lists(7)
    q = 1
    real = m[q]
    a = neural_ndcg_loss(s[q:q + 1], r[q:q + 1], mask=m[q:q + 1], reduction="none")
    b = neural_ndcg_loss(s[q:q + 1, real], r[q:q + 1, real], reduction="none")
    torch.testing.assert_close(a, b)


def test_poly1_listwise_matches_loop_oracle_and_reduces_to_softmax_ce() -> None:
    s, r, m = _lists(8)
    for eps in (0.0, 1.0, -0.5):
        want = []
        for q in range(4):
            it = _items(m, q)
            z = sum(math.exp(float(s[q, i])) for i in it) if it else 1.0
            total = sum(float(r[q, i]) for i in it)
            if total == 0:
                want.append(0.0)
                continue
            ce = -sum(float(r[q, i]) * (float(s[q, i]) - math.log(z)) for i in it)
            p_t = sum(float(r[q, i]) / total * math.exp(float(s[q, i])) / z for i in it)
            want.append(ce + eps * (1 - p_t))
        got = poly1_listwise_loss(s, r, mask=m, epsilon=eps, reduction="none")
        torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64))
    # epsilon = 0, one relevant item per list: the softmax cross-entropy of torch
    target = torch.tensor([0, 3, 5])
    onehot = torch.nn.functional.one_hot(target, 6).to(torch.float64)
    x = torch.randn(3, 6, dtype=torch.float64)
    torch.testing.assert_close(poly1_listwise_loss(x, onehot, epsilon=0.0),
                               torch.nn.functional.cross_entropy(x, target))


@pytest.mark.parametrize("name", ["pairwise_hinge", "lambda_loss", "approx_ndcg", "neural_ndcg",
                                  "poly1_listwise"])
def test_group1_specs_and_bad_hparams(name: str) -> None:
    sp = losslab.spec(name)
    assert sp.kind == "scores" and sp.family == "ranking-recsys"
    assert "all_masked" in sp.degenerate and "no_relevant" in sp.degenerate
    bad = {"pairwise_hinge": {"margin": -1.0}, "lambda_loss": {"weighting": "ndcg3"},
           "approx_ndcg": {"temperature": 0.0}, "neural_ndcg": {"k": 0},
           "poly1_listwise": {"epsilon": float("nan")}}[name]
    with pytest.raises(ValueError, match=next(iter(bad))):
        losslab.create(name, **bad)
