"""losslab._ops.draws: the generator keys of the random custom ops and their effect marking
(the compiled == eager draws themselves are tested with the losses: test_metrix, test_mar)."""

from __future__ import annotations

import gc

import pytest
import torch

from losslab._ops import draws


def test_default_generator_is_key_zero() -> None:
    assert draws.generator_key(None) == 0
    assert draws.generator_of(0, "op") is None


def test_key_round_trip_and_weak_reference() -> None:
    g = torch.Generator().manual_seed(3)
    key = draws.generator_key(g)
    assert key != 0 and draws.generator_of(key, "op") is g
    assert draws.generator_key(g) == key  # registered once
    del g
    gc.collect()
    assert key not in draws._GENERATORS  # the entry goes with its generator
    with pytest.raises(RuntimeError, match=r"op: the generator .* no longer exists"):
        draws.generator_of(key, "op")


def test_the_draw_ops_are_ordered_effects() -> None:
    """Both random ops are registered as ordered side effects on this torch (else inductor may
    merge two calls with equal inputs: one draw instead of two)."""
    from losslab.losses.generative import mar
    from losslab.losses.metric_learning import metrix

    assert mar._ORDERED and metrix._ORDERED


def test_rand_like_eager_is_torch_rand_like() -> None:
    x = torch.zeros(4, 3, dtype=torch.float64)
    torch.manual_seed(5)
    want = torch.rand_like(x)
    torch.manual_seed(5)
    torch.testing.assert_close(draws.rand_like(x), want, rtol=0, atol=0)
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    torch.testing.assert_close(draws.rand_like(x, g1),
                               torch.rand(4, 3, generator=g2, dtype=torch.float64))


@pytest.mark.slow
def test_rand_like_compiled_draws_the_eager_numbers() -> None:
    """Two calls with equal inputs in one compiled graph: two draws, in order, the eager ones
    (inductor would use its own stream for torch.rand_like, and merge a plain op's calls)."""
    h = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    c = torch.randn(3, 2, dtype=torch.float64)

    def f(c: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return h * draws.rand_like(c) + 10 * h * draws.rand_like(c)

    torch.manual_seed(0)
    eager = f(c, h)
    torch._dynamo.reset()
    torch.manual_seed(0)
    compiled = torch.compile(f, fullgraph=True)(c, h)
    torch.testing.assert_close(compiled, eager, rtol=0, atol=0)
