"""Tests of the preference-optimisation losses (losslab.losses.preference).

Oracles: explicit float64 loops over pairs written from each paper's formula (``math`` only).
Peer: TRL's loss definitions. TRL (1.16.0) cannot be imported here without transformers, so its
formulas are restated below, vectorised as TRL writes them, with the file they come from:
``trl/trainer/dpo_trainer.py`` (``_compute_loss``: ``sigmoid``, ``ipo``, ``sigmoid_norm``),
``trl/experimental/cpo/cpo_trainer.py`` (``cpo_loss``: ``sigmoid``, ``simpo``; ``loss =
losses.mean() + cpo_alpha * nll``), ``trl/experimental/orpo/orpo_trainer.py``
(``odds_ratio_loss``, ``log1mexp``; ``loss = nll - losses.mean()``), ``trl/trainer/
kto_trainer.py`` (``kl = (KL_logps - ref_KL_logps).mean().detach().clamp(min=0)``;
``chosen_losses = 1 - sigmoid(beta (chosen_logratios - kl))``, ``rejected_losses = 1 -
sigmoid(beta (kl - rejected_logratios))``, mean over the concatenation).
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import losslab
from losslab import functional as LF
from losslab.losses.preference import kto_reference_point, log1mexp, logprob_gradient_stats

D = torch.float64
N = 7


def close(a, b, **kw):
    torch.testing.assert_close(a, torch.as_tensor(b, dtype=a.dtype), **kw)


def logps(seed, n=N, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return -(torch.rand(n, generator=g, dtype=D) * scale + 0.05)


def lengths(seed, n=N):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, 12, (n,), generator=g)


def sig(x):
    return 1.0 / (1.0 + math.exp(-x))


def logsig(x):
    return -math.log1p(math.exp(-x)) if x > 0 else x - math.log1p(math.exp(x))


@pytest.fixture
def pairs():
    pc, pr, rc, rr = logps(0), logps(1), logps(2), logps(3)
    pc.requires_grad_()
    pr.requires_grad_()
    return pc, pr, rc, rr


# --------------------------------------------------------------------------------------------
# Loop oracles (the papers' formulas)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("beta,eps", [(0.1, 0.0), (0.5, 0.2)])
def test_dpo_oracle(pairs, beta, eps):
    pc, pr, rc, rr = pairs
    ref = []
    for i in range(N):
        d = (float(pc[i]) - float(rc[i])) - (float(pr[i]) - float(rr[i]))
        ref.append(-(1 - eps) * logsig(beta * d) - eps * logsig(-beta * d))
    out = LF.dpo_loss(pc, pr, ref_chosen=rc, ref_rejected=rr, beta=beta, label_smoothing=eps,
                      reduction="none")
    close(out, ref)
    close(LF.dpo_loss(pc, pr, ref_chosen=rc, ref_rejected=rr, beta=beta, label_smoothing=eps),
          sum(ref) / N)


@pytest.mark.parametrize("use_len", [False, True])
def test_ipo_oracle(pairs, use_len):
    pc, pr, rc, rr = pairs
    lc, lr = lengths(4), lengths(5)
    beta = 0.3
    ref = []
    for i in range(N):
        a = float(pc[i]) - float(rc[i])
        b = float(pr[i]) - float(rr[i])
        if use_len:
            a, b = a / int(lc[i]), b / int(lr[i])
        ref.append((a - b - 1 / (2 * beta)) ** 2)
    kw: dict[str, Any] = dict(chosen_length=lc, rejected_length=lr) if use_len else {}
    close(LF.ipo_loss(pc, pr, ref_chosen=rc, ref_rejected=rr, beta=beta, reduction="none",
                      **kw), ref)


def test_kto_oracle(pairs):
    pc, pr, rc, rr = pairs
    beta, wd, wu, z0 = 0.2, 1.0, 1.33, 0.15
    ref = []
    for i in range(N):
        rw = float(pc[i]) - float(rc[i])
        rl = float(pr[i]) - float(rr[i])
        ref.append(0.5 * (wd * (1 - sig(beta * (rw - z0))) + wu * (1 - sig(beta * (z0 - rl)))))
    out = LF.kto_loss(pc, pr, ref_chosen=rc, ref_rejected=rr, reference_point=z0, beta=beta,
                      desirable_weight=wd, undesirable_weight=wu, reduction="none")
    close(out, ref)


@pytest.mark.parametrize("use_len", [False, True])
def test_simpo_oracle(pairs, use_len):
    pc, pr, _, _ = pairs
    lc, lr = lengths(6), lengths(7)
    beta, gamma = 2.0, 0.8
    ref = []
    for i in range(N):
        a, b = float(pc[i]), float(pr[i])
        if use_len:
            a, b = a / int(lc[i]), b / int(lr[i])
        ref.append(-logsig(beta * a - beta * b - gamma))
    kw: dict[str, Any] = dict(chosen_length=lc, rejected_length=lr) if use_len else {}
    close(LF.simpo_loss(pc, pr, beta=beta, gamma=gamma, reduction="none", **kw), ref)


def test_cpo_oracle(pairs):
    pc, pr, _, _ = pairs
    lc = lengths(8)
    beta, alpha = 0.1, 0.7
    ref = [-logsig(beta * (float(pc[i]) - float(pr[i]))) - alpha * float(pc[i]) / int(lc[i])
           for i in range(N)]
    close(LF.cpo_loss(pc, pr, chosen_length=lc, beta=beta, nll_weight=alpha, reduction="none"),
          ref)


@pytest.mark.parametrize("use_len", [False, True])
def test_orpo_oracle(pairs, use_len):
    pc, pr, _, _ = pairs
    lc, lr = lengths(9), lengths(10)
    lam = 0.25
    ref = []
    for i in range(N):
        a, b = float(pc[i]), float(pr[i])
        if use_len:
            a, b = a / int(lc[i]), b / int(lr[i])
        pa, pb = math.exp(a), math.exp(b)
        odds_ratio = (pa / (1 - pa)) / (pb / (1 - pb))
        ref.append(-a - lam * logsig(math.log(odds_ratio)))
    kw: dict[str, Any] = dict(chosen_length=lc, rejected_length=lr) if use_len else {}
    close(LF.orpo_loss(pc, pr, beta=lam, reduction="none", **kw), ref)


# --------------------------------------------------------------------------------------------
# TRL 1.16.0's definitions (restated; see the module docstring)
# --------------------------------------------------------------------------------------------


def trl_log1mexp(x):
    t = -0.6931471805599453
    return torch.where(x < t, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def test_against_trl_definitions(pairs):
    pc, pr, rc, rr = pairs
    lc, lr = lengths(11), lengths(12)
    beta = 0.1
    cl, rl = pc - rc, pr - rr
    # DPOTrainer, loss_type="sigmoid"
    close(LF.dpo_loss(pc, pr, ref_chosen=rc, ref_rejected=rr, beta=beta),
          (-F.logsigmoid(beta * (cl - rl))).mean())
    # DPOTrainer, loss_type="ipo" (scores divided by completion_mask.sum(1))
    close(LF.ipo_loss(pc, pr, ref_chosen=rc, ref_rejected=rr, chosen_length=lc,
                      rejected_length=lr, beta=beta),
          ((cl / lc - rl / lr - 1 / (2 * beta)) ** 2).mean())
    # CPOTrainer.cpo_loss, loss_type="simpo" on average log-probs (label_smoothing 0.1)
    ac, ar = pc / lc, pr / lr
    simpo_gamma, b2, ls = 0.5, 2.0, 0.1
    logits = (ac - ar) - simpo_gamma / b2
    trl_simpo = (-F.logsigmoid(b2 * logits) * (1 - ls) - F.logsigmoid(-b2 * logits) * ls).mean()
    close(LF.simpo_loss(pc, pr, chosen_length=lc, rejected_length=lr, beta=b2,
                        gamma=simpo_gamma, label_smoothing=ls), trl_simpo)
    # CPOTrainer, loss_type="sigmoid" on summed log-probs + cpo_alpha * NLL (equal lengths)
    eq = torch.full((N,), 5)
    nll = -(pc / 5).mean()  # mean token CE of the chosen completions, all of length 5
    trl_cpo = (-F.logsigmoid(beta * (pc - pr))).mean() + 1.0 * nll
    close(LF.cpo_loss(pc, pr, chosen_length=eq, beta=beta, nll_weight=1.0), trl_cpo)
    # ORPOTrainer.odds_ratio_loss on average log-probs; loss = nll - (beta * ratio).mean()
    log_odds = (ac - ar) - (trl_log1mexp(ac) - trl_log1mexp(ar))
    trl_orpo = -ac.mean() - (beta * F.logsigmoid(log_odds)).mean()
    close(LF.orpo_loss(pc, pr, chosen_length=lc, rejected_length=lr, beta=beta), trl_orpo)
    # KTOTrainer: KL from mismatched completions (cycled by one), mean over concatenation
    kl_pol, kl_ref = logps(13), logps(14)
    kl = (kl_pol - kl_ref).mean().detach().clamp(min=0)
    trl_kto = torch.cat([1.0 * (1 - torch.sigmoid(beta * (cl - kl))),
                         1.0 * (1 - torch.sigmoid(beta * (kl - rl)))]).mean()
    z0 = kto_reference_point(kl_pol, kl_ref)
    close(LF.kto_loss(pc, pr, ref_chosen=rc, ref_rejected=rr, reference_point=z0, beta=beta),
          trl_kto)


# --------------------------------------------------------------------------------------------
# Properties from the papers
# --------------------------------------------------------------------------------------------


def test_dpo_gradient_is_the_papers_weighting(pairs):
    """DPO's gradient: -beta sigma(r_l - r_w) on chosen and +beta sigma(r_l - r_w) on rejected
    (scaled implicit rewards; the paper's Section 4 'What does the DPO update do?')."""
    pc, pr, rc, rr = pairs
    beta = 0.4
    LF.dpo_loss(pc, pr, ref_chosen=rc, ref_rejected=rr, beta=beta, reduction="sum").backward()
    w = torch.sigmoid(beta * ((pr - rr) - (pc - rc))).detach()
    close(pc.grad, -beta * w)
    close(pr.grad, beta * w)


def test_dpo_depends_only_on_log_ratios_and_reference_free_is_zero_reference(pairs):
    pc, pr, rc, rr = pairs
    base = LF.dpo_loss(pc, pr, ref_chosen=rc, ref_rejected=rr, reduction="none")
    shifted = LF.dpo_loss(pc + 1.5, pr - 0.5, ref_chosen=rc + 1.5, ref_rejected=rr - 0.5,
                          reduction="none")
    close(shifted, base)
    zeros = torch.zeros(N, dtype=D)
    close(LF.dpo_loss(pc, pr, reduction="none"),
          LF.dpo_loss(pc, pr, ref_chosen=zeros, ref_rejected=zeros, reduction="none"))


def test_ipo_minimum_at_target_margin():
    rc = torch.zeros(3, dtype=D)
    beta = 0.25
    pr = torch.tensor([-1.0, -2.0, -3.0], dtype=D)
    pc = pr + 1 / (2 * beta)
    out = LF.ipo_loss(pc, pr, ref_chosen=rc, ref_rejected=rc, beta=beta, reduction="none")
    close(out, torch.zeros(3, dtype=D))


def test_simpo_and_cpo_reduce_to_reference_free_dpo(pairs):
    pc, pr, _, _ = pairs
    dpo = LF.dpo_loss(pc, pr, beta=0.7, reduction="none")
    close(LF.simpo_loss(pc, pr, beta=0.7, gamma=0.0, reduction="none"), dpo)
    close(LF.cpo_loss(pc, pr, beta=0.7, nll_weight=0.0, reduction="none"), dpo)


def test_kto_is_bounded_and_reference_point_is_detached(pairs):
    pc, pr, rc, rr = pairs
    z = torch.tensor(0.3, dtype=D, requires_grad=True)
    out = LF.kto_loss(pc * 40, pr * 40, ref_chosen=rc, ref_rejected=rr, reference_point=z,
                      desirable_weight=1.0, undesirable_weight=2.0, reduction="none")
    assert bool((out >= 0).all()) and bool((out <= 1.5).all())
    out.sum().backward()
    assert z.grad is None
    # z0 clamps at 0 and is detached
    a = torch.tensor([-3.0, -2.0], dtype=D, requires_grad=True)
    assert float(kto_reference_point(a, torch.zeros(2, dtype=D))) == 0.0
    assert not kto_reference_point(a, a.detach() - 1).requires_grad


def test_orpo_log1mexp_is_accurate_and_odds_antisymmetric():
    x = torch.tensor([-1e-8, -1e-3, -0.5, -0.7, -1.0, -30.0], dtype=D)
    close(log1mexp(x), [math.log(-math.expm1(float(v))) for v in x])
    a, b = logps(20), logps(21)
    # swapping chosen and rejected flips the sign of the log odds ratio
    t = (a - b) - (log1mexp(a) - log1mexp(b))
    t_swap = (b - a) - (log1mexp(b) - log1mexp(a))
    close(t_swap, -t)
    orpo = LF.orpo_loss(a, b, beta=1.0, reduction="none")
    close(orpo, -a - F.logsigmoid(t))


def test_orpo_rejects_positive_log_probs_and_stays_finite_near_zero():
    with pytest.raises(ValueError, match="log-probabilities"):
        LF.orpo_loss(torch.tensor([0.1], dtype=D), torch.tensor([-1.0], dtype=D))
    pc = torch.tensor([0.0, -1e-12], dtype=D, requires_grad=True)
    out = LF.orpo_loss(pc, torch.tensor([-2.0, -1.0], dtype=D))
    out.backward()
    assert pc.grad is not None
    assert torch.isfinite(out) and torch.isfinite(pc.grad).all()


def test_bad_inputs_name_the_argument(pairs):
    pc, pr, rc, rr = pairs
    with pytest.raises(ValueError, match="ref_chosen and ref_rejected"):
        LF.dpo_loss(pc, pr, ref_chosen=rc)
    with pytest.raises(ValueError, match="ref_rejected"):
        LF.dpo_loss(pc, pr, ref_chosen=rc, ref_rejected=rr[:-1])
    with pytest.raises(ValueError, match="chosen_length"):
        LF.simpo_loss(pc, pr, chosen_length=torch.zeros(N))
    with pytest.raises(ValueError, match="chosen_length"):
        LF.simpo_loss(pc, pr, chosen_length=torch.ones(N, dtype=torch.bool))
    with pytest.raises(ValueError, match="reference_point"):
        LF.kto_loss(pc, pr, reference_point=torch.ones(2, dtype=D))
    with pytest.raises(ValueError, match="beta"):
        losslab.create("dpo", beta=0.0)
    with pytest.raises(ValueError, match="takes no ref_chosen"):
        losslab.create("simpo")(pc, pr, ref_chosen=rc, ref_rejected=rr)


def test_modules_match_functions(pairs):
    pc, pr, rc, rr = pairs
    lc, lr = lengths(1), lengths(2)
    close(losslab.create("dpo", beta=0.3)(pc, pr, ref_chosen=rc, ref_rejected=rr),
          LF.dpo_loss(pc, pr, ref_chosen=rc, ref_rejected=rr, beta=0.3))
    close(losslab.create("kto")(pc, pr, ref_chosen=rc, ref_rejected=rr, reference_point=0.2),
          LF.kto_loss(pc, pr, ref_chosen=rc, ref_rejected=rr, reference_point=0.2))
    close(losslab.create("orpo")(pc, pr, chosen_length=lc, rejected_length=lr),
          LF.orpo_loss(pc, pr, chosen_length=lc, rejected_length=lr))


# --------------------------------------------------------------------------------------------
# Gradient entanglement
# --------------------------------------------------------------------------------------------


def _toy_policy(seed=0):
    """A log-linear policy over 4 responses per prompt: log pi = log_softmax(features @ theta)."""
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(3, generator=g, dtype=D, requires_grad=True)
    feats = torch.randn(5, 4, 3, generator=g, dtype=D)
    logp = torch.log_softmax(feats @ theta, -1)  # [5 prompts, 4 responses]
    return theta, feats, logp[:, 0], logp[:, 1]


def test_logprob_gradient_stats_match_loops():
    theta, _feats, pc, pr = _toy_policy()
    nw, nl, inner = logprob_gradient_stats(pc, pr, [theta])
    for i in range(5):
        gw, = torch.autograd.grad(pc[i], theta, retain_graph=True)
        gl, = torch.autograd.grad(pr[i], theta, retain_graph=True)
        close(nw[i], gw.norm())
        close(nl[i], gl.norm())
        close(inner[i], gw @ gl)
    assert not nw.requires_grad


def test_normalized_preference_gradient_is_the_pairwise_normalised_direction():
    theta, _feats, pc, pr = _toy_policy(1)
    rc = torch.full((5,), -1.4, dtype=D)
    rr = torch.full((5,), -1.3, dtype=D)
    beta = 0.5
    nw, nl, _ = logprob_gradient_stats(pc, pr, [theta])
    loss = LF.normalized_preference_loss(pc, pr, ref_chosen=rc, ref_rejected=rr,
                                         chosen_grad_norm=nw, rejected_grad_norm=nl,
                                         beta=beta, eps=1e-12, reduction="sum")
    g, = torch.autograd.grad(loss, theta, retain_graph=True)
    ref = torch.zeros(3, dtype=D)
    for i in range(5):
        gw, = torch.autograd.grad(pc[i], theta, retain_graph=True)
        gl, = torch.autograd.grad(pr[i], theta, retain_graph=True)
        m = float((pc[i] - rc[i]) / nw[i] - (pr[i] - rr[i]) / nl[i])
        ref -= beta * (1 - sig(beta * m)) * (gw / gw.norm() - gl / gl.norm())
    close(g, ref)
    # without norms it is DPO
    close(LF.normalized_preference_loss(pc, pr, ref_chosen=rc, ref_rejected=rr),
          LF.dpo_loss(pc, pr, ref_chosen=rc, ref_rejected=rr))
    with pytest.raises(ValueError, match="given together"):
        LF.normalized_preference_loss(pc, pr, chosen_grad_norm=nw)
    with pytest.raises(ValueError, match=">= 0"):
        LF.normalized_preference_loss(pc, pr, chosen_grad_norm=-nw, rejected_grad_norm=nl)
