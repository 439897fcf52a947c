"""``all_gather_with_grad``, ``all_gather`` and ``neighbour_exchange`` in 2 and 3 gloo
processes (unequal rows with 3): values, each rank's rows receive the sum of every rank's
gradient, mismatched shapes raise on every rank; identity without a process group."""

from __future__ import annotations

import pytest
import torch

from losslab.distributed import (
    all_gather,
    all_gather_sizes,
    all_gather_with_grad,
    is_distributed,
    rank_and_world,
)
from tests.distributed import _ddp_worker


@pytest.mark.parametrize("world", _ddp_worker.WORLDS)
def test_gather_and_exchange_across_processes(ddp_results: dict, world: int) -> None:
    for rank, r in enumerate(ddp_results[world]):
        got = r["all_gather_with_grad"]
        assert got["value"] == got["grad"] == got["labels"] == 0.0, (rank, got)
        assert got["ring_value"] == got["ring_grad"] == 0.0, (rank, got)
        assert "agree in every dimension but the first" in got["mismatch"], (rank, got)


def test_without_process_group_everything_is_the_identity() -> None:
    x = torch.randn(3, 2, requires_grad=True)
    assert not is_distributed()
    assert rank_and_world() == (0, 1)
    assert all_gather_with_grad(x) is x
    assert all_gather(x) is x
    assert all_gather_sizes(x) == [3]
