"""DKD and the generalised JSD: loop oracles from the papers' formulas (fp64), properties."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import losslab
from losslab.functional import dkd_loss, jsd_loss, kd_loss


def logits_pair(n: int = 5, c: int = 6, seed: int = 0, scale: float = 2.0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, c, generator=g, dtype=torch.float64) * scale
    t = torch.randn(n, c, generator=g, dtype=torch.float64) * scale
    y = torch.randint(0, c, (n,), generator=g)
    return s.requires_grad_(True), t.requires_grad_(True), y


def softmax_list(z: list[float], temp: float) -> list[float]:
    m = max(v / temp for v in z)
    e = [math.exp(v / temp - m) for v in z]
    return [v / sum(e) for v in e]


def kl_list(q: list[float], p: list[float]) -> float:
    return sum(qc * math.log(qc / pc) for qc, pc in zip(q, p) if qc > 0)


# ---------------------------------------------------------------------------------------------
# DKD
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha,beta,temperature", [(1.0, 8.0, 4.0), (0.5, 0.5, 1.0),
                                                    (2.0, 0.0, 2.0)])
def test_dkd_matches_loop_oracle(alpha: float, beta: float, temperature: float) -> None:
    s, t, y = logits_pair()
    S, T = s.tolist(), t.tolist()
    want = []
    for i in range(len(S)):
        ps, pt = softmax_list(S[i], temperature), softmax_list(T[i], temperature)
        yi = int(y[i])
        bs, bt = [ps[yi], 1 - ps[yi]], [pt[yi], 1 - pt[yi]]
        hs = [ps[k] / (1 - ps[yi]) for k in range(len(ps)) if k != yi]
        ht = [pt[k] / (1 - pt[yi]) for k in range(len(pt)) if k != yi]
        want.append(temperature**2 * (alpha * kl_list(bt, bs) + beta * kl_list(ht, hs)))
    got = dkd_loss(s, t, target=y, alpha=alpha, beta=beta, temperature=temperature,
                   reduction="none")
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64))
    m = losslab.create("dkd", alpha=alpha, beta=beta, temperature=temperature)
    torch.testing.assert_close(m(s, t, target=y), got.mean())


def test_dkd_reformulates_classical_kd() -> None:
    """The paper's eq. (3): KD = TCKD + (1 - p^t_y) NCKD, row by row."""
    s, t, y = logits_pair(seed=3)
    T = 3.0
    tckd = dkd_loss(s, t, target=y, alpha=1.0, beta=0.0, temperature=T, reduction="none")
    nckd = dkd_loss(s, t, target=y, alpha=0.0, beta=1.0, temperature=T, reduction="none")
    pt_y = torch.softmax(t.detach() / T, 1).gather(1, y.unsqueeze(1)).squeeze(1)
    kd = kd_loss(s, t, temperature=T, alpha=1.0, reduction="none")
    torch.testing.assert_close(tckd + (1 - pt_y) * nckd, kd)


def test_dkd_matches_the_official_masking_formula() -> None:
    """The official code's form (target masked by -1000, log of summed probabilities)."""
    s, t, y = logits_pair(seed=4, scale=1.0)
    T, a, b = 4.0, 1.0, 8.0
    gt = F.one_hot(y, s.shape[1]).bool()
    ps, pt = F.softmax(s / T, 1), F.softmax(t / T, 1)
    bs = torch.stack([(ps * gt).sum(1), (ps * ~gt).sum(1)], 1)
    bt = torch.stack([(pt * gt).sum(1), (pt * ~gt).sum(1)], 1)
    tckd = F.kl_div(torch.log(bs), bt, reduction="sum") * T**2 / s.shape[0]
    nckd = F.kl_div(F.log_softmax(s / T - 1000.0 * gt, 1), F.softmax(t / T - 1000.0 * gt, 1),
                    reduction="sum") * T**2 / s.shape[0]
    torch.testing.assert_close(dkd_loss(s, t, target=y, alpha=a, beta=b, temperature=T),
                               a * tckd + b * nckd)


def test_dkd_properties_and_bad_inputs() -> None:
    s, t, y = logits_pair(seed=5)
    assert float(dkd_loss(s, s.detach().clone(), target=y).detach()) == pytest.approx(0, abs=1e-12)
    # per-row shifts change nothing
    shift = torch.randn(s.shape[0], 1, dtype=torch.float64)
    torch.testing.assert_close(dkd_loss(s + shift, t, target=y), dkd_loss(s, t, target=y))
    gs, gt = torch.autograd.grad(dkd_loss(s, t, target=y), (s, t))
    assert torch.isfinite(gs).all() and torch.isfinite(gt).all()
    with pytest.raises(ValueError, match="target"):
        dkd_loss(s, t, target=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="target"):
        losslab.create("dkd")(s, t)
    with pytest.raises(ValueError, match="target"):
        dkd_loss(s, t, target=torch.full_like(y, 6))
    with pytest.raises(ValueError, match="columns"):
        dkd_loss(s[:, :1], t[:, :1], target=torch.zeros_like(y))
    with pytest.raises(ValueError, match="beta"):
        losslab.create("dkd", beta=-1.0)


def test_dkd_with_masked_teacher_classes_is_finite() -> None:
    s, t, y = logits_pair(seed=6)
    t = t.detach().clone()
    t[:, 0] = -math.inf
    y = torch.tensor([1, 2, 3, 4, 5])
    assert torch.isfinite(dkd_loss(s, t, target=y)).all()  # masked in the teacher only
    s = s.detach().clone()
    s[:, 0] = -math.inf  # and in the student too (a shared vocabulary mask)
    s.requires_grad_(True)
    got = dkd_loss(s, t, target=y, reduction="none")
    assert torch.isfinite(got).all()
    (g,) = torch.autograd.grad(got.sum(), s)
    assert torch.isfinite(g).all()
    # the masked class contributes nothing: equal to DKD without it
    torch.testing.assert_close(got, dkd_loss(s[:, 1:], t[:, 1:], target=y - 1, reduction="none"))


# ---------------------------------------------------------------------------------------------
# Generalised JSD
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_jsd_matches_loop_oracle(beta: float, temperature: float) -> None:
    s, t, _ = logits_pair(seed=7)
    S, T = s.tolist(), t.tolist()
    want = []
    for i in range(len(S)):
        q, p = softmax_list(S[i], temperature), softmax_list(T[i], temperature)
        m = [beta * pc + (1 - beta) * qc for pc, qc in zip(p, q)]
        want.append(beta * kl_list(p, m) + (1 - beta) * kl_list(q, m))
    got = jsd_loss(s, t, beta=beta, temperature=temperature, reduction="none")
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64))


def _trl_generalized_jsd(s, t, beta: float, temperature: float):
    """TRL's GKDTrainer.generalized_jsd_loss definition (mixture in log space, batchmean over
    rows), written out here: TRL itself is not a dependency."""
    log_q = F.log_softmax(s / temperature, -1)
    log_p = F.log_softmax(t / temperature, -1)
    if beta == 0:
        jsd = F.kl_div(log_q, log_p, reduction="none", log_target=True)
    elif beta == 1:
        jsd = F.kl_div(log_p, log_q, reduction="none", log_target=True)
    else:
        b = torch.tensor(beta, dtype=s.dtype)
        log_m = torch.logsumexp(torch.stack([log_q + torch.log(1 - b), log_p + torch.log(b)]), 0)
        jsd = beta * F.kl_div(log_m, log_p, reduction="none", log_target=True) + (
            1 - beta) * F.kl_div(log_m, log_q, reduction="none", log_target=True)
    return jsd.sum() / s.shape[0]


@pytest.mark.parametrize("beta", [0.0, 0.3, 0.5, 1.0])
def test_jsd_matches_trl_definition_and_endpoints(beta: float) -> None:
    s, t, _ = logits_pair(seed=8)
    got = jsd_loss(s, t, beta=beta, temperature=2.0)
    torch.testing.assert_close(got, _trl_generalized_jsd(s, t, beta, 2.0))
    ga = torch.autograd.grad(got, s)[0]
    gb = torch.autograd.grad(_trl_generalized_jsd(s, t, beta, 2.0), s)[0]
    torch.testing.assert_close(ga, gb)


def test_jsd_properties() -> None:
    s, t, _ = logits_pair(seed=9, scale=4.0)
    half = jsd_loss(s, t, reduction="none")
    assert bool((half <= math.log(2) + 1e-12).all()) and bool((half >= 0).all())
    # beta = 0.5 is symmetric; JSD(beta)(P||Q) = JSD(1 - beta)(Q||P)
    torch.testing.assert_close(half, jsd_loss(t, s, reduction="none"))
    torch.testing.assert_close(jsd_loss(s, t, beta=0.2, reduction="none"),
                               jsd_loss(t, s, beta=0.8, reduction="none"))
    # the endpoints are the limits of JSD / beta and JSD / (1 - beta)
    s, t = s / 4, t / 4  # (the O(beta^2) remainder grows with the logits' spread)
    b = 1e-7
    torch.testing.assert_close(jsd_loss(s, t, beta=b) / b, jsd_loss(s, t, beta=0.0),
                               rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(jsd_loss(s, t, beta=1 - b) / b, jsd_loss(s, t, beta=1.0),
                               rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(jsd_loss(s, t, beta=0.0),
                               kd_loss(s, t, temperature=1.0, alpha=1.0))
    assert float(jsd_loss(s, s.detach().clone(), beta=0.3).detach()) == pytest.approx(0, abs=1e-12)


def test_jsd_masked_classes_in_both_and_bad_inputs() -> None:
    s, t, y = logits_pair(seed=10)
    s2, t2 = s.detach().clone(), t.detach().clone()
    s2[:, 2] = t2[:, 2] = -math.inf
    s2.requires_grad_(True)
    got = jsd_loss(s2, t2, beta=0.4, reduction="none")
    keep = [0, 1, 3, 4, 5]
    torch.testing.assert_close(got, jsd_loss(s2[:, keep], t2[:, keep], beta=0.4, reduction="none"))
    (g,) = torch.autograd.grad(got.sum(), s2)
    assert torch.isfinite(g).all() and bool((g[:, 2] == 0).all())
    with pytest.raises(ValueError, match="target"):
        jsd_loss(s, t, target=y)
    with pytest.raises(ValueError, match="beta"):
        losslab.create("jsd", beta=1.5)
