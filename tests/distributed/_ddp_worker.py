"""The processes spawned by ``test_modes.py``: every batch-level loss, each distributed mode,
with a tiny linear encoder wrapped in DDP (gloo, float64), against the single-process batch.

Each rank writes ``{case: {"value": err, "grad": err}}`` (max absolute differences) to
``<out>/rank<r>.json``; the test asserts on them, so a failure names the case.
"""

from __future__ import annotations

import copy
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

import losslab
from losslab.distributed import (
    EMBEDDING_LOCAL,
    LOCAL_FORMS,
    DistributedLoss,
    all_gather,
    all_gather_with_grad,
    neighbour_exchange,
)
from losslab.gradcache import cached_backward
from losslab.memory import CrossBatchMemory

D_IN, D_OUT = 5, 8
KINDS = ("paired", "embeddings")
WORLDS = (2, 3)

#: Extra hyperparameters per case name suffix (learned scalars, the tiled forms).
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "clip+learned": ("clip", {"learnable_temperature": True}),
    "clip+tiled": ("clip", {"chunk_size": 2}),
    "infonce+symmetric": ("infonce", {"symmetric": True, "learnable_temperature": True}),
    "siglip+learned": ("siglip", {"learnable_temperature": True}),
    "siglip+tiled": ("siglip", {"chunk_size": 2}),
    "supcon+sum": ("supcon", {"reduction": "sum"}),
    # triplet / triplet-ratio / contrastive: "mean" (default) and "sum"; with
    # mean_over="nonzero" (a count of non-zero terms) a local form for "sum" only
    "triplet+sum": ("triplet", {"reduction": "sum", "mean_over": "nonzero"}),
    "triplet+margin": ("triplet", {"margin": 1.5}),  # most triplets active
    "triplet_ratio+sum": ("triplet_ratio", {"reduction": "sum"}),
    "contrastive+sum": ("contrastive", {"reduction": "sum", "mean_over": "nonzero"}),
    "contrastive+cosine": ("contrastive", {"metric": "cosine", "pos_margin": 0.8,
                                           "neg_margin": 0.2, "power": 2.0}),
    "multi_similarity+sum": ("multi_similarity", {"reduction": "sum"}),
    # losslab.gradcache with DDP encoders (no_sync until each encoder's last chunk)
    "gradcache+clip": ("clip", {}),
    "gradcache+siglip": ("siglip", {}),
    "gradcache+supcon": ("supcon", {}),
    # DistributedLoss(CrossBatchMemory(...)): two steps, the second against the queue
    "memory+contrastive": ("contrastive", {}),
    "memory+supcon": ("supcon", {}),
}


def cases() -> list[str]:
    """``name:mode`` for every paired/embeddings loss of the registry (global, and local where
    the loss has a local form; ring for SigLIP) and the variants."""
    out = []
    names = [n for k in KINDS for n in losslab.available(kind=k)
             if not losslab.spec(n).needs_index]  # refused: per-sample state (test_modes)
    for name in [*names, *VARIANTS]:
        base = VARIANTS[name][0] if name in VARIANTS else name
        out.append(f"{name}:global")
        memory = name.startswith("memory+")  # CrossBatchMemory: global only (refused in local)
        if not memory and (base in LOCAL_FORMS or (
                name in VARIANTS and base in EMBEDDING_LOCAL
                and VARIANTS[name][1].get("reduction") == "sum")):
            out.append(f"{name}:local")
        if base == "siglip":
            out.append(f"{name}:ring")
    return out


def sizes_for(world: int) -> list[int]:
    """Per-rank rows: equal with 2 processes, unequal with 3."""
    return [4] * world if world == 2 else [3, 5, 4][:world]


class Net(nn.Module):
    def __init__(self, loss: nn.Module, paired: bool) -> None:
        super().__init__()
        self.fa = nn.Linear(D_IN, D_OUT, dtype=torch.float64)
        self.fb = nn.Linear(D_IN, D_OUT, dtype=torch.float64) if paired else None
        self.loss = loss

    def forward(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        if self.fb is not None:
            return self.loss(self.fa(x), self.fb(other))
        return self.loss(self.fa(x), other)


def build(name: str) -> tuple[losslab.registry.LossSpec, nn.Module]:
    base, extra = VARIANTS.get(name, (name, {}))
    s = losslab.spec(base)
    torch.manual_seed(0)
    hp = dict(s.example_hparams)
    if "embedding_dim" in hp:  # class-vector losses (proxies, EBV, ...): the encoder's width
        hp["embedding_dim"] = D_OUT
    return s, losslab.create(base, **{**hp, **extra}).double()


def data(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, D_IN, generator=g, dtype=torch.float64)
    y = x + 0.7 * torch.randn(n, D_IN, generator=g, dtype=torch.float64)
    labels = (torch.arange(n) % 3)[torch.randperm(n, generator=g)]
    return x, y, labels


def check_gradcache(case: str, rank: int, world: int) -> dict[str, float]:
    """GradCache (chunks of 2 rows) over DDP encoders and a distributed loss against the
    single-process direct step."""
    name, mode = case.split(":")
    s, loss = build(name)
    paired = s.kind == "paired"
    sizes = sizes_for(world)
    x, y, labels = data(sum(sizes))
    torch.manual_seed(0)
    encoders = [nn.Linear(D_IN, D_OUT, dtype=torch.float64) for _ in range(2 if paired else 1)]
    inputs = [x, y][: len(encoders)]
    extra = () if paired else (labels,)
    full = loss(*[e(i) for e, i in zip(encoders, inputs)], *extra)
    full.backward()
    expected = [p.grad for e in encoders for p in e.parameters()]
    lo, hi = sum(sizes[:rank]), sum(sizes[: rank + 1])
    ddps = [DDP(copy.deepcopy(e)) for e in encoders]
    for d in ddps:
        d.zero_grad(set_to_none=True)
    value = cached_backward(DistributedLoss(copy.deepcopy(loss), mode=mode), ddps,
                            [i[lo:hi] for i in inputs], chunk_size=2,
                            extra=[t[lo:hi] for t in extra])
    if mode != "global":
        dist.all_reduce(value)
        value /= world
    got = [p.grad for d in ddps for p in d.module.parameters()]
    grad_err = max(float((g - e).abs().max()) for g, e in zip(got, expected)
                   if g is not None and e is not None)
    assert all(g is not None for g in got)
    return {"value": float((value - full.detach()).abs()), "grad": grad_err,
            "scale": float(full.detach().abs()),
            "grad_scale": max(float(e.abs().max()) for e in expected if e is not None)}


def check_memory(case: str, rank: int, world: int) -> dict[str, float]:
    """Two steps of ``DistributedLoss(CrossBatchMemory(loss))`` against the memory on the
    full batches; the second step's gradient goes through the queue of the first."""
    name, mode = case.split(":")
    _, loss = build(name)
    sizes = sizes_for(world)
    lo, hi = sum(sizes[:rank]), sum(sizes[: rank + 1])
    torch.manual_seed(0)
    enc = nn.Linear(D_IN, D_OUT, dtype=torch.float64)
    ref_memory = CrossBatchMemory(loss, embedding_dim=D_OUT, memory_size=40).double()
    dist_memory = DistributedLoss(copy.deepcopy(ref_memory), mode=mode)
    ddp = DDP(copy.deepcopy(enc))
    value_err = grad_err = scale = grad_scale = 0.0
    for step in range(2):
        x, _, labels = data(sum(sizes) + step)  # a new batch each step
        x, labels = x[step:], labels[step:]
        enc.zero_grad(set_to_none=True)
        ddp.zero_grad(set_to_none=True)
        full = ref_memory(enc(x), labels)
        full.backward()
        value = dist_memory(ddp(x[lo:hi]), labels[lo:hi])
        value.backward()
        value_err = max(value_err, float((value - full).abs()))
        scale = max(scale, float(full.abs()))
        for p, q in zip(ddp.module.parameters(), enc.parameters()):
            assert p.grad is not None and q.grad is not None
            grad_err = max(grad_err, float((p.grad - q.grad).abs().max()))
            grad_scale = max(grad_scale, float(q.grad.abs().max()))
    return {"value": value_err, "grad": grad_err, "scale": scale, "grad_scale": grad_scale}


def check(case: str, rank: int, world: int) -> dict[str, float]:
    if case.startswith("gradcache+"):
        return check_gradcache(case, rank, world)
    if case.startswith("memory+"):
        return check_memory(case, rank, world)
    name, mode = case.split(":")
    s, loss = build(name)
    paired = s.kind == "paired"
    sizes = sizes_for(world)
    n = sum(sizes)
    x, y, labels = data(n)
    other = y if paired else labels
    torch.manual_seed(0)
    ref = Net(loss, paired)
    net = copy.deepcopy(ref)
    net.loss = DistributedLoss(copy.deepcopy(loss), mode=mode)

    torch.manual_seed(2)  # losses that draw random numbers draw the same ones
    full = ref(x, other)
    full.backward()
    expected: dict[str, torch.Tensor] = {}
    for k, p in ref.named_parameters():
        assert p.grad is not None, f"{case}: {k} has no gradient in the reference"
        expected[k.replace("loss.", "loss.loss.", 1) if k.startswith("loss.") else k] = p.grad

    ddp = DDP(net)
    lo, hi = sum(sizes[:rank]), sum(sizes[: rank + 1])
    torch.manual_seed(2)
    value = ddp(x[lo:hi], other[lo:hi])
    value.backward()
    mean_value = value.detach().clone()
    if mode != "global":  # the ranks' values average to the full-batch loss
        dist.all_reduce(mean_value)
        mean_value /= world
    grad_err = grad_scale = 0.0
    for k, p in net.named_parameters():
        assert p.grad is not None, f"{case}: {k} has no gradient"
        grad_err = max(grad_err, float((p.grad - expected[k]).abs().max()))
        grad_scale = max(grad_scale, float(expected[k].abs().max()))
    return {"value": float((mean_value - full.detach()).abs().max()), "grad": grad_err,
            "scale": float(full.detach().abs().max()), "grad_scale": grad_scale}


def check_gather(rank: int, world: int) -> dict[str, Any]:
    """all_gather_with_grad on unequal sizes: values, and each rank's rows receive the sum of
    all ranks' gradients."""
    sizes = sizes_for(world)
    lo, hi = sum(sizes[:rank]), sum(sizes[: rank + 1])
    full = torch.arange(sum(sizes) * 2, dtype=torch.float64).reshape(-1, 2)
    mine = full[lo:hi].clone().requires_grad_(True)
    gathered = all_gather_with_grad(mine)
    weights = torch.arange(gathered.numel(), dtype=torch.float64).reshape(gathered.shape)
    (gathered * weights * (rank + 1)).sum().backward()
    expected_grad = weights[lo:hi] * sum(r + 1 for r in range(world))
    assert mine.grad is not None
    labels = all_gather(torch.arange(lo, hi))
    # ranks that disagree in a dimension other than the rows: a ValueError on every rank
    try:
        all_gather_with_grad(torch.zeros(2, 3 + rank, requires_grad=True))
        mismatch = "no error"
    except ValueError as e:
        mismatch = str(e)
    # neighbour exchange around the ring, with the gradient sent back
    x = torch.full((rank + 1, 2), float(rank), dtype=torch.float64, requires_grad=True)
    left = (rank - 1) % world
    got = neighbour_exchange(x, (rank + 1) % world, left, (left + 1, 2))
    (got * (rank + 1)).sum().backward()
    assert x.grad is not None
    ring_grad = float((x.grad - ((rank + 1) % world + 1)).abs().max())
    return {"value": float((gathered - full).abs().max()),
            "grad": float((mine.grad - expected_grad).abs().max()),
            "labels": float((labels - torch.arange(sum(sizes))).abs().max()),
            "ring_value": float((got - left).abs().max()), "ring_grad": ring_grad,
            "mismatch": mismatch}


def main(rank: int, world: int, port: int, out: str, selected: list[str]) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=timedelta(seconds=60))
    results: dict[str, Any] = {}
    try:
        results["all_gather_with_grad"] = check_gather(rank, world)
        for case in selected:
            try:
                results[case] = check(case, rank, world)
            except Exception as e:  # recorded, so the test names the failing case
                results[case] = {"error": f"{type(e).__name__}: {e}"}
                raise
    finally:
        Path(out, f"rank{rank}.json").write_text(json.dumps(results))
        dist.destroy_process_group()
