"""Tests of the Levin Tree Search loss (losslab.losses.classification.levin).

Oracle: d / pi(path) with the softmax and the product written as float64 Python loops.
Properties from the papers: (1) LTS's guarantee -- a best-first search in the order of
d(n) / pi(n) expands at most d(n*) / pi(n*) nodes besides the root before it reaches the goal
n* (checked by running the search on random trees); (2) convexity of the loss in the parameters
of a product-of-context-models policy (Orseau, Hutter, Lelis 2023); (3) the gradient equals the
official code's jacobian, loss * (pi - e_action) per step.
"""

from __future__ import annotations

import heapq
import math
import random

import pytest
import torch

import losslab
from losslab.functional import lts_loss


def raw(*args, **kwargs):
    return lts_loss(*args, normalize=False, **kwargs)

D = torch.float64


def paths(n: int = 4, t: int = 6, v: int = 3, seed: int = 0, scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, t, v, generator=g, dtype=D) * scale
    target = torch.randint(0, v, (n, t), generator=g)
    return logits, target


def softmax_row(row: list[float]) -> list[float]:
    m = max(row)
    e = [math.exp(x - m) for x in row]
    z = sum(e)
    return [x / z for x in e]


def test_oracle_loop_with_padding() -> None:
    logits, target = paths()
    target[1, 4:] = -100  # a path of 4 actions
    target[2, :] = -100  # an empty path: the root is the goal, cost 0
    ref = []
    for k in range(4):
        pi, d = 1.0, 0
        for t in range(6):
            a = int(target[k, t])
            if a == -100:
                continue
            pi *= softmax_row(logits[k, t].tolist())[a]
            d += 1
        ref.append(d / pi if d else 0.0)
    out = raw(logits, target, reduction="none")
    torch.testing.assert_close(out, torch.tensor(ref, dtype=D))
    torch.testing.assert_close(raw(logits, target, reduction="sum"), out.sum())
    torch.testing.assert_close(raw(logits, target), out.sum() / 3)  # 3 non-empty paths


def test_gradient_is_the_official_jacobian() -> None:
    logits, target = paths(3, 5, 4, seed=2)
    x = logits.clone().requires_grad_(True)
    raw(x, target, reduction="sum").backward()
    loss = raw(logits, target, reduction="none")
    pi = torch.softmax(logits, -1)
    onehot = torch.nn.functional.one_hot(target, 4).to(D)
    torch.testing.assert_close(x.grad, loss[:, None, None] * (pi - onehot))


def _levin_search(policy: dict, goal: tuple[int, ...], v: int, rng: random.Random) -> int:
    """Best-first search in increasing d/pi; returns the number of non-root nodes popped up to
    and including the goal. ``policy`` caches a random logit vector per node."""

    def logits(node: tuple[int, ...]) -> list[float]:
        if node not in policy:
            policy[node] = [rng.gauss(0.0, 1.5) for _ in range(v)]
        return policy[node]

    heap: list[tuple[float, int, tuple[int, ...], float]] = [(0.0, 0, (), 1.0)]
    count, tick = 0, 1
    while heap:
        _, _, node, pi = heapq.heappop(heap)
        if node:
            count += 1
        if node == goal:
            return count
        probs = softmax_row(logits(node))
        for a in range(v):
            child_pi = pi * probs[a]
            heapq.heappush(heap, ((len(node) + 1) / child_pi, tick, (*node, a), child_pi))
            tick += 1
    raise AssertionError("unreachable")


@pytest.mark.parametrize("seed", range(6))
def test_levin_search_expansions_are_bounded_by_the_loss(seed: int) -> None:
    rng = random.Random(seed)
    v, depth = 3, 1 + seed % 4
    policy: dict = {}
    goal = tuple(rng.randrange(v) for _ in range(depth))
    # the loss of the goal's path under the same policy
    rows = []
    for t in range(depth):
        node = goal[:t]
        if node not in policy:
            policy[node] = [rng.gauss(0.0, 1.5) for _ in range(v)]
        rows.append(policy[node])
    loss = float(raw(torch.tensor([rows], dtype=D), torch.tensor([list(goal)])))
    expansions = _levin_search(policy, goal, v, rng)
    assert expansions <= loss + 1e-9, (expansions, loss)


def test_convex_in_context_model_parameters() -> None:
    g = torch.Generator().manual_seed(5)
    num_ctx, v, n, t, active = 6, 3, 5, 4, 2
    ctx = torch.randint(0, num_ctx, (n, t, active), generator=g)  # the contexts of each step
    target = torch.randint(0, v, (n, t), generator=g)
    target[0, 2:] = -100

    def loss(beta: torch.Tensor) -> torch.Tensor:
        logits = beta[ctx].sum(2)  # product mixing: a softmax of the summed context params
        return raw(logits, target, reduction="sum")

    for _ in range(20):
        b1 = torch.randn(num_ctx, v, generator=g, dtype=D)
        b2 = torch.randn(num_ctx, v, generator=g, dtype=D)
        values = [float(loss((1 - lam) * b1 + lam * b2)) for lam in (0.0, 0.25, 0.5, 0.75, 1.0)]
        for i in range(1, 4):  # discrete second differences >= 0 along the segment
            assert values[i - 1] - 2 * values[i] + values[i + 1] >= -1e-9 * max(values)
        assert values[2] <= 0.5 * (values[0] + values[4]) + 1e-12


def test_degenerate_and_bad_inputs() -> None:
    logits, target = paths()
    x = logits.clone().requires_grad_(True)
    out = raw(x, torch.full_like(target, -100))
    out.backward()
    assert out == 0 and x.grad is not None and torch.all(x.grad == 0)
    with pytest.raises(ValueError, match=r"actions in \[0, 3\)"):
        raw(logits, torch.full_like(target, 3))
    with pytest.raises(ValueError, match=r"shape \[4, 6\]"):
        raw(logits, target[:, :-1])
    with pytest.raises(ValueError, match=r"\[N, T, V\]"):
        raw(logits[0], target[0])
    with pytest.raises(ValueError, match="integer"):
        raw(logits, target.double())
    m = losslab.create("lts", normalize=False)
    torch.testing.assert_close(m(logits, target), raw(logits, target))


def test_float32_finite_at_moderate_scale() -> None:
    logits, target = paths(scale=3.0)
    out = raw(logits.float(), target)
    assert torch.isfinite(out)
    torch.testing.assert_close(out.double(), raw(logits, target), rtol=1e-4, atol=0)


def test_normalize_divides_by_the_largest_path_cost_as_the_official_optimiser() -> None:
    logits, target = paths(5, 6, 3, seed=7)
    target[3] = -100  # an empty path takes no part
    cost = raw(logits, target, reduction="none")
    out = lts_loss(logits, target, reduction="none")
    torch.testing.assert_close(out, cost / cost.max())
    x = logits.clone().requires_grad_(True)
    y = logits.clone().requires_grad_(True)
    lts_loss(x, target, reduction="sum").backward()
    raw(y, target, reduction="sum").backward()
    assert x.grad is not None and y.grad is not None
    torch.testing.assert_close(x.grad, y.grad / cost.max())  # same direction, scaled
    # long unlikely paths: the bound overflows float32, the normalised loss does not
    long_logits, long_target = paths(2, 60, 5, seed=8, scale=4.0)
    assert not torch.isfinite(raw(long_logits.float(), long_target))
    assert torch.isfinite(lts_loss(long_logits.float(), long_target))
