"""AMCL: loop oracle from the formula (fp64), the official computation restated
(``AMCLNTXentLoss``), and its properties (heads add up, temperatures in range and decreasing
with the pair score)."""

from __future__ import annotations

import math

import pytest
import torch

import losslab
from losslab.functional import amcl_loss
from losslab.losses.contrastive_ssl.multihead import pair_temperature


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
