"""GroCo and its relaxed sorting network: loop oracles from the formulas (fp64), diffsort's
DiffSortNet and the official loss restated on it, and the ordering properties."""

from __future__ import annotations

import math

import pytest
import torch

import losslab
from losslab.functional import groco_loss
from losslab.losses.contrastive_ssl.ordering import soft_sort
from tests.losses.contrastive_ssl.common import pairs


def oracle_soft_sort(x: list[float], steepness: float) -> tuple[list[float], list[list[float]]]:
    """Odd-even transposition network with Cauchy-relaxed swaps, one comparison at a time."""
    n = len(x)
    x = list(x)
    p = [[1.0 if r == c else 0.0 for c in range(n)] for r in range(n)]
    for layer in range(n):
        for i in range(layer % 2, n - 1, 2):
            j = i + 1
            alpha = math.atan(steepness * (x[j] - x[i])) / math.pi + 0.5
            x[i], x[j] = alpha * x[i] + (1 - alpha) * x[j], (1 - alpha) * x[i] + alpha * x[j]
            for r in range(n):
                pi, pj = p[r][i], p[r][j]
                p[r][i], p[r][j] = alpha * pi + (1 - alpha) * pj, (1 - alpha) * pi + alpha * pj
    return x, p


def cos(u: list[float], v: list[float]) -> float:
    nu = math.sqrt(sum(t * t for t in u))
    nv = math.sqrt(sum(t * t for t in v))
    return sum(p * q for p, q in zip(u, v)) / (nu * nv)


def bce(q: float, t: float) -> float:
    q = min(max(q, 0.0), 1.0)
    lq = max(math.log(q), -100.0) if q > 0 else -100.0
    l1q = max(math.log(1 - q), -100.0) if q < 1 else -100.0
    return -(t * lq + (1 - t) * l1q)


def groco_oracle(a: torch.Tensor, b: torch.Tensor, k: int, steepness: float) -> list[float]:
    va, vb = a.detach().tolist(), b.detach().tolist()
    n = len(va)
    k = min(k, n - 1)

    def anchor_term(view, other, i):
        negs = sorted((cos(view[i], view[j]) for j in range(n) if j != i), reverse=True)[:k]
        x = [*sorted(negs), cos(view[i], other[i])]
        _, p = oracle_soft_sort(x, steepness)
        terms = []
        for r in range(k + 1):
            q = sum(p[r][c] for c in range(k))
            terms.append(bce(q, 1.0 if r < k else 0.0))
        return sum(terms) / (k + 1)

    return [(anchor_term(va, vb, i) + anchor_term(vb, va, i)) / 2 for i in range(n)]


def test_soft_sort_matches_loop_oracle() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 7, generator=g, dtype=torch.float64)
    got_x, got_p = soft_sort(x, steepness=2.5)
    for row in range(4):
        want_x, want_p = oracle_soft_sort(x[row].tolist(), 2.5)
        torch.testing.assert_close(got_x[row], torch.tensor(want_x, dtype=torch.float64))
        torch.testing.assert_close(got_p[row], torch.tensor(want_p, dtype=torch.float64))
    # doubly stochastic, and the sorted values are x @ P
    torch.testing.assert_close(got_p.sum(1), torch.ones(4, 7, dtype=torch.float64))
    torch.testing.assert_close(got_p.sum(2), torch.ones(4, 7, dtype=torch.float64))
    torch.testing.assert_close(torch.einsum("br,brc->bc", x, got_p), got_x)


def test_soft_sort_is_exact_sort_when_steep() -> None:
    x = torch.tensor([[0.3, -1.0, 2.0, 0.1, 0.7]], dtype=torch.float64)
    sorted_x, p = soft_sort(x, steepness=1e9)
    torch.testing.assert_close(sorted_x, x.sort(1).values)
    want = torch.zeros(1, 5, 5, dtype=torch.float64)
    for c, r in enumerate(x.argsort(1)[0].tolist()):
        want[0, r, c] = 1.0
    torch.testing.assert_close(p, want, atol=1e-8, rtol=0)


def test_soft_sort_matches_diffsort() -> None:
    diffsort = pytest.importorskip("diffsort")
    g = torch.Generator().manual_seed(5)
    for n in (5, 6):
        x = torch.randn(3, n, generator=g, dtype=torch.float64, requires_grad=True)
        net = diffsort.DiffSortNet("odd_even", n, steepness=1.7, distribution="cauchy")
        want_x, want_p = net(x)
        got_x, got_p = soft_sort(x, steepness=1.7)
        torch.testing.assert_close(got_x, want_x)
        torch.testing.assert_close(got_p, want_p)
        w = torch.randn(3, n, n, generator=g, dtype=torch.float64)
        torch.testing.assert_close(torch.autograd.grad((got_p * w).sum(), x)[0],
                                   torch.autograd.grad((want_p * w).sum(), x)[0])


def test_groco_matches_loop_oracle() -> None:
    a, b = pairs(n=7, d=5)
    for k, s in ((3, 1.0), (10, 4.0)):
        got = groco_loss(a, b, num_negatives=k, steepness=s, reduction="none")
        torch.testing.assert_close(got, torch.tensor(groco_oracle(a, b, k, s),
                                                     dtype=torch.float64))
    mean = groco_loss(a, b, num_negatives=3).detach()
    assert float(mean) == pytest.approx(sum(groco_oracle(a, b, 3, 1.0)) / 7, rel=1e-12)


def official_restated(a: torch.Tensor, b: torch.Tensor, k: int, steepness: float):
    """The official ``GroCo.compute_loss`` (two views, one GPU), restated on diffsort: both
    BCE terms (positive and negative blocks) averaged, then averaged over the two anchors."""
    diffsort = pytest.importorskip("diffsort")
    sorter = diffsort.DiffSortNet("odd_even", k + 1, steepness=steepness,
                                  interpolation_type="cauchy", art_lambda=0.25)
    total = 0
    for anchor, other in ((a, b), (b, a)):
        an = torch.nn.functional.normalize(anchor, dim=1)
        on = torch.nn.functional.normalize(other, dim=1)
        pos = (an * on.detach()).sum(1, keepdim=True)
        neg = an @ an.detach().t()
        neg = neg.masked_fill(torch.eye(len(an), dtype=torch.bool), -float("inf"))
        neg = torch.topk(neg, k, 1).values.flip(1)
        _, perm = sorter(torch.cat([neg, pos], 1))
        target = torch.eye(k + 1, dtype=a.dtype).expand_as(perm)
        pn, pp = perm[:, :, :k].sum(2, keepdim=True), perm[:, :, k:].sum(2, keepdim=True)
        tn, tp = target[:, :, :k].sum(2, keepdim=True), target[:, :, k:].sum(2, keepdim=True)
        bce = torch.nn.BCELoss()
        total = total + (bce(pp.clip(0, 1), tp) + bce(pn.clip(0, 1), tn)) / 2
    return total / 2


def test_groco_matches_official_formula_on_diffsort() -> None:
    a, b = pairs(n=9, d=6, seed=2)
    want = official_restated(a, b, 4, 1.0)
    got = groco_loss(a, b, num_negatives=4, steepness=1.0)
    torch.testing.assert_close(got, want)
    for x, y in zip(torch.autograd.grad(got, (a, b)), torch.autograd.grad(want, (a, b))):
        torch.testing.assert_close(x, y)


def test_groco_full_gradient_gradcheck() -> None:
    a, b = pairs(n=5, d=4, seed=1)
    assert torch.autograd.gradcheck(
        lambda x, y: groco_loss(x, y, num_negatives=3, steepness=2.0, stop_gradient=False),
        (a, b))


def test_groco_ordering_properties() -> None:
    """Zero-ish loss when every positive is far above every negative, large when below, and
    the loss falls as the positive similarity rises."""
    d = 6
    base = torch.eye(d, dtype=torch.float64)
    ordered = groco_loss(base, base.clone(), num_negatives=3, steepness=1e4)
    assert float(ordered) < 1e-3
    # the positive orthogonal to its anchor, negatives similar: mis-ordered
    a = torch.tensor([[1.0, 0.0, 0.0], [0.9, 0.1, 0.0], [0.8, 0.0, 0.2], [0.9, 0.0, 0.1]],
                     dtype=torch.float64)
    b = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
                     dtype=torch.float64)
    assert float(groco_loss(a, b, num_negatives=2, steepness=50.0)) > 1.0
    values = []
    for mix in (0.0, 0.5, 1.0):
        values.append(float(groco_loss(a, (1 - mix) * b + mix * a, num_negatives=2)))
    assert values[0] > values[1] > values[2]


def test_groco_module_and_errors() -> None:
    a, b = pairs()
    m = losslab.create("groco", num_negatives=3).double()
    torch.testing.assert_close(m(a, b), groco_loss(a, b, num_negatives=3))
    with pytest.raises(ValueError, match="at least 2 pairs"):
        groco_loss(a[:1], b[:1])
    with pytest.raises(ValueError, match="num_negatives"):
        groco_loss(a, b, num_negatives=0)
    with pytest.raises(ValueError, match="steepness"):
        groco_loss(a, b, steepness=0.0)
