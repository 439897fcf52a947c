"""I-Con: the divergence from a loop oracle (fp64), and its instances reproduce SNE, InfoNCE
(NT-Xent) and SupCon values, as the paper's unification claims."""

from __future__ import annotations

import math

import pytest
import torch

import losslab
from losslab.functional import i_con_loss, infonce_loss, supcon_loss
from losslab.losses.contrastive_ssl.icon import i_con_divergence, learned_neighbour_logits
from tests.losses.contrastive_ssl.common import pairs


def batch(n: int = 10, d: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 2, 0, 3, 3])[:n]
    return x, labels


def icon_oracle(x, labels, tau, alpha=0.0):
    f = torch.nn.functional.normalize(x.detach(), dim=1).tolist()
    y = labels.tolist()
    n = len(f)
    out = []
    for i in range(n):
        pos = [j for j in range(n) if j != i and y[j] == y[i]]
        others = [j for j in range(n) if j != i]
        if not pos and alpha == 0:
            out.append(0.0)
            continue
        p = {j: (1 - alpha) * ((1 / len(pos)) if j in pos else 0.0) + alpha / (n - 1)
             for j in others}
        if not pos:
            p = {j: 1 / (n - 1) for j in others}
        s = {j: sum(a * b for a, b in zip(f[i], f[j])) / tau for j in others}
        lse = math.log(sum(math.exp(v) for v in s.values()))
        out.append(sum(p[j] * (math.log(p[j]) - (s[j] - lse)) for j in others if p[j] > 0))
    return out


@pytest.mark.parametrize("alpha", [0.0, 0.2])
def test_i_con_matches_loop_oracle(alpha: float) -> None:
    x, labels = batch()
    got = i_con_loss(x, labels, temperature=0.5, debias=alpha, reduction="none")
    torch.testing.assert_close(got, torch.tensor(icon_oracle(x, labels, 0.5, alpha),
                                                 dtype=torch.float64))
    m = losslab.create("i_con", temperature=0.5, debias=alpha)
    torch.testing.assert_close(m(x, labels), i_con_loss(x, labels, temperature=0.5,
                                                        debias=alpha))


def test_i_con_instance_reproduces_sne() -> None:
    """SNE (Hinton & Roweis 2002): p(j|i) Gaussian on the inputs with bandwidth sigma_i,
    q(j|i) proportional to exp(-||y_i - y_j||^2); cost sum_i KL(P_i || Q_i)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 5, generator=g, dtype=torch.float64)
    y = torch.randn(8, 2, generator=g, dtype=torch.float64, requires_grad=True)
    sigma = [0.8 + 0.1 * i for i in range(8)]
    X, Y = x.tolist(), y.detach().tolist()

    def sq(u, v):
        return sum((a - b) ** 2 for a, b in zip(u, v))

    cost = 0.0
    P = [[0.0] * 8 for _ in range(8)]
    for i in range(8):
        wp = {j: math.exp(-sq(X[i], X[j]) / (2 * sigma[i] ** 2)) for j in range(8) if j != i}
        wq = {j: math.exp(-sq(Y[i], Y[j])) for j in range(8) if j != i}
        zp, zq = sum(wp.values()), sum(wq.values())
        for j in wp:
            P[i][j] = wp[j] / zp
            cost += P[i][j] * math.log(P[i][j] / (wq[j] / zq))
    p = torch.tensor(P, dtype=torch.float64)
    logits = learned_neighbour_logits(y, temperature=1.0, kernel="gaussian", normalize=False)
    got = i_con_divergence(p, logits, reduction="sum")
    assert float(got.detach()) == pytest.approx(cost, rel=1e-12)


def test_i_con_instance_reproduces_infonce_nt_xent() -> None:
    a, b = pairs(n=6)
    labels = torch.arange(6).repeat(2)
    for tau in (0.1, 0.5):
        torch.testing.assert_close(
            i_con_loss(torch.cat([a, b]), labels, temperature=tau),
            infonce_loss(a, b, temperature=tau, negatives="both"))
    # gradients too
    ours = i_con_loss(torch.cat([a, b]), labels, temperature=0.2)
    ref = infonce_loss(a, b, temperature=0.2, negatives="both")
    for x, y in zip(torch.autograd.grad(ours, (a, b)), torch.autograd.grad(ref, (a, b))):
        torch.testing.assert_close(x, y)


def test_i_con_instance_reproduces_supcon_up_to_the_supervisory_entropy() -> None:
    """SupCon's L_out per anchor is the cross-entropy H(p_i, q_i) = KL(p_i || q_i) + H(p_i)
    with p_i uniform over the |P(i)| positives: H(p_i) = log |P(i)|."""
    x, labels = batch()
    counts = torch.tensor([int(((labels == labels[i]).sum()) - 1) for i in range(10)],
                          dtype=torch.float64)
    icon = i_con_loss(x, labels, temperature=0.1, reduction="none")
    sup = supcon_loss(x, labels, temperature=0.1, reduction="none")
    torch.testing.assert_close(icon + counts.log(), sup)
    (g1,) = torch.autograd.grad(icon.sum(), x)
    (g2,) = torch.autograd.grad(sup.sum(), x)
    torch.testing.assert_close(g1, g2)  # the entropy is constant: same gradients


def test_i_con_properties() -> None:
    x, labels = batch()
    # KL >= 0, and 0 when q equals p: build logits = log p on the support
    assert bool((i_con_loss(x, labels, reduction="none") >= -1e-12).all())
    p = torch.tensor([[0.0, 0.3, 0.7], [0.5, 0.0, 0.5], [0.2, 0.8, 0.0]], dtype=torch.float64)
    logits = torch.where(p > 0, p.log(), torch.full_like(p, -math.inf))
    assert float(i_con_divergence(p, logits)) == pytest.approx(0.0, abs=1e-15)
    # distinct labels: no supervision, a zero loss with zero gradient
    distinct = torch.arange(10)
    out = i_con_loss(x, distinct)
    (g,) = torch.autograd.grad(out, x)
    assert float(out.detach()) == 0.0 and float(g.abs().sum()) == 0.0
    # debiasing gives every anchor a distribution (even those without positives)
    assert float(i_con_loss(x, distinct, debias=0.1).detach()) > 0
    with pytest.raises(ValueError, match="one shape"):
        i_con_divergence(p, logits[:2])
    with pytest.raises(ValueError, match="debias"):
        i_con_loss(x, labels, debias=1.0)
