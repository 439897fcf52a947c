"""Tests of losslab.losses.sequence: the log-partition penalty, and the hashed goldfish mask
(arXiv 2406.10209): determinism, context dependence, drop rate. (linear_cross_entropy is tested
in tests/kernels/test_linear_ce.py.)"""

from __future__ import annotations

import math

import pytest
import torch

import losslab
from losslab import functional as LF
from losslab.losses.sequence import apply_goldfish, goldfish_mask

D = torch.float64


def rand_logits(n, c, *spatial, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, *spatial, generator=g, dtype=D) * 2.0


def rand_target(n, c, *spatial, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, c, (n, *spatial), generator=g)


def rand_soft(n, c, *spatial, seed=2):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(n, c, *spatial, generator=g, dtype=D) * 2, dim=1)


def close(a, b, **kw):
    kw.setdefault("rtol", 1e-10)
    kw.setdefault("atol", 1e-12)
    torch.testing.assert_close(torch.as_tensor(a, dtype=D), torch.as_tensor(b, dtype=D), **kw)


def test_logz_penalty():
    x, t = rand_logits(4, 6, 3), rand_target(4, 6, 3)
    ref = 1e-4 * torch.logsumexp(x, 1) ** 2
    close(LF.logz_penalty_loss(x, t, reduction="none"), ref)
    close(LF.logz_penalty_loss(x, rand_soft(4, 6, 3), coefficient=0.5), 0.5 * (ref / 1e-4).mean())


# --------------------------------------------------------------------------------------------
# The goldfish mask
# --------------------------------------------------------------------------------------------


def test_shape_and_first_h_kept():
    toks = torch.randint(0, 50000, (3, 100))
    m = goldfish_mask(toks, k=4, h=13)
    assert m.shape == toks.shape and m.dtype == torch.bool
    assert m[:, :13].all()


def test_drop_rate_about_one_over_k():
    toks = torch.randint(0, 50000, (8, 4000), generator=torch.Generator().manual_seed(0))
    for k in (2, 4, 8):
        rate = 1 - goldfish_mask(toks, k=k)[:, 13:].float().mean().item()
        assert abs(rate - 1 / k) < 0.02, (k, rate)
    assert not goldfish_mask(toks, k=1)[:, 13:].any()


def test_decision_depends_only_on_the_preceding_h_tokens():
    g = torch.Generator().manual_seed(1)
    a = torch.randint(0, 1000, (200,), generator=g)
    b = torch.randint(0, 1000, (200,), generator=g)
    passage = torch.randint(0, 1000, (60,), generator=g)
    # The same passage in two different documents, at different offsets.
    x = torch.cat([a[:37], passage, a[37:]])
    y = torch.cat([b[:101], passage, b[101:]])
    mx, my = goldfish_mask(x, h=13), goldfish_mask(y, h=13)
    # positions inside the passage with a full in-passage context get identical decisions
    torch.testing.assert_close(mx[37 + 13 : 37 + 60], my[101 + 13 : 101 + 60])
    # oracle: explicit loop with the same context windows
    for i in range(13, x.shape[0]):
        ctx_eq = [j for j in range(13, y.shape[0]) if torch.equal(y[j - 13 : j], x[i - 13 : i])]
        for j in ctx_eq:
            assert mx[i] == my[j]


def test_deterministic_and_batch_independent():
    toks = torch.randint(0, 32000, (4, 300))
    m = goldfish_mask(toks)
    torch.testing.assert_close(m, goldfish_mask(toks.clone()))
    for r in range(4):
        torch.testing.assert_close(m[r], goldfish_mask(toks[r]))
    assert not torch.equal(m, goldfish_mask(toks, seed=1))


def test_apply_goldfish_and_token_weight_agree():
    from losslab.functional import linear_cross_entropy_loss as lce

    torch.manual_seed(0)
    labels = torch.randint(0, 17, (2, 40))
    h = torch.randn(2, 40, 5, dtype=torch.float64)
    w = torch.randn(17, 5, dtype=torch.float64)
    masked = apply_goldfish(labels, k=3, h=4)
    assert ((masked == -100) == ~goldfish_mask(labels, k=3, h=4)).all()
    a = lce(h, w, masked)
    b = lce(h, w, labels, token_weight=goldfish_mask(labels, k=3, h=4).double())
    torch.testing.assert_close(a, b)


def test_short_sequences_and_bad_args():
    assert goldfish_mask(torch.tensor([1, 2, 3]), h=13).all()
    with pytest.raises(ValueError):
        goldfish_mask(torch.randn(5))
    with pytest.raises(ValueError):
        goldfish_mask(torch.tensor([1, 2]), k=0)
    with pytest.raises(ValueError):
        goldfish_mask(torch.tensor([1, 2]), h=0)


# --------------------------------------------------------------------------------------------
# Issue #11 "Bad input and faults" (logz_penalty; the number after "#11." is the finding)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [math.nan, -1.0, "1e-4", math.inf, None])
def test_logz_penalty_coefficient_is_validated(value):  # 11.5
    x, t = rand_logits(4, 6), rand_target(4, 6)
    with pytest.raises(ValueError, match="coefficient"):
        losslab.create("logz_penalty", coefficient=value)
    with pytest.raises(ValueError, match="coefficient"):
        LF.logz_penalty_loss(x, t, coefficient=value)


def test_logz_penalty_validates_soft_targets_and_returns_float32():  # 11.6, 11.2
    x, q = rand_logits(4, 6, 3), rand_soft(4, 6, 3)
    LF.logz_penalty_loss(x, q)
    with pytest.raises(ValueError, match=r"target.*sum to 1"):
        LF.logz_penalty_loss(x, q * 2)
    out = LF.logz_penalty_loss(x.half(), rand_target(4, 6, 3))
    assert out.dtype == torch.float32
    close(out, LF.logz_penalty_loss(x.half().float(), rand_target(4, 6, 3)), rtol=1e-6)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("use_cw,use_tw", [(False, False), (True, True), (False, True)])
def test_linear_cross_entropy_return_z_loss_isolates_the_penalty(reduction, use_cw, use_tw):
    """return_z_loss: the z-term alone (loops), and loss - z_loss is the CE without it."""
    g = torch.Generator().manual_seed(11)
    h = torch.randn(9, 5, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(7, 5, generator=g, dtype=torch.float64)
    t = torch.randint(0, 7, (9,), generator=g)
    t[2] = -100
    cw = torch.rand(7, generator=g, dtype=torch.float64) + 0.5 if use_cw else None
    tw = torch.rand(9, generator=g, dtype=torch.float64) if use_tw else None
    lam = 0.02
    loss, z = LF.linear_cross_entropy_loss(h, w, t, class_weight=cw, token_weight=tw,
                                           logz_penalty=lam, return_z_loss=True,
                                           reduction=reduction)
    plain = LF.linear_cross_entropy_loss(h, w, t, class_weight=cw, token_weight=tw,
                                         reduction=reduction)
    torch.testing.assert_close(loss - z, plain)
    per, den = [], 0.0
    for n in range(9):
        if int(t[n]) == -100:
            per.append(0.0)
            continue
        row = [sum(float(h[n, j]) * float(w[v, j]) for j in range(5)) for v in range(7)]
        lse = math.log(sum(math.exp(r) for r in row))
        tau = 1.0 if tw is None else float(tw[n])
        per.append(tau * lam * lse * lse)
        den += tau * (1.0 if cw is None else float(cw[int(t[n])]))
    ref = torch.tensor(per, dtype=torch.float64)
    want = {"none": ref, "sum": ref.sum(), "mean": ref.sum() / den}[reduction]
    torch.testing.assert_close(z, want)
    loss2, lse2, z2 = LF.linear_cross_entropy_loss(h, w, t, logz_penalty=lam, return_lse=True,
                                                   return_z_loss=True, class_weight=cw,
                                                   token_weight=tw, reduction=reduction)
    torch.testing.assert_close(z2, z)
    torch.testing.assert_close(loss2, loss)
    assert lse2.shape == t.shape
