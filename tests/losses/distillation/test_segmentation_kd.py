"""MGD terms: loop oracles of the official formulas (fp64), properties, bad inputs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import losslab
from losslab.functional import mgd_semantic_loss
from losslab.losses.distillation import mgd_content_loss


def maps(n: int = 2, c: int = 3, h: int = 4, w: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, c, h, w, generator=g, dtype=torch.float64).requires_grad_(True)
    t = torch.randn(n, c, h, w, generator=g, dtype=torch.float64)
    return s, t


def test_mgd_semantic_matches_loop_oracle() -> None:
    s, t = maps()
    S, T = s.tolist(), t.tolist()
    want = []
    for i in range(2):
        total = 0.0
        for c in range(3):
            ms = sum(v for row in S[i][c] for v in row) / 20
            mt = sum(v for row in T[i][c] for v in row) / 20
            total += abs(ms - mt)
        want.append(total)
    got = mgd_semantic_loss(s, t, reduction="none")
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64))
    torch.testing.assert_close(losslab.create("mgd_semantic", reduction="sum")(s, t),
                               torch.tensor(sum(want), dtype=torch.float64))
    # the official form: sum |adaptive_avg_pool2d(s, 1) - adaptive_avg_pool2d(t, 1)|
    official = (F.adaptive_avg_pool2d(s, (1, 1)) - F.adaptive_avg_pool2d(t, (1, 1))).abs().sum()
    torch.testing.assert_close(mgd_semantic_loss(s, t, reduction="sum"), official)


def test_mgd_semantic_properties() -> None:
    s, t = maps(seed=1)
    # only the spatial means matter: permuting pixels changes nothing
    perm = torch.randperm(20, generator=torch.Generator().manual_seed(0))
    sp = s.detach().flatten(2)[:, :, perm].reshape(s.shape)
    torch.testing.assert_close(mgd_semantic_loss(sp, t), mgd_semantic_loss(s, t))
    assert float(mgd_semantic_loss(s, s.detach().clone()).detach()) == 0.0
    with pytest.raises(ValueError, match="teacher_logits"):
        mgd_semantic_loss(s, t[:, :2])
    with pytest.raises(ValueError, match="target"):
        mgd_semantic_loss(s, t, target=torch.zeros(2, dtype=torch.long))


def test_mgd_content_matches_loop_oracle() -> None:
    g = torch.Generator().manual_seed(2)
    fs = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64).requires_grad_(True)
    ft = torch.randn(2, 5, 4, 4, generator=g, dtype=torch.float64)  # different width

    def regions(f):  # 2 x 2 grid of 2 x 2 blocks on a 4 x 4 map
        out = []
        for i in range(len(f)):
            rows = []
            for bi in range(2):
                for bj in range(2):
                    rows.append([sum(f[i][c][2 * bi + a][2 * bj + b] for a in range(2)
                                     for b in range(2)) / 4 for c in range(len(f[i]))])
            out.append(rows)
        return out

    def cos(u, v):
        return sum(a * b for a, b in zip(u, v)) / (math.sqrt(sum(a * a for a in u)) *
                                                   math.sqrt(sum(b * b for b in v)))

    qs, qt = regions(fs.tolist()), regions(ft.tolist())
    total = 0.0
    for i in range(2):
        for m in range(4):
            for n in range(4):
                total += (cos(qs[i][m], qs[i][n]) - cos(qt[i][m], qt[i][n])) ** 2
    want = total / (2 * 16)
    got = mgd_content_loss(fs, ft, grid=2)
    assert float(got.detach()) == pytest.approx(want, rel=1e-12)
    (gr,) = torch.autograd.grad(got, fs)
    assert torch.isfinite(gr).all()
    # positive rescaling of the features (per map) changes nothing; identical maps give 0
    torch.testing.assert_close(mgd_content_loss(fs * 3.0, ft * 0.5, grid=2), got)
    assert float(mgd_content_loss(fs, fs.detach() * 2, grid=2).detach()) == pytest.approx(0.0,
                                                                                           abs=1e-15)


def test_mgd_content_zero_regions_and_bad_inputs() -> None:
    fs = torch.zeros(1, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    ft = torch.randn(1, 3, 4, 4, dtype=torch.float64)
    out = mgd_content_loss(fs, ft, grid=2)
    (g,) = torch.autograd.grad(out, fs)
    assert torch.isfinite(out) and torch.isfinite(g).all()
    with pytest.raises(ValueError, match="teacher_features"):
        mgd_content_loss(fs, ft[:, :, :, :2][:0])
    with pytest.raises(ValueError, match="student_features"):
        mgd_content_loss(fs[0], ft[0])
    with pytest.raises(ValueError, match="grid"):
        mgd_content_loss(fs, ft, grid=0)
