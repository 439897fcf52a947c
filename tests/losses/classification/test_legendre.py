"""Tests of LegendreTron (losslab.losses.classification.legendre).

Oracle: the potential F written as float64 Python loops over the network's units, its gradient
by central differences of that loop-based F, then -log softmax([grad F(v), 0])_y by loops.
Properties from the paper's construction: the link is the gradient of a (strongly) convex
function (symmetric positive-definite Jacobian, strongly monotone), so it is invertible and the
loss is proper: for a fixed link the expected loss under q is minimised where the predicted
probabilities equal q. The identity link is cross-entropy; the loss is invariant to shifting a
row of logits.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import losslab
from losslab import functional as LF
from losslab.losses.classification.legendre import ConvexPotential, LegendreLink

D = torch.float64


def close(a, b, **kw):
    kw.setdefault("rtol", 1e-10)
    kw.setdefault("atol", 1e-12)
    torch.testing.assert_close(torch.as_tensor(a, dtype=D), torch.as_tensor(b, dtype=D), **kw)


def softplus(v):
    return max(v, 0.0) + math.log1p(math.exp(-abs(v)))


def randomise(module, seed=0, scale=0.5):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
    return module


def potential_oracle(pot, x):
    """F(x) for one point x (list), from the parameters, with loops."""
    h = pot.hidden
    z = None
    for i in range(pot.depth):
        w = pot.w_x[i].tolist()
        b = pot.b[i].tolist()
        new = []
        for j in range(h):
            a = b[j] + sum(w[j][k] * x[k] for k in range(len(x)))
            if z is not None:
                u = pot.u_z[i - 1].tolist()
                a += sum(softplus(u[j][m]) / h * z[m] for m in range(h))
            new.append(softplus(a))
        z = new
    assert z is not None
    u_out = pot.u_out.tolist()
    f = sum(softplus(u_out[m]) / h * z[m] for m in range(h))
    f += sum(wk * xk for wk, xk in zip(pot.w_out.tolist(), x))
    c1, c0 = softplus(float(pot.a1.detach())), softplus(float(pot.a0.detach()))
    return c1 * f + c0 * 0.5 * sum(v * v for v in x)


def grad_oracle(pot, x, eps=1e-5):
    out = []
    for k in range(len(x)):
        xp, xm = list(x), list(x)
        xp[k] += eps
        xm[k] -= eps
        out.append((potential_oracle(pot, xp) - potential_oracle(pot, xm)) / (2 * eps))
    return out


def test_potential_and_gradient_match_the_loop_oracle():
    pot = randomise(ConvexPotential(3, hidden=4, depth=3).double())
    x = torch.randn(5, 3, dtype=D, generator=torch.Generator().manual_seed(1))
    for i in range(5):
        close(pot.potential(x[i:i + 1])[0], potential_oracle(pot, x[i].tolist()))
        close(pot(x[i:i + 1])[0], grad_oracle(pot, x[i].tolist()), rtol=1e-7, atol=1e-8)


def test_explicit_gradient_equals_autograd_of_the_potential():
    pot = randomise(ConvexPotential(4, hidden=6, depth=4).double(), seed=2)
    x = torch.randn(20, 4, dtype=D, requires_grad=True)
    (auto,) = torch.autograd.grad(pot.potential(x).sum(), x)
    close(pot(x), auto)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_link_is_the_gradient_of_a_strongly_convex_function(seed):
    pot = randomise(ConvexPotential(3, hidden=5, depth=3).double(), seed=seed, scale=1.0)
    mu = float(F.softplus(pot.a0.detach()))
    g = torch.Generator().manual_seed(10 + seed)
    for _ in range(5):
        x = torch.randn(3, dtype=D, generator=g) * 2
        jac = torch.autograd.functional.jacobian(lambda v: pot(v[None])[0], x)
        close(jac, jac.T, rtol=1e-9, atol=1e-10)  # a Hessian: symmetric
        assert float(torch.linalg.eigvalsh(jac).min()) >= mu - 1e-9  # mu-strongly convex
    a, b = torch.randn(50, 3, dtype=D, generator=g), torch.randn(50, 3, dtype=D, generator=g)
    inner = ((pot(a) - pot(b)) * (a - b)).sum(1)
    assert bool((inner >= mu * (a - b).square().sum(1) - 1e-9).all())  # strongly monotone


def loss_oracle(link_pot, logits, target):
    out = []
    for i in range(logits.shape[0]):
        row = logits[i].tolist()
        v = [row[k] - row[-1] for k in range(len(row) - 1)]
        z = [*grad_oracle(link_pot, v), 0.0]
        m = max(z)
        lse = m + math.log(sum(math.exp(t - m) for t in z))
        out.append(lse - z[int(target[i])])
    return torch.tensor(out, dtype=D)


def test_loss_oracle_and_module():
    torch.manual_seed(0)
    m = losslab.create("legendretron", num_classes=4, hidden=4, depth=2).double()
    randomise(m, seed=3)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(7, 4, dtype=D, generator=g) * 2
    t = torch.randint(0, 4, (7,), generator=g)
    link = m.link
    assert isinstance(link, LegendreLink)
    pot = link.potentials[0]
    assert isinstance(pot, ConvexPotential)
    want = loss_oracle(pot, x, t)
    close(LF.legendretron_loss(x, t, link, reduction="none"), want, rtol=1e-7, atol=1e-8)
    close(m(x, t), want.mean(), rtol=1e-7, atol=1e-8)


def test_identity_link_is_cross_entropy_and_shift_invariance():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(9, 5, dtype=D, generator=g) * 3
    t = torch.randint(0, 5, (9,), generator=g)
    close(LF.legendretron_loss(x, t), F.cross_entropy(x, t))
    link = randomise(LegendreLink(4, blocks=2, hidden=3, depth=2).double(), seed=6)
    shift = torch.randn(9, 1, dtype=D, generator=g) * 5
    close(LF.legendretron_loss(x + shift, t, link, reduction="none"),
          LF.legendretron_loss(x, t, link, reduction="none"), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("seed", [0, 1])
def test_properness_expected_loss_is_minimised_at_the_true_distribution(seed):
    c = 4
    link = randomise(LegendreLink(c - 1, hidden=4, depth=3).double(), seed=seed, scale=0.8)
    for p in link.parameters():
        p.requires_grad_(False)
    q = torch.softmax(torch.randn(c, dtype=D, generator=torch.Generator().manual_seed(seed)) * 1.5,
                      0)
    classes = torch.arange(c)
    s = torch.zeros(1, c, dtype=D, requires_grad=True)
    opt = torch.optim.LBFGS([s], max_iter=500, tolerance_grad=1e-13, tolerance_change=1e-15,
                            line_search_fn="strong_wolfe")

    def expected_loss():
        per = LF.legendretron_loss(s.expand(c, c), classes, link, reduction="none")
        return (q * per).sum()

    def step():
        opt.zero_grad()
        loss = expected_loss()
        loss.backward()
        return loss

    for _ in range(3):
        opt.step(step)
    with torch.no_grad():
        logp = -LF.legendretron_loss(s.expand(c, c), classes, link, reduction="none")
    close(logp.exp(), q, rtol=1e-6, atol=1e-7)
    # and any other prediction is worse: the loss at the optimum is the entropy of q
    close(expected_loss().detach(), -(q * q.log()).sum(), rtol=1e-9, atol=1e-10)


def test_masked_class_gradcheck_and_bad_inputs():
    m = losslab.create("legendretron", num_classes=4).double()
    randomise(m, seed=7, scale=0.3)
    g = torch.Generator().manual_seed(8)
    x = torch.randn(6, 4, dtype=D, generator=g).requires_grad_()
    t = torch.randint(0, 4, (6,), generator=g)
    assert torch.autograd.gradcheck(lambda z: m(z, t), (x,), eps=1e-6, atol=1e-6)
    xm = x.detach().clone()
    xm[:, 3] = -math.inf  # the reference class masked
    t3 = torch.where(t == 3, torch.zeros_like(t), t)
    out = m(xm.requires_grad_(), t3)
    out.backward()
    assert xm.grad is not None
    assert torch.isfinite(out) and bool(torch.isfinite(xm.grad).all())
    with pytest.raises(ValueError, match="num_classes"):
        m(x[:, :3], t.clamp(max=2))
    with pytest.raises(ValueError, match="num_classes"):
        losslab.create("legendretron", num_classes=1)
    with pytest.raises(ValueError):
        losslab.create("legendretron")
