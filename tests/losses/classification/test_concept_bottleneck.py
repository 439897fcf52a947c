"""Sparse-CBM: the contrastive Gumbel-Softmax loss against a loop oracle on the same noise
draws and against the official ``criterion_gumbel`` restated, its invariance to a constant
shift of the activations, and the full objective (head CE + Gumbel term)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import losslab
from losslab.losses.classification.concept_bottleneck import gumbel_concept_loss, sparse_cbm_loss

f64 = torch.float64


def _noise(seed: int, n: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The two Gumbel draws the loss makes after ``torch.manual_seed(seed)`` (dim 0 first)."""
    torch.manual_seed(seed)
    u0, u1 = torch.rand(n, k, dtype=f64), torch.rand(n, k, dtype=f64)
    return -torch.log(-torch.log(u0)), -torch.log(-torch.log(u1))


def oracle(c: list[list[float]], g0, g1, tau: float) -> float:
    n, k = len(c), len(c[0])
    total0 = 0.0
    for j in range(k):  # softmax over the images, per concept
        col = [(c[i][j] + g0[i][j]) / tau for i in range(n)]
        lse = max(col) + math.log(sum(math.exp(v - max(col)) for v in col))
        total0 += sum(lse - v for v in col)
    total1 = 0.0
    for i in range(n):  # softmax over the concepts, per image
        row = [(c[i][j] + g1[i][j]) / tau for j in range(k)]
        lse = max(row) + math.log(sum(math.exp(v - max(row)) for v in row))
        total1 += sum(lse - v for v in row)
    return 0.5 * (total0 / (n * k) + total1 / (n * k))


@pytest.mark.parametrize("tau", [1.0, 0.3, 2.5])
@pytest.mark.parametrize("seed", [0, 1])
def test_gumbel_concept_loss_matches_the_loop_oracle_and_the_released_code(
        tau: float, seed: int) -> None:
    c = torch.randn(5, 7, generator=torch.Generator().manual_seed(seed + 10), dtype=f64)
    g0, g1 = _noise(seed, 5, 7)
    torch.manual_seed(seed)
    got = gumbel_concept_loss(c, temperature=tau)
    assert got.item() == pytest.approx(oracle(c.tolist(), g0.tolist(), g1.tolist(), tau),
                                       rel=1e-12)
    # criterion_gumbel (bottlenecks/cbm.py) restated with these draws:
    # mean of -log(gumbel_softmax) along dim 0 and along dim 1
    released = 0.5 * (-torch.log(torch.softmax((c + g0) / tau, dim=0)).mean()
                      - torch.log(torch.softmax((c + g1) / tau, dim=1)).mean())
    torch.testing.assert_close(got, released)


def test_constant_shift_invariance_and_the_uniform_minimiser() -> None:
    c = torch.randn(4, 6, generator=torch.Generator().manual_seed(3), dtype=f64)
    torch.manual_seed(7)
    a = gumbel_concept_loss(c)
    torch.manual_seed(7)
    b = gumbel_concept_loss(c + 3.5)
    torch.testing.assert_close(a, b)
    # noise aside, equal activations minimise each -log-softmax average (lse >= mean):
    # averaged over many draws, a constant matrix scores lower than a spread-out one
    torch.manual_seed(0)
    flat = torch.stack([gumbel_concept_loss(torch.zeros(4, 6, dtype=f64)) for _ in range(300)])
    torch.manual_seed(0)
    spread = torch.stack([gumbel_concept_loss(3 * c) for _ in range(300)])
    assert flat.mean() < spread.mean()


def test_sparse_cbm_is_the_head_ce_plus_the_gumbel_term() -> None:
    g = torch.Generator().manual_seed(0)
    c = torch.randn(6, 5, generator=g, dtype=f64)
    w = torch.randn(3, 5, generator=g, dtype=f64)
    y = torch.tensor([0, 1, 2, 2, 1, 0])
    torch.manual_seed(4)
    gum = gumbel_concept_loss(c)
    ce = F.cross_entropy(c @ w.T, y)
    torch.manual_seed(4)
    got = sparse_cbm_loss(c, y, w, gumbel_weight=0.7)
    torch.testing.assert_close(got, ce + 0.7 * gum)
    torch.manual_seed(4)
    none = sparse_cbm_loss(c, y, w, gumbel_weight=0.7, reduction="none")
    torch.testing.assert_close(none.mean(), got)
    assert sparse_cbm_loss(c, y, w, gumbel_weight=0.0).item() == pytest.approx(ce.item())


def test_module_owns_the_head() -> None:
    torch.manual_seed(0)
    m = losslab.create("sparse_cbm", num_classes=3, num_concepts=5).double()
    head = m.get_parameter("head")
    assert tuple(head.shape) == (3, 5)
    c = torch.randn(4, 5, dtype=f64, requires_grad=True)
    y = torch.tensor([0, 2, 1, 1])
    torch.manual_seed(1)
    loss = m(c, y)
    loss.backward()
    assert head.grad is not None and c.grad is not None
    torch.manual_seed(1)
    torch.testing.assert_close(loss, sparse_cbm_loss(c, y, head))
    with pytest.raises(ValueError, match="target"):
        m(c, torch.tensor([0, 3, 1, 1]))
    with pytest.raises(ValueError, match="temperature"):
        gumbel_concept_loss(c, temperature=0.0)
