"""The DDP contract of ``losslab.distributed``: for every batch-level loss of the registry
(kinds ``paired`` and ``embeddings``) and each of its modes, 2 and 3 gloo processes (equal and
unequal per-rank batches) with a linear encoder in DDP give the single-process full-batch loss
and parameter gradients (float64). One spawn per world size runs every case
(``_ddp_worker.py``; the spawn is the session fixture ``ddp_results`` of ``conftest.py``,
shared with ``test_gather.py``)."""

from __future__ import annotations

import pytest
import torch

import losslab
from losslab.distributed import LOCAL_FORMS, DistributedLoss
from tests.distributed import _ddp_worker

CASES = _ddp_worker.cases()
WORLDS = _ddp_worker.WORLDS
TOL = 1e-10


def test_every_batch_level_loss_is_covered() -> None:
    names = {c.split(":")[0] for c in CASES}
    for kind in ("paired", "embeddings"):
        assert set(losslab.available(kind=kind)) <= names
    assert {"siglip:ring", "clip:local", "supcon:global"} <= set(CASES)


@pytest.mark.parametrize("world", WORLDS)
@pytest.mark.parametrize("case", CASES)
def test_ddp_gradients_equal_single_process(ddp_results: dict, world: int, case: str) -> None:
    for rank, r in enumerate(ddp_results[world]):
        got = r[case]
        assert "error" not in got, f"rank {rank}: {got['error']}"
        assert got["value"] <= TOL * max(1.0, got["scale"]), (rank, got)
        assert got["grad"] <= TOL * max(1.0, got["grad_scale"]), (rank, got)


def test_without_process_group_the_wrapper_is_the_loss() -> None:
    a, b = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
    for mode in ("global", "local"):
        wrapped = DistributedLoss("clip", mode=mode)
        assert torch.equal(wrapped(a, b), losslab.create("clip")(a, b))


def test_bad_modes_raise() -> None:
    with pytest.raises(ValueError, match="mode must be one of"):
        DistributedLoss("clip", mode="both")
    with pytest.raises(ValueError, match="row-decomposable"):
        DistributedLoss("supcon", mode="local")
    with pytest.raises(ValueError, match="ring"):
        DistributedLoss("clip", mode="ring")
    with pytest.raises(ValueError, match="kind paired or embeddings"):
        DistributedLoss("cross_entropy")
    with pytest.raises(ValueError, match="ref_embeddings"):
        DistributedLoss("supcon")(torch.randn(4, 3), torch.arange(4),
                                  ref_embeddings=torch.randn(4, 3), ref_labels=torch.arange(4))
    assert "uniformity" not in LOCAL_FORMS
