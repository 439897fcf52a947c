"""UNPG: the official computation restated (heads, box-and-whisker, concatenated logits),
an explicit-loop oracle, and the reduction to ArcFace / CosFace without negative pairs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import losslab
from losslab.losses.metric_learning.proxy import arcface_loss, cosface_loss
from losslab.losses.metric_learning.unpg import box_and_whisker, negative_pair_cosines, unpg_loss


def _inputs(seed: int = 0, n: int = 10, c: int = 4, d: int = 6):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    w = torch.randn(c, d, generator=g, dtype=torch.float64)
    y = torch.randint(0, c, (n,), generator=g)
    return x, y, w


def _official_whisker(sims: torch.Tensor, wisk: float) -> torch.Tensor:
    """models/build.py box_and_whisker_algorithm, restated."""
    n = sims.size(0)
    sx = torch.sort(sims).values
    lo, hi = sx[int(0.25 * n)], sx[int(0.75 * n)]
    iqr = hi - lo
    return sx[(sx <= hi + wisk * iqr) & (sx >= lo - wisk * iqr)]


def test_box_and_whisker_matches_official_and_drops_outliers() -> None:
    g = torch.Generator().manual_seed(1)
    v = torch.cat([torch.randn(40, generator=g, dtype=torch.float64) * 0.1,
                   torch.tensor([3.0, -3.0], dtype=torch.float64)])
    torch.testing.assert_close(box_and_whisker(v, 1.5), _official_whisker(v, 1.5))
    kept = box_and_whisker(v, 1.5)
    assert kept.abs().max() < 1.0 and kept.numel() >= 36  # both outliers out, the bulk kept
    assert box_and_whisker(v[:0], 1.5).numel() == 0


def test_negative_pairs_are_the_upper_triangle_of_different_labels() -> None:
    x, y, _ = _inputs(2, n=5)
    got = negative_pair_cosines(x, y)
    want = [F.cosine_similarity(x[a], x[b], dim=0) for a in range(5) for b in range(a + 1, 5)
            if y[a] != y[b]]
    torch.testing.assert_close(got, torch.stack(want))


@pytest.mark.parametrize("head", ["arc", "cos"])
def test_official_computation(head: str) -> None:
    """Head cosines with the margin, concatenated with the filtered negative-pair cosines of the
    batch for every row, scaled, cross-entropy (models/head.py UNPG.forward)."""
    x, y, w = _inputs(3)
    cosine = F.linear(F.normalize(x), F.normalize(w))
    onehot = torch.zeros_like(cosine).scatter_(1, y.view(-1, 1), 1.0)
    if head == "cos":
        head_logits = cosine - onehot * 0.5
    else:  # the official ArcFace head (acos + m, cos): equal to ours while theta + m <= pi
        assert (torch.acos(cosine.gather(1, y.view(-1, 1))) + 0.5 <= math.pi).all()
        head_logits = torch.cos(torch.acos(cosine) + onehot * 0.5)
    sn = negative_pair_cosines(x, y)
    aux = torch.ones(x.shape[0], 1, dtype=x.dtype) * _official_whisker(sn, 1.5)
    want = F.cross_entropy(64.0 * torch.cat([head_logits, aux], dim=1), y)
    torch.testing.assert_close(unpg_loss(x, y, w, margin_type=head), want)


def test_oracle_loops() -> None:
    x, y, w = _inputs(4, n=7, c=3, d=4)
    n, s, m = x.shape[0], 64.0, 0.35
    pairs = []
    for a in range(n):
        for b in range(a + 1, n):
            if y[a] != y[b]:
                pairs.append(float(x[a] @ x[b]) / (float(x[a].norm()) * float(x[b].norm())))
    ps = sorted(pairs)
    q1, q3 = ps[int(0.25 * len(ps))], ps[int(0.75 * len(ps))]
    kept = [p for p in ps if q1 - 1.5 * (q3 - q1) <= p <= q3 + 1.5 * (q3 - q1)]
    total = 0.0
    for i in range(n):
        terms = []
        for c in range(w.shape[0]):
            cos = float(x[i] @ w[c]) / (float(x[i].norm()) * float(w[c].norm()))
            terms.append(s * (cos - m) if c == int(y[i]) else s * cos)
        target = terms[int(y[i])]
        terms += [s * p for p in kept]
        top = max(terms)
        total += top + math.log(sum(math.exp(t - top) for t in terms)) - target
    got = unpg_loss(x, y, w, margin_type="cos", margin=m)
    assert got.item() == pytest.approx(total / n, rel=1e-10)


def test_one_class_batch_is_arcface_or_cosface() -> None:
    x, _, w = _inputs(5)
    y = torch.full((x.shape[0],), 2)
    torch.testing.assert_close(unpg_loss(x, y, w), arcface_loss(x, y, w, margin=0.5))
    torch.testing.assert_close(unpg_loss(x, y, w, margin_type="cos", margin=0.35),
                               cosface_loss(x, y, w, margin=0.35))


def test_extra_negatives_raise_the_loss_and_reach_the_pairs() -> None:
    x, y, w = _inputs(6)
    assert unpg_loss(x, y, w) > arcface_loss(x, y, w, margin=0.5)
    x.requires_grad_()
    unpg_loss(x, y, w).backward()
    g_unpg = x.grad.clone()  # type: ignore[union-attr]
    x.grad = None
    arcface_loss(x, y, w, margin=0.5).backward()
    assert not torch.allclose(g_unpg, x.grad)  # type: ignore[arg-type]


def test_module() -> None:
    m = losslab.create("unpg", num_classes=4, embedding_dim=6).double()
    x, y, _ = _inputs(7)
    proxies = m.proxies
    assert isinstance(proxies, torch.Tensor)
    torch.testing.assert_close(m(x, y), unpg_loss(x, y, proxies))
    with pytest.raises(ValueError, match="margin_type"):
        unpg_loss(x, y, proxies, margin_type="sphere")
