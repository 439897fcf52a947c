"""RankMe, alignment and uniformity: oracles from the formulas (numpy SVD, loops), agreement with
the differentiable losses, and the properties the papers state."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from losslab import metrics
from losslab.functional import alignment_loss, uniformity_loss


def test_rankme_matches_the_formula_on_numpy_singular_values() -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(40, 8, generator=g, dtype=torch.float64) @ torch.diag(
        torch.tensor([5.0, 3.0, 2.0, 1.0, 0.5, 0.1, 0.01, 0.0], dtype=torch.float64))
    s = np.linalg.svd(z.numpy(), compute_uv=False)
    p = s / s.sum() + 1e-7
    expected = math.exp(-sum(float(v) * math.log(float(v)) for v in p))
    assert metrics.rankme(z) == pytest.approx(expected, rel=1e-10)


def test_rankme_is_the_rank_for_equal_singular_values_and_one_when_collapsed() -> None:
    q, _ = torch.linalg.qr(torch.randn(50, 50, generator=torch.Generator().manual_seed(1),
                                       dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(10, 10, generator=torch.Generator().manual_seed(4),
                                       dtype=torch.float64))
    for r in (1, 3, 7):
        z = q[:, :r] @ v[:, :r].t() * 4.0  # rank r, all non-zero singular values equal
        assert metrics.rankme(z, eps=0.0) == pytest.approx(r, rel=1e-9)
    collapsed = torch.ones(30, 6, dtype=torch.float64)
    assert metrics.rankme(collapsed, eps=0.0) == pytest.approx(1.0, rel=1e-9)
    assert metrics.rankme(torch.zeros(5, 3)) == 1.0
    # scale-invariant, and at most min(N, D)
    z = torch.randn(20, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    assert metrics.rankme(3 * z) == pytest.approx(metrics.rankme(z), rel=1e-12)
    assert 1.0 <= metrics.rankme(z) <= 6.0


def test_alignment_and_uniformity_match_loops_and_the_losses() -> None:
    g = torch.Generator().manual_seed(3)
    a = torch.randn(9, 4, generator=g, dtype=torch.float64)
    b = a + 0.3 * torch.randn(9, 4, generator=g, dtype=torch.float64)
    na = torch.nn.functional.normalize(a, dim=1).tolist()
    nb = torch.nn.functional.normalize(b, dim=1).tolist()
    sq = [sum((x - y) ** 2 for x, y in zip(na[i], nb[i])) for i in range(9)]
    assert metrics.alignment(a, b) == pytest.approx(sum(sq) / 9, rel=1e-12)
    assert metrics.alignment(a, b, alpha=1.0) == pytest.approx(sum(math.sqrt(v) for v in sq) / 9,
                                                               rel=1e-12)
    vals = [math.exp(-2 * sum((p - q) ** 2 for p, q in zip(na[i], na[j])))
            for i in range(9) for j in range(i + 1, 9)]
    assert metrics.uniformity(a) == pytest.approx(math.log(sum(vals) / len(vals)), rel=1e-12)
    assert metrics.uniformity(a, chunk_size=2) == pytest.approx(metrics.uniformity(a), rel=1e-12)
    assert metrics.alignment(a, b) == pytest.approx(float(alignment_loss(a, b)), rel=1e-12)
    both = (metrics.uniformity(a) + metrics.uniformity(b)) / 2
    assert both == pytest.approx(float(uniformity_loss(a, b)), rel=1e-12)


def test_uniformity_bounds() -> None:
    # collapsed: every distance is 0, uniformity 0 (its maximum); spread points: negative
    same = torch.ones(5, 3, dtype=torch.float64)
    assert metrics.uniformity(same) == pytest.approx(0.0, abs=1e-12)
    spread = torch.eye(3, dtype=torch.float64)
    assert metrics.uniformity(spread) == pytest.approx(-4.0, rel=1e-12)  # |e_i - e_j|^2 = 2
    assert metrics.alignment(same, same) == 0.0


def test_bad_inputs_raise_value_error() -> None:
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="embeddings must be a float tensor"):
        metrics.rankme(torch.ones(4, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="embeddings must be a float tensor"):
        metrics.rankme(torch.ones(4))
    with pytest.raises(ValueError, match="eps"):
        metrics.rankme(x, eps=-1.0)
    with pytest.raises(ValueError, match="same shape"):
        metrics.alignment(x, x[:3])
    with pytest.raises(ValueError, match="alpha"):
        metrics.alignment(x, x, alpha=0.0)
    with pytest.raises(ValueError, match="at least 2 rows"):
        metrics.uniformity(x[:1])
    with pytest.raises(ValueError, match="t must be"):
        metrics.uniformity(x, t=math.nan)
    with pytest.raises(ValueError, match="chunk_size"):
        metrics.uniformity(x, chunk_size=0)
