"""Pairwise distances and similarities (losslab.distances): brute-force definitions, the
euclidean gradient at coincident points, chunked k-NN, input validation, and half inputs
computed and returned in float32."""

from __future__ import annotations

import math

import pytest
import torch

from losslab import distances


@pytest.mark.parametrize("metric", distances.METRICS)
def test_pairwise_matches_brute_force(metric: str) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 5, generator=g, dtype=torch.float64)
    y = torch.randn(4, 5, generator=g, dtype=torch.float64)
    diff = x[:, None, :] - y[None, :, :]  # brute force: fine at this size
    expected = {
        "euclidean": (diff.pow(2).sum(-1) + 1e-6).sqrt(),
        "squared_euclidean": diff.pow(2).sum(-1),
        "cosine": torch.nn.functional.cosine_similarity(x[:, None], y[None], dim=-1),
        "dot": x @ y.T,
    }[metric]
    torch.testing.assert_close(distances.pairwise(x, y, metric=metric), expected)
    assert distances.is_similarity(metric) == (metric in ("cosine", "dot"))


def test_euclidean_at_coincident_points_has_finite_gradient() -> None:
    x = torch.zeros(3, 4, dtype=torch.float64, requires_grad=True)
    for eps in (1e-6, 0.0):
        d = distances.euclidean(x, eps=eps)
        (g,) = torch.autograd.grad(d.sum(), x)
        assert torch.isfinite(g).all()
    assert distances.euclidean(x, eps=0.0).sum() == 0.0
    x2 = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    y2 = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: distances.euclidean(a, b, eps=0.0), (x2, y2))


def test_knn_is_chunk_invariant_and_excludes_self() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(50, 6, generator=g, dtype=torch.float64)
    full = torch.cdist(x, x)
    full.fill_diagonal_(float("inf"))
    ref_v, ref_i = full.topk(5, largest=False)
    for chunk in (1, 7, 50):
        v, i = distances.knn(x, k=5, exclude_self=True, chunk_size=chunk)
        torch.testing.assert_close(v, ref_v)
        assert torch.equal(i, ref_i)
    v, _ = distances.knn(x, k=3, metric="cosine")
    torch.testing.assert_close(v[:, 0], torch.ones(50, dtype=torch.float64))
    with pytest.raises(ValueError, match="k must be in"):
        distances.knn(x, k=50, exclude_self=True)


def test_distances_validate_inputs() -> None:
    with pytest.raises(ValueError, match="y must have 3 columns"):
        distances.euclidean(torch.randn(2, 3), torch.randn(2, 4))
    with pytest.raises(ValueError, match="x must have shape"):
        distances.dot(torch.randn(3))
    with pytest.raises(ValueError, match="metric must be one of"):
        distances.pairwise(torch.randn(2, 3), metric="manhattan")


# -- issue #11: half inputs (finding 2) ---------------------------------------------------------


def _far_points(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of norm 200 (squared distances ~8e4 > fp16's 65504), rounded to ``dtype``."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 5, generator=g, dtype=torch.float64)
    y = torch.randn(4, 5, generator=g, dtype=torch.float64)
    x = x / torch.linalg.vector_norm(x, dim=1, keepdim=True) * 200
    y = y / torch.linalg.vector_norm(y, dim=1, keepdim=True) * 200
    return x.to(dtype), y.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("metric", distances.METRICS)
def test_half_inputs_are_computed_and_returned_in_float32(metric: str, dtype: torch.dtype
                                                          ) -> None:
    """fp16 squared distances of norm-200 points were inf (and bf16 kept 3 digits)."""
    x, y = _far_points(dtype)
    for ref in (y, None):
        got = distances.pairwise(x, ref, metric=metric)
        want = distances.pairwise(x.float(), None if ref is None else ref.float(),
                                  metric=metric)
        assert got.dtype == torch.float32 and torch.isfinite(got).all()
        torch.testing.assert_close(got, want)
    got = distances.paired(x, x.flip(0), metric=metric)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    torch.testing.assert_close(got, distances.paired(x.float(), x.flip(0).float(),
                                                     metric=metric))
    v, i = distances.knn(x, y, k=2, metric=metric)
    v32, i32 = distances.knn(x.float(), y.float(), k=2, metric=metric)
    assert v.dtype == torch.float32 and torch.equal(i, i32)
    torch.testing.assert_close(v, v32)


def test_half_inputs_keep_their_gradient_dtype() -> None:
    x, y = _far_points(torch.float16)
    x.requires_grad_(True)
    d = distances.euclidean(x, y, eps=0.0)
    d.sum().backward()
    assert x.grad is not None and x.grad.dtype == torch.float16
    assert torch.isfinite(x.grad).all()


def test_mixed_float_dtypes_are_computed_in_the_wider_one() -> None:
    x, y = _far_points(torch.float64)
    got = distances.pairwise(x.half(), y.float(), metric="squared_euclidean")
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, distances.pairwise(x.half().float(), y.float(),
                                                       metric="squared_euclidean"))
    assert distances.dot(x.float(), y).dtype == torch.float64
    assert math.isfinite(float(distances.euclidean(x.half(), y.half()).max()))
