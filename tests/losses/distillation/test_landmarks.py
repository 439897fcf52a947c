"""landmark_kd_loss: a loop oracle of the official code (per coordinate, fp64), properties."""

from __future__ import annotations

import math

import pytest
import torch

from losslab.losses.distillation import landmark_kd_loss


def sign(v: float) -> float:
    return (v > 0) - (v < 0)


def oracle(x, y, tough, tol, a=(1.9, -0.45, 1.8, -0.4), w=(1.0, 1.0, 1.0)):
    """The official kd_loss written out coordinate by coordinate."""
    main = tou = tl = 0.0
    n = len(x)
    for xi, yi, ti, li in zip(x, y, tough, tol):
        s = sign(xi - yi)
        rt, bt = yi + s * abs(ti - yi), yi + s * abs(ti - yi) * 0.15
        rl, bl = yi + s * abs(li - yi), yi + s * abs(li - yi) * 0.15
        mt = (a[0] if sign(xi - rt) * sign(rt - yi) > 0 else 0.0) + (
            a[1] if sign(rt - xi) * sign(xi - bt) >= 0 else 0.0)
        ml = (a[2] if sign(xi - rl) * sign(rl - yi) > 0 else 0.0) + (
            a[3] if sign(rl - xi) * sign(xi - bl) >= 0 else 0.0)
        d = abs(yi - li)
        main += 3 * abs(yi - xi) if abs(yi - xi) <= d else (yi - xi) ** 2 + 3 * d - d * d
        tou += mt * abs(rt - xi)
        tl += ml * abs(rl - xi)
    return w[0] * main / n + w[1] * tou / n + w[2] * tl / n


def data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(6, 8, generator=g, dtype=torch.float64) * 0.3
    x = (y + torch.randn(6, 8, generator=g, dtype=torch.float64) * 0.2).requires_grad_(True)
    tough = y + torch.randn(6, 8, generator=g, dtype=torch.float64) * 0.1
    tol = y + torch.randn(6, 8, generator=g, dtype=torch.float64) * 0.15
    return x, y, tough, tol


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_landmark_kd_matches_loop_oracle(seed: int) -> None:
    x, y, tough, tol = data(seed)
    got = landmark_kd_loss(x, y, tough, tol, main_weight=0.5, tough_weight=2.0,
                           tolerant_weight=0.7)
    want = oracle(x.flatten().tolist(), y.flatten().tolist(), tough.flatten().tolist(),
                  tol.flatten().tolist(), w=(0.5, 2.0, 0.7))
    assert float(got.total.detach()) == pytest.approx(want, rel=1e-12)
    torch.testing.assert_close(got.total, got.main + got.tough_assist + got.tolerant_assist)
    (g,) = torch.autograd.grad(got.total, x)
    assert torch.isfinite(g).all()


def test_landmark_kd_properties_and_bad_inputs() -> None:
    x, y, tough, tol = data(3)
    # the main term is continuous where |y - x| crosses the tolerant teacher's distance
    d = 0.2
    yy = torch.zeros(1, 2, dtype=torch.float64)
    tl = torch.full((1, 2), d, dtype=torch.float64)
    lo = landmark_kd_loss(yy + d - 1e-9, yy, yy, tl).main
    hi = landmark_kd_loss(yy + d + 1e-9, yy, yy, tl).main
    assert float(hi - lo) == pytest.approx(0.0, abs=1e-7)
    # a perfect student with perfect teachers: zero loss
    z = landmark_kd_loss(y, y, y, y)
    assert float(z.total) == 0.0
    assert not math.isnan(float(landmark_kd_loss(x.float(), y.float(), tough.float(),
                                                 tol.float()).total.detach()))
    with pytest.raises(ValueError, match="tough"):
        landmark_kd_loss(x, y, tough[:, :-1], tol)
    with pytest.raises(ValueError, match="near"):
        landmark_kd_loss(x, y, tough, tol, near=2.0)
    with pytest.raises(ValueError, match="pred"):
        landmark_kd_loss(x[:0], y[:0], tough[:0], tol[:0])
