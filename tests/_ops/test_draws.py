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
