"""Regression losses against loop oracles from the papers' formulas, torch / kornia peers and
the papers' special cases."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import losslab
from losslab.functional import (
    barron_loss,
    cauchy_loss,
    charbonnier_loss,
    conr_loss,
    hazard_loss,
    huber_loss,
    mse_loss,
    pseudo_huber_loss,
    z_error_loss,
)
from losslab.losses.regression import barron_log_partition

close = torch.testing.assert_close
f64 = torch.float64


def pair(n: int = 7, d: int = 3, seed: int = 0, scale: float = 2.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g, dtype=f64) * scale,
            torch.randn(n, d, generator=g, dtype=f64) * scale)


def elementwise(fn, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    out = [[fn(p - t) for p, t in zip(pr, tr)] for pr, tr in zip(pred.tolist(), target.tolist())]
    return torch.tensor(out, dtype=f64)


# ---- Huber and Charbonnier -------------------------------------------------------------------

def test_huber_oracle_and_torch_peers() -> None:
    x, y = pair()
    for delta in (0.5, 1.0, 3.0):
        ref = elementwise(lambda r, d=delta: 0.5 * r * r if abs(r) <= d
                          else d * (abs(r) - 0.5 * d), x, y)
        close(huber_loss(x, y, delta=delta, reduction="none"), ref)
        close(huber_loss(x, y, delta=delta), torch.nn.HuberLoss(delta=delta)(x, y))
        close(huber_loss(x, y, delta=delta) / delta, torch.nn.SmoothL1Loss(beta=delta)(x, y))


def test_mse_oracle_torch_peer_and_barron_alpha_two() -> None:
    x, y = pair()
    close(mse_loss(x, y, reduction="none"), elementwise(lambda r: r * r, x, y))
    close(mse_loss(x, y), torch.nn.MSELoss()(x, y))
    close(barron_loss(x, y, alpha=2.0), 0.5 * mse_loss(x, y))


def test_charbonnier_oracle_and_kornia_peer() -> None:
    kornia = pytest.importorskip("kornia")
    x, y = pair()
    ref = elementwise(lambda r: math.sqrt(r * r + 1e-6), x, y)
    close(charbonnier_loss(x, y, reduction="none"), ref)
    # kornia (Barron's convention): sqrt(r^2 + 1) - 1, our eps = 1 minus eps
    close(charbonnier_loss(x, y, eps=1.0, reduction="none") - 1,
          kornia.losses.charbonnier_loss(x, y, reduction="none"))


# ---- Barron --------------------------------------------------------------------------------

def barron_ref(r: float, a: float, c: float) -> float:
    b = abs(a - 2)
    return b / a * (((r / c) ** 2 / b + 1) ** (a / 2) - 1)


@pytest.mark.parametrize("alpha", [-3.0, -2.0, -0.5, 0.5, 1.0, 1.5, 3.0])
def test_barron_oracle(alpha: float) -> None:
    x, y = pair()
    ref = elementwise(lambda r: barron_ref(r, alpha, 1.7), x, y)
    close(barron_loss(x, y, alpha=alpha, scale=1.7, reduction="none"), ref)


def test_barron_limits_and_special_cases() -> None:
    x, y = pair()
    r = x - y
    # alpha = 2: half squared error; alpha = 0: log(1/2 (x/c)^2 + 1); both are limits
    close(barron_loss(x, y, alpha=2, scale=0.5, reduction="none"), 0.5 * (r / 0.5) ** 2)
    close(barron_loss(x, y, alpha=0, scale=0.5, reduction="none"),
          torch.log(0.5 * (r / 0.5) ** 2 + 1))
    for a in (2, 0):
        close(barron_loss(x, y, alpha=a + 1e-7, reduction="none"),
              barron_loss(x, y, alpha=a, reduction="none"), rtol=1e-5, atol=1e-6)
    # alpha = 1: pseudo-Huber / Charbonnier sqrt((x/c)^2 + 1) - 1
    close(barron_loss(x, y, alpha=1, scale=2.0, reduction="none"),
          torch.sqrt((r / 2) ** 2 + 1) - 1)
    # alpha -> -inf: Welsch 1 - exp(-1/2 (x/c)^2)
    close(barron_loss(x, y, alpha=-1e7, reduction="none"), 1 - torch.exp(-0.5 * r ** 2),
          rtol=1e-5, atol=1e-6)


def test_barron_kornia_peers() -> None:
    kornia = pytest.importorskip("kornia")
    x, y = pair()
    L = kornia.losses
    for alpha, peer in ((1.0, L.charbonnier_loss), (0.0, L.cauchy_loss),
                        (-2.0, L.geman_mcclure_loss)):
        close(barron_loss(x, y, alpha=alpha, reduction="none"), peer(x, y, reduction="none"))
    close(barron_loss(x, y, alpha=-1e7, reduction="none"),
          L.welsch_loss(x, y, reduction="none"), rtol=1e-5, atol=1e-6)


def test_barron_log_partition_closed_forms_and_quadrature() -> None:
    scipy_integrate = pytest.importorskip("scipy.integrate")
    close(barron_log_partition(2.0), torch.tensor(0.5 * math.log(2 * math.pi), dtype=f64))
    close(barron_log_partition(0.0), torch.tensor(math.log(math.pi * math.sqrt(2)), dtype=f64))
    for a in (0.3, 1.0, 1.7):
        z, _ = scipy_integrate.quad(lambda r, a=a: math.exp(-barron_ref(r, a, 1.0)),
                                    -math.inf, math.inf)
        close(barron_log_partition(a), torch.tensor(math.log(z), dtype=f64), rtol=1e-7,
              atol=1e-8)
    # tensor alpha: the same value, and a gradient
    a = torch.tensor(1.0, dtype=f64, requires_grad=True)
    out = barron_log_partition(a)
    close(out, barron_log_partition(1.0))
    out.backward()
    assert a.grad is not None and torch.isfinite(a.grad)


#: Z(n / d) for alpha in [0, 2], the golden values published in the reference implementation's
#: tests (jonbarron/robust_loss_pytorch, tests/distribution_test.py; computed there with
#: Mathematica to 10 digits), as (n, d, Z).
BARRON_PARTITION_GOLDEN = (
    (1, 7, 4.080330073), (1, 6, 4.038544331), (1, 5, 3.984791180), (1, 4, 3.912448576),
    (1, 3, 3.808203509), (2, 5, 3.735479786), (3, 7, 3.706553276), (1, 2, 3.638993131),
    (3, 5, 3.553489270), (2, 3, 3.501024540), (3, 4, 3.439385624), (4, 5, 3.404121259),
    (1, 1, 3.272306973), (6, 5, 3.149249092), (5, 4, 3.119044506), (4, 3, 3.068687433),
    (7, 5, 3.028084866), (3, 2, 2.965924889), (8, 5, 2.901059987), (5, 3, 2.855391798),
    (7, 4, 2.794052016),
)


def test_barron_partition_matches_the_reference_golden_values() -> None:
    for n, d, z in BARRON_PARTITION_GOLDEN:
        assert math.exp(float(barron_log_partition(n / d))) == pytest.approx(z, rel=1e-9)


def test_barron_density_is_a_normalised_negative_log_likelihood() -> None:
    r = torch.linspace(-400, 400, 400001, dtype=f64)
    for a, c in ((0.5, 1.3), (1.0, 0.7), (2.0, 2.0)):
        nll = barron_loss(r, torch.zeros_like(r), alpha=a, scale=c, density=True,
                          reduction="none")
        mass = torch.trapezoid(torch.exp(-nll), r)
        assert abs(float(mass) - 1) < 5e-3 if a < 1 else abs(float(mass) - 1) < 1e-6
    with pytest.raises(ValueError, match="alpha"):
        barron_loss(r, r, alpha=-1.0, density=True)


def test_adaptive_barron_learns_the_shape_of_the_residuals() -> None:
    """The paper's adaptive loss: alpha goes up (towards L2) for Gaussian residuals and down
    (towards Cauchy) for heavy-tailed ones."""
    g = torch.Generator().manual_seed(0)
    gauss = torch.randn(2000, 1, generator=g)
    heavy = torch.distributions.Cauchy(0.0, 1.0).sample((2000, 1))
    alphas = []
    for r in (gauss, heavy):
        loss = losslab.create("barron", adaptive=True, alpha=1.0, scale=1.0)
        assert {n for n, _ in loss.named_parameters()} == {"alpha_logit", "scale_raw"}
        opt = torch.optim.Adam(loss.parameters(), lr=0.1)
        for _ in range(120):
            opt.zero_grad()
            loss(r, torch.zeros_like(r)).backward()
            opt.step()
        alphas.append(float(torch.as_tensor(loss.alpha).detach()))
    assert alphas[0] > 1.5 and alphas[1] < 0.5, alphas
    with pytest.raises(ValueError, match="alpha"):
        losslab.create("barron", adaptive=True, alpha=2.0)


# ---- pseudo-Huber and Cauchy ----------------------------------------------------------------

def test_pseudo_huber_and_cauchy_oracles() -> None:
    x, y = pair(d=4)
    for c in (None, 0.3):
        cv = 0.00054 * math.sqrt(4) if c is None else c
        sq = [sum((a - b) ** 2 for a, b in zip(xr, yr)) for xr, yr in zip(x.tolist(),
                                                                           y.tolist())]
        close(pseudo_huber_loss(x, y, c=c, reduction="none"),
              torch.tensor([math.sqrt(s + cv * cv) - cv for s in sq], dtype=f64))
        close(cauchy_loss(x, y, c=c, reduction="none"),
              torch.tensor([math.log(1 + s / (2 * cv * cv)) for s in sq], dtype=f64))


def test_cauchy_is_barron_alpha_zero_of_the_residual_norm() -> None:
    x, y = pair(d=5)
    norm = (x - y).norm(dim=1)
    close(cauchy_loss(x, y, c=0.8, reduction="none"),
          barron_loss(norm, torch.zeros_like(norm), alpha=0, scale=0.8, reduction="none"))
    # bounded-influence: the gradient of an outlier shrinks as it grows (pseudo-Huber's does not)
    grads = []
    for fn in (cauchy_loss, pseudo_huber_loss):
        p = torch.tensor([[10.0], [100.0]], dtype=f64, requires_grad=True)
        fn(p, torch.zeros_like(p), c=1.0, reduction="sum").backward()
        assert p.grad is not None
        grads.append(p.grad.flatten().tolist())
    assert grads[0][1] < grads[0][0] and grads[1][1] >= grads[1][0] * 0.99


# ---- Z-error -------------------------------------------------------------------------------

def test_z_error_oracle_masks_outliers() -> None:
    x, y = pair(n=10, d=2, scale=0.5)
    x = x.clone()
    x[3] += 50.0  # one gross outlier
    per = [sum((a - b) ** 2 for a, b in zip(xr, yr)) / 2 for xr, yr in zip(x.tolist(),
                                                                         y.tolist())]
    mu = sum(per) / len(per)
    sd = math.sqrt(sum((v - mu) ** 2 for v in per) / (len(per) - 1))
    keep = [abs((v - mu) / sd) <= 2.0 for v in per]
    assert not keep[3] and sum(keep) == 9
    ref = sum(v for v, k in zip(per, keep) if k) / sum(keep)
    xg = x.clone().requires_grad_()
    out = z_error_loss(xg, y)
    close(out, torch.tensor(ref, dtype=f64))
    out.backward()
    assert xg.grad is not None
    assert torch.count_nonzero(xg.grad[3]) == 0 and torch.count_nonzero(xg.grad[0]) > 0
    # equal losses (sd = 0) and a single sample keep everything: the MSE
    z = torch.zeros(4, 2, dtype=f64)
    close(z_error_loss(z + 1, z), torch.tensor(1.0, dtype=f64))
    close(z_error_loss(x[:1], y[:1]), torch.nn.functional.mse_loss(x[:1], y[:1]))
    # a huge threshold is the MSE
    close(z_error_loss(x, y, threshold=1e9), torch.nn.functional.mse_loss(x, y))


# ---- ConR ----------------------------------------------------------------------------------

def conr_ref(pred, target, feats, w, beta, omega, tau, e):
    n = len(pred)
    out = []
    for j in range(n):
        base = abs(pred[j] - target[j])
        pos = [i for i in range(n) if i != j and abs(target[i] - target[j]) <= omega]
        neg = [q for q in range(n) if abs(target[q] - target[j]) > omega
               and abs(pred[q] - pred[j]) <= omega]

        def s(a, b):
            na = math.sqrt(sum(v * v for v in feats[a]))
            nb = math.sqrt(sum(v * v for v in feats[b]))
            return sum(u * v for u, v in zip(feats[a], feats[b])) / (na * nb) / tau

        con = 0.0
        if pos and neg:
            den = sum(math.exp(s(j, i)) for i in pos) + sum(
                w[j] * math.exp(e * abs(target[j] - target[q])) * math.exp(s(j, q))
                for q in neg)
            con = -sum(math.log(math.exp(s(j, i)) / den) for i in pos) / len(pos)
        out.append(base + beta * w[j] * con)
    return torch.tensor(out, dtype=f64)


def test_conr_oracle() -> None:
    g = torch.Generator().manual_seed(3)
    target = torch.tensor([0.0, 0.5, 1.2, 3.0, 3.4, 6.0, 6.3, 9.0], dtype=f64)
    pred = torch.tensor([0.2, 2.9, 1.0, 0.8, 3.5, 6.1, 3.1, 8.7], dtype=f64)
    feats = torch.randn(8, 4, generator=g, dtype=f64)
    w = torch.rand(8, generator=g, dtype=f64) + 0.5
    for beta, omega, tau, e in ((1.0, 1.0, 0.07, 0.01), (0.5, 0.6, 0.5, 0.3)):
        ref = conr_ref(pred.tolist(), target.tolist(), feats.tolist(), w.tolist(), beta, omega,
                       tau, e)
        out = conr_loss(pred.unsqueeze(1), target.unsqueeze(1), features=feats, weights=w,
                        beta=beta, omega=omega, temperature=tau, pushing=e, reduction="none")
        close(out, ref)
        assert bool((out > (pred - target).abs() + 1e-9).any())  # some anchor is regularised


def test_conr_without_disagreements_is_the_base_loss_and_needs_features() -> None:
    target = torch.tensor([[0.0], [0.1], [5.0], [5.1]], dtype=f64)
    pred = target + 0.05  # predictions agree with labels: no negatives
    feats = torch.randn(4, 3, dtype=f64, requires_grad=True)
    out = conr_loss(pred, target, features=feats, base="mse", reduction="none")
    close(out, ((pred - target) ** 2).flatten())
    m = losslab.create("conr")
    with pytest.raises(ValueError, match="features"):
        m(pred, target)
    with pytest.raises(ValueError, match="features"):
        m(pred, target, features=feats[:3])


# ---- discrete-time hazard ------------------------------------------------------------------

def test_hazard_oracle_and_survival_probability() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(5, 4, generator=g, dtype=f64)
    target = torch.tensor([[0, 1], [2, 0], [3, 1], [1, 0], [3, 0]], dtype=f64)
    ref = []
    for row, (k, d) in zip(logits.tolist(), target.long().tolist()):
        h = [1 / (1 + math.exp(-v)) for v in row]
        ll = sum(math.log(1 - h[t]) for t in range(k))
        ll += math.log(h[k]) if d else math.log(1 - h[k])
        ref.append(-ll)
    out = hazard_loss(logits, target, reduction="none")
    close(out, torch.tensor(ref, dtype=f64))
    # a sample censored in the last bin: exp(-loss) is the survival probability prod(1 - h_t)
    close(torch.exp(-out[4]), torch.prod(1 - torch.sigmoid(logits[4])))
    for bad in (torch.tensor([[4, 1]] * 5, dtype=f64), torch.tensor([[1.5, 1]] * 5, dtype=f64),
                torch.tensor([[1, 2]] * 5, dtype=f64)):
        with pytest.raises(ValueError, match="target"):
            hazard_loss(logits, bad)


# ---- ordinal (cumulative logits, PRESTO) ------------------------------------------------------

def test_ordinal_cumulative_oracle_and_probabilities_sum_to_one() -> None:
    from losslab.functional import ordinal_loss

    g = torch.Generator().manual_seed(2)
    theta = torch.sort(torch.randn(5, 3, generator=g, dtype=f64), dim=1).values  # ordered
    y = torch.tensor([0, 1, 2, 3, 2])
    ref = []
    for row, k in zip(theta.tolist(), y.tolist()):
        cdf = [0.0] + [1 / (1 + math.exp(-v)) for v in row] + [1.0]
        ref.append(-math.log(cdf[k + 1] - cdf[k]))
    close(ordinal_loss(theta, y, reduction="none"), torch.tensor(ref, dtype=f64))
    total = sum(torch.exp(-ordinal_loss(theta, torch.full((5,), k), reduction="none"))
                for k in range(4))
    close(total, torch.ones(5, dtype=f64))
    # K = 2 (one threshold) is the logistic regression on [y <= 0]
    x = theta[:, :1]
    yb = torch.tensor([0, 1, 1, 0, 1])
    close(ordinal_loss(x, yb), torch.nn.functional.binary_cross_entropy_with_logits(
        x.squeeze(1), (yb == 0).to(f64)))


def test_ordinal_binary_form_with_threshold_weights() -> None:
    from losslab.functional import ordinal_loss

    g = torch.Generator().manual_seed(3)
    eta = torch.randn(6, 3, generator=g, dtype=f64)
    y = torch.tensor([0, 1, 2, 3, 3, 1])
    w = [0.5, 1.0, 2.0]
    ref = []
    for row, k in zip(eta.tolist(), y.tolist()):
        tot = 0.0
        for j, v in enumerate(row):
            p = 1 / (1 + math.exp(-v))
            tot += w[j] * -(math.log(p) if k <= j else math.log(1 - p))
        ref.append(tot)
    close(ordinal_loss(eta, y, form="binary", threshold_weights=w, reduction="none"),
          torch.tensor(ref, dtype=f64))
    with pytest.raises(ValueError, match="threshold_weights"):
        ordinal_loss(eta, y, threshold_weights=w)
    with pytest.raises(ValueError, match="target"):
        ordinal_loss(eta, torch.tensor([0, 1, 2, 4, 0, 0]))


def test_presto_penalty_and_head() -> None:
    from losslab.losses.regression import PrestoHead, presto_penalty

    b = torch.tensor([[1.0, -2.0], [1.5, -2.0], [0.5, 0.0]])
    close(presto_penalty(b, lam=0.1), torch.tensor(0.1 * (0.5 + 1.0 + 2.0)))
    head = PrestoHead(4, 5)
    close(head.penalty(), torch.tensor(0.0))  # starts at proportional odds
    eta = head(torch.randn(3, 4))
    assert eta.shape == (3, 4)
    assert bool((eta[:, 1:] >= eta[:, :-1]).all())  # ordered thresholds at initialisation


# ---- Sinkhorn feature alignment --------------------------------------------------------------

def sinkhorn_ref(x: list[list[float]], y: list[list[float]], eps: float, iters: int) -> float:
    """Entropic OT value <a, f> + <b, g> from plain Sinkhorn loops (uniform weights)."""
    n, m = len(x), len(y)
    c = [[0.5 * sum((p - q) ** 2 for p, q in zip(xi, yj)) for yj in y] for xi in x]
    f, g = [0.0] * n, [0.0] * m
    for _ in range(iters):
        f = [-eps * math.log(sum(math.exp((g[j] - c[i][j]) / eps) / m for j in range(m)))
             for i in range(n)]
        g = [-eps * math.log(sum(math.exp((f[i] - c[i][j]) / eps) / n for i in range(n)))
             for j in range(m)]
    return sum(f) / n + sum(g) / m


def test_sinkhorn_alignment_oracle_and_properties() -> None:
    from losslab.functional import sinkhorn_alignment_loss

    g = torch.Generator().manual_seed(0)
    a = torch.randn(5, 2, generator=g, dtype=f64)
    b = torch.randn(5, 2, generator=g, dtype=f64) * 1.5 + 0.3
    eps = 0.7
    xa, xb = a.tolist(), b.tolist()
    ref = sinkhorn_ref(xa, xb, eps, 300) - 0.5 * (sinkhorn_ref(xa, xa, eps, 300)
                                                   + sinkhorn_ref(xb, xb, eps, 300))
    close(sinkhorn_alignment_loss(a, b, epsilon=eps, n_iters=300),
          torch.tensor(ref, dtype=f64), rtol=1e-7, atol=1e-9)
    # zero on equal sets, positive otherwise, and 1/2 |t|^2 for a translated copy
    close(sinkhorn_alignment_loss(a, a, epsilon=eps), torch.tensor(0.0, dtype=f64))
    t = torch.tensor([0.5, -1.0], dtype=f64)
    close(sinkhorn_alignment_loss(a, a + t, epsilon=eps, n_iters=300),
          0.5 * t.pow(2).sum(), rtol=1e-6, atol=1e-8)
    assert float(sinkhorn_alignment_loss(a, b, epsilon=eps)) > 0
    with pytest.raises(ValueError, match="shape"):
        sinkhorn_alignment_loss(a, b[:4])


def test_sinkhorn_alignment_geomloss_peer() -> None:
    geomloss = pytest.importorskip("geomloss")
    from losslab.functional import sinkhorn_alignment_loss

    g = torch.Generator().manual_seed(1)
    a = torch.randn(7, 3, generator=g, dtype=f64)
    b = torch.randn(7, 3, generator=g, dtype=f64) * 1.5 + 0.3
    peer = geomloss.SamplesLoss("sinkhorn", p=2, blur=0.5 ** 0.5, scaling=0.999, debias=True,
                                backend="tensorized")(a, b)
    close(sinkhorn_alignment_loss(a, b, epsilon=0.5, n_iters=2000), peer, rtol=1e-5,
          atol=1e-6)


# ---- 3-D wavelet high-frequency loss ---------------------------------------------------------

def test_wavelet_hf_oracle_on_2x2x2_blocks() -> None:
    from losslab.functional import wavelet_hf_loss

    g = torch.Generator().manual_seed(4)
    p = torch.randn(2, 1, 2, 4, 2, generator=g, dtype=f64)
    t = torch.randn(2, 1, 2, 4, 2, generator=g, dtype=f64)
    ref = []
    for n in range(2):
        d = (p[n, 0] - t[n, 0]).tolist()
        total, count = 0.0, 0
        for band in [(a, b, c) for a in (0, 1) for b in (0, 1) for c in (0, 1)][1:]:
            for h0 in (0, 2):  # the two 2x2x2 blocks along H
                coef = 0.0
                for i in (0, 1):
                    for j in (0, 1):
                        for k in (0, 1):
                            sign = 1.0
                            for code, idx in zip(band, (i, j, k)):
                                sign *= -1.0 if code and idx else 1.0
                            coef += sign * d[i][h0 + j][k]
                total += abs(coef / math.sqrt(8))
                count += 1
        ref.append(total / count)
    close(wavelet_hf_loss(p, t, reduction="none"), torch.tensor(ref, dtype=f64))


def test_wavelet_hf_pywavelets_peer_and_low_band_blindness() -> None:
    pywt = pytest.importorskip("pywt")
    from losslab.functional import wavelet_hf_loss
    from losslab.losses.regression import haar_subbands

    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 5, 6, 7, generator=g, dtype=f64)  # odd sizes: symmetric extension
    peer = pywt.dwtn(x.numpy(), "haar", mode="symmetric", axes=(-3, -2, -1))
    ours = haar_subbands(x.unsqueeze(0), 3)
    keys = ["".join(k) for k in itertools.product("ad", repeat=3)]
    for key, band in zip(keys, ours):
        close(band.squeeze(0).abs(), torch.as_tensor(peer[key]).abs())
    # a change of the local means only (constant on 2x2x2 blocks) is invisible to the loss
    p = torch.randn(1, 1, 4, 4, 4, generator=g, dtype=f64)
    blocks = torch.randn(1, 1, 2, 2, 2, generator=g, dtype=f64)
    shifted = p + blocks.repeat_interleave(2, 2).repeat_interleave(2, 3).repeat_interleave(2, 4)
    close(wavelet_hf_loss(shifted, p), torch.tensor(0.0, dtype=f64))
    assert float(wavelet_hf_loss(p + torch.randn_like(p), p)) > 0
    with pytest.raises(ValueError, match="trailing"):
        wavelet_hf_loss(torch.randn(4, 3), torch.randn(4, 3))


# ---- Cauchy-Schwarz information bottleneck ---------------------------------------------------

def _gk(u: list[float], v: list[float], s: float) -> float:
    return math.exp(-sum((a - b) ** 2 for a, b in zip(u, v)) / (2 * s * s))


def test_cs_ib_oracle_and_properties() -> None:
    from losslab.functional import cs_ib_loss
    from losslab.losses.regression import cs_conditional_divergence, cs_mutual_information

    g = torch.Generator().manual_seed(6)
    n, s = 6, 1.3
    x = torch.randn(n, 3, generator=g, dtype=f64)
    t = torch.randn(n, 2, generator=g, dtype=f64)
    y = torch.randn(n, 1, generator=g, dtype=f64)
    yh = y + 0.5 * torch.randn(n, 1, generator=g, dtype=f64)
    X, T, Y, H = x.tolist(), t.tolist(), y.tolist(), yh.tolist()
    K = [[_gk(X[j], X[i], s) for i in range(n)] for j in range(n)]

    def omega(A, B):
        return sum(sum(K[j][i] * _gk(A[j], B[i], s) for i in range(n))
                   / sum(K[j][i] ** 2 for i in range(n)) for j in range(n))

    div = math.log2(omega(Y, Y)) + math.log2(omega(H, H)) - 2 * math.log2(omega(H, Y))
    close(cs_conditional_divergence(x, y, yh, sigma=s), torch.tensor(div, dtype=f64))
    Kt = [[_gk(T[j], T[i], s) for i in range(n)] for j in range(n)]
    tr = sum(K[i][j] * Kt[i][j] for i in range(n) for j in range(n)) / n ** 2
    tot = sum(map(sum, K)) * sum(map(sum, Kt)) / n ** 4
    cross = sum(sum(K[i][j] for i in range(n)) * sum(Kt[i][j] for i in range(n))
                for j in range(n)) / n ** 3
    qmi = math.log2(tr) + math.log2(tot) - 2 * math.log2(cross)
    close(cs_mutual_information(x, t, sigma=s), torch.tensor(qmi, dtype=f64))
    close(cs_ib_loss(yh, y, features=t, inputs=x, sigma=s, beta=0.3, normalized=False),
          torch.tensor(div + 0.3 * qmi, dtype=f64))
    # properties: D = 0 for a perfect prediction, D >= 0, I >= 0, normalised I(x; x) = 1
    close(cs_conditional_divergence(x, y, y), torch.tensor(0.0, dtype=f64), atol=1e-12,
          rtol=0)
    assert div > 0 and qmi >= 0
    close(cs_mutual_information(x, x, normalized=True), torch.tensor(1.0, dtype=f64))
    with pytest.raises(ValueError, match="inputs"):
        cs_ib_loss(yh, y, features=t)


# ---- two-term (multi-task) hazard, CTR-weighted (arXiv 2204.11588) ------------------------------

def _hazard_terms(row: list[float], k: int, d: int) -> list[float]:
    """Per-bin negative log-likelihood of one sample, from the formula (loops)."""
    out = []
    for t, v in enumerate(row):
        h = 1 / (1 + math.exp(-v))
        if t < k or (t == k and not d):
            out.append(-math.log(1 - h))
        elif t == k:
            out.append(-math.log(h))
        else:
            out.append(0.0)
    return out


def test_two_term_hazard_oracle_weights_and_factorisation() -> None:
    from losslab.losses.regression import two_term_hazard_loss

    g = torch.Generator().manual_seed(3)
    logits = torch.randn(6, 5, generator=g, dtype=f64)
    target = torch.tensor([[0, 1], [1, 0], [2, 1], [4, 0], [3, 1], [4, 1]], dtype=f64)
    ctr = torch.tensor([0.5, 2.0, 1.0, 0.0, 3.0, 0.25], dtype=f64)
    split, ls, ll = 2, 0.7, 1.9
    ref = []
    for row, (k, d), w in zip(logits.tolist(), target.long().tolist(), ctr.tolist()):
        terms = _hazard_terms(row, k, d)
        short = sum(terms[:split])
        # the long-term term conditions on reaching the long horizon: 0 for a short life
        rest = sum(terms[split:]) if k >= split else 0.0
        ref.append(w * (ls * short + ll * rest))
    out = two_term_hazard_loss(logits, target, weights=ctr, split=split, short_weight=ls,
                               long_weight=ll, reduction="none")
    close(out, torch.tensor(ref, dtype=f64))
    mean = two_term_hazard_loss(logits, target, weights=ctr, split=split, short_weight=ls,
                                long_weight=ll)
    close(mean, torch.tensor(sum(ref) / ctr.sum().item(), dtype=f64))
    # equal task weights: the two terms factor the likelihood -> exactly hazard_loss
    for s in (1, 2, 4):
        close(two_term_hazard_loss(logits, target, split=s, reduction="none"),
              hazard_loss(logits, target, reduction="none"))
    # CTR weighting = per-sample weights; a zero-CTR ad contributes nothing, gradient too
    x = logits.clone().requires_grad_(True)
    two_term_hazard_loss(x, target, weights=ctr, split=split, reduction="sum").backward()
    assert x.grad is not None and torch.count_nonzero(x.grad[3]) == 0
    # the long-term head gets no gradient from ads that ended in the short horizon
    assert torch.count_nonzero(x.grad[:2, split:]) == 0


def test_two_term_hazard_bad_input() -> None:
    from losslab.losses.regression import two_term_hazard_loss

    logits = torch.zeros(3, 4)
    target = torch.tensor([[0, 1], [1, 0], [3, 1]], dtype=torch.float32)
    with pytest.raises(ValueError, match="split"):
        two_term_hazard_loss(logits, target, split=4)
    with pytest.raises(ValueError, match="split"):
        two_term_hazard_loss(logits, target, split=0)
    with pytest.raises(ValueError, match="weights"):
        two_term_hazard_loss(logits, target, split=2, weights=torch.ones(2))
    with pytest.raises(ValueError, match="weights"):
        two_term_hazard_loss(logits, target, split=2, weights=-torch.ones(3))
    with pytest.raises(ValueError, match="missing"):
        losslab.create("two_term_hazard")


# ---- RoMa (arXiv 2305.15404) -------------------------------------------------------------------

def test_roma_regression_oracle_and_barron_relation() -> None:
    from losslab.losses.regression import roma_regression_loss

    x, y = pair(n=9, d=2, seed=4, scale=0.01)
    for alpha, c in ((0.5, 1e-4), (0.5, 8e-4), (1.0, 1e-3), (2.0, 5e-3), (0.2, 1e-2)):
        ref = [c ** alpha * (sum((p - t) ** 2 for p, t in zip(pr, tr)) / c ** 2 + 1)
               ** (alpha / 2) for pr, tr in zip(x.tolist(), y.tolist())]
        out = roma_regression_loss(x, y, alpha=alpha, scale=c, reduction="none")
        close(out, torch.tensor(ref, dtype=f64))
        if alpha < 2:  # c^a (a / |a - 2| * barron(r; a, c / sqrt|a - 2|) + 1)
            r = (x - y).norm(dim=1, keepdim=True)
            b = barron_loss(r, torch.zeros_like(r), alpha=alpha,
                            scale=c / math.sqrt(abs(alpha - 2)), reduction="none")[:, 0]
            close(out, c ** alpha * (alpha / abs(alpha - 2) * b + 1))
    # alpha = 1 on a 1-D residual: Charbonnier with eps = c
    a, b1 = pair(n=5, d=1, seed=5)
    close(roma_regression_loss(a, b1, alpha=1.0, scale=0.3, reduction="none"),
          charbonnier_loss(a, b1, eps=0.3, reduction="none")[:, 0])


def test_roma_regression_alpha_one_matches_kornia_charbonnier() -> None:
    kornia_losses = pytest.importorskip("kornia.losses")
    from losslab.losses.regression import roma_regression_loss

    a, b = pair(n=6, d=1, seed=8)
    # kornia: sqrt((x - y)^2 + 1) - 1 element-wise (Barron alpha = 1, c = 1)
    peer = kornia_losses.charbonnier_loss(a.reshape(1, 1, 6, 1), b.reshape(1, 1, 6, 1))
    close(roma_regression_loss(a, b, alpha=1.0, scale=1.0, reduction="none"),
          peer.reshape(6) + 1)


def test_roma_regression_weights_dense_shape_and_robustness() -> None:
    from losslab.losses.regression import roma_regression_loss

    g = torch.Generator().manual_seed(6)
    pred = torch.randn(2, 3, 4, 2, generator=g, dtype=f64)
    target = torch.randn(2, 3, 4, 2, generator=g, dtype=f64)
    valid = (torch.rand(2, 3, 4, generator=g) > 0.4).to(f64)
    none = roma_regression_loss(pred, target, reduction="none")
    assert none.shape == (2, 3, 4)
    close(roma_regression_loss(pred, target, weights=valid),
          (none * valid).sum() / valid.sum())
    # robustness: at alpha = 0.5 the gradient magnitude decays like r^(-1/2) for r >> c
    r = torch.tensor([[1.0, 0.0], [100.0, 0.0]], dtype=f64, requires_grad=True)
    roma_regression_loss(r, torch.zeros_like(r), reduction="sum").backward()
    assert r.grad is not None
    close(r.grad[1, 0] / r.grad[0, 0], torch.tensor(0.1, dtype=f64), rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="weights"):
        roma_regression_loss(pred, target, weights=torch.ones(2, 3))
    with pytest.raises(ValueError, match="alpha"):
        roma_regression_loss(pred, target, alpha=0.0)


def test_roma_coarse_oracle_nearest_anchor_and_decoding() -> None:
    from losslab.losses.regression import roma_anchors, roma_coarse_loss

    g = torch.Generator().manual_seed(7)
    res, n = 5, 40
    logits = torch.randn(n, res * res, generator=g, dtype=f64)
    match = torch.rand(n, 2, generator=g, dtype=f64) * 2.4 - 1.2  # some outside [-1, 1]
    weights = torch.rand(n, generator=g, dtype=f64)
    centres = [-1 + (2 * i + 1) / res for i in range(res)]
    ref = []
    for row, (mx, my) in zip(logits.tolist(), match.tolist()):
        best = min(((cx - mx) ** 2 + (cy - my) ** 2, iy * res + ix)
                   for iy, cy in enumerate(centres) for ix, cx in enumerate(centres))[1]
        lse = math.log(sum(math.exp(v) for v in row))
        ref.append(lse - row[best])
    out = roma_coarse_loss(logits, match, reduction="none")
    close(out, torch.tensor(ref, dtype=f64))
    close(roma_coarse_loss(logits, match, weights=weights),
          (out * weights).sum() / weights.sum())
    anchors = roma_anchors(res, dtype=f64)
    assert anchors.shape == (res * res, 2)
    # a classifier peaked on the right anchor has a near-zero loss; decoding gives the anchor
    peaked = torch.full((1, res * res), -30.0, dtype=f64)
    peaked[0, 2 * res + 3] = 30.0
    assert roma_coarse_loss(peaked, anchors[2 * res + 3].unsqueeze(0)) < 1e-20
    close(anchors[peaked.argmax(-1)][0], torch.tensor([centres[3], centres[2]], dtype=f64))
    with pytest.raises(ValueError, match="R\\^2"):
        roma_coarse_loss(torch.zeros(3, 5), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="target"):
        roma_coarse_loss(torch.zeros(3, 4), torch.zeros(3, 3))
