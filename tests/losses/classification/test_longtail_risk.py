"""Tests of the integrated-risk objective (losslab.losses.classification.longtail_risk).

Oracle: the official objective written as float64 Python loops: margins n^(-1/4) scaled to
max_margin subtracted (times margin_scale) from the target logit, class-weighted CE with
w = 1/n (torch's weighted mean), minus (1 / (alpha N)) sum_n sum_c w_c U[y_n, c] log p_nc with
the tail-sensitive U. Properties: no utility + no margin + no re-weighting is CE; the first
stage is LDAM; the utility term lowers the probability of the penalised (head) decisions for
tail samples (Bayes decision with the utility: the optimum of the per-sample objective moves
mass away from those classes); a task utility matrix enters linearly.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import losslab
from losslab import functional as LF
from losslab.losses.classification.longtail_risk import tail_sensitive_utility

D = torch.float64
COUNTS = (500.0, 200.0, 50.0, 10.0, 4.0)


def close(a, b, **kw):
    kw.setdefault("rtol", 1e-10)
    kw.setdefault("atol", 1e-12)
    torch.testing.assert_close(torch.as_tensor(a, dtype=D), torch.as_tensor(b, dtype=D), **kw)


def rand(n=12, c=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, generator=g, dtype=D) * 2, torch.randint(0, c, (n,), generator=g)


def oracle(x, t, counts, u_value=-1.0, alpha=0.002, max_margin=0.5, s=30.0, reweight=True,
           utility=None):
    c = len(counts)
    raw = [n ** -0.25 for n in counts]
    m = [r * max_margin / max(raw) for r in raw]
    w = [1.0 / n for n in counts] if reweight else [1.0] * c
    num, den, util = 0.0, 0.0, 0.0
    for i in range(x.shape[0]):
        y = int(t[i])
        z = x[i].tolist()
        z[y] -= s * m[y]
        mx = max(z)
        lse = mx + math.log(sum(math.exp(v - mx) for v in z))
        logp = [v - lse for v in z]
        num += w[y] * -logp[y]
        den += w[y]
        if reweight:
            for k in range(c):
                if utility is None:
                    u = u_value if k < y else 0.0  # counts sorted from head to tail
                else:
                    u = utility[y][k]
                util += w[k] * u * logp[k]
    return num / den - util / (alpha * x.shape[0])


@pytest.mark.parametrize("kw", [{}, {"u_value": -2.0, "alpha": 0.01},
                                {"max_margin": 0.3, "margin_scale": 10.0}, {"reweight": False}])
def test_oracle(kw):
    x, t = rand()
    o_kw = {k: v for k, v in kw.items() if k != "margin_scale"}
    if "margin_scale" in kw:
        o_kw["s"] = kw["margin_scale"]
    close(LF.integrated_risk_loss(x, t, class_counts=COUNTS, **kw), oracle(x, t, COUNTS, **o_kw))
    per = LF.integrated_risk_loss(x, t, class_counts=COUNTS, reduction="none", **kw)
    close(per.mean(), oracle(x, t, COUNTS, **o_kw))


def test_task_utility_matrix():
    x, t = rand(seed=1)
    u = torch.zeros(5, 5, dtype=D)
    u[2, 0] = -1.0  # "bird predicted as plane" style: one confusion to avoid
    u[4, 1:3] = -0.5
    close(LF.integrated_risk_loss(x, t, class_counts=COUNTS, utility=u),
          oracle(x, t, COUNTS, utility=u.tolist()))
    close(LF.integrated_risk_loss(x, t, class_counts=COUNTS, utility="none"),
          LF.integrated_risk_loss(x, t, class_counts=COUNTS, utility=torch.zeros(5, 5)))


def test_reductions_to_ce_and_ldam():
    x, t = rand(seed=2)
    close(LF.integrated_risk_loss(x, t, class_counts=COUNTS, utility="none", margin_scale=0.0,
                                  reweight=False), F.cross_entropy(x, t))
    close(LF.integrated_risk_loss(x, t, class_counts=COUNTS, reweight=False),
          LF.ldam_loss(x / 30.0, t, class_counts=COUNTS, scale=30.0))
    w = 1.0 / torch.tensor(COUNTS, dtype=D)
    close(LF.integrated_risk_loss(x, t, class_counts=COUNTS, utility="none"),
          LF.ldam_loss(x / 30.0, t, class_counts=COUNTS, scale=30.0, weight=w))


def test_tail_sensitive_matrix_and_class_order():
    u = tail_sensitive_utility(COUNTS, u_value=-1.0)
    want = torch.tensor([[-1.0 if k < y else 0.0 for k in range(5)] for y in range(5)], dtype=D)
    close(u, want)
    # counts not sorted: the order comes from the counts, ties by index
    u2 = tail_sensitive_utility([10.0, 500.0, 10.0], u_value=-3.0)
    close(u2, torch.tensor([[0.0, -3.0, 0.0], [0.0, 0.0, 0.0], [-3.0, -3.0, 0.0]], dtype=D))
    # permuting the classes (counts with them) permutes the loss consistently
    x, t = rand(seed=3)
    perm = torch.tensor([3, 0, 4, 1, 2])
    inv = torch.argsort(perm)
    counts_p = [COUNTS[int(k)] for k in perm]
    close(LF.integrated_risk_loss(x[:, perm], inv[t], class_counts=counts_p),
          LF.integrated_risk_loss(x, t, class_counts=COUNTS))


def test_utility_term_moves_probability_away_from_head_decisions():
    # one tail sample (class 4): minimise the per-sample objective over its logits; with the
    # utility the optimum puts less mass on the head classes it penalises.
    t = torch.tensor([4])

    def fit(**kw):
        z = torch.zeros(1, 5, dtype=D, requires_grad=True)
        opt = torch.optim.SGD([z], lr=0.05)
        for _ in range(300):
            opt.zero_grad()
            loss = LF.integrated_risk_loss(z, t, class_counts=COUNTS, margin_scale=0.0,
                                           alpha=1.0, **kw)
            loss.backward()
            opt.step()
        return torch.softmax(z.detach(), 1)[0]

    base = fit(utility="none")
    with_u = fit(u_value=-50.0)
    assert float(with_u[:4].sum()) < float(base[:4].sum())
    assert float(with_u[4]) > float(base[4])


def test_module_gradcheck_masked_class_and_bad_input():
    x, t = rand(6)
    x = x.requires_grad_()
    m = losslab.create("integrated_risk", class_counts=COUNTS, alpha=0.5)
    assert torch.autograd.gradcheck(lambda z: m(z, t), (x,), eps=1e-6, atol=1e-6)
    assert "class_counts" in dict(m.named_buffers())
    xm = x.detach().clone()
    xm[0, (int(t[0]) + 1) % 5] = -math.inf
    xm.requires_grad_()
    out = m(xm, t)
    out.backward()
    assert xm.grad is not None
    assert torch.isfinite(out) and bool(torch.isfinite(xm.grad).all())
    with pytest.raises(ValueError, match="class_counts"):
        LF.integrated_risk_loss(x, t, class_counts=COUNTS[:3])
    with pytest.raises(ValueError, match="utility"):
        LF.integrated_risk_loss(x, t, class_counts=COUNTS, utility=torch.zeros(4, 4))
    with pytest.raises(ValueError, match="utility"):
        LF.integrated_risk_loss(x, t, class_counts=COUNTS, utility="tail")
    with pytest.raises(ValueError, match="alpha"):
        LF.integrated_risk_loss(x, t, class_counts=COUNTS, alpha=0.0)


def test_particle_diversity_oracle_and_direction():
    from losslab.losses.classification.longtail_risk import particle_diversity

    g = torch.Generator().manual_seed(9)
    ws = [torch.randn(3, 4, generator=g, dtype=D) for _ in range(3)]
    total = 0.0
    for j in range(12):
        vals = [float(w.flatten()[j]) for w in ws]
        mean = sum(vals) / 3
        total += math.log(sum((v - mean) ** 2 for v in vals) / 3)
    close(particle_diversity(ws), -0.5 * total / 12)
    # spreading the members apart lowers the term (it rewards diversity)
    spread = [w * 2.0 for w in ws]
    assert float(particle_diversity(spread)) < float(particle_diversity(ws))
    close(particle_diversity(spread), particle_diversity(ws) - math.log(2.0))
    same = [ws[0], ws[0].clone()]
    assert math.isinf(float(particle_diversity(same)))
    assert math.isfinite(float(particle_diversity(same, eps=1e-8)))
    wg = [w.clone().requires_grad_() for w in ws]
    particle_diversity(wg).backward()
    assert all(w.grad is not None and bool(torch.isfinite(w.grad).all()) for w in wg)
    with pytest.raises(ValueError, match="weights"):
        particle_diversity(ws[:1])
    with pytest.raises(ValueError, match="shape"):
        particle_diversity([ws[0], ws[1][:, :2]])
