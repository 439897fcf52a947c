"""Prior-aware entropy minimisation (arXiv 2108.03152) and RePRI (arXiv 2012.06166): loop
oracles in fp64 and the properties the papers use."""

from __future__ import annotations

import math

import pytest
import torch

from losslab.functional import entropy_prior_loss, repri_loss

EPS = 1e-10


def pixel_dists(logits):
    """[(n, pixel index, [p_k])] with softmax (C >= 2) or (sigmoid, 1 - sigmoid) (C = 1)."""
    out = []
    lg = logits.detach()
    n_img, c = lg.shape[:2]
    flat = lg.reshape(n_img, c, -1)
    for n in range(n_img):
        for i in range(flat.shape[2]):
            z = [float(flat[n, k, i]) for k in range(c)]
            if c == 1:
                s = 1 / (1 + math.exp(-z[0]))
                p = [s, 1 - s]
            else:
                m = max(z)
                e = [math.exp(v - m) for v in z]
                p = [v / sum(e) for v in e]
            out.append((n, i, p))
    return out


def kl(a, b):
    return sum(x * (math.log(x) - math.log(y + EPS)) for x, y in zip(a, b) if x > 0)


def entropy_prior_oracle(logits, prior_of, lam):
    vals = {}
    for n, i, p in pixel_dists(logits):
        if prior_of(n, i) is None:  # ignored pixel
            continue
        acc = vals.setdefault(n, [0.0, [0.0] * len(p), [0.0] * len(p), 0])
        acc[0] += -sum(q * math.log(q) for q in p)
        acc[1] = [a + q for a, q in zip(acc[1], p)]
        acc[2] = [a + t for a, t in zip(acc[2], prior_of(n, i))]
        acc[3] += 1
    out = []
    for n in sorted(vals):
        h, tau_hat, tau, m = vals[n]
        out.append(h / m + lam * kl([t / m for t in tau_hat], [t / m for t in tau]))
    return out


def test_entropy_prior_with_a_mask_target_matches_loop_oracle() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 3, 4, 5, generator=g, dtype=torch.float64)
    target = torch.randint(0, 3, (3, 4, 5), generator=g)
    target[0, 0] = -100
    tf = target.reshape(3, -1)

    def prior_of(n, i):
        t = int(tf[n, i])
        return None if t == -100 else [float(t == k) for k in range(3)]

    got = entropy_prior_loss(logits, target, lambda_prior=0.7, reduction="none")
    assert got.tolist() == pytest.approx(entropy_prior_oracle(logits, prior_of, 0.7),
                                         rel=1e-10)


@pytest.mark.parametrize("c", [1, 3])
def test_entropy_prior_with_proportions_matches_loop_oracle(c: int) -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, c, 4, 4, generator=g, dtype=torch.float64)
    if c == 1:
        props = torch.tensor([[0.3], [0.0]], dtype=torch.float64)
        full = torch.cat([props, 1 - props], 1)
    else:
        props = torch.softmax(torch.randn(2, c, generator=g, dtype=torch.float64), 1)
        full = props
    got = entropy_prior_loss(logits, props, reduction="none")
    want = entropy_prior_oracle(logits, lambda n, i: full[n].tolist(), 1.0)
    assert got.tolist() == pytest.approx(want, rel=1e-10)


def test_entropy_prior_minimum_is_a_confident_prediction_with_the_prior_proportions() -> None:
    """Paper, section 2: entropy alone is minimised by any confident (one-hot) prediction, e.g.
    all background; the KL term to the class-ratio prior rules out the trivial solution."""
    prior = torch.tensor([[0.75, 0.25]], dtype=torch.float64)
    good = torch.full((1, 2, 4, 4), -30.0, dtype=torch.float64)
    good[0, 0, :3] = 30.0
    good[0, 1, 3:] = 30.0  # 25 % class 1, confident
    trivial = torch.full((1, 2, 4, 4), -30.0, dtype=torch.float64)
    trivial[0, 0] = 30.0  # all class 0, confident
    assert float(entropy_prior_loss(good, prior)) == pytest.approx(0.0, abs=1e-9)
    assert float(entropy_prior_loss(trivial, prior)) > 0.2
    assert float(entropy_prior_loss(trivial, prior, lambda_prior=0.0)) == pytest.approx(0.0,
                                                                                      abs=1e-9)


def test_entropy_prior_bad_inputs() -> None:
    logits = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="target"):
        entropy_prior_loss(logits, torch.ones(2, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="target"):
        entropy_prior_loss(logits, torch.ones(2, 2, dtype=torch.float64) / 2)
    with pytest.raises(ValueError, match="target"):
        entropy_prior_loss(logits[:, :1], torch.full((2, 1), 1.5, dtype=torch.float64))


def repri_oracle(logits, target, prior, lam=(1.0, 1.0, 1.0)):
    tf = target.reshape(-1).tolist()
    ce = h = 0.0
    ns = nq = 0
    q = None
    for (_, _, p), t in zip(pixel_dists(logits), tf):
        if t == -100:
            h += -sum(v * math.log(v) for v in p)
            q = p if q is None else [a + v for a, v in zip(q, p)]
            nq += 1
        else:
            idx = (0 if t == 1 else 1) if logits.shape[1] == 1 else t
            ce += -math.log(p[idx])
            ns += 1
    assert q is not None
    q_hat = [v / nq for v in q]
    return lam[0] * ce / ns + lam[1] * kl(q_hat, prior) + lam[2] * h / nq


@pytest.mark.parametrize("c", [1, 2])
def test_repri_matches_loop_oracle(c: int) -> None:
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(3, c, 4, 5, generator=g, dtype=torch.float64)
    target = torch.randint(0, 2, (3, 4, 5), generator=g)
    target[2] = -100  # the query image
    target[0, 0, 0] = -100  # an unlabelled support pixel counts as query too
    got = repri_loss(logits, target, prior=0.3, lambda_kl=0.5, lambda_ent=2.0)
    prior = [0.3, 0.7] if c == 1 else [0.7, 0.3]
    assert float(got) == pytest.approx(repri_oracle(logits, target, prior, (1.0, 0.5, 2.0)),
                                       rel=1e-10)
    vec = repri_loss(logits, target, prior=(0.4, 0.6))
    want = repri_oracle(logits, target, [0.4, 0.6] if c == 2 else [0.6, 0.4])
    assert float(vec) == pytest.approx(want, rel=1e-10)


def test_repri_default_prior_gives_a_zero_kl_with_zero_gradient() -> None:
    """prior=None: the paper's initial estimate pi = the current query proportion (detached):
    the KL term vanishes with its gradient, leaving CE + entropy."""
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 2, 4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 2, (2, 4, 4), generator=g)
    target[1] = -100
    a = repri_loss(logits, target)
    b = repri_loss(logits, target, lambda_kl=0.0)
    (ga,) = torch.autograd.grad(a, logits)
    (gb,) = torch.autograd.grad(b, logits)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(ga, gb)
    with pytest.raises(ValueError, match="prior"):
        repri_loss(logits, target, prior=(0.2, 0.2))
    with pytest.raises(ValueError, match="prior"):
        repri_loss(torch.randn(1, 3, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long), prior=0.5)
