"""Tests of the sequence objectives on per-token LM outputs (losslab.losses.tokens).

Oracles are explicit float64 loops over sequences, positions and n-grams written from the
papers' formulas (EISL: the official code's definition, noise-free softmax); properties:
EISL's whole-sequence order is the per-sequence mean CE and its edit invariance, coverage's
N = 1 limit (sequence CE) and its gradient.
"""

from __future__ import annotations

import math

import pytest
import torch

import losslab
from losslab import functional as LF

D = torch.float64


def close(a, b, **kw):
    torch.testing.assert_close(a, torch.as_tensor(b, dtype=a.dtype), **kw)


def rand_batch(n=3, t=6, v=5, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, t, v, generator=g, dtype=D) * scale).requires_grad_()
    y = torch.randint(0, v, (n, t), generator=g)
    return x, y


def log_softmax_rows(x):
    out = []
    for b in range(x.shape[0]):
        seq = []
        for i in range(x.shape[1]):
            row = [float(v) for v in x[b, i]]
            lse = math.log(sum(math.exp(r) for r in row))
            seq.append([r - lse for r in row])
        out.append(seq)
    return out


# --------------------------------------------------------------------------------------------
# EISL
# --------------------------------------------------------------------------------------------


def eisl_oracle(x, y, orders, tau=1.0, ignore=-100):
    lp = log_softmax_rows(x)
    res = []
    for b in range(x.shape[0]):
        t = x.shape[1]
        valid = [int(y[b, j]) != ignore for j in range(t)]
        used = [n for n in orders if n <= t]
        total = 0.0
        for n in used:
            wins = [i for i in range(t - n + 1) if all(valid[i:i + n])]
            acc = 0.0
            for j in wins:
                s = []
                for i in wins:
                    s.append(sum(max(lp[b][i + k][int(y[b, j + k])], -20.0)
                                 for k in range(n)) / n)
                mx = max(v / tau for v in s)
                e = [math.exp(v / tau - mx) for v in s]
                z = sum(e)
                acc += sum(ei / z * si for ei, si in zip(e, s, strict=True))
            if wins:
                total -= acc / len(wins) / len(used)
        res.append(total)
    return res


@pytest.mark.parametrize("orders,tau", [((2, 4), 1.0), ((1, 3), 0.5), ((3, 8), 2.0)])
def test_eisl_oracle(orders, tau):
    x, y = rand_batch()
    y[1, 4] = -100  # a pad in the middle breaks the windows that contain it
    y[2, :] = -100
    y[2, 0] = 1
    lo, hi = orders
    out = LF.eisl_loss(x, y, min_order=lo, max_order=hi, temperature=tau, reduction="none")
    close(out, eisl_oracle(x, y, range(lo, hi + 1), tau))
    # mean over sequences that have a valid token (all three do)
    close(LF.eisl_loss(x, y, min_order=lo, max_order=hi, temperature=tau), out.mean())


def test_eisl_whole_sequence_order_is_sequence_mean_ce():
    """One n-gram of length T: a single window, s = mean_t log p_t(y_t), q = 1."""
    x, y = rand_batch(scale=1.0)
    t = x.shape[1]
    out = LF.eisl_loss(x, y, min_order=t, max_order=t, reduction="none")
    ce = -torch.log_softmax(x, -1).gather(-1, y.unsqueeze(-1)).squeeze(-1).mean(1)
    close(out, ce)


def test_eisl_is_edit_invariant_where_ce_is_not():
    """The model confidently emits a sequence; the target is that sequence shifted by one
    token (an insertion at the front). CE collapses, EISL barely moves."""
    v, t = 12, 10
    seq = torch.arange(1, t + 1) % v
    x = torch.full((1, t, v), -6.0, dtype=D)
    x[0, torch.arange(t), seq] = 6.0
    shifted = torch.cat([torch.tensor([0]), seq[:-1]]).unsqueeze(0)
    ce = torch.nn.functional.cross_entropy
    ce_ok = ce(x[0], seq)
    ce_shift = ce(x[0], shifted[0])
    e_ok = LF.eisl_loss(x, seq.unsqueeze(0))
    e_shift = LF.eisl_loss(x, shifted)
    assert float(ce_shift) > 10 * float(ce_ok) + 5
    assert float(e_shift) < float(e_ok) + 0.25 * (float(ce_shift) - float(ce_ok))


def test_eisl_gradient_and_bad_orders():
    x, y = rand_batch()
    LF.eisl_loss(x, y).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    with pytest.raises(ValueError, match="min_order"):
        LF.eisl_loss(x, y, min_order=4, max_order=2)
    with pytest.raises(ValueError, match="takes no token_weight"):
        losslab.create("eisl")(x, y, token_weight=torch.ones(3, 6, dtype=D))


# --------------------------------------------------------------------------------------------
# coverage_ce
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_samples", [1, 4, 16])
def test_coverage_oracle(n_samples):
    x, y = rand_batch(scale=0.7, v=3, t=3)
    y[0, 0] = -100  # prompt token
    lp = log_softmax_rows(x)
    ref = []
    for b in range(x.shape[0]):
        s = sum(lp[b][i][int(y[b, i])] for i in range(x.shape[1]) if int(y[b, i]) != -100)
        p = math.exp(s)
        ref.append(-math.log(1 - (1 - p) ** n_samples))
    out = LF.coverage_ce_loss(x, y, num_samples=n_samples, reduction="none")
    close(out, ref)


def test_coverage_with_one_sample_is_sequence_ce_and_gradient_limits_confidence():
    x, y = rand_batch(scale=0.5, v=3, t=2)
    seq_nll = -torch.log_softmax(x, -1).gather(-1, y.unsqueeze(-1)).squeeze(-1).sum(1)
    close(LF.coverage_ce_loss(x, y, num_samples=1, reduction="none"), seq_nll)
    # d loss / d log p = -N p (1-p)^(N-1) / (1 - (1-p)^N)
    logp = torch.tensor([-3.0, -1.0, -0.2, -0.01], dtype=D, requires_grad=True)
    n = 8
    # a two-token vocabulary whose target log-prob is exactly logp: logits (logp, log(1-p))
    x1 = torch.stack([logp, torch.log(-torch.expm1(logp))], -1).unsqueeze(1)
    out = LF.coverage_ce_loss(x1, torch.zeros(4, 1, dtype=torch.long), num_samples=n,
                              reduction="sum")
    g, = torch.autograd.grad(out, logp)
    p = logp.detach().exp()
    dldlogp = -n * p * (1 - p) ** (n - 1) / (1 - (1 - p) ** n)
    # chain rule through the logits (logp, log(1-p)) -> log_softmax = logp exactly
    close(g, dldlogp, rtol=1e-6, atol=1e-9)
    assert abs(float(dldlogp[-1])) < 1e-9 < abs(float(dldlogp[0]))


def test_coverage_far_tail_is_finite_and_continuous():
    x = torch.zeros(2, 1, 2, dtype=D)
    x[0, 0, 1] = 29.9
    x[1, 0, 1] = 30.1
    x.requires_grad_()
    y = torch.zeros(2, 1, dtype=torch.long)
    out = LF.coverage_ce_loss(x, y, num_samples=16, reduction="none")
    assert torch.isfinite(out).all()
    # both sides of the switch agree with -log N - log p to O(N p)
    lp = torch.log_softmax(x.detach(), -1)[:, 0, 0]
    close(out, -math.log(16) - lp, atol=1e-9, rtol=0)
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_tokens_kind_bad_inputs_name_the_argument():
    x, y = rand_batch()
    with pytest.raises(ValueError, match=r"\[N, T, V\]"):
        LF.coverage_ce_loss(x[0], y[0])
    with pytest.raises(ValueError, match="target"):
        LF.coverage_ce_loss(x, y.float())
    with pytest.raises(ValueError, match="token ids"):
        LF.coverage_ce_loss(x, y + 10)


# --------------------------------------------------------------------------------------------
# emo
# --------------------------------------------------------------------------------------------


def emb_matrix(v=5, d=3, seed=4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(v, d, generator=g, dtype=D)


def test_emo_demd_oracle_and_mle_mix():
    x, y = rand_batch()
    y[0, 1] = -100
    e = emb_matrix()
    lp = log_softmax_rows(x)
    norms = [math.sqrt(sum(float(c) ** 2 for c in e[k])) for k in range(5)]

    def cos(a, b):
        return sum(float(e[a, i]) * float(e[b, i]) for i in range(3)) / (norms[a] * norms[b])

    demd = torch.zeros(3, 6, dtype=D)
    ce = torch.zeros(3, 6, dtype=D)
    for b in range(3):
        for t in range(6):
            yt = int(y[b, t])
            if yt == -100:
                continue
            demd[b, t] = sum(math.exp(lp[b][t][k]) * (1 - cos(k, yt)) for k in range(5))
            ce[b, t] = -lp[b][t][yt]
    close(LF.emo_loss(x, y, cost_embedding=e, mle=False, reduction="none"), demd)
    close(LF.emo_loss(x, y, cost_embedding=e, mle=False), demd.sum() / 17)
    # mle=True: value equals CE; gradient (CE grad + (CE/DEMD) DEMD grad) / 2
    mix = LF.emo_loss(x, y, cost_embedding=e, reduction="none")
    close(mix, ce)
    g_mix, = torch.autograd.grad(mix.sum(), x)
    demd_t = LF.emo_loss(x, y, cost_embedding=e, mle=False, reduction="none")
    ce_t = torch.nn.functional.cross_entropy(x.transpose(1, 2), y, reduction="none")
    ratio = (ce_t / (demd_t + 1e-10)).detach()
    g_ref, = torch.autograd.grad((0.5 * (ce_t + ratio * demd_t)).sum(), x)
    close(g_mix, g_ref)


def test_emo_properties():
    x, y = rand_batch(n=2, t=3)
    e = emb_matrix()
    # identical embeddings: transport is free, DEMD = 0; scaling rows changes nothing
    same = torch.ones(5, 3, dtype=D)
    close(LF.emo_loss(x, y, cost_embedding=same, mle=False, reduction="none"),
          torch.zeros(2, 3, dtype=D), atol=1e-12, rtol=0)
    scaled = e * torch.tensor([1.0, 2.0, 0.5, 3.0, 7.0], dtype=D).unsqueeze(1)
    close(LF.emo_loss(x, y, cost_embedding=scaled, mle=False),
          LF.emo_loss(x, y, cost_embedding=e, mle=False))
    # orthonormal embeddings: DEMD = 1 - p_y (total variation to the one-hot target)
    eye = torch.eye(5, dtype=D)
    py = torch.softmax(x, -1).gather(-1, y.unsqueeze(-1)).squeeze(-1)
    close(LF.emo_loss(x, y, cost_embedding=eye, mle=False, reduction="none"), 1 - py)
    # exact gradient without the MLE mix; the cost is a constant
    e_req = e.clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda z: LF.emo_loss(z, y, cost_embedding=e_req, mle=False), (x,))
    LF.emo_loss(x, y, cost_embedding=e_req).backward()
    assert e_req.grad is None
    m = losslab.create("emo", cost_embedding=e)
    assert "cost_embedding" in m.state_dict()
    close(m(x, y), LF.emo_loss(x, y, cost_embedding=e))
    with pytest.raises(ValueError, match="cost_embedding"):
        LF.emo_loss(x, y, cost_embedding=e[:4])


# --------------------------------------------------------------------------------------------
# number_token
# --------------------------------------------------------------------------------------------

NAN = float("nan")
VALUES = torch.tensor([NAN, 0.0, 1.0, 2.0, 5.0, NAN], dtype=D)  # token 4 means "5"


def ntl_oracle(x, y, values, variant):
    out = torch.zeros(y.shape, dtype=D)
    nums = [k for k in range(len(values)) if not math.isnan(float(values[k]))]
    for b in range(y.shape[0]):
        for t in range(y.shape[1]):
            yt = int(y[b, t])
            if yt == -100 or math.isnan(float(values[yt])):
                continue
            z = [float(x[b, t, k]) for k in nums]
            m = max(z)
            w = [math.exp(v - m) for v in z]
            s = sum(w)
            p = [wi / s for wi in w]
            target = float(values[yt])
            if variant == "wasserstein":
                out[b, t] = sum(pk * abs(float(values[k]) - target)
                                for pk, k in zip(p, nums, strict=True))
            else:
                yhat = sum(pk * float(values[k]) for pk, k in zip(p, nums, strict=True))
                out[b, t] = (yhat - target) ** 2
    return out


@pytest.mark.parametrize("variant", ["wasserstein", "mse"])
def test_number_token_oracle(variant):
    x, y = rand_batch(v=6, seed=3)
    y[0, 0] = -100
    ref = ntl_oracle(x, y, VALUES, variant)
    out = LF.number_token_loss(x, y, number_values=VALUES, variant=variant, reduction="none")
    close(out, ref)
    at_num = (y != -100) & ~torch.isnan(VALUES[y.clamp(min=0)])
    close(LF.number_token_loss(x, y, number_values=VALUES, variant=variant),
          ref.sum() / at_num.sum())
    tw = torch.rand(3, 6, generator=torch.Generator().manual_seed(2), dtype=D)
    w = torch.where(at_num, tw, torch.zeros_like(tw))
    close(LF.number_token_loss(x, y, number_values=VALUES, variant=variant, token_weight=tw),
          (w * ref).sum() / w.sum())


def test_number_token_wasserstein_is_cdf_l1_and_properties():
    """W1 to a point mass = L1 between CDFs on the sorted support; the MSE variant is 0 when
    the expected value hits the target; no number target -> 0 with zero gradient."""
    x, y = rand_batch(n=1, t=1, v=6, seed=5)
    y[0, 0] = 3  # value 2
    p = torch.softmax(x[0, 0, 1:5], -1).detach()
    support = torch.tensor([0.0, 1.0, 2.0, 5.0], dtype=D)
    cdf_p = torch.cumsum(p, 0)
    cdf_t = (support >= 2.0).to(D)
    w1 = ((cdf_p - cdf_t).abs()[:-1] * (support[1:] - support[:-1])).sum()
    close(LF.number_token_loss(x, y, number_values=VALUES), w1)
    z = torch.full((1, 1, 6), -30.0, dtype=D)
    z[0, 0, 2] = z[0, 0, 4] = 0.0  # p = 1/2 on "1" and on "5": expectation 3
    vals = VALUES.clone()
    vals[3] = 3.0
    close(LF.number_token_loss(z, torch.tensor([[3]]), number_values=vals, variant="mse"),
          0.0, atol=1e-20, rtol=0)
    x2 = x.detach().clone().requires_grad_()
    out = LF.number_token_loss(x2, torch.tensor([[5]]), number_values=VALUES)
    out.backward()
    assert x2.grad is not None
    assert float(out) == 0.0 and torch.count_nonzero(x2.grad) == 0
    with pytest.raises(ValueError, match="number_values"):
        LF.number_token_loss(x, y)
    with pytest.raises(ValueError, match="number_values"):
        LF.number_token_loss(x, y, number_values=VALUES[:4])


# --------------------------------------------------------------------------------------------
# dist2
# --------------------------------------------------------------------------------------------


def test_dist2_oracle():
    x, y = rand_batch(v=6, seed=7)
    y[1, 2] = -100
    tau = 0.7
    lp = log_softmax_rows(x)
    metric = [k for k in range(6) if not math.isnan(float(VALUES[k]))]
    ref = torch.zeros(3, 6, dtype=D)
    for b in range(3):
        for t in range(6):
            yt = int(y[b, t])
            if yt == -100:
                continue
            if yt not in metric:
                ref[b, t] = -lp[b][t][yt]
                continue
            w = {k: math.exp(-abs(float(VALUES[k]) - float(VALUES[yt])) / tau) for k in metric}
            z = sum(w.values())
            ref[b, t] = -sum(w[k] / z * lp[b][t][k] for k in metric)
    close(LF.dist2_loss(x, y, token_values=VALUES, temperature=tau, reduction="none"), ref)
    close(LF.dist2_loss(x, y, token_values=VALUES, temperature=tau), ref.sum() / 17)


def test_dist2_small_temperature_is_cross_entropy_and_near_misses_cost_less():
    x, y = rand_batch(v=6, seed=8)
    ce = torch.nn.functional.cross_entropy(x.transpose(1, 2), y)
    close(LF.dist2_loss(x, y, token_values=VALUES, temperature=1e-3), ce)
    # target "2" (token 3): predicting "1" (token 2) costs less than predicting "5" (token 4)
    near = torch.full((1, 1, 6), -5.0, dtype=D)
    near[0, 0, 2] = 5.0
    far = torch.full((1, 1, 6), -5.0, dtype=D)
    far[0, 0, 4] = 5.0
    t = torch.tensor([[3]])
    assert float(LF.dist2_loss(near, t, token_values=VALUES)) < float(
        LF.dist2_loss(far, t, token_values=VALUES))
    ce_near = torch.nn.functional.cross_entropy(near[0], t[0])
    ce_far = torch.nn.functional.cross_entropy(far[0], t[0])
    close(ce_near, ce_far)  # CE cannot tell them apart
