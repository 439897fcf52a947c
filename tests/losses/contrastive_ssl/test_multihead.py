"""AMCL: loop oracle from the formula (fp64), the official computation restated
(``AMCLNTXentLoss``), and its properties (heads add up, temperatures in range and decreasing
with the pair score)."""

from __future__ import annotations

import math

import pytest
import torch

import losslab
from losslab.functional import amcl_loss
from losslab.losses.contrastive_ssl.multihead import (
    amcl_barlow_twins_loss,
    amcl_moco_loss,
    amcl_simsiam_loss,
    pair_temperature,
)
from losslab.losses.contrastive_ssl.redundancy import barlow_twins_loss


def views(n: int = 5, h: int = 2, d: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, h, d, generator=g, dtype=torch.float64)
    b = a + 0.6 * torch.randn(n, h, d, generator=g, dtype=torch.float64)
    return a.requires_grad_(True), b.requires_grad_(True)


def unit(v: list[float]) -> list[float]:
    norm = math.sqrt(sum(t * t for t in v))
    return [t / norm for t in v]


def dot(x: list[float], y: list[float]) -> float:
    return sum(p * q for p, q in zip(x, y))


def amcl_oracle(a, b, beta, tau_min, tau_max, k, phi=None):
    n, heads, d = a.shape
    out = [0.0] * n
    for h in range(heads):
        z = [unit(a[i, h].tolist()) for i in range(n)] + [unit(b[i, h].tolist())
                                                         for i in range(n)]
        pz = z if phi is None else [phi(torch.tensor(v, dtype=torch.float64)).tolist()
                                     for v in z]

        def tau(r, c, pz=pz):
            return tau_min + (tau_max - tau_min) / (1 + math.exp(dot(pz[r], pz[c])))

        for r in range(2 * n):
            p = (r + n) % (2 * n)
            negs = sorted((c for c in range(2 * n) if c not in (r, p)),
                          key=lambda c: -dot(z[r], z[c]))[: min(k, 2 * n - 2)]
            tp = tau(r, p)
            term = -dot(z[r], z[p]) / tp
            term += sum(dot(z[r], z[c]) / tau(r, c) for c in negs) / len(negs)
            term += beta * (d / 2 * math.log(tp) + 1 / tp)
            term -= beta * sum(math.log(tau(r, c)) + 1 / tau(r, c) for c in negs)
            out[r % n] += term / 2
    return out


def test_amcl_matches_loop_oracle() -> None:
    a, b = views()
    for k, beta in ((100, 0.01), (3, 0.5)):
        got = amcl_loss(a, b, num_negatives=k, beta=beta, tau_min=0.05, tau_max=1.5,
                        reduction="none")
        want = amcl_oracle(a.detach(), b.detach(), beta, 0.05, 1.5, k)
        torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64))
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(),
                              torch.nn.Linear(6, 4)).double()
    got = amcl_loss(a, b, phi=net, num_negatives=4, reduction="none")
    with torch.no_grad():
        want = amcl_oracle(a.detach(), b.detach(), 0.01, 1e-5, 2.0, 4, phi=net)
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64))


def official_restated(z1, z2, net, beta, tau_min, tau_max, topk):
    """``AMCLNTXentLoss.forward`` of the official code (``LeiWangR/cl``), restated."""
    f = torch.nn.functional
    b, c, d = z1.shape
    eye = torch.eye(b, dtype=torch.bool)

    def temp(x, y):
        return tau_min + (tau_max - tau_min) * torch.sigmoid(-(net(x) * net(y)).sum(-1))

    def direction(anchor, positive, negatives):
        anchor, positive = f.normalize(anchor, dim=-1), f.normalize(positive, dim=-1)
        negatives = f.normalize(negatives, dim=-1)
        pos_sim = (anchor * positive).sum(-1)
        tau_pos = temp(anchor, positive)
        sim_neg = (anchor[:, None, :] * negatives).sum(-1)
        tau_neg = temp(anchor[:, None, :], negatives)
        k = min(topk, negatives.size(1))
        vals, idx = sim_neg.topk(k=k, dim=1)
        tau_top = tau_neg.gather(1, idx)
        neg = (vals / tau_top).mean(1)
        reg_pos = beta * (0.5 * d * torch.log(tau_pos) + 1 / tau_pos)
        reg_neg = beta * (torch.log(tau_top).sum(1) + (1 / tau_top).sum(1))
        return (-pos_sim / tau_pos + neg + reg_pos - reg_neg).mean()

    losses = []
    for h in range(c):
        same = z1[:, h].unsqueeze(0).expand(b, -1, -1)[~eye].view(b, b - 1, d)
        other = z2[:, h].unsqueeze(0).expand(b, -1, -1)[~eye].view(b, b - 1, d)
        losses.append(direction(z1[:, h], z2[:, h], torch.cat([same, other], 1)))
        losses.append(direction(z2[:, h], z1[:, h], torch.cat([other, same], 1)))
    return torch.stack(losses).view(c, 2).mean(1).sum()


def test_amcl_module_matches_official_formula() -> None:
    a, b = views(n=6, h=3, d=5, seed=2)
    m = losslab.create("amcl", embedding_dim=5, hidden_dim=7, num_negatives=4,
                       tau_min=0.01).double()
    got = m(a, b)
    want = official_restated(a, b, m.phi, 0.01, 0.01, 2.0, 4)
    torch.testing.assert_close(got, want)
    params = [a, b, *m.parameters()]
    for x, y in zip(torch.autograd.grad(got, params), torch.autograd.grad(want, params)):
        torch.testing.assert_close(x, y)
    assert {k for k, _ in m.state_dict().items()} == {"phi.0.weight", "phi.0.bias",
                                                     "phi.2.weight", "phi.2.bias"}


def test_amcl_heads_add_up_and_two_dim_is_one_head() -> None:
    a, b = views(h=3)
    total = amcl_loss(a, b, num_negatives=3)
    parts = sum(amcl_loss(a[:, h], b[:, h], num_negatives=3) for h in range(3))
    torch.testing.assert_close(total, parts)
    torch.testing.assert_close(amcl_loss(a[:, :1], b[:, :1]), amcl_loss(a[:, 0], b[:, 0]))


def test_pair_temperature_range_and_direction() -> None:
    x = torch.randn(50, 4, dtype=torch.float64)
    y = torch.randn(50, 4, dtype=torch.float64)
    t = pair_temperature(x, y, tau_min=0.1, tau_max=0.9)
    assert bool(((t > 0.1) & (t < 0.9)).all())
    score = (x * y).sum(1)
    order = score.argsort()
    assert bool((t[order].diff() <= 0).all())  # higher score (more similar) -> lower tau


def test_amcl_gradcheck_and_errors() -> None:
    a, b = views(n=4, h=2, d=3)
    assert torch.autograd.gradcheck(
        lambda x, y: amcl_loss(x, y, num_negatives=2, tau_min=0.1, beta=0.3), (a, b))
    with pytest.raises(ValueError, match="tau_min must be smaller"):
        amcl_loss(a, b, tau_min=2.0, tau_max=1.0)
    with pytest.raises(ValueError, match="same shape"):
        amcl_loss(a, b[:, :1])
    with pytest.raises(ValueError, match=r"\[N, D\] or \[N, H, D\]"):
        amcl_loss(a[0, 0], b[0, 0])
    with pytest.raises(ValueError, match="at least 2 pairs"):
        amcl_loss(a[:1], b[:1])
    with pytest.raises(ValueError, match="embedding_dim"):
        losslab.create("amcl", embedding_dim=0)


# --------------------------------------------------------------------------------------------
# The MoCo, SimSiam and Barlow Twins instances of the official code


def small_net(dim: int, hidden: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.ReLU(),
                               torch.nn.Linear(hidden, dim)).double()


def zero_net(x: torch.Tensor) -> torch.Tensor:
    """phi = 0: every score is 0, every temperature (tau_min + tau_max) / 2."""
    return x * 0


def lists(phi, vectors):
    if phi is None:
        return vectors
    with torch.no_grad():
        return [phi(torch.tensor(v, dtype=torch.float64)).tolist() for v in vectors]


def moco_oracle(q, k, queue, beta, tau_min, tau_max, top, phi=None):
    n, heads, d = q.shape
    out = [0.0] * n
    for h in range(heads):
        bank = [unit(queue[j, h].tolist()) for j in range(queue.shape[0])]
        pbank = lists(phi, bank)
        for i in range(n):
            u, v = unit(q[i, h].tolist()), unit(k[i, h].tolist())
            pu, pv = lists(phi, [u, v])
            tp = tau_min + (tau_max - tau_min) / (1 + math.exp(dot(pu, pv)))
            for x, px in ((u, pu), (v, pv)):
                negs = sorted(range(len(bank)), key=lambda j, x=x: -dot(x, bank[j]))
                negs = negs[: min(top, len(bank))]
                taus = {j: tau_min + (tau_max - tau_min) / (1 + math.exp(dot(px, pbank[j])))
                        for j in negs}
                term = -dot(u, v) / tp
                term += sum(dot(x, bank[j]) / taus[j] for j in negs) / len(negs)
                term += beta * (d / 2 * math.log(tp) + 1 / tp)
                term -= beta * sum(math.log(taus[j]) + 1 / taus[j] for j in negs)
                out[i] += term / 2
    return out


def test_amcl_moco_matches_loop_oracle() -> None:
    q, k = views(n=4, h=2, d=3, seed=3)
    queue = torch.randn(7, 2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    for top, beta, phi in ((100, 0.01, None), (3, 0.4, None), (2, 0.01, small_net(3, 5))):
        got = amcl_moco_loss(q, k, queue, phi=phi, num_negatives=top, beta=beta, tau_min=0.05,
                             tau_max=1.5, reduction="none")
        want = moco_oracle(q.detach(), k.detach(), queue, beta, 0.05, 1.5, top, phi=phi)
        torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64))


def official_moco_restated(q, k, queue_hdk, net, beta, tau_min, tau_max, topk):
    """``AMCLMoCoLoss.forward`` of the official code (queue stored ``[H, D, K]``), restated."""
    f = torch.nn.functional
    d = q.shape[-1]

    def temp(score):
        return tau_min + (tau_max - tau_min) * torch.sigmoid(-score)

    def direction(anchor, positive, bank):
        anchor, positive = f.normalize(anchor, dim=-1), f.normalize(positive, dim=-1)
        bank = f.normalize(bank, dim=-1)
        pos_sim = (anchor * positive).sum(-1)
        tau_pos = temp((net(anchor) * net(positive)).sum(-1))
        tau_neg = temp(net(anchor) @ net(bank).t())
        vals, idx = (anchor @ bank.t()).topk(k=min(topk, bank.size(0)), dim=1)
        tau_top = tau_neg.gather(1, idx)
        reg_pos = beta * (0.5 * d * torch.log(tau_pos) + 1 / tau_pos)
        reg_neg = beta * (torch.log(tau_top).sum(1) + (1 / tau_top).sum(1))
        return (-pos_sim / tau_pos + (vals / tau_top).mean(1) + reg_pos - reg_neg).mean()

    per_head = []
    for h in range(q.shape[1]):
        bank = queue_hdk[h].t()
        per_head.append(0.5 * (direction(q[:, h], k[:, h], bank)
                               + direction(k[:, h], q[:, h], bank)))
    return torch.stack(per_head).sum()


def test_amcl_moco_matches_official_formula_values_and_gradients() -> None:
    q, k = views(n=5, h=3, d=4, seed=5)
    queue_hdk = torch.randn(3, 4, 9, dtype=torch.float64).requires_grad_(True)
    net = small_net(4, 6, seed=1)
    got = amcl_moco_loss(q, k, queue_hdk.permute(2, 0, 1), phi=net, num_negatives=4,
                         tau_min=0.01)
    want = official_moco_restated(q, k, queue_hdk, net, 0.01, 0.01, 2.0, 4)
    torch.testing.assert_close(got, want)
    params = [q, k, queue_hdk, *net.parameters()]
    for x, y in zip(torch.autograd.grad(got, params), torch.autograd.grad(want, params)):
        torch.testing.assert_close(x, y)


def test_amcl_moco_with_the_batch_as_queue_is_the_simclr_form() -> None:
    """Both anchors of pair i have the same 2N - 2 in-batch negatives in the SimCLR form, so a
    queue holding exactly those makes the MoCo form the SimCLR form, pair by pair."""
    a, b = views(n=5, h=2, d=4, seed=6)
    net = small_net(4, 5, seed=2)
    simclr = amcl_loss(a, b, phi=net, num_negatives=3, beta=0.2, reduction="none")
    for i in range(5):
        others = [j for j in range(5) if j != i]
        queue = torch.cat([a[others], b[others]], 0)
        moco = amcl_moco_loss(a[i:i + 1], b[i:i + 1], queue, phi=net, num_negatives=3,
                              beta=0.2, reduction="sum")
        torch.testing.assert_close(moco, simclr[i])


def test_amcl_moco_heads_add_up_and_topk_ignores_easy_negatives() -> None:
    q, k = views(n=4, h=3, d=3, seed=7)
    queue = torch.randn(6, 3, 3, dtype=torch.float64)
    total = amcl_moco_loss(q, k, queue, num_negatives=2)
    parts = sum(amcl_moco_loss(q[:, h], k[:, h], queue[:, h], num_negatives=2)
                for h in range(3))
    torch.testing.assert_close(total, parts)
    # one head, every anchor facing away from a new queue entry: it is never among the top 2
    q1 = torch.tensor([[1.0, 0.2], [0.9, -0.1]], dtype=torch.float64)
    k1 = torch.tensor([[0.8, 0.3], [1.0, 0.1]], dtype=torch.float64)
    bank = torch.tensor([[0.7, 0.7], [0.9, -0.5], [0.2, 1.0]], dtype=torch.float64)
    far = torch.tensor([[-1.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(amcl_moco_loss(q1, k1, bank, num_negatives=2),
                               amcl_moco_loss(q1, k1, torch.cat([bank, far]), num_negatives=2))


def test_amcl_moco_errors_and_gradcheck() -> None:
    q, k = views(n=3, h=2, d=3, seed=8)
    queue = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, y, m: amcl_moco_loss(x, y, m, num_negatives=2, tau_min=0.1, beta=0.3),
        (q, k, queue))
    with pytest.raises(ValueError, match="queue must be a float tensor"):
        amcl_moco_loss(q, k, queue[:, 0])
    with pytest.raises(ValueError, match="queue must be a float tensor"):
        amcl_moco_loss(q[:, 0], k[:, 0], queue)
    with pytest.raises(ValueError, match="at least 1 negative"):
        amcl_moco_loss(q, k, queue[:0])
    with pytest.raises(ValueError, match="same shape"):
        amcl_moco_loss(q, k[:, :1], queue)
    with pytest.raises(ValueError, match="num_negatives"):
        amcl_moco_loss(q, k, queue, num_negatives=0)


def simsiam_oracle(p1, z2, p2, z1, beta, tau_min, tau_max, phi=None):
    n, heads, d = p1.shape
    out = [0.0] * n
    for i in range(n):
        for h in range(heads):
            for p, z in ((p1, z2), (p2, z1)):
                u, v = unit(p[i, h].tolist()), unit(z[i, h].tolist())
                pu, pv = lists(phi, [u, v])
                t = tau_min + (tau_max - tau_min) / (1 + math.exp(dot(pu, pv)))
                out[i] += -0.5 * dot(u, v) / t + beta * (d / 2 * math.log(t) + 1 / t)
    return out


def four(n=5, h=2, d=4, seed=9):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, h, d, generator=g, dtype=torch.float64).requires_grad_(True)
            for _ in range(4)]


def test_amcl_simsiam_matches_loop_oracle_and_stops_target_gradients() -> None:
    p1, z2, p2, z1 = four()
    for beta, phi in ((0.01, None), (0.5, small_net(4, 3, seed=3))):
        got = amcl_simsiam_loss(p1, z2, p2, z1, phi=phi, beta=beta, tau_min=0.05,
                                tau_max=1.5, reduction="none")
        want = simsiam_oracle(p1.detach(), z2.detach(), p2.detach(), z1.detach(), beta, 0.05,
                              1.5, phi)
        torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64))
    loss = amcl_simsiam_loss(p1, z2, p2, z1)
    gp1, gz2, gp2, gz1 = torch.autograd.grad(loss, (p1, z2, p2, z1), allow_unused=True,
                                             materialize_grads=True)
    assert bool(gp1.abs().sum() > 0) and bool(gp2.abs().sum() > 0)
    assert bool((gz1 == 0).all()) and bool((gz2 == 0).all())


def official_simsiam_restated(p1, z2, p2, z1, net, beta, tau_min, tau_max):
    """``AMCLSimSiamLoss.forward`` of the official code, restated."""
    f = torch.nn.functional
    d = p1.shape[-1]

    def temp(x, y):
        return tau_min + (tau_max - tau_min) * torch.sigmoid(-(net(x) * net(y)).sum(-1))

    losses = []
    for h in range(p1.shape[1]):
        a, b = f.normalize(p1[:, h], dim=-1), f.normalize(z2[:, h].detach(), dim=-1)
        c, e = f.normalize(p2[:, h], dim=-1), f.normalize(z1[:, h].detach(), dim=-1)
        t1, t2 = temp(a, b), temp(c, e)
        term = (-0.5 * (a * b).sum(-1) / t1 - 0.5 * (c * e).sum(-1) / t2
                + beta * (0.5 * d * torch.log(t1) + 1 / t1)
                + beta * (0.5 * d * torch.log(t2) + 1 / t2))
        losses.append(term.mean())
    return torch.stack(losses).sum()


def test_amcl_simsiam_matches_official_formula_values_and_gradients() -> None:
    x = four(n=6, h=3, d=4, seed=10)
    net = small_net(4, 7, seed=4)
    got = amcl_simsiam_loss(*x, phi=net, beta=0.05, tau_min=0.01)
    want = official_simsiam_restated(x[0], x[1], x[2], x[3], net, 0.05, 0.01, 2.0)
    torch.testing.assert_close(got, want)
    params = [x[0], x[2], *net.parameters()]
    for g, w in zip(torch.autograd.grad(got, params), torch.autograd.grad(want, params)):
        torch.testing.assert_close(g, w)


def test_amcl_simsiam_one_head_constant_temperature_is_simsiam() -> None:
    p1, z2, p2, z1 = (x[:, 0] for x in four(h=1, seed=11))
    f = torch.nn.functional
    simsiam = -0.5 * (f.cosine_similarity(p1, z2.detach(), dim=-1)
                      + f.cosine_similarity(p2, z1.detach(), dim=-1)).mean()
    got = amcl_simsiam_loss(p1, z2, p2, z1, phi=zero_net, beta=0.0, tau_min=0.5, tau_max=1.5)
    torch.testing.assert_close(got, simsiam)
    # heads add up
    x = four(h=3, seed=12)
    total = amcl_simsiam_loss(*x, beta=0.1)
    parts = sum(amcl_simsiam_loss(*(t[:, h] for t in x), beta=0.1) for h in range(3))
    torch.testing.assert_close(total, parts)
    with pytest.raises(ValueError, match="p2 must have the shape of p1"):
        amcl_simsiam_loss(x[0], x[1], x[2][:, :1], x[3])


def barlow_oracle(a, b, beta, lam, tau_min, tau_max, eps, phi=None):
    n, heads, d = a.shape
    total = 0.0
    for h in range(heads):
        cols_a = [[a[s, h, c].item() for s in range(n)] for c in range(d)]
        cols_b = [[b[s, h, c].item() for s in range(n)] for c in range(d)]

        def standard(col):
            mean = sum(col) / n
            var = sum((t - mean) ** 2 for t in col) / n
            return [(t - mean) / math.sqrt(var + eps) for t in col]

        sa, sb = [standard(c) for c in cols_a], [standard(c) for c in cols_b]
        pa, pb = lists(phi, cols_a), lists(phi, cols_b)
        for l_ in range(d):
            for m in range(d):
                c = sum(sa[l_][s] * sb[m][s] for s in range(n)) / n
                t = tau_min + (tau_max - tau_min) / (1 + math.exp(dot(pa[l_], pb[m])))
                omega = d / 2 * math.log(t) + 1 / t
                if l_ == m:
                    total += (1 - c / t) ** 2 + beta * omega
                else:
                    total += lam * c * c / t - beta * omega
    return total


def test_amcl_barlow_twins_matches_loop_oracle() -> None:
    a, b = views(n=6, h=2, d=3, seed=13)
    a2 = (a * 0.3).detach().requires_grad_(True)  # raw channel scores in sigmoid's range
    b2 = (b * 0.3).detach().requires_grad_(True)
    for beta, lam, phi in ((1e-4, 5e-3, None), (0.05, 0.3, small_net(6, 4, seed=5))):
        got = amcl_barlow_twins_loss(a2, b2, phi=phi, beta=beta, lam=lam, tau_min=0.05,
                                     tau_max=1.5)
        want = barlow_oracle(a2.detach(), b2.detach(), beta, lam, 0.05, 1.5, 1e-5, phi)
        torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64))
    assert torch.autograd.gradcheck(
        lambda x, y: amcl_barlow_twins_loss(x, y, beta=0.1, lam=0.2, tau_min=0.1), (a2, b2))


def test_amcl_barlow_twins_one_head_constant_temperature_is_barlow_twins() -> None:
    a, b = views(n=8, h=1, d=5, seed=14)
    got = amcl_barlow_twins_loss(a, b, phi=zero_net, beta=0.0, lam=0.02, tau_min=0.5,
                                 tau_max=1.5)
    torch.testing.assert_close(got, barlow_twins_loss(a[:, 0], b[:, 0], lam=0.02))
    x, y = views(n=8, h=3, d=5, seed=15)
    total = amcl_barlow_twins_loss(x, y, beta=0.01)
    parts = sum(amcl_barlow_twins_loss(x[:, h], y[:, h], beta=0.01) for h in range(3))
    torch.testing.assert_close(total, parts)
    # a constant column (a collapsed channel) stays finite, with finite gradients
    z = x.detach().clone()
    z[:, :, 2] = 1.0
    z.requires_grad_(True)
    val = amcl_barlow_twins_loss(z, y)
    (grad,) = torch.autograd.grad(val, z)
    assert bool(torch.isfinite(val)) and bool(torch.isfinite(grad).all())
    with pytest.raises(ValueError, match="at least 2 samples"):
        amcl_barlow_twins_loss(x[:1], y[:1])
    with pytest.raises(ValueError, match="lam"):
        amcl_barlow_twins_loss(x, y, lam=-1.0)


def test_amcl_learned_temperatures_stay_in_range_under_training() -> None:
    """A few large SGD steps on the module's temperature network: the loss stays finite and
    every pair temperature inside (tau_min, tau_max), whatever phi learns."""
    a, b = views(n=8, h=2, d=4, seed=16)
    m = losslab.create("amcl", embedding_dim=4, tau_min=0.05, tau_max=1.2,
                       num_negatives=5).double()
    opt = torch.optim.SGD(m.parameters(), lr=5.0)
    before = [p.detach().clone() for p in m.parameters()]
    for _ in range(5):
        opt.zero_grad()
        loss = m(a.detach(), b.detach())
        assert bool(torch.isfinite(loss))
        loss.backward()
        opt.step()
    assert any(not torch.equal(p, q) for p, q in zip(m.parameters(), before))  # phi learned
    with torch.no_grad():
        z = torch.nn.functional.normalize(torch.cat([a, b]).reshape(-1, 4), dim=-1)
        net = m.phi
        assert isinstance(net, torch.nn.Module)
        pz = net(z)
        tau = 0.05 + (1.2 - 0.05) * torch.sigmoid(-(pz @ pz.t()))
        assert bool(((tau >= 0.05) & (tau <= 1.2)).all())
        torch.testing.assert_close(tau[0, 1], pair_temperature(z[0], z[1], phi=net,
                                                               tau_min=0.05, tau_max=1.2))
