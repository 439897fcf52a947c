"""ND loss: a loop oracle of the official formula (fp64), properties, the module's buffer."""

from __future__ import annotations

import io
import math

import pytest
import torch

import losslab
from losslab.functional import nd_loss


def data(n: int = 6, d: int = 4, k: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, d, generator=g, dtype=torch.float64).requires_grad_(True)
    t = torch.randn(n, d, generator=g, dtype=torch.float64) * 2
    mu = torch.randn(k, d, generator=g, dtype=torch.float64)
    y = torch.arange(n) % k
    return s, t, mu, y


def test_nd_loss_matches_loop_oracle() -> None:
    s, t, mu, y = data()
    want = []
    for si, ti, yi in zip(s.tolist(), t.tolist(), y.tolist()):
        c = mu[yi].tolist()
        cn = math.sqrt(sum(v * v for v in c))
        e = [v / cn for v in c]
        m = max(math.sqrt(sum(v * v for v in si)), math.sqrt(sum(v * v for v in ti)))
        want.append(1 - sum(a * b for a, b in zip(si, e)) / m)
    got = nd_loss(s, t, target=y, class_means=mu, reduction="none")
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64))
    m = losslab.create("nd_loss", class_means=mu)
    torch.testing.assert_close(m.double()(s, t, target=y), got.mean())


def test_nd_loss_properties() -> None:
    s, t, mu, y = data(seed=1)
    e = mu / mu.norm(dim=1, keepdim=True)
    # along the class direction with the teacher's norm or more: exactly 0
    big = e[y] * (t.norm(dim=1, keepdim=True) * 1.5)
    torch.testing.assert_close(nd_loss(big, t, target=y, class_means=mu, reduction="none"),
                               torch.zeros(6, dtype=torch.float64))
    # along it but shorter than the teacher: 1 - |s| / |t| (the norm term)
    short = e[y] * (t.norm(dim=1, keepdim=True) * 0.25)
    torch.testing.assert_close(nd_loss(short, t, target=y, class_means=mu, reduction="none"),
                               torch.full((6,), 0.75, dtype=torch.float64))
    # the class means' scale does not matter
    torch.testing.assert_close(nd_loss(s, t, target=y, class_means=mu * 7),
                               nd_loss(s, t, target=y, class_means=mu))
    # both features zero: 1 with zero gradient
    z = torch.zeros(2, 4, dtype=torch.float64, requires_grad=True)
    out = nd_loss(z, torch.zeros(2, 4, dtype=torch.float64), target=y[:2], class_means=mu)
    (g,) = torch.autograd.grad(out, z)
    assert float(out.detach()) == 1.0 and bool((g == 0).all())


def test_nd_loss_module_buffer_and_bad_inputs() -> None:
    s, t, mu, y = data(seed=2)
    m = losslab.create("nd_loss", class_means=mu)
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    buf.seek(0)
    m2 = losslab.create("nd_loss", class_means=torch.ones(3, 4))
    m2.load_state_dict(torch.load(buf))
    torch.testing.assert_close(m2(s, t, target=y), m(s, t, target=y))
    with pytest.raises(ValueError, match="target"):
        m(s, t)
    with pytest.raises(ValueError, match="target"):
        nd_loss(s, t, target=torch.full_like(y, 3), class_means=mu)
    with pytest.raises(ValueError, match="class_means"):
        nd_loss(s, t, target=y, class_means=mu[:, :3])
    with pytest.raises(ValueError, match="class_means"):
        nd_loss(s, t, target=y, class_means=torch.zeros(3, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="teacher_features"):
        nd_loss(s, t[:, :3], target=y, class_means=mu)
