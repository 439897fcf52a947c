"""BPKD: a loop oracle (edge band by explicit neighbourhood search, pixel and channel KLs
written out) in float64, properties of the two terms, bad inputs."""

from __future__ import annotations

import math

import pytest
import torch

import losslab
from losslab.functional import bpkd_loss
from losslab.losses.distillation import bpkd_edge_mask


def maps(n: int = 2, c: int = 3, h: int = 5, w: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, c, h, w, generator=g, dtype=torch.float64).requires_grad_(True)
    t = torch.randn(n, c, h, w, generator=g, dtype=torch.float64) * 1.5
    y = torch.zeros(n, h, w, dtype=torch.long)
    y[:, :, w // 2:] = 1  # a vertical boundary
    y[:, h - 2:, :2] = 2  # a corner block
    y[1, 0, 0] = 255  # an unlabelled pixel
    return s, t, y


def oracle_edges(y, r, ignore=255):
    n, h, w = y.shape
    out = [[[False] * w for _ in range(h)] for _ in range(n)]
    for i in range(n):
        for a in range(h):
            for b in range(w):
                lab = int(y[i, a, b])
                if lab == ignore:
                    continue
                for da in range(-r, r + 1):
                    for db in range(-r, r + 1):
                        aa, bb = a + da, b + db
                        if 0 <= aa < h and 0 <= bb < w:
                            other = int(y[i, aa, bb])
                            if other != ignore and other != lab:
                                out[i][a][b] = True
    return out


def oracle(s, t, y, *, r, te, tb, le, lb):
    n, c, h, w = s.shape
    S, T = s.tolist(), t.tolist()
    edges = oracle_edges(y, r)
    per = []
    for i in range(n):
        # edge: mean over edge pixels of te^2 KL(softmax(t/te) || softmax(s/te))
        kls = []
        body = []
        for a in range(h):
            for b in range(w):
                if int(y[i, a, b]) == 255:
                    continue
                if edges[i][a][b]:
                    zt = [T[i][k][a][b] / te for k in range(c)]
                    zs = [S[i][k][a][b] / te for k in range(c)]
                    lt = math.log(sum(math.exp(z) for z in zt))
                    ls = math.log(sum(math.exp(z) for z in zs))
                    kls.append(te**2 * sum(math.exp(zt[k] - lt) * ((zt[k] - lt) - (zs[k] - ls))
                                           for k in range(c)))
                else:
                    body.append((a, b))
        e = sum(kls) / len(kls) if kls else 0.0
        # body: per channel, KL of the spatial softmax over the body pixels
        bt = 0.0
        if body:
            for k in range(c):
                zt = [T[i][k][a][b] / tb for a, b in body]
                zs = [S[i][k][a][b] / tb for a, b in body]
                lt = math.log(sum(math.exp(z) for z in zt))
                ls = math.log(sum(math.exp(z) for z in zs))
                bt += sum(math.exp(zt[j] - lt) * ((zt[j] - lt) - (zs[j] - ls))
                          for j in range(len(body)))
            bt *= tb**2 / c
        per.append(le * e + lb * bt)
    return torch.tensor(per, dtype=torch.float64)


@pytest.mark.parametrize("r", [1, 2])
def test_edge_mask_matches_neighbourhood_search(r: int) -> None:
    _, _, y = maps()
    got = bpkd_edge_mask(y, edge_width=r)
    assert got.tolist() == oracle_edges(y, r)


@pytest.mark.parametrize("kw", [dict(r=2, te=1.0, tb=4.0, le=1.0, lb=1.0),
                                dict(r=1, te=2.0, tb=1.5, le=0.7, lb=2.0)])
def test_matches_loop_oracle(kw: dict) -> None:
    s, t, y = maps()
    got = bpkd_loss(s, t, target=y, edge_width=kw["r"], edge_temperature=kw["te"],
                    body_temperature=kw["tb"], edge_weight=kw["le"], body_weight=kw["lb"],
                    reduction="none")
    want = oracle(s, t, y, **kw)
    torch.testing.assert_close(got, want)
    mod = losslab.create("bpkd", edge_width=kw["r"], edge_temperature=kw["te"],
                         body_temperature=kw["tb"], edge_weight=kw["le"],
                         body_weight=kw["lb"])
    torch.testing.assert_close(mod(s, t, target=y), want.mean())


def test_properties() -> None:
    s, t, y = maps(seed=1)
    # the student equal to the teacher: both terms vanish
    assert float(bpkd_loss(t.clone(), t, target=y)) == pytest.approx(0.0, abs=1e-12)
    # a single-class map has no edge: the loss is the body term over every valid pixel, and
    # the body term is invariant to adding a per-channel constant (spatial softmax)
    flat = torch.zeros_like(y)
    shift = torch.randn(1, 3, 1, 1, dtype=torch.float64)
    a = bpkd_loss(s, t, target=flat, edge_weight=5.0)
    b = bpkd_loss(s + shift, t, target=flat, edge_weight=5.0)
    torch.testing.assert_close(a, b)
    # the edge term is invariant to adding a per-pixel constant (class softmax)
    pix = torch.randn(2, 1, 5, 6, dtype=torch.float64)
    e1 = bpkd_loss(s, t, target=y, body_weight=0.0)
    e2 = bpkd_loss(s + pix, t, target=y, body_weight=0.0)
    torch.testing.assert_close(e1, e2)
    # the gradient of the edge term reaches only the edge pixels
    g = torch.autograd.grad(e1, s)[0]
    edge = bpkd_edge_mask(y, edge_width=2)
    assert torch.all(g.abs().sum(1)[~edge] == 0) and bool((g.abs().sum(1)[edge] > 0).any())


def test_degenerate_inputs_are_finite() -> None:
    s, t, y = maps()
    # every pixel unlabelled: no edge, no body, zero loss with zero gradient
    out = bpkd_loss(s, t, target=torch.full_like(y, 255))
    gs = torch.autograd.grad(out, s)[0]
    assert float(out.detach()) == 0.0 and torch.all(gs == 0)
    # a map that is all edge (width >= the image): the body term is 0, finite
    out = bpkd_loss(s, t, target=y, edge_width=10, edge_weight=0.0)
    assert float(out.detach()) == 0.0
    # 1-D and 3-D maps, and bf16
    s1 = torch.randn(2, 3, 7, dtype=torch.float64)
    y1 = torch.tensor([[0, 0, 0, 1, 1, 1, 1], [2, 2, 0, 0, 0, 0, 0]])
    assert torch.isfinite(bpkd_loss(s1, s1.flip(2), target=y1))
    s3 = torch.randn(1, 2, 3, 3, 3, dtype=torch.float64)
    y3 = (torch.arange(27).reshape(1, 3, 3, 3) % 2)
    assert torch.isfinite(bpkd_loss(s3, -s3, target=y3))
    out = bpkd_loss(s.detach().bfloat16(), t.bfloat16(), target=y)
    assert out.dtype == torch.float32 and torch.isfinite(out)


def test_bad_input_raises_value_error() -> None:
    s, t, y = maps()
    with pytest.raises(ValueError, match="target must have shape"):
        bpkd_loss(s, t, target=y[:, :3])
    with pytest.raises(ValueError, match="target must be an integer"):
        bpkd_loss(s, t, target=y.double())
    with pytest.raises(ValueError, match="outside"):
        bpkd_loss(s, t, target=y + 5)
    with pytest.raises(ValueError, match="teacher_logits"):
        bpkd_loss(s, t[:, :2], target=y)
    with pytest.raises(ValueError, match="edge_width"):
        bpkd_loss(s, t, target=y, edge_width=0)
    with pytest.raises(ValueError, match="body_temperature"):
        bpkd_loss(s, t, target=y, body_temperature=0.0)
