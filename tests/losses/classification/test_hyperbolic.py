"""Tests of Hyp-OC's hyperbolic pairwise confusion (losslab.losses.classification.hyperbolic).

Oracles in float64 Python loops: Möbius addition and the artanh distance written from the
formula, and independently the closed form of the Poincaré distance at c = 1,
arcosh(1 + 2|x-y|^2 / ((1-|x|^2)(1-|y|^2))) (rescaled for other c). Properties: d(x, x) = 0,
symmetry, d(0, exp_0(v)) = 2|v| (exp_0 is a radial geodesic), the flat limit c -> 0 gives
2|x - y|.
"""

from __future__ import annotations

import math

import pytest
import torch

import losslab
from losslab import functional as LF
from losslab.losses.classification.hyperbolic import HypCELoss, expmap0, mobius_add

D = torch.float64


def close(a, b, **kw):
    kw.setdefault("rtol", 1e-10)
    kw.setdefault("atol", 1e-12)
    torch.testing.assert_close(torch.as_tensor(a, dtype=D), torch.as_tensor(b, dtype=D), **kw)


def ball_points(n, d, c, seed, radius=0.9):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n, d, generator=g, dtype=D)
    r = torch.rand(n, 1, generator=g, dtype=D) * radius
    return v / v.norm(dim=1, keepdim=True) * r / math.sqrt(c)


def dot(u, v):
    return sum(p * q for p, q in zip(u, v))


def mobius_oracle(x, y, c):
    xy, x2, y2 = dot(x, y), dot(x, x), dot(y, y)
    den = 1 + 2 * c * xy + c * c * x2 * y2
    return [((1 + 2 * c * xy + c * y2) * p + (1 - c * x2) * q) / den for p, q in zip(x, y)]


def dist_oracle(x, y, c):
    w = mobius_oracle([-v for v in x], y, c)
    return 2 / math.sqrt(c) * math.atanh(math.sqrt(c) * math.sqrt(dot(w, w)))


def dist_arcosh(x, y, c):
    # Scale to the unit ball (c = 1), where d = arcosh(1 + 2|x-y|^2/((1-|x|^2)(1-|y|^2))).
    s = math.sqrt(c)
    xs, ys = [s * v for v in x], [s * v for v in y]
    diff = [p - q for p, q in zip(xs, ys)]
    arg = 1 + 2 * dot(diff, diff) / ((1 - dot(xs, xs)) * (1 - dot(ys, ys)))
    return math.acosh(arg) / s


@pytest.mark.parametrize("c", [0.1, 1.0, 2.5])
def test_ball_inputs_against_two_oracles(c):
    x, y = ball_points(7, 5, c, 0), ball_points(7, 5, c, 1)
    got = LF.hyp_pc_loss(x, y, curvature=c, inputs="ball", reduction="none")
    want = [dist_oracle(x[i].tolist(), y[i].tolist(), c) for i in range(7)]
    close(got, want)
    close(got, [dist_arcosh(x[i].tolist(), y[i].tolist(), c) for i in range(7)], rtol=1e-8)
    close(LF.hyp_pc_loss(x, y, curvature=c, inputs="ball"), sum(want) / 7)
    close(LF.hyp_pc_loss(x, y, curvature=c, inputs="ball", reduction="sum"), sum(want))


def test_mobius_add_oracle_and_left_inverse():
    c = 0.7
    x, y = ball_points(4, 3, c, 2), ball_points(4, 3, c, 3)
    close(mobius_add(x, y, c=c), [mobius_oracle(x[i].tolist(), y[i].tolist(), c)
                                  for i in range(4)])
    close(mobius_add(-x, mobius_add(x, y, c=c), c=c), y)  # left cancellation law


def test_tangent_inputs_are_exp_mapped():
    c = 0.3
    g = torch.Generator().manual_seed(4)
    a, b = torch.randn(6, 4, generator=g, dtype=D), torch.randn(6, 4, generator=g, dtype=D)
    x = [[math.tanh(math.sqrt(c) * r.norm().item()) / (math.sqrt(c) * r.norm().item()) * v
          for v in r.tolist()] for r in a]
    y = [[math.tanh(math.sqrt(c) * r.norm().item()) / (math.sqrt(c) * r.norm().item()) * v
          for v in r.tolist()] for r in b]
    close(LF.hyp_pc_loss(a, b, curvature=c, reduction="none"),
          [dist_oracle(x[i], y[i], c) for i in range(6)])
    # exp_0 follows a geodesic from the origin: d(0, exp_0(v)) = 2 |v|.
    v = a * 0.4
    close(LF.hyp_pc_loss(torch.zeros_like(v), v, curvature=c, reduction="none"),
          2 * v.norm(dim=1), rtol=1e-9)


def test_symmetry_identity_and_flat_limit():
    c = 1.0
    x, y = ball_points(5, 3, c, 5), ball_points(5, 3, c, 6)
    close(LF.hyp_pc_loss(x, y, curvature=c, inputs="ball", reduction="none"),
          LF.hyp_pc_loss(y, x, curvature=c, inputs="ball", reduction="none"))
    xg = x.clone().requires_grad_()
    loss = LF.hyp_pc_loss(xg, x.clone(), curvature=c, inputs="ball")
    loss.backward()
    assert float(loss.detach()) == 0.0 and xg.grad is not None
    assert bool((xg.grad == 0).all())
    a, b = x * 0.1, y * 0.1
    close(LF.hyp_pc_loss(a, b, curvature=1e-9, inputs="ball", reduction="none"),
          2 * (a - b).norm(dim=1), rtol=1e-6)


def test_boundary_and_extreme_inputs_finite():
    big = torch.full((3, 4), 1e4, dtype=torch.float32, requires_grad=True)
    other = -torch.ones(3, 4)
    loss = LF.hyp_pc_loss(big, other)
    loss.backward()
    assert torch.isfinite(loss) and big.grad is not None and bool(torch.isfinite(big.grad).all())
    half = LF.hyp_pc_loss(torch.randn(4, 3).half(), torch.randn(4, 3).half())
    assert half.dtype == torch.float32 and torch.isfinite(half)


def test_bad_inputs():
    with pytest.raises(ValueError, match="Poincaré ball"):
        LF.hyp_pc_loss(torch.ones(2, 3), torch.zeros(2, 3), curvature=1.0, inputs="ball")
    with pytest.raises(ValueError, match="curvature"):
        LF.hyp_pc_loss(torch.zeros(2, 3), torch.zeros(2, 3), curvature=0.0)
    with pytest.raises(ValueError, match="inputs"):
        LF.hyp_pc_loss(torch.zeros(2, 3), torch.zeros(2, 3), inputs="euclid")  # type: ignore[arg-type]


def test_gradcheck_module_and_registry():
    g = torch.Generator().manual_seed(7)
    a = torch.randn(5, 3, generator=g, dtype=D).requires_grad_()
    b = torch.randn(5, 3, generator=g, dtype=D).requires_grad_()
    mod = losslab.create("hyp_pc", curvature=0.5)
    assert torch.autograd.gradcheck(lambda p, q: mod(p, q), (a, b), eps=1e-6, atol=1e-6)
    close(mod(a, b), LF.hyp_pc_loss(a, b, curvature=0.5))
    close(expmap0(torch.zeros(1, 3, dtype=D), c=0.5), torch.zeros(1, 3, dtype=D))
    s = losslab.spec("hyp_pc")
    assert s.arxiv == "2404.14406" and s.kind == "paired" and s.family == "classification"


# --------------------------------------------------------------------------------------------
# hyp_ce: hyperbolic MLR + cross-entropy
# --------------------------------------------------------------------------------------------


def mlr_oracle(x, p, a, c):
    """Ganea et al. Eq. 25, one sample, one class, from the formula."""
    z = mobius_oracle([-v for v in p], x, c)
    a_norm = math.sqrt(dot(a, a))
    lam = 2 / (1 - c * dot(p, p))
    arg = 2 * math.sqrt(c) * dot(z, a) / ((1 - c * dot(z, z)) * a_norm)
    return lam * a_norm / math.sqrt(c) * math.asinh(arg)


def ce_oracle(scores, y):
    m = max(scores)
    return -(scores[y] - m - math.log(sum(math.exp(s - m) for s in scores)))


def gyro_case(c, seed, n=6, k=3, d=4):
    x = ball_points(n, d, c, seed)
    p = ball_points(k, d, c, seed + 1, radius=0.6)
    g = torch.Generator().manual_seed(seed + 2)
    a = torch.randn(k, d, generator=g, dtype=D)
    y = torch.arange(n) % k
    return x, y, p, a


@pytest.mark.parametrize("c", [0.1, 1.0])
def test_hyp_ce_oracle(c):
    x, y, p, a = gyro_case(c, 10)
    got = LF.hyp_ce_loss(x, y, p, a, curvature=c, inputs="ball", reduction="none")
    want = []
    for i in range(6):
        scores = [mlr_oracle(x[i].tolist(), p[k].tolist(), a[k].tolist(), c) for k in range(3)]
        want.append(ce_oracle(scores, int(y[i])))
    close(got, want, rtol=1e-9)
    close(LF.hyp_ce_loss(x, y, p, a, curvature=c, inputs="ball"), sum(want) / 6, rtol=1e-9)


def test_hyp_ce_flat_limit_is_euclidean_mlr():
    # Ganea et al.: as c -> 0 the hyperbolic MLR score tends to 4 <a_k, x - p_k>.
    x, y, p, a = gyro_case(1.0, 11)
    x, p = x * 0.05, p * 0.05
    logits = 4 * ((x.unsqueeze(1) - p.unsqueeze(0)) * a.unsqueeze(0)).sum(-1)
    close(LF.hyp_ce_loss(x, y, p, a, curvature=1e-10, inputs="ball", reduction="none"),
          torch.nn.functional.cross_entropy(logits, y, reduction="none"), rtol=1e-6)


def test_hyp_ce_score_vanishes_on_the_gyroplane():
    from losslab.losses.classification.hyperbolic import hyp_mlr_logits

    c = 0.5
    _, _, p, a = gyro_case(c, 12)
    s = hyp_mlr_logits(p, p, a, c=c)  # each offset lies on its own gyroplane
    close(torch.diagonal(s), torch.zeros(3, dtype=D))


def test_hyp_ce_module_parametrisation_gradcheck_and_errors():
    torch.manual_seed(0)
    mod = losslab.create("hyp_ce", num_classes=3, embedding_dim=4, curvature=0.7).double()
    assert isinstance(mod, HypCELoss)
    g = torch.Generator().manual_seed(13)
    e = torch.randn(5, 4, generator=g, dtype=D).requires_grad_()
    y = torch.tensor([0, 1, 2, 1, 0])
    p, a = mod.gyroplanes()
    close(p, expmap0(mod.offset_params, c=0.7))
    close(a, mod.normal_params * (1 - 0.7 * p.pow(2).sum(-1, keepdim=True)))
    close(mod(e, y), LF.hyp_ce_loss(e, y, p, a, curvature=0.7))
    assert torch.autograd.gradcheck(lambda z: mod(z, y), (e,), eps=1e-6, atol=1e-6)
    mod(e, y).backward()
    assert mod.offset_params.grad is not None and mod.normal_params.grad is not None
    assert set(mod.state_dict()) == {"offset_params", "normal_params"}
    with pytest.raises(ValueError, match="labels"):
        mod(e.detach(), torch.tensor([0, 1, 3, 1, 0]))
    with pytest.raises(ValueError, match="ref_embeddings"):
        mod(e.detach(), y, ref_embeddings=e.detach())
    s = losslab.spec("hyp_ce")
    assert s.arxiv == "2404.14406" and s.kind == "embeddings"
