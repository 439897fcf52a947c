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
        for name in losslab.available(kind=kind):
            if losslab.spec(name).needs_index:  # per-sample state: refused, clearly
                with pytest.raises(ValueError, match="per-sample state"):
                    DistributedLoss(name, **losslab.spec(name).example_hparams)
            else:
                assert name in names
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
        DistributedLoss("npairs", mode="local")
    from losslab.memory import CrossBatchMemory

    with pytest.raises(ValueError, match="not a wrapper"):
        DistributedLoss(CrossBatchMemory(losslab.create("supcon"), embedding_dim=4),
                        mode="local")
    with pytest.raises(ValueError, match="ring"):
        DistributedLoss("clip", mode="ring")
    with pytest.raises(ValueError, match="kind paired or embeddings"):
        DistributedLoss("cross_entropy")
    with pytest.raises(ValueError, match="ref_embeddings"):
        DistributedLoss("supcon")(torch.randn(4, 3), torch.arange(4),
                                  ref_embeddings=torch.randn(4, 3), ref_labels=torch.arange(4))
    assert "uniformity" not in LOCAL_FORMS


def test_local_mode_of_embeddings_losses_is_declared_or_refused() -> None:
    """Every ``embeddings`` loss with a query/reference split either has a local form (its
    DDP case runs) or is refused with a ValueError that says why. Triplet, triplet-ratio and
    contrastive have a local "mean" (the all-reduced count of triplets / pairs) and "sum";
    their mean over the non-zero terms (mean_over="nonzero") is refused for "mean" and
    accepted for "sum"; triplet's per-anchor selections (batch hard, ...) are refused."""
    from losslab.distributed import EMBEDDING_LOCAL

    cases = set(CASES)
    for name in losslab.available(kind="embeddings"):
        s = losslab.spec(name)
        if s.needs_index:
            continue
        hp = dict(s.example_hparams)
        if name in LOCAL_FORMS:
            assert f"{name}:local" in cases
            DistributedLoss(name, mode="local", **hp)
        else:
            assert name not in EMBEDDING_LOCAL
            with pytest.raises(ValueError, match="mode='local' needs a row-decomposable loss"):
                DistributedLoss(name, mode="local", **hp)
    for name in ("triplet", "contrastive"):
        with pytest.raises(ValueError, match="non-zero terms of the whole batch"):
            DistributedLoss(name, mode="local", mean_over="nonzero")
        DistributedLoss(name, mode="local", mean_over="nonzero", reduction="sum")
        assert f"{name}+sum:local" in cases
    assert {"triplet:local", "triplet_ratio:local", "contrastive:local",
            "contrastive+cosine:local"} <= cases
    for strategy in ("batch_hard", "semi_hard", "soft_margin"):
        with pytest.raises(ValueError, match="strategy='all'"):
            DistributedLoss("triplet", mode="local", strategy=strategy, reduction="sum")
        DistributedLoss("triplet", mode="global", strategy=strategy)


@pytest.mark.parametrize("sigmoid", [False, True])
@pytest.mark.parametrize("tile", [None, 3])
def test_local_rows_kernel_matches_loops_and_gradcheck(sigmoid: bool, tile: int | None) -> None:
    """The local rows' terms (rows of q against all columns k, positive of row i at column
    pos_i, -1 = none), against loops over the formula; gradcheck in float64."""
    import math

    from losslab.distributed.modes import _local_rows

    g = torch.Generator().manual_seed(0)
    q = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(8, 3, generator=g, dtype=torch.float64, requires_grad=True)
    pos = torch.tensor([2, 3, -1, 7, 0])
    scale = torch.tensor(1.7, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-0.4, dtype=torch.float64, requires_grad=True) if sigmoid else None
    got = _local_rows(q, k, pos, scale, bias, tile=tile)
    Q, K, s, b = q.tolist(), k.tolist(), 1.7, -0.4
    for i in range(5):
        logits = [s * sum(x * y for x, y in zip(Q[i], K[j])) + (b if sigmoid else 0.0)
                  for j in range(8)]
        if sigmoid:
            want = sum(math.log1p(math.exp(-(1 if j == int(pos[i]) else -1) * v))
                       for j, v in enumerate(logits))
        else:
            want = math.log(sum(math.exp(v) for v in logits))
            want -= logits[int(pos[i])] if int(pos[i]) >= 0 else 0.0
        assert abs(float(got[i].detach()) - want) < 1e-12
    inputs = (q, k, scale) + ((bias,) if bias is not None else ())
    assert torch.autograd.gradcheck(
        lambda *t: _local_rows(t[0], t[1], pos, t[2], t[3] if sigmoid else None, tile=tile),
        inputs)
