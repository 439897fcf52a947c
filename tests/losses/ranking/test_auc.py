"""AUC surrogates and YetiLoss: loop oracles (fp64), LibAUC's ``AUCMLoss`` and
``PairwiseAUCLoss`` (the package's own files, see ``peers.py``) with the saddle-point property,
the RankNet coincidence of the MW loss, and YetiLoss's weights recomputed by loops from the same
noise."""

from __future__ import annotations

import math

import pytest
import torch

import losslab
from losslab.functional import (
    auc_margin_loss,
    auc_pairwise_loss,
    bpr_loss,
    macro_auc_pairwise_loss,
    macro_auc_univariate_loss,
    ranknet_loss,
    yeti_loss,
)
from tests.losses.ranking.peers import libauc_losses

pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")


def _batch(seed: int = 0, Q: int = 3, L: int = 6):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(Q, L, generator=g, dtype=torch.float64, requires_grad=True)
    r = (torch.rand(Q, L, generator=g) < 0.4).to(torch.float64)
    r[0, 0], r[0, 1] = 1.0, 0.0
    m = torch.ones(Q, L, dtype=torch.bool)
    m[1, 4:] = False
    return s, r, m


def test_auc_pairwise_matches_loop_oracle_across_lists() -> None:
    s, r, m = _batch()
    P = [float(s[q, i]) for q in range(3) for i in range(6) if m[q, i] and r[q, i] > 0]
    N = [float(s[q, i]) for q in range(3) for i in range(6) if m[q, i] and r[q, i] <= 0]
    want = sum(math.log1p(math.exp(-(p - n))) for p in P for n in N) / (len(P) * len(N))
    out = auc_pairwise_loss(s, r, mask=m)
    assert float(out) == pytest.approx(want, rel=1e-12)
    none = auc_pairwise_loss(s, r, mask=m, reduction="none")
    assert none.shape == s.shape and float(none.sum()) == pytest.approx(want, rel=1e-12)
    (g,) = torch.autograd.grad(out, s)
    assert torch.count_nonzero(g[1, 4:]) == 0
    # one list with binary relevance: RankNet and BPR
    one = s[:1], r[:1]
    torch.testing.assert_close(auc_pairwise_loss(*one), ranknet_loss(*one))
    torch.testing.assert_close(auc_pairwise_loss(*one), bpr_loss(*one))


def test_auc_pairwise_matches_libauc_pairwise_auc_loss() -> None:
    s, r, m = _batch(3)
    peer = libauc_losses().PairwiseAUCLoss(surr_loss="logistic", hparam=1.0)
    torch.testing.assert_close(auc_pairwise_loss(s, r, mask=m), peer(s[m], r[m]))
    (g1,) = torch.autograd.grad(auc_pairwise_loss(s, r, mask=m), s)
    (g2,) = torch.autograd.grad(peer(s[m], r[m]), s)
    torch.testing.assert_close(g1, g2)


def _libauc_aucm(y_pred, y_true, a, b, alpha, p, margin):
    """LibAUC's ``AUCMLoss`` (version v1: means over all N items) with its auxiliary variables
    set to ``a, b, alpha`` and the imbalance ratio to ``p``."""
    peer = libauc_losses().AUCMLoss(margin=margin, imratio=p, device=torch.device("cpu"))
    peer = peer.double()
    with torch.no_grad():
        peer.a.fill_(float(a))
        peer.b.fill_(float(b))
        peer.alpha.fill_(float(alpha))
    return peer(y_pred.reshape(-1, 1), y_true.reshape(-1, 1), auto=False).reshape(())


@pytest.mark.parametrize("ratio", [None, 0.3])
def test_auc_margin_is_libauc_aucm_at_its_saddle_point(ratio: float | None) -> None:
    g = torch.Generator().manual_seed(1)
    h = torch.sigmoid(torch.randn(1, 20, generator=g, dtype=torch.float64)).requires_grad_(True)
    y = (torch.rand(1, 20, generator=g) < 0.35).to(torch.float64)
    y[0, :2] = torch.tensor([1.0, 0.0])
    margin = 1.0
    hp, hn = h[y > 0], h[y == 0]
    p_hat = float((y > 0).double().mean())
    p = p_hat if ratio is None else ratio
    a, b = hp.mean().detach(), hn.mean().detach()
    X = float(p * (1 - p) * margin + torch.mean(p * h * (y == 0) - (1 - p) * h * (y > 0)))
    alpha = max(0.0, X / (p * (1 - p)))
    f = _libauc_aucm(h, y, a, b, alpha, p, margin)
    ours = auc_margin_loss(h, y, margin=margin, imbalance_ratio=ratio)
    torch.testing.assert_close(ours, f)
    # saddle: increasing in a, b away from the optimum, decreasing in alpha away from alpha*
    for da in (0.05, -0.05):
        assert float(_libauc_aucm(h, y, a + da, b, alpha, p, margin)) > float(f)
        assert float(_libauc_aucm(h, y, a, b + da, alpha, p, margin)) > float(f)
    assert float(_libauc_aucm(h, y, a, b, alpha + 0.1, p, margin)) < float(f)
    # Danskin: the gradient is that of f at the saddle (a, b, alpha fixed)
    (g1,) = torch.autograd.grad(ours, h)
    (g2,) = torch.autograd.grad(f, h)
    torch.testing.assert_close(g1, g2)
    if ratio is None:  # the closed form p(1-p)(V+ + V- + (m - (mu+ - mu-))_+^2)
        want = p * (1 - p) * (float(hp.var(unbiased=False)) + float(hn.var(unbiased=False))
                              + max(0.0, margin - float(hp.mean() - hn.mean())) ** 2)
        assert float(ours) == pytest.approx(want, rel=1e-12)


def test_auc_margin_without_both_classes_is_zero() -> None:
    h = torch.rand(1, 5, dtype=torch.float64, requires_grad=True)
    out = auc_margin_loss(h, torch.ones(1, 5))
    assert float(out) == 0.0
    (g,) = torch.autograd.grad(out, h)
    assert torch.count_nonzero(g) == 0


def _base(t: float, surrogate: str, margin: float = 1.0) -> float:
    return {"logistic": math.log1p(math.exp(-t)), "hinge": max(0.0, margin - t),
            "square": (margin - t) ** 2}[surrogate]


@pytest.mark.parametrize("surrogate", ["logistic", "hinge", "square"])
def test_macro_auc_losses_match_loop_oracles(surrogate: str) -> None:
    g = torch.Generator().manual_seed(2)
    N, C = 8, 4
    f = torch.randn(N, C, generator=g, dtype=torch.float64, requires_grad=True)
    y = (torch.rand(N, C, generator=g) < 0.4).to(torch.float64)
    y[0, :3], y[1, :3] = 1.0, 0.0
    y[:, 3] = 1.0  # label 3 has no negative: no AUC
    mask = torch.ones(N, C, dtype=torch.bool)
    mask[5, 1] = False
    pa, uni = [], []
    for k in range(C):
        P = [float(f[i, k]) for i in range(N) if mask[i, k] and y[i, k] > 0]
        Ng = [float(f[i, k]) for i in range(N) if mask[i, k] and y[i, k] <= 0]
        if not (P and Ng):
            pa.append(0.0)
            uni.append(0.0)
            continue
        pa.append(sum(_base(p - n, surrogate) for p in P for n in Ng) / (len(P) * len(Ng)))
        uni.append(sum(_base(p, surrogate) for p in P) / len(P)
                   + sum(_base(-n, surrogate) for n in Ng) / len(Ng))
    got_pa = macro_auc_pairwise_loss(f, y, mask=mask, surrogate=surrogate, reduction="none")
    got_u = macro_auc_univariate_loss(f, y, mask=mask, surrogate=surrogate, reduction="none")
    torch.testing.assert_close(got_pa, torch.tensor(pa, dtype=torch.float64))
    torch.testing.assert_close(got_u, torch.tensor(uni, dtype=torch.float64))
    assert float(macro_auc_pairwise_loss(f, y, mask=mask, surrogate=surrogate)) == \
        pytest.approx(sum(pa) / 3)
    (grad,) = torch.autograd.grad(got_pa.sum() + got_u.sum(), f)
    assert torch.count_nonzero(grad[:, 3]) == 0 and grad[5, 1] == 0


def test_macro_auc_pairwise_bounds_one_minus_macro_auc() -> None:
    """The logistic pairwise surrogate / log 2 upper-bounds 1 - AUC per label (ties aside)."""
    g = torch.Generator().manual_seed(3)
    f = torch.randn(30, 3, generator=g, dtype=torch.float64)
    y = (torch.rand(30, 3, generator=g) < 0.3).to(torch.float64)
    per = macro_auc_pairwise_loss(f, y, reduction="none") / math.log(2)
    for k in range(3):
        P, N = f[y[:, k] > 0, k], f[y[:, k] == 0, k]
        auc = float((P[:, None] > N[None, :]).double().mean())
        assert float(per[k]) >= 1 - auc


def test_yeti_loss_matches_loop_oracle_from_the_same_noise() -> None:
    g = torch.Generator().manual_seed(4)
    s = torch.randn(3, 6, generator=g, dtype=torch.float64, requires_grad=True)
    r = torch.randint(0, 3, (3, 6), generator=g).to(torch.float64)
    m = torch.ones(3, 6, dtype=torch.bool)
    m[2, 4:] = False
    T, nb, k = 4, 2, 4
    torch.manual_seed(77)
    got = yeti_loss(s, r, mask=m, num_permutations=T, neighbors=nb, k=k, reduction="none")
    torch.manual_seed(77)
    noise = [torch.rand(3, 6, dtype=torch.float64).clamp(1e-12, 1 - 1e-12) for _ in range(T)]
    want = []
    for q in range(3):
        it = [i for i in range(6) if m[q, i]]
        rel = {i: float(r[q, i]) for i in it}
        idcg = sum(gn / math.log2(2 + p) for p, gn in
                   enumerate(sorted((2 ** v - 1 for v in rel.values()), reverse=True)[:k]))
        G = {i: (2 ** rel[i] - 1) / idcg for i in it} if idcg > 0 else {i: 0.0 for i in it}
        w = {(i, j): 0.0 for i in it for j in it}
        for u in noise:
            z = {i: float(s[q, i]) + math.log(float(u[q, i])) - math.log1p(-float(u[q, i]))
                 for i in it}
            order = sorted(it, key=lambda i: -z[i])
            pos = {i: p + 1 for p, i in enumerate(order)}
            def d(p: int) -> float:
                return 1 / math.log2(1 + p) if p <= k else 0.0
            for i in it:
                for j in it:
                    if abs(pos[i] - pos[j]) <= nb:
                        w[i, j] += abs(G[i] - G[j]) * abs(d(pos[i]) - d(pos[j])) / T
        want.append(sum(w[i, j] * math.log1p(math.exp(-(float(s[q, i]) - float(s[q, j]))))
                        for i in it for j in it if rel[i] > rel[j]))
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64))
    (grad,) = torch.autograd.grad(got.sum(), s)
    assert torch.isfinite(grad).all() and torch.count_nonzero(grad[2, 4:]) == 0


@pytest.mark.parametrize("name,bad", [("auc_margin", {"imbalance_ratio": 1.5}),
                                      ("macro_auc_pairwise", {"surrogate": "exp"}),
                                      ("yeti_loss", {"num_permutations": 0})])
def test_auc_bad_hparams(name: str, bad: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        losslab.create(name, **bad)
