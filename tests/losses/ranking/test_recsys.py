"""BPR, sampled softmax (logQ), PSL, SL@K, CCL, decoupled softmax and SoftTop-k: loop oracles
from the papers' formulas (fp64) and the official code's formulas (IR-Benchmark, DEXML, RecBole)
restated, since none of them is installable here."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import losslab
from losslab.functional import (
    bpr_loss,
    ccl_loss,
    decoupled_softmax_loss,
    psl_loss,
    ranknet_loss,
    sampled_softmax_loss,
    soft_topk_loss,
    softmax_at_k_loss,
)

pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")


def _rec(seed: int = 0, Q: int = 5, L: int = 7, scale: float = 1.0):
    """Binary relevance; list 1 padded, list 3 fully masked, list 4 without a positive."""
    g = torch.Generator().manual_seed(seed)
    s = (torch.randn(Q, L, generator=g, dtype=torch.float64) * scale).requires_grad_(True)
    r = (torch.rand(Q, L, generator=g) < 0.35).to(torch.float64)
    r[:, 0] = 1.0
    r[:, -1] = 0.0
    r[4] = 0.0
    m = torch.ones(Q, L, dtype=torch.bool)
    m[1, 5:] = False
    m[3] = False
    return s, r, m


def _pn(s, r, m, q):
    P = [float(s[q, i]) for i in range(s.shape[1]) if m[q, i] and r[q, i] > 0]
    N = [float(s[q, j]) for j in range(s.shape[1]) if m[q, j] and r[q, j] <= 0]
    return P, N


def _check(got_none, want, s, mean=None):
    torch.testing.assert_close(got_none, torch.tensor(want, dtype=torch.float64))
    (g,) = torch.autograd.grad(got_none.sum(), s)
    assert torch.isfinite(g).all()
    assert torch.count_nonzero(g[3:]) == 0, "empty / positive-less lists must get no gradient"
    assert torch.count_nonzero(g[1, 5:]) == 0, "padding must get no gradient"
    if mean is not None:
        n = sum(1 for v in want if v != 0)
        assert float(mean) == pytest.approx(sum(want) / n)


def _oracle(s, r, m, per_pos) -> list[float]:
    out = []
    for q in range(s.shape[0]):
        P, N = _pn(s, r, m, q)
        out.append(sum(per_pos(p, N, P) for p in P) / len(P) if P and N else 0.0)
    return out


def test_bpr_matches_loop_oracle_and_ranknet_on_binary_relevance() -> None:
    s, r, m = _rec()
    want = _oracle(s, r, m, lambda p, N, P: sum(math.log1p(math.exp(-(p - n))) for n in N)
                   / len(N))
    _check(bpr_loss(s, r, mask=m, reduction="none"), want, s, bpr_loss(s, r, mask=m))
    torch.testing.assert_close(bpr_loss(s, r, mask=m, reduction="none"),
                               ranknet_loss(s, r, mask=m, reduction="none"))


def test_sampled_softmax_matches_loop_oracle_with_logq() -> None:
    s, r, m = _rec(1)
    g = torch.Generator().manual_seed(9)
    log_q = torch.log(torch.rand(7, generator=g, dtype=torch.float64) * 0.9 + 0.05)
    T = 0.5
    want = []
    for q in range(5):
        it = [i for i in range(7) if m[q, i]]
        P = [i for i in it if r[q, i] > 0]
        N = [i for i in it if r[q, i] <= 0]
        if not (P and N):
            want.append(0.0)
            continue
        z = {i: float(s[q, i]) / T - float(log_q[i]) for i in it}
        lse = math.log(sum(math.exp(v) for v in z.values()))
        want.append(sum(lse - z[i] for i in P) / len(P))
    got = sampled_softmax_loss(s, r, mask=m, log_q=log_q, temperature=T, reduction="none")
    _check(got, want, s)
    # the module takes log_q at call time
    mod = losslab.create("sampled_softmax", temperature=T, reduction="none")
    torch.testing.assert_close(mod(s, r, mask=m, log_q=log_q), got)
    # one positive per row, no correction: torch's cross-entropy
    x = torch.randn(4, 6, dtype=torch.float64)
    target = torch.tensor([0, 2, 5, 1])
    onehot = F.one_hot(target, 6).to(torch.float64)
    torch.testing.assert_close(sampled_softmax_loss(x, onehot), F.cross_entropy(x, target))
    # the correction equals cross-entropy of the corrected logits
    torch.testing.assert_close(sampled_softmax_loss(x, onehot, log_q=log_q[:6]),
                               F.cross_entropy(x - log_q[:6], target))
    with pytest.raises(ValueError, match="log_q"):
        sampled_softmax_loss(x, onehot, log_q=log_q)


_ACT = {"tanh": lambda d: math.tanh(d) + 1, "atan": lambda d: math.atan(d) + 1,
        "relu": lambda d: max(0.0, d + 1), "exp": math.exp}


@pytest.mark.parametrize("activation", ["tanh", "atan", "relu", "exp"])
def test_psl_matches_loop_oracle(activation: str) -> None:
    s, r, m = _rec(2, scale=0.4)  # |d| < 1 mostly: the paper's range
    tau = 0.7
    act = _ACT[activation]
    want = _oracle(s, r, m, lambda p, N, P: math.log(sum(act(n - p) ** (1 / tau) for n in N)))
    _check(psl_loss(s, r, mask=m, activation=activation, temperature=tau, reduction="none"),
           want, s)


def test_psl_matches_the_official_code_formula() -> None:
    """IR-Benchmark PSLOptimizer (method 1): d = neg - pos [B, N];
    loss = logsumexp(sigma(d) / tau_star, 1).mean(), sigma = log(tanh(d) + 1)."""
    g = torch.Generator().manual_seed(3)
    pos = torch.rand(6, generator=g, dtype=torch.float64) - 0.5
    neg = torch.rand(6, 9, generator=g, dtype=torch.float64) - 0.5
    d = neg - pos.unsqueeze(1)
    for name, sigma in [("tanh", lambda x: torch.log(torch.tanh(x) + 1)),
                        ("relu", lambda x: torch.log(F.relu(x + 1))),
                        ("atan", lambda x: torch.log(torch.atan(x) + 1))]:
        peer = torch.logsumexp(sigma(d) / 0.5, dim=1).mean()
        scores = torch.cat([pos.unsqueeze(1), neg], 1)
        rel = torch.zeros_like(scores)
        rel[:, 0] = 1
        torch.testing.assert_close(psl_loss(scores, rel, activation=name, temperature=0.5),
                                   peer)
    # the exp activation is the code's softmax loss logsumexp(d / tau)
    scores = torch.cat([pos.unsqueeze(1), neg], 1)
    rel = torch.zeros_like(scores)
    rel[:, 0] = 1
    torch.testing.assert_close(psl_loss(scores, rel, activation="exp", temperature=0.3),
                               torch.logsumexp(d / 0.3, 1).mean())


def test_psl_relu_outside_its_range_stays_finite() -> None:
    s = torch.tensor([[5.0, -5.0, -6.0]], dtype=torch.float64, requires_grad=True)
    r = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)
    out = psl_loss(s, r, activation="relu")
    (g,) = torch.autograd.grad(out, s)
    assert torch.isfinite(out) and torch.isfinite(g).all()


def test_softmax_at_k_matches_loop_oracle_and_code() -> None:
    s, r, m = _rec(4)
    K, td, tw = 3, 0.5, 0.8
    want = []
    for q in range(5):
        it = [float(s[q, i]) for i in range(7) if m[q, i]]
        P, N = _pn(s, r, m, q)
        if not (P and N):
            want.append(0.0)
            continue
        beta = sorted(it, reverse=True)[min(K, len(it)) - 1]
        want.append(sum(1 / (1 + math.exp(-(p - beta) / tw))
                        * math.log(sum(math.exp((n - p) / td) for n in N)) for p in P) / len(P))
    got = softmax_at_k_loss(s, r, mask=m, k=K, temperature=td, weight_temperature=tw,
                            reduction="none")
    _check(got, want, s)
    # IR-Benchmark cal_slatk_loss, one positive per row, beta from torch.topk
    g = torch.Generator().manual_seed(5)
    pos = torch.randn(4, generator=g, dtype=torch.float64)
    neg = torch.randn(4, 10, generator=g, dtype=torch.float64)
    allsc = torch.cat([pos.unsqueeze(1), neg], 1)
    beta = torch.topk(allsc, 5, dim=1)[0][:, -1]
    d = neg - pos.unsqueeze(1)
    peer = (torch.sigmoid((pos - beta) / tw) * torch.logsumexp(d / td, 1)).mean()
    rel = torch.zeros_like(allsc)
    rel[:, 0] = 1
    torch.testing.assert_close(softmax_at_k_loss(allsc, rel, k=5, temperature=td,
                                                 weight_temperature=tw), peer)


def test_softmax_at_k_gradient_holds_beta_fixed() -> None:
    s, r, m = _rec(6)
    K = 2
    key = torch.where(m, s.detach(), torch.full_like(s, -math.inf))
    beta = torch.sort(key, 1, descending=True).values[:, K - 1:K]
    beta = torch.where(torch.isfinite(beta), beta, torch.zeros_like(beta))
    pos = m & (r > 0)
    neg = m & (r <= 0)
    total = torch.zeros((), dtype=torch.float64)
    for q in range(5):
        if not (pos[q].any() and neg[q].any()):
            continue
        terms = []
        for i in torch.nonzero(pos[q]).flatten():
            lse = torch.logsumexp(s[q][neg[q]] - s[q, i], 0)
            terms.append(torch.sigmoid(s[q, i] - beta[q, 0]) * lse)
        total = total + torch.stack(terms).mean()
    (g_want,) = torch.autograd.grad(total, s)
    (g_got,) = torch.autograd.grad(softmax_at_k_loss(s, r, mask=m, k=K, reduction="sum"), s)
    torch.testing.assert_close(g_got, g_want)


def test_ccl_matches_loop_oracle() -> None:
    s, r, m = _rec(7)
    c = torch.tanh(s)  # cosine-like scores
    want = _oracle(c, r, m, lambda p, N, P: (1 - p) + 10.0 / len(N) * sum(max(0.0, n - 0.2)
                                                                         for n in N))
    got = ccl_loss(c, r, mask=m, margin=0.2, reduction="none")
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64))
    (g,) = torch.autograd.grad(got.sum(), s)
    assert torch.count_nonzero(g[3:]) == 0


def test_decoupled_softmax_matches_loop_oracle_and_dexml() -> None:
    s, r, m = _rec(8)
    T = 0.5
    want = _oracle(s, r, m, lambda p, N, P: -(p / T - math.log(
        math.exp(p / T) + sum(math.exp(n / T) for n in N))))
    _check(decoupled_softmax_loss(s, r, mask=m, temperature=T, reduction="none"), want, s)
    # DEXML: sim_neg = sim with positives at -100; log_denom = logaddexp(lse(sim_neg), s_pos)
    g = torch.Generator().manual_seed(2)
    sim = torch.randn(4, 8, generator=g, dtype=torch.float64)
    tgt = (torch.rand(4, 8, generator=g) < 0.3)
    tgt[:, 0] = True
    rows, cols = tgt.nonzero(as_tuple=True)
    sim_neg = sim.clone()
    sim_neg[rows, cols] = -100.0
    log_denom = torch.logaddexp(sim_neg.logsumexp(1)[rows], sim[rows, cols])
    num_pos = tgt.sum(1)
    peer = -((sim[rows, cols] - log_denom) / num_pos[rows]).sum() / 4
    torch.testing.assert_close(decoupled_softmax_loss(sim, tgt.to(torch.float64)), peer)
    # one positive per list: the same as the sampled softmax
    onehot = F.one_hot(torch.tensor([1, 0, 7, 3]), 8).to(torch.float64)
    torch.testing.assert_close(decoupled_softmax_loss(sim, onehot), sampled_softmax_loss(
        sim, onehot))


def _dexml_topk(xs: torch.Tensor, k: int, alpha: float, n_iter: int = 64) -> torch.Tensor:
    """DEXML ``_find_ts`` restated: bisection on t, returns log sigmoid(alpha (x + t))."""
    lo = -xs.max(1, keepdim=True).values - 10 / alpha
    hi = -xs.min(1, keepdim=True).values + 10 / alpha
    for _ in range(n_iter):
        mid = (hi + lo) / 2
        mask = torch.sigmoid(alpha * (xs + mid)).sum(1) < k
        lo[mask] = mid[mask]
        hi[~mask] = mid[~mask]
    ts = (lo + hi) / 2
    return F.logsigmoid(alpha * (xs + ts))


def test_soft_topk_matches_dexml_and_its_implicit_gradient() -> None:
    g = torch.Generator().manual_seed(11)
    sim = torch.randn(3, 9, generator=g, dtype=torch.float64, requires_grad=True)
    tgt = torch.zeros(3, 9, dtype=torch.float64)
    tgt[0, [0, 4]] = 1
    tgt[1, 2] = 1
    tgt[2, [1, 5, 8]] = 1
    k, alpha = 3, 2.0
    log_p = _dexml_topk(sim.detach(), k, alpha)
    per_pos = torch.where(tgt > 0, -log_p, torch.zeros_like(log_p))
    peer = (per_pos.sum(1) / tgt.sum(1)).mean()
    out = soft_topk_loss(sim, tgt, k=k, alpha=alpha)
    torch.testing.assert_close(out, peer)
    # the soft memberships sum to k
    assert float(log_p.exp().sum(1).sub(k).abs().max()) < 1e-9
    # DEXML's backward: d log p_i / d x_j = alpha (1 - p_i) (delta_ij - v_j / sum v)
    p = log_p.exp()
    v = alpha * p * (1 - p)
    up = torch.where(tgt > 0, -1 / tgt.sum(1, keepdim=True), torch.zeros_like(p)) / 3
    uv = up * alpha * (1 - p)
    want = uv - uv.sum(1, keepdim=True) * v / v.sum(1, keepdim=True)
    (got,) = torch.autograd.grad(out, sim)
    torch.testing.assert_close(got, want)


def test_soft_topk_with_at_most_k_items_is_zero() -> None:
    s = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    r = torch.tensor([[1.0, 0, 0], [0, 1, 1]], dtype=torch.float64)
    out = soft_topk_loss(s, r, k=3)
    assert float(out) == 0.0
    (g,) = torch.autograd.grad(out, s)
    assert torch.count_nonzero(g) == 0


@pytest.mark.parametrize("name,bad", [("psl", {"activation": "sigmoid"}),
                                      ("softmax_at_k", {"k": 0}),
                                      ("ccl", {"margin": 2.0}),
                                      ("sampled_softmax", {"temperature": -1.0}),
                                      ("soft_topk", {"alpha": 0.0})])
def test_recsys_bad_hparams(name: str, bad: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        losslab.create(name, **bad)
