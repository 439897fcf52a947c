"""Tests of Poly-N (losslab.losses.classification.polyloss).

Oracle: the paper's formula -log P_t + sum_j eps_j (1 - P_t)^j (and the focal form) in
float64 Python loops. Properties from the paper: the Taylor expansion of CE and focal loss in
the bases (1 - P_t)^j (eps_j = -1/j drops the first N terms), all-zero eps is CE / focal loss,
one coefficient is Poly-1.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import losslab
from losslab import functional as LF

D = torch.float64


def rand_logits(n=9, c=5, *spatial, scale=1.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, *spatial, generator=g, dtype=D) * scale


def rand_target(n=9, c=5, *spatial, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, c, (n, *spatial), generator=g)


def close(a, b, **kw):
    kw.setdefault("rtol", 1e-10)
    kw.setdefault("atol", 1e-12)
    torch.testing.assert_close(torch.as_tensor(a, dtype=D), torch.as_tensor(b, dtype=D), **kw)


def p_target(row, y):
    m = max(row)
    e = [math.exp(v - m) for v in row]
    return e[y] / sum(e)


def poly_n_oracle(logits, target, eps, focal=False, gamma=2.0):
    out = []
    for i in range(logits.shape[0]):
        pt = p_target(logits[i].tolist(), int(target[i]))
        g = gamma if focal else 0.0
        value = -((1 - pt) ** g) * math.log(pt)
        for j, e in enumerate(eps, start=1):
            value += e * (1 - pt) ** (j + g)
        out.append(value)
    return torch.tensor(out, dtype=D)


@pytest.mark.parametrize("eps", [(1.0,), (2.0, -0.5), (-1.0, 0.3, 0.7)])
@pytest.mark.parametrize("focal", [False, True])
def test_oracle(eps, focal):
    x, t = rand_logits(), rand_target()
    close(LF.poly_n_loss(x, t, epsilons=eps, focal=focal, gamma=1.5, reduction="none"),
          poly_n_oracle(x, t, eps, focal=focal, gamma=1.5))
    close(LF.poly_n_loss(x, t, epsilons=eps, focal=focal, gamma=1.5),
          poly_n_oracle(x, t, eps, focal=focal, gamma=1.5).mean())


def test_zero_coefficients_are_ce_and_focal():
    x, t = rand_logits(), rand_target()
    close(LF.poly_n_loss(x, t, epsilons=(0.0, 0.0, 0.0)), F.cross_entropy(x, t))
    close(LF.poly_n_loss(x, t, epsilons=(0.0,), focal=True, gamma=2.0),
          LF.focal_loss(x, t, gamma=2.0))


@pytest.mark.parametrize("focal", [False, True])
def test_one_coefficient_is_poly1(focal):
    x, t = rand_logits(4, 3, 2, 2), rand_target(4, 3, 2, 2)
    close(LF.poly_n_loss(x, t, epsilons=(0.7,), focal=focal, reduction="none"),
          LF.poly1_loss(x, t, epsilon=0.7, focal=focal, reduction="none"))
    q = torch.softmax(rand_logits(4, 3, 2, 2, seed=5), 1)
    close(LF.poly_n_loss(x, q, epsilons=(0.7,), focal=focal, reduction="none"),
          LF.poly1_loss(x, q, epsilon=0.7, focal=focal, reduction="none"))


@pytest.mark.parametrize("n_drop", [1, 2, 4])
@pytest.mark.parametrize("gamma", [0.0, 2.0])
def test_dropping_the_first_terms_leaves_the_tail_of_the_expansion(n_drop, gamma):
    # Paper Eq. 1: CE = sum_j (1-P_t)^j / j and FL = sum_j (1-P_t)^(j+gamma) / j. With
    # eps_j = -1/j for j <= N, Poly-N is the series tail sum_{j > N}, summed here directly.
    x = rand_logits(12, 4, scale=0.7)
    t = rand_target(12, 4)
    eps = [-1.0 / j for j in range(1, n_drop + 1)]
    got = LF.poly_n_loss(x, t, epsilons=eps, focal=gamma > 0, gamma=gamma, reduction="none")
    want = []
    for i in range(12):
        u = 1 - p_target(x[i].tolist(), int(t[i]))
        want.append(sum(u ** (j + gamma) / j for j in range(n_drop + 1, 4000)))
    close(got, torch.tensor(want, dtype=D), rtol=1e-8, atol=1e-12)
    assert bool((got >= 0).all())


def test_soft_targets_one_hot_equal_class_ids_and_ignore_index():
    x, t = rand_logits(), rand_target()
    onehot = F.one_hot(t, 5).to(D)
    for focal in (False, True):
        close(LF.poly_n_loss(x, onehot, epsilons=(1.0, 2.0), focal=focal),
              LF.poly_n_loss(x, t, epsilons=(1.0, 2.0), focal=focal))
    t2 = t.clone()
    t2[[0, 3]] = -100
    keep = t2 != -100
    close(LF.poly_n_loss(x, t2, epsilons=(1.0, 2.0)),
          LF.poly_n_loss(x[keep], t[keep], epsilons=(1.0, 2.0)))
    all_ignored = torch.full_like(t, -100)
    xg = x.clone().requires_grad_()
    loss = LF.poly_n_loss(xg, all_ignored, epsilons=(1.0, 2.0))
    loss.backward()
    assert float(loss.detach()) == 0.0 and xg.grad is not None and bool((xg.grad == 0).all())


def test_gradcheck_module_and_registry():
    x = rand_logits(5, 4).requires_grad_()
    t = rand_target(5, 4)
    mod = losslab.create("poly_n", epsilons=(1.0, -0.5, 0.25), focal=True, gamma=0.5)
    assert torch.autograd.gradcheck(lambda z: mod(z, t), (x,), eps=1e-6, atol=1e-6)
    close(mod(x, t), LF.poly_n_loss(x, t, epsilons=(1.0, -0.5, 0.25), focal=True, gamma=0.5))
    s = losslab.spec("poly_n")
    assert s.arxiv == "2204.12511" and s.kind == "logits"


def test_half_precision_extreme_logits_finite():
    x = torch.tensor([[60.0, -60.0, 0.0], [-60.0, 60.0, 0.0]], dtype=torch.float16)
    x.requires_grad_()
    loss = LF.poly_n_loss(x, torch.tensor([1, 1]), epsilons=(1.0, 1.0), focal=True)
    loss.backward()
    assert torch.isfinite(loss) and x.grad is not None and bool(torch.isfinite(x.grad).all())


@pytest.mark.parametrize("bad", [(), [float("nan")], "1.0", [[1.0]], None])
def test_bad_epsilons(bad):
    with pytest.raises(ValueError, match="epsilons"):
        LF.poly_n_loss(rand_logits(), rand_target(), epsilons=bad)
