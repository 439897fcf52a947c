"""Boundary loss (arXiv 1812.07032), Hausdorff-DT loss (arXiv 1904.10030), BASNet hybrid loss
(arXiv 2101.04704): brute-force oracles in fp64, monai and kornia peers, the papers' claims."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from losslab.functional import basnet_hybrid_loss, boundary_loss, hausdorff_dt_loss
from losslab.losses.segmentation.boundary import gaussian_ssim_map
from tests.losses.segmentation.common import assert_compiled_equals_eager

pytest.importorskip("scipy")


def batch(seed: int = 0, c: int = 3):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, c, 6, 7, generator=g, dtype=torch.float64)
    target = torch.zeros(2, 6, 7, dtype=torch.long)
    target[0, 1:4, 1:5] = 1
    target[0, 4:6, 5:7] = c - 1
    target[1, 2:6, 0:3] = c - 1
    return logits.requires_grad_(True), target


def dist(q, others) -> float:
    return min(math.dist(q, o) for o in others) if others else 0.0


def pixel_sets(mask):
    h, w = mask.shape
    pix = list(itertools.product(range(h), range(w)))
    inside = [q for q in pix if bool(mask[q])]
    outside = [q for q in pix if not bool(mask[q])]
    return pix, inside, outside


def test_boundary_loss_matches_brute_force_distances() -> None:
    logits, target = batch()
    target[0, 0, 0] = -100
    p = torch.softmax(logits.detach(), 1)
    want = []
    for n in range(2):
        total, count = 0.0, 0
        for k in (1, 2):
            mask = (target[n] == k)
            pix, inside, outside = pixel_sets(mask)
            for q in pix:
                if int(target[n][q]) == -100:
                    continue
                if not inside or not outside:
                    phi = 0.0
                elif bool(mask[q]):
                    phi = -(dist(q, outside) - 1)
                else:
                    phi = dist(q, inside)
                total += phi * float(p[n, k][q])
                count += 1
        want.append(total / count)
    got = boundary_loss(logits, target, reduction="none")
    assert got.tolist() == pytest.approx(want, rel=1e-10)


def test_boundary_loss_is_minimised_by_the_target_region() -> None:
    """L_B(s) = sum phi s is linear in s; over 0/1 predictions its minimum is the region where
    phi <= 0, the target itself (paper, section 2)."""
    _, target = batch()
    fg = (target > 0)
    perfect = torch.stack([(~fg).double(), (target == 1).double(), (target == 2).double()], 1)
    best = float(boundary_loss(perfect * 80 - 40, target))
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        flip = torch.rand(target.shape, generator=g) < 0.15
        other = torch.where(flip, torch.randint(0, 3, target.shape, generator=g), target)
        pred = torch.nn.functional.one_hot(other, 3).permute(0, 3, 1, 2).double() * 80 - 40
        assert float(boundary_loss(pred, target)) >= best - 1e-12


def test_hausdorff_dt_matches_brute_force_and_monai() -> None:
    logits, target = batch()
    p = torch.softmax(logits.detach(), 1)
    want = []
    for n in range(2):
        total = 0.0
        for k in (1, 2):
            def udist(mask):
                pix, inside, outside = pixel_sets(mask)
                if not inside or not outside:
                    return {q: 0.0 for q in pix}
                return {q: dist(q, outside if bool(mask[q]) else inside) for q in pix}
            dq = udist(target[n] == k)
            dp = udist(p[n, k] > 0.5)
            for q in dq:
                err = (float(p[n, k][q]) - float(target[n][q] == k)) ** 2
                total += err * (dp[q] ** 2 + dq[q] ** 2)
        want.append(total / (2 * 42))
    got = hausdorff_dt_loss(logits, target, reduction="none")
    assert got.tolist() == pytest.approx(want, rel=1e-10)
    monai = pytest.importorskip("monai.losses")
    ref = monai.HausdorffDTLoss(softmax=True, to_onehot_y=True)(logits, target.unsqueeze(1))
    torch.testing.assert_close(hausdorff_dt_loss(logits, target), ref, rtol=1e-8, atol=1e-10)
    zb, tb = logits[:, 1:2], (target == 1).long()
    ref = monai.HausdorffDTLoss(sigmoid=True)(zb, tb.unsqueeze(1).double())
    torch.testing.assert_close(hausdorff_dt_loss(zb, tb), ref, rtol=1e-8, atol=1e-10)


def test_hausdorff_dt_soft_labels_vanish_at_the_label() -> None:
    g = torch.Generator().manual_seed(1)
    y = torch.rand(2, 1, 6, 7, generator=g, dtype=torch.float64) * 0.9 + 0.05
    assert float(hausdorff_dt_loss(torch.logit(y), y)) == pytest.approx(0.0, abs=1e-20)
    assert float(hausdorff_dt_loss(torch.logit(y) + 0.5, y)) > 0.0


def ssim_oracle(x, y, window: int = 11, sigma: float = 1.5):
    """SSIM map by explicit loops over the (zero-padded) Gaussian window."""
    h, w = len(x), len(x[0])
    r = window // 2
    gk = [math.exp(-((i - r) ** 2) / (2 * sigma**2)) for i in range(window)]
    s = sum(gk)
    gk = [v / s for v in gk]
    out = [[0.0] * w for _ in range(h)]
    for i, j in itertools.product(range(h), range(w)):
        mx = my = sxx = syy = sxy = 0.0
        for a, b in itertools.product(range(window), range(window)):
            u, v = i + a - r, j + b - r
            if 0 <= u < h and 0 <= v < w:
                wt = gk[a] * gk[b]
                mx += wt * x[u][v]
                my += wt * y[u][v]
                sxx += wt * x[u][v] ** 2
                syy += wt * y[u][v] ** 2
                sxy += wt * x[u][v] * y[u][v]
        vx, vy, cxy = sxx - mx * mx, syy - my * my, sxy - mx * my
        c1, c2 = 0.01**2, 0.03**2
        out[i][j] = ((2 * mx * my + c1) * (2 * cxy + c2)
                     / ((mx * mx + my * my + c1) * (vx + vy + c2)))
    return out


def test_basnet_hybrid_binary_matches_loop_oracle() -> None:
    logits, target = batch()
    zb, tb = logits[:, 1:2], (target > 0).long()
    got = basnet_hybrid_loss(zb, tb, reduction="none")
    for n in range(2):
        p = torch.sigmoid(zb.detach()[n, 0]).tolist()
        y = tb[n].double().tolist()
        flat = [(a, b) for ra, rb in zip(p, y) for a, b in zip(ra, rb)]
        bce = -sum(b * math.log(a) + (1 - b) * math.log(1 - a) for a, b in flat) / len(flat)
        ssim = ssim_oracle(p, y)
        ssim_l = 1 - sum(map(sum, ssim)) / len(flat)
        iou = 1 - sum(a * b for a, b in flat) / sum(a + b - a * b for a, b in flat)
        assert float(got[n]) == pytest.approx(bce + ssim_l + iou, rel=1e-10)


def test_ssim_interior_matches_kornia_valid() -> None:
    kornia = pytest.importorskip("kornia")
    g = torch.Generator().manual_seed(2)
    x = torch.rand(2, 1, 16, 17, generator=g, dtype=torch.float64)
    y = torch.rand(2, 1, 16, 17, generator=g, dtype=torch.float64)
    ours = gaussian_ssim_map(x, y, window_size=5, sigma=1.5)[..., 2:-2, 2:-2]
    ref = kornia.metrics.ssim(x, y, 5, padding="valid")
    torch.testing.assert_close(ours, ref, rtol=1e-7, atol=1e-9)


def test_basnet_hybrid_soft_labels_and_multiclass() -> None:
    """Soft foreground probabilities: BCE and SSIM are minimised at p = y (their sum has zero
    gradient there), the IoU term is not."""
    g = torch.Generator().manual_seed(3)
    y = torch.rand(2, 1, 12, 12, generator=g, dtype=torch.float64) * 0.8 + 0.1
    at = torch.logit(y).requires_grad_(True)
    (grad,) = torch.autograd.grad(basnet_hybrid_loss(at, y), at)
    p = torch.sigmoid(at)
    iou = (1 - (p * y).sum((1, 2, 3)) / (p + y - p * y).sum((1, 2, 3))).mean()
    (grad_iou,) = torch.autograd.grad(iou, at)
    torch.testing.assert_close(grad, grad_iou, rtol=1e-6, atol=1e-10)
    assert float(grad_iou.abs().max()) > 1e-4
    logits, target = batch()
    out = basnet_hybrid_loss(logits, target)
    (grad,) = torch.autograd.grad(out, logits)
    assert torch.isfinite(grad).all()
    with pytest.raises(ValueError, match="2-D"):
        basnet_hybrid_loss(torch.randn(1, 1, 3, 4, 5), torch.zeros(1, 3, 4, 5, dtype=torch.long))


def test_gradcheck_and_all_ignored() -> None:
    logits, target = batch()
    for fn in (boundary_loss, hausdorff_dt_loss, basnet_hybrid_loss):
        assert torch.autograd.gradcheck(lambda x, f=fn: f(x, target), (logits,), fast_mode=True)
        out = fn(logits, torch.full_like(target, -100))
        (g,) = torch.autograd.grad(out, logits)
        assert float(out) == 0.0 and float(g.abs().sum()) == 0.0
    with pytest.raises(ValueError, match="soft"):
        boundary_loss(logits, torch.softmax(logits.detach(), 1))
    with pytest.raises(ValueError, match="alpha"):
        hausdorff_dt_loss(logits, target, alpha=0.0)


def _compile_cases():
    logits, target = batch(4)  # image 1 has no class 1: a map without boundary
    target[0, 0, :3] = -100
    target[1, 5, 6] = -100
    vol = torch.randn(2, 1, 4, 5, 6, generator=torch.Generator().manual_seed(5),
                      dtype=torch.float64) * 2
    vt = torch.zeros(2, 4, 5, 6, dtype=torch.long)
    vt[0, 1:3, 1:4, 2:5] = 1  # image 1: no foreground
    vt[0, 0, 0, :2] = -100
    return [
        pytest.param(logits, target, {"include_background": True, "reduction": "none"},
                     id="softmax-ignored-background"),
        pytest.param(vol, vt, {"reduction": "sum"}, id="sigmoid-3d"),
    ]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["boundary", "hausdorff_dt"])
@pytest.mark.parametrize(("logits", "target", "kw"), _compile_cases())
def test_compiled_equals_eager(name: str, logits: torch.Tensor, target: torch.Tensor,
                               kw: dict) -> None:
    """torch.compile(fullgraph=True): the distance maps are the custom operators
    (losslab::signed_distance, losslab::distance_to_boundary), same value and gradient."""
    assert_compiled_equals_eager(name, logits, target, **kw)
