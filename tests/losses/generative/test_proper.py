"""Tests of the black-box proper power losses (losslab.losses.generative.proper).

Oracle: the U-statistics as explicit loops over subsets of draws (itertools.combinations) in
float64. Properties (the paper's): black-box properness -- the exact expectation over all
draws (enumerated on small categorical cases) equals the polynomial expected loss and is
minimised at p = q over a grid of the simplex, for degrees 2 and 3; fewer model draws than
the degree is an error; the white-box special case (every row = p) is the power loss of p.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from losslab.functional import black_box_power_loss
from losslab.losses.generative.proper import elementary_symmetric, power_expected_loss

D = torch.float64
close = torch.testing.assert_close


def _onehot_logits(draws: list[int], k: int) -> torch.Tensor:
    out = torch.full((len(draws), k), -math.inf, dtype=D)
    out[torch.arange(len(draws)), torch.tensor(draws)] = 0.0
    return out


def _oracle(s: torch.Tensor, ys: list[int], a: int) -> float:
    n, k = s.shape
    agree = sum(math.prod(float(s[i, c]) for i in sub)
                for sub in itertools.combinations(range(n), a) for c in range(k))
    agree /= math.comb(n, a)
    cross = sum(math.prod(float(s[i, y]) for i in sub)
                for y in ys for sub in itertools.combinations(range(n), a - 1))
    cross /= math.comb(n, a - 1) * len(ys)
    return (a - 1) * agree - a * cross


@pytest.mark.parametrize("degree", [2, 3, 4])
def test_oracle_loops_over_subsets(degree: int) -> None:
    g = torch.Generator().manual_seed(degree)
    logits = torch.randn(6, 4, generator=g, dtype=D)
    target = torch.tensor([1, 3, -100, 0, -100, 1])
    ref = _oracle(torch.softmax(logits, 1), [1, 3, 0, 1], degree)
    close(black_box_power_loss(logits, target, degree=degree), torch.tensor(ref, dtype=D))


def test_elementary_symmetric_matches_subsets() -> None:
    v = torch.rand(5, 3, dtype=D)
    e = elementary_symmetric(v, 4)
    for j in range(5):
        ref = [sum(math.prod(float(v[i, c]) for i in sub)
                   for sub in itertools.combinations(range(5), j)) for c in range(3)]
        close(e[j], torch.tensor(ref, dtype=D))


_TABLES: dict[tuple[int, int, int, int], list[tuple[tuple[int, ...], tuple[int, ...], float]]] = {}


def _table(k: int, n: int, m: int, a: int) -> list[tuple[tuple[int, ...], tuple[int, ...], float]]:
    """The black-box loss of every outcome of n model draws and m target draws."""
    key = (k, n, m, a)
    if key not in _TABLES:
        rows = []
        for xs in itertools.product(range(k), repeat=n):
            logits = _onehot_logits(list(xs), k)
            for ys in itertools.product(range(k), repeat=m):
                target = torch.tensor(list(ys) + [-100] * (n - m))
                rows.append((xs, ys, float(black_box_power_loss(logits, target, degree=a))))
        _TABLES[key] = rows
    return _TABLES[key]


def _expected(p: list[float], q: list[float], n: int, m: int, a: int) -> float:
    """Exact expectation of the black-box loss over n model and m target draws."""
    return sum(math.prod(p[x] for x in xs) * math.prod(q[y] for y in ys) * value
               for xs, ys, value in _table(len(p), n, m, a))


@pytest.mark.parametrize("degree,n", [(2, 2), (2, 3), (3, 3)])
def test_black_box_properness_on_small_categorical_cases(degree: int, n: int) -> None:
    q = [0.5, 0.3, 0.2]
    at_q = _expected(q, q, n, 1, degree)
    close(torch.tensor(at_q, dtype=D),
          power_expected_loss(torch.tensor(q, dtype=D), torch.tensor(q, dtype=D), degree=degree))
    grid = [i / 10 for i in range(11)]
    for p0, p1 in itertools.product(grid, grid):
        if p0 + p1 > 1 + 1e-12:
            continue
        p = [p0, p1, max(0.0, 1 - p0 - p1)]
        value = _expected(p, q, n, 1, degree)
        # unbiased: the expectation is the polynomial expected loss
        assert abs(value - float(power_expected_loss(torch.tensor(p, dtype=D),
                                                     torch.tensor(q, dtype=D),
                                                     degree=degree))) < 1e-10
        if max(abs(a - b) for a, b in zip(p, q)) > 1e-9:
            assert value > at_q + 1e-6, (p, value, at_q)


def test_two_target_draws_are_unbiased_too() -> None:
    p, q = [0.6, 0.4], [0.3, 0.7]
    value = _expected(p, q, 2, 2, 2)
    close(torch.tensor(value, dtype=D),
          power_expected_loss(torch.tensor(p, dtype=D), torch.tensor(q, dtype=D)))


def test_white_box_rows_give_the_power_loss_of_p() -> None:
    p = torch.tensor([0.1, 0.6, 0.3], dtype=D)
    logits = p.log().expand(5, 3).clone()
    target = torch.tensor([1, 2, 1, -100, 0])
    a = 3
    ref = (a - 1) * p.pow(a).sum() - a * p.pow(a - 1)[torch.tensor([1, 2, 1, 0])].mean()
    close(black_box_power_loss(logits, target, degree=a), ref)


def test_too_few_model_draws_and_no_target_draws() -> None:
    with pytest.raises(ValueError, match="at least 3 model draws"):
        black_box_power_loss(torch.randn(2, 4), torch.tensor([0, 1]), degree=3)
    logits = torch.randn(4, 3, requires_grad=True)
    out = black_box_power_loss(logits, torch.full((4,), -100))
    assert float(out) == 0.0
    out.backward()
    assert logits.grad is not None and torch.count_nonzero(logits.grad) == 0


def test_gradient_of_relaxed_draws_points_towards_the_target() -> None:
    # white-box rows: descending the loss moves p towards q's mode
    logits = torch.zeros(4, 3, dtype=D, requires_grad=True)
    target = torch.tensor([2, 2, 2, 2])
    black_box_power_loss(logits, target).backward()
    assert logits.grad is not None
    assert bool((logits.grad[:, 2] < 0).all()) and bool((logits.grad[:, :2] > 0).all())
