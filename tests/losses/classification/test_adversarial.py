"""Tests of the adversarial objectives (losslab.losses.classification.adversarial).

Oracles in float64 Python loops: the probability margin max_{j != y} p_j - p_y (and its logit
form), and the smooth adversarial comp-sum loss Phi^tau(sum_{k != y} e^{(h_k - h_y)/rho}) +
nu ||hbar(x') - hbar(x)||_2. Properties: the margin is positive exactly on misclassified
items, lies in [-1, 1] and is invariant to shifting the logits; the smooth term is invariant to
shifting each row and vanishes at x' = x; without the smooth term the loss is the comp-sum
loss (tau = 1: cross-entropy).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import losslab
from losslab import functional as LF

D = torch.float64


def close(a, b, **kw):
    kw.setdefault("rtol", 1e-10)
    kw.setdefault("atol", 1e-12)
    torch.testing.assert_close(torch.as_tensor(a, dtype=D), torch.as_tensor(b, dtype=D), **kw)


def rand(n=10, c=5, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, c, generator=g, dtype=D) * scale,
            torch.randint(0, c, (n,), generator=g))


def softmax_row(row):
    m = max(row)
    e = [math.exp(v - m) for v in row]
    s = sum(e)
    return [v / s for v in e]


def margin_oracle(x, t, space):
    out = []
    for i in range(x.shape[0]):
        row = x[i].tolist()
        v = softmax_row(row) if space == "probability" else row
        y = int(t[i])
        out.append(max(v[j] for j in range(len(v)) if j != y) - v[y])
    return torch.tensor(out, dtype=D)


@pytest.mark.parametrize("space", ["probability", "logit"])
def test_probability_margin_oracle(space):
    x, t = rand()
    want = margin_oracle(x, t, space)
    close(LF.probability_margin_loss(x, t, space=space, reduction="none"), want)
    close(LF.probability_margin_loss(x, t, space=space), want.mean())


def test_probability_margin_sign_range_and_shift():
    x, t = rand(200, 6, seed=2, scale=3.0)
    m = LF.probability_margin_loss(x, t, reduction="none")
    wrong = x.argmax(1) != t
    assert torch.equal(m > 0, wrong)
    assert bool((m >= -1).all() and (m <= 1).all())
    ml = LF.probability_margin_loss(x, t, space="logit", reduction="none")
    assert torch.equal(ml > 0, wrong)
    shift = torch.randn(200, 1, dtype=D) * 10
    close(LF.probability_margin_loss(x + shift, t, reduction="none"), m, rtol=1e-9, atol=1e-12)
    close(LF.probability_margin_loss(x + shift, t, space="logit", reduction="none"), ml,
          rtol=1e-9, atol=1e-9)


def test_probability_margin_ascent_finds_a_misclassification():
    # the attack's use: ascending the margin over a perturbation of the logits flips the label
    x, t = rand(8, 4, seed=5, scale=1.0)
    x = x.clone()
    x[torch.arange(8), t] += 3.0  # correctly classified to begin with
    delta = torch.zeros_like(x, requires_grad=True)
    for _ in range(200):
        loss = LF.probability_margin_loss(x + delta, t)
        (g,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            delta += 0.1 * g.sign()
            delta.clamp_(-3.0, 3.0)
    assert bool((LF.probability_margin_loss(x + delta, t, reduction="none") > 0).all())


def test_probability_margin_gradcheck_ignore_and_module():
    x, t = rand(6, 4)
    x = x.requires_grad_()
    m = losslab.create("probability_margin")
    assert torch.autograd.gradcheck(lambda z: m(z, t), (x,), eps=1e-6, atol=1e-6)
    t2 = t.clone()
    t2[:2] = -100
    close(LF.probability_margin_loss(x, t2), LF.probability_margin_loss(x[2:], t[2:]))
    assert losslab.spec("probability_margin").arxiv == "2411.15210"
    with pytest.raises(ValueError, match="space"):
        LF.probability_margin_loss(x, t, space="prob")
    with pytest.raises(ValueError, match="classes"):
        LF.probability_margin_loss(x[:, :1], torch.zeros(6, dtype=torch.long))


def adv_oracle(x, xa, t, tau, rho, nu):
    out = []
    for i in range(x.shape[0]):
        y = int(t[i])
        row, arow = x[i].tolist(), xa[i].tolist()
        u = sum(math.exp((row[k] - row[y]) / rho) for k in range(len(row)) if k != y)
        phi = math.log1p(u) if tau == 1 else ((1 + u) ** (1 - tau) - 1) / (1 - tau)
        sq = 0.0
        for k in range(len(row)):
            if k != y:
                sq += ((arow[y] - arow[k]) - (row[y] - row[k])) ** 2
        out.append(phi + nu * math.sqrt(sq))
    return torch.tensor(out, dtype=D)


@pytest.mark.parametrize("tau,rho,nu", [(1.0, 1.0, 1.0), (0.5, 2.0, 0.3), (1.7, 0.5, 4.0),
                                        (2.0, 1.0, 0.0)])
def test_adv_comp_sum_oracle(tau, rho, nu):
    x, t = rand()
    xa = x + 0.4 * torch.randn_like(x)
    want = adv_oracle(x, xa, t, tau, rho, nu)
    close(LF.adv_comp_sum_loss(x, t, xa, tau=tau, rho=rho, nu=nu, reduction="none"), want)
    close(losslab.create("adv_comp_sum", tau=tau, rho=rho, nu=nu)(x, t, xa), want.mean())


def test_adv_comp_sum_reduces_to_comp_sum_and_ce():
    x, t = rand()
    close(LF.adv_comp_sum_loss(x, t), F.cross_entropy(x, t))
    for tau in (0.0, 0.5, 1.5, 2.0):
        close(LF.adv_comp_sum_loss(x, t, tau=tau), LF.comp_sum_loss(x, t, tau=tau))
        close(LF.adv_comp_sum_loss(x, t, x + 1.0, tau=tau), LF.comp_sum_loss(x, t, tau=tau))
        close(LF.adv_comp_sum_loss(x, t, torch.randn_like(x), tau=tau, nu=0.0),
              LF.comp_sum_loss(x, t, tau=tau))
    close(LF.adv_comp_sum_loss(x, t, rho=2.0), F.cross_entropy(x / 2.0, t))


def test_smooth_term_is_shift_invariant_and_has_a_finite_gradient_at_zero():
    x, t = rand()
    xa = x + 0.5 * torch.randn_like(x)
    base = LF.adv_comp_sum_loss(x, t, xa, reduction="none")
    shifted = LF.adv_comp_sum_loss(x + torch.randn(10, 1, dtype=D), t,
                                   xa + torch.randn(10, 1, dtype=D), reduction="none")
    close(shifted, base, rtol=1e-9, atol=1e-9)
    xg = x.clone().requires_grad_()
    xag = x.clone().requires_grad_()  # x' = x: the norm is 0
    LF.adv_comp_sum_loss(xg, t, xag).backward()
    assert xg.grad is not None and xag.grad is not None
    assert bool(torch.isfinite(xg.grad).all() and torch.isfinite(xag.grad).all())


def test_adv_comp_sum_gradcheck_both_inputs_and_masked_class():
    x, t = rand(5, 4)
    xa = (x + 0.3 * torch.randn_like(x)).requires_grad_()
    x = x.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, b: LF.adv_comp_sum_loss(a, t, b, tau=0.7, nu=0.5), (x, xa), eps=1e-6,
        atol=1e-6)
    xm = x.detach().clone()
    xm[0, (int(t[0]) + 1) % 4] = -math.inf  # a masked class is left out of the margins
    want = LF.adv_comp_sum_loss(xm[:1, [k for k in range(4) if k != (int(t[0]) + 1) % 4]],
                                t[:1] - (t[:1] > (int(t[0]) + 1) % 4).long(),
                                xa.detach()[:1, [k for k in range(4)
                                                 if k != (int(t[0]) + 1) % 4]])
    close(LF.adv_comp_sum_loss(xm[:1], t[:1], xa.detach()[:1]), want)


def test_adv_comp_sum_bad_adv_logits():
    x, t = rand()
    with pytest.raises(ValueError, match="adv_logits"):
        LF.adv_comp_sum_loss(x, t, x[:, :-1])
    with pytest.raises(ValueError, match="adv_logits"):
        LF.adv_comp_sum_loss(x, t, x.long())
    with pytest.raises(ValueError, match="nu"):
        LF.adv_comp_sum_loss(x, t, x, nu=-1.0)
