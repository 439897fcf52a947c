"""Collectives with autograd on ``torch.distributed``: all-gather and neighbour exchange.

:func:`all_gather_with_grad` concatenates every rank's rows (ranks may hold different numbers
of rows: the sizes are gathered first and the rows padded to the largest). Its backward pass
sums the gathered tensor's gradient over the ranks (one all-reduce) and hands each rank the
slice of its own rows: rank ``r``'s rows receive ``sum_s d L_s / d x_r``, the gradient of
every rank's loss with respect to them. That is the gradient the two distributed modes need
(``losslab.distributed.modes``): with DDP averaging the parameter gradients over ``W`` ranks,
``(1/W) sum_r sum_s dL_s/dx_r dx_r/dtheta`` is the single-process gradient exactly when the
ranks' losses average to the full-batch loss. ``torch.distributed.nn.all_gather`` has the same
backward for equal sizes; the variant whose backward keeps only the local rank's own gradient
(no communication) is short by the factor ``W`` unless the loss is multiplied by ``W`` -- the
``1/world_size`` bug of lightly's ``GatherLayer`` users.

:func:`neighbour_exchange` sends a tensor to one rank and receives one from another (SigLIP's
ring, arXiv 2303.15343 section 3.3); its backward sends the gradient the opposite way.

Without an initialised process group (or with one process) every function is the identity.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = [
    "all_gather",
    "all_gather_sizes",
    "all_gather_with_grad",
    "is_distributed",
    "neighbour_exchange",
    "rank_and_world",
]

#: Longest shape :func:`all_gather_sizes` can exchange.
MAX_DIMS = 8


def is_distributed(group: Any = None) -> bool:
    """Whether a process group with more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def rank_and_world(group: Any = None) -> tuple[int, int]:
    """``(rank, world_size)`` in ``group``; ``(0, 1)`` without a process group."""
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def all_gather_sizes(x: Tensor, group: Any = None) -> list[int]:
    """Every rank's number of rows of ``x`` (one small all-gather of the shapes).

    Raises:
        ValueError: when the ranks' tensors differ in anything but their number of rows
            (every rank raises, so none is left waiting in a collective).
    """
    rank, world = rank_and_world(group)
    if world == 1:
        return [x.shape[0]]
    if x.dim() == 0 or x.dim() > MAX_DIMS:
        raise ValueError(f"x must have 1 to {MAX_DIMS} dimensions, got shape {tuple(x.shape)}")
    mine = torch.full((MAX_DIMS + 1,), -1, dtype=torch.int64, device=x.device)
    mine[0] = x.dim()
    mine[1 : 1 + x.dim()] = torch.tensor(x.shape, dtype=torch.int64)
    shapes = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(shapes, mine, group=group)
    rows = [tuple(s.tolist()) for s in shapes]
    tails = {r[2 : 1 + r[0]] if r[0] >= 1 else () for r in rows}
    dims = {r[0] for r in rows}
    if len(dims) > 1 or len(tails) > 1:
        described = ", ".join(f"rank {i}: {tuple(r[1 : 1 + r[0]])}" for i, r in enumerate(rows))
        raise ValueError(
            f"the ranks' tensors must agree in every dimension but the first (rows); got "
            f"{described} (this is rank {rank})")
    return [int(r[1]) for r in rows]


def _gather_padded(x: Tensor, sizes: list[int], group: Any) -> Tensor:
    world = len(sizes)
    top = max(sizes)
    x = x.contiguous()
    if x.shape[0] < top:
        pad = x.new_zeros((top - x.shape[0], *x.shape[1:]))
        x = torch.cat([x, pad])
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x, group=group)
    return torch.cat([p[:n] for p, n in zip(parts, sizes)])


class _AllGather(torch.autograd.Function):
    """All-gather whose backward sums the gradient over ranks and keeps the own rows."""

    @staticmethod
    def forward(ctx, x: Tensor, sizes: list[int], rank: int,  # type: ignore[override]
                group: Any) -> Tensor:
        ctx.sizes, ctx.rank, ctx.group = sizes, rank, group
        return _gather_padded(x, sizes, group)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        total = grad.contiguous().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=ctx.group)
        start = sum(ctx.sizes[: ctx.rank])
        return total[start : start + ctx.sizes[ctx.rank]], None, None, None


def all_gather_with_grad(x: Tensor, group: Any = None, *,
                         sizes: list[int] | None = None) -> Tensor:
    """Concatenate every rank's ``x`` along dim 0 (rank order), differentiably.

    Args:
        x: ``[n_r, ...]`` this rank's rows; the other dimensions must agree across ranks, the
            number of rows may differ (gathered first, then padded).
        group: the process group (default: the world).
        sizes: every rank's number of rows, when already known (skips one collective).

    Returns:
        ``[sum_r n_r, ...]``. Backward: rank ``r``'s rows receive the sum over all ranks of
        the gradient with respect to them (see the module docstring for why that is the
        factor DDP's averaging needs).
    """
    rank, world = rank_and_world(group)
    if world == 1:
        return x
    sizes = all_gather_sizes(x, group) if sizes is None else sizes
    if x.requires_grad:
        return _AllGather.apply(x, sizes, rank, group)
    return _gather_padded(x, sizes, group)


def all_gather(x: Tensor, group: Any = None, *, sizes: list[int] | None = None) -> Tensor:
    """All-gather without gradient (labels, dataset ids): ``[sum_r n_r, ...]``."""
    _, world = rank_and_world(group)
    if world == 1:
        return x
    sizes = all_gather_sizes(x, group) if sizes is None else sizes
    return _gather_padded(x.detach(), sizes, group)


def _exchange(x: Tensor, to_rank: int, from_rank: int, shape: tuple[int, ...],
              group: Any) -> Tensor:
    """Send ``x`` to ``to_rank`` and receive a tensor of ``shape`` from ``from_rank`` (ranks in
    ``group``)."""
    out = x.new_empty(shape)
    to_global = dist.get_global_rank(group, to_rank) if group is not None else to_rank
    from_global = dist.get_global_rank(group, from_rank) if group is not None else from_rank
    send = dist.isend(x.contiguous(), to_global, group=group)
    recv = dist.irecv(out, from_global, group=group)
    for req in (send, recv):
        if req is not None:
            req.wait()
    return out


class _NeighbourExchange(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, to_rank: int, from_rank: int,  # type: ignore[override]
                shape: tuple[int, ...], group: Any) -> Tensor:
        ctx.to_rank, ctx.from_rank, ctx.shape, ctx.group = to_rank, from_rank, tuple(x.shape), group
        return _exchange(x, to_rank, from_rank, shape, group)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        # the gradient of what we received goes back to its sender; ours comes from to_rank
        back = _exchange(grad, ctx.from_rank, ctx.to_rank, ctx.shape, ctx.group)
        return back, None, None, None, None


def neighbour_exchange(x: Tensor, to_rank: int, from_rank: int, shape: tuple[int, ...], *,
                       group: Any = None) -> Tensor:
    """Send ``x`` to ``to_rank``, return the tensor of ``shape`` received from ``from_rank``.

    Differentiable: the backward sends the received tensor's gradient back to ``from_rank``
    and returns the gradient that ``to_rank`` computed for ``x``. Every rank must call it in
    the same step (a ring: ``to_rank = rank + 1``, ``from_rank = rank - 1`` modulo ``W``).
    """
    if x.requires_grad:
        return _NeighbourExchange.apply(x, to_rank, from_rank, tuple(shape), group)
    return _exchange(x.detach(), to_rank, from_rank, tuple(shape), group)
