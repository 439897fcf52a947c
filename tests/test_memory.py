"""Cross-batch memory: PML's ``CrossBatchMemory`` (values and gradients over steps that wrap
the queue, ``enqueue_mask``, a miner), the first call equal to the wrapped loss for every
pair-based loss, the FIFO contents from a list oracle, state, bad input."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import losslab
from losslab import miners
from losslab.memory import CrossBatchMemory

pd: Any
pl: Any
pm: Any
try:
    from pytorch_metric_learning import distances as pd
    from pytorch_metric_learning import losses as pl
    from pytorch_metric_learning import miners as pm
except ImportError:  # peer is dev-only
    pl = None
needs_pml = pytest.mark.skipif(pl is None, reason="pytorch-metric-learning not installed")

D, M, B = 6, 20, 8  # 8-row batches wrap a 20-slot queue on the third step
RTOL, ATOL = 1e-10, 1e-12


def batches(steps: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(B, D, generator=g, dtype=torch.float64),
             torch.randint(0, 3, (B,), generator=g)) for _ in range(steps)]


def _takes_references(loss: torch.nn.Module) -> bool:
    """False for losses that declare the kind's reference keywords but refuse them (set
    functions of the batch's partition, e.g. SCoRe)."""
    x = torch.randn(4, D, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 0, 1, 1])
    try:
        loss(x, y, ref_embeddings=x, ref_labels=y)
    except ValueError as err:
        if "not supported" in str(err):
            return False
        raise
    return True


def pair_losses() -> list[str]:
    out = []
    for name in losslab.available(kind="embeddings"):
        loss = losslab.create(name, **losslab.spec(name).example_hparams)
        if (getattr(loss, "proxies", None) is None and name != "metrix"
                and "num_classes" not in losslab.spec(name).example_hparams  # class vectors
                and {"ref_embeddings", "indices"} <= set(type(loss)._call_keywords)
                and _takes_references(loss)):
            out.append(name)
    return out


def run_both(ours: CrossBatchMemory, theirs, steps, masks=None) -> None:
    for k, (x, y) in enumerate(steps):
        mask = None if masks is None else masks[k]
        xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        va = ours(xa, y, enqueue_mask=mask)
        vb = theirs(xb, y, enqueue_mask=mask)
        va.backward()
        vb.backward()
        torch.testing.assert_close(va, vb, rtol=RTOL, atol=ATOL, msg=f"value, step {k}")
        assert xa.grad is not None and xb.grad is not None
        torch.testing.assert_close(xa.grad, xb.grad, rtol=RTOL, atol=ATOL,
                                   msg=f"gradient, step {k}")


@needs_pml
@pytest.mark.parametrize("name", ["contrastive", "supcon"])
def test_matches_pml_cross_batch_memory_over_wrapping_steps(name: str) -> None:
    if name == "contrastive":
        ours = losslab.create("contrastive", pos_margin=0.2, neg_margin=3.0, mean_over="nonzero")
        theirs = pl.ContrastiveLoss(pos_margin=0.2, neg_margin=3.0,
                                    distance=pd.LpDistance(normalize_embeddings=False))
    else:
        ours, theirs = losslab.create("supcon", temperature=0.1), pl.SupConLoss(temperature=0.1)
    run_both(CrossBatchMemory(ours, embedding_dim=D, memory_size=M),
             pl.CrossBatchMemory(theirs, embedding_size=D, memory_size=M), batches(5))


@needs_pml
def test_matches_pml_with_enqueue_mask_and_a_miner() -> None:
    steps = batches(4, seed=1)
    masks = [torch.arange(B) % 2 == 0 for _ in steps]
    run_both(CrossBatchMemory(losslab.create("supcon", temperature=0.2), embedding_dim=D,
                              memory_size=M),
             pl.CrossBatchMemory(pl.SupConLoss(temperature=0.2), embedding_size=D,
                                 memory_size=M), steps, masks)
    ms = losslab.create("multi_similarity", mining=False)
    run_both(CrossBatchMemory(ms, embedding_dim=D, memory_size=M, miner=miners.multi_similarity),
             pl.CrossBatchMemory(pl.MultiSimilarityLoss(), embedding_size=D, memory_size=M,
                                 miner=pm.MultiSimilarityMiner()), batches(4, seed=2))


@pytest.mark.parametrize("name", pair_losses())
def test_first_call_is_the_wrapped_loss_of_the_batch(name: str) -> None:
    """An empty queue holds only the batch itself: with the self-comparisons removed the
    value is the loss of the batch alone."""
    hp = {"mining": False} if name == "multi_similarity" else {}
    loss = losslab.create(name, **hp).double()
    x, y = batches(1, seed=3)[0]
    memory = CrossBatchMemory(loss, embedding_dim=D, memory_size=M)
    torch.testing.assert_close(memory(x, y), loss(x, y), rtol=RTOL, atol=ATOL)


def test_queue_is_fifo() -> None:
    memory = CrossBatchMemory(losslab.create("contrastive"), embedding_dim=D, memory_size=M)
    slots: list[tuple[list[float], int] | None] = [None] * M
    head = 0
    for x, y in batches(6, seed=4):
        memory(x, y)
        for row, label in zip(x.tolist(), y.tolist()):
            slots[head] = (row, label)
            head = (head + 1) % M
    assert int(memory.queue_idx) == head and bool(memory.filled)
    for i, entry in enumerate(slots):
        assert entry is not None
        assert memory.embedding_memory[i].tolist() == entry[0]
        assert int(memory.label_memory[i]) == entry[1]


def test_reference_set_is_detached_and_state_round_trips() -> None:
    memory = CrossBatchMemory(losslab.create("supcon"), embedding_dim=D, memory_size=M)
    (x1, y1), (x2, y2) = batches(2, seed=5)
    memory(x1, y1)
    assert not memory.embedding_memory.requires_grad
    state = memory.state_dict()
    other = CrossBatchMemory(losslab.create("supcon"), embedding_dim=D, memory_size=M).double()
    other.load_state_dict(state)
    torch.testing.assert_close(other(x2, y2), memory(x2, y2), rtol=RTOL, atol=ATOL)
    memory.reset()
    assert int(memory.queue_idx) == 0 and not bool(memory.filled)


def test_bad_input_raises() -> None:
    with pytest.raises(ValueError, match="kind 'embeddings'"):
        CrossBatchMemory(losslab.create("clip"), embedding_dim=D)
    with pytest.raises(ValueError, match="proxies"):
        CrossBatchMemory(losslab.create("arcface", num_classes=3, embedding_dim=D),
                         embedding_dim=D)
    with pytest.raises(ValueError, match="memory_size"):
        CrossBatchMemory(losslab.create("triplet"), embedding_dim=D, memory_size=0)
    memory = CrossBatchMemory(losslab.create("triplet"), embedding_dim=D, memory_size=4)
    x, y = batches(1)[0]
    with pytest.raises(ValueError, match="does not fit"):
        memory(x, y)
    with pytest.raises(ValueError, match="embeddings"):
        memory(torch.randn(3, D + 1), torch.arange(3))
    with pytest.raises(ValueError, match="enqueue_mask"):
        memory(x[:3], y[:3], enqueue_mask=torch.ones(3))
    with pytest.raises(ValueError, match="takes no ref_embeddings"):
        memory(x[:3], y[:3], ref_embeddings=x[:3])


def test_deepcopy_keeps_the_queue() -> None:
    import copy

    memory = CrossBatchMemory(losslab.create("supcon"), embedding_dim=D, memory_size=M)
    x, y = batches(1, seed=6)[0]
    memory(x, y)
    twin = copy.deepcopy(memory)
    assert twin.spec.name == "supcon"
    assert torch.equal(twin.embedding_memory, memory.embedding_memory)


def test_loss_without_ref_embeddings_is_refused() -> None:
    """A loss of kind 'embeddings' that cannot compare with reference rows (i_con) is a clear
    ValueError, not a failure at the first call."""
    with pytest.raises(ValueError, match="ref_embeddings"):
        CrossBatchMemory(losslab.create("i_con"), embedding_dim=D)
