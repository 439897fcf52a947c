"""Tests of MTARD (losslab.losses.distillation.multi_teacher).

Oracles: the two KL terms in float64 Python loops; the official training loop's balance rules
re-written from its code (temperatures moved by sign(E_adv / E_nat - 1) with E the mean of
p log p, clipped to [1, 10]; weights moved towards the normalised relative losses
lhat_k / lhat_avg, clipped and renormalised), run over several steps against the module.
Properties: the Entropy-Based Balance drives the two teachers' entropies together; the
Normalization Loss Balance gives more weight to the term that has decreased less; eval mode
leaves the state alone; the state survives a state_dict round trip.
"""

from __future__ import annotations

import math

import pytest
import torch

from losslab.losses.distillation import multi_teacher as mt

D = torch.float64


def close(a, b, **kw):
    kw.setdefault("rtol", 1e-10)
    kw.setdefault("atol", 1e-12)
    torch.testing.assert_close(torch.as_tensor(a, dtype=D), torch.as_tensor(b, dtype=D), **kw)


def logits(n=6, c=5, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, generator=g, dtype=D) * scale


def softmax_row(row, t=1.0):
    m = max(v / t for v in row)
    e = [math.exp(v / t - m) for v in row]
    s = sum(e)
    return [v / s for v in e]


def kl_oracle(student, teacher, t):
    total = 0.0
    for i in range(student.shape[0]):
        q = softmax_row(teacher[i].tolist(), t)
        p = softmax_row(student[i].tolist())
        total += sum(qc * (math.log(qc) - math.log(pc)) for qc, pc in zip(q, p))
    return total / student.shape[0]


def neg_entropy_mean(teacher, t):
    """The official code's entropy_value: the mean over all entries of p log p."""
    vals = [qc * math.log(qc) for i in range(teacher.shape[0])
            for qc in softmax_row(teacher[i].tolist(), t)]
    return sum(vals) / len(vals)


def test_mtard_loss_oracle():
    sa, ta, sc, tc = (logits(seed=s) for s in range(4))
    out = mt.mtard_loss(sa, ta, sc, tc, temp_adv=2.0, temp_clean=1.5, weight_adv=0.3)
    close(out.adv_kl, kl_oracle(sa, ta, 2.0))
    close(out.clean_kl, kl_oracle(sc, tc, 1.5))
    close(out.total, 0.3 * kl_oracle(sa, ta, 2.0) + 0.7 * kl_oracle(sc, tc, 1.5))
    close(out.adv_entropy, -neg_entropy_mean(ta, 2.0) * 5)  # mean entropy per row


def test_balance_matches_the_official_loop():
    bal = mt.MTARDBalance()
    temp_adv = temp_nat = 1.0
    w = {"adv": 0.5, "nat": 0.5}
    init_adv = init_nat = None
    for step in range(12):
        # a student that learns the clean task faster than the adversarial one
        ta, tc = logits(seed=100 + step, scale=3.0), logits(seed=200 + step, scale=1.0)
        sa = ta * (0.2 + 0.02 * step) + logits(seed=300 + step, scale=0.5)
        sc = tc * (0.2 + 0.08 * step) + logits(seed=400 + step, scale=0.5)
        out = bal(sa, ta, sc, tc)
        # the official loop, from its code
        kl1, kl2 = kl_oracle(sa, ta, temp_adv), kl_oracle(sc, tc, temp_nat)
        e_adv, e_nat = neg_entropy_mean(ta, temp_adv), neg_entropy_mean(tc, temp_nat)
        sign = lambda v: (v > 0) - (v < 0)  # noqa: E731
        temp_adv = temp_adv - 0.001 * sign(e_adv / e_nat - 1)
        temp_nat = temp_nat - 0.001 * sign(e_nat / e_adv - 1)
        temp_adv, temp_nat = max(min(10, temp_adv), 1), max(min(10, temp_nat), 1)
        if init_nat is None or init_adv is None:
            init_nat, init_adv = kl2, kl1
        lhat_adv, lhat_nat = kl1 / init_adv, kl2 / init_nat
        lhat_avg = (lhat_adv + lhat_nat) / 2
        inv_adv, inv_nat = lhat_adv / lhat_avg, lhat_nat / lhat_avg
        w["nat"] = w["nat"] - 0.025 * (w["nat"] - inv_nat / (inv_adv + inv_nat))
        w["adv"] = w["adv"] - 0.025 * (w["adv"] - inv_adv / (inv_adv + inv_nat))
        w["adv"], w["nat"] = max(w["adv"], 0), max(w["nat"], 0)
        coef = 1.0 / (w["adv"] + w["nat"])
        w["adv"] *= coef
        w["nat"] *= coef
        close(out.total, w["adv"] * kl1 + w["nat"] * kl2, rtol=1e-9, atol=1e-12)
        close(bal.temp_adv, temp_adv)
        close(bal.temp_clean, temp_nat)
        close(bal.weight_adv, w["adv"], rtol=1e-9)
    # the clean term decreased faster: the adversarial term now weighs more
    assert float(bal.weight_adv) > 0.5


def test_entropy_balance_brings_the_entropies_together():
    # the robust teacher is much less confident than the clean one
    ta, tc = logits(seed=1, scale=0.5), logits(seed=2, scale=6.0)
    sa, sc = logits(seed=3), logits(seed=4)
    bal = mt.MTARDBalance(temp_lr=0.05)
    first = bal(sa, ta, sc, tc)
    gap0 = abs(float(first.adv_entropy - first.clean_entropy))
    for _ in range(200):
        out = bal(sa, ta, sc, tc)
    gap = abs(float(out.adv_entropy - out.clean_entropy))
    assert gap < 0.2 * gap0
    assert float(bal.temp_adv) == 1.0 and float(bal.temp_clean) > 1.0  # clean teacher softened


def test_eval_mode_state_dict_and_gradients():
    sa, ta, sc, tc = (logits(seed=s) for s in range(4))
    bal = mt.MTARDBalance()
    bal(sa, ta, sc, tc)
    bal(sa * 0.5, ta, sc * 0.5, tc)
    state = {k: v.clone() for k, v in bal.state_dict().items()}
    bal.eval()
    bal(sa, ta, sc, tc)
    for k, v in bal.state_dict().items():
        close(v, state[k])
    other = mt.MTARDBalance()
    other.load_state_dict(bal.state_dict())
    other.eval()
    close(other(sa, ta, sc, tc).total, bal(sa, ta, sc, tc).total)
    s1 = sa.clone().requires_grad_()
    s2 = sc.clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, b: mt.mtard_loss(a, ta, b, tc, temp_adv=1.3, weight_adv=0.4).total,
        (s1, s2), eps=1e-6, atol=1e-6)


def test_half_inputs_and_masked_teacher_class():
    sa, ta, sc, tc = (logits(seed=s) for s in range(4))
    out = mt.mtard_loss(sa.half(), ta.half(), sc.half(), tc.half())
    assert out.total.dtype == torch.float32 and torch.isfinite(out.total)
    tm = ta.clone()
    tm[:, 0] = -math.inf
    out = mt.mtard_loss(sa, tm, sc, tc)
    assert torch.isfinite(out.total)


def test_steps_directly():
    assert mt.entropy_balance_step(1.0, 1.0, 2.0, 1.0) == (1.0, 1.001)  # clipped at 1
    assert mt.entropy_balance_step(5.0, 5.0, 1.0, 2.0) == (5.001, 4.999)
    assert mt.entropy_balance_step(5.0, 5.0, 1.0, 1.0) == (5.0, 5.0)
    w = mt.loss_balance_step(0.5, 0.5, 1.0, 0.5, 1.0, 1.0)
    assert w[0] > 0.5 and math.isclose(sum(w), 1.0)


def test_bad_inputs():
    sa, ta, sc, tc = (logits(seed=s) for s in range(4))
    with pytest.raises(ValueError, match="teacher_adv_logits"):
        mt.mtard_loss(sa, ta[:, :-1], sc, tc)
    with pytest.raises(ValueError, match="student_clean_logits"):
        mt.mtard_loss(sa, ta, sc.long(), tc)
    with pytest.raises(ValueError, match="classes"):
        mt.mtard_loss(sa, ta, sc[:, :-1], tc[:, :-1])
    with pytest.raises(ValueError, match="temp_adv"):
        mt.mtard_loss(sa, ta, sc, tc, temp_adv=0.0)
    with pytest.raises(ValueError, match="weight_adv"):
        mt.mtard_loss(sa, ta, sc, tc, weight_adv=1.5)
    with pytest.raises(ValueError, match="temp_lr"):
        mt.MTARDBalance(temp_lr=-1.0)
