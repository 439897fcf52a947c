"""Batch-level losses across processes: the ``global``, ``local`` and ``ring`` modes.

:class:`DistributedLoss` wraps any registered loss of kind ``paired`` or ``embeddings`` (or a
loss built by ``losslab.create``) so that ``W`` processes, each holding ``n_r`` rows of a
global batch of ``N = sum_r n_r``, train as if one process held the whole batch:

- ``global``: every rank gathers all rows (:func:`~losslab.distributed.gather.
  all_gather_with_grad`) and computes the full-batch loss ``L``. Works for every loss.
- ``local`` (open_clip's ``local_loss``): rank ``r`` computes only its own rows' terms
  against the gathered columns, ``L_r = (W / N) sum_{i in r} l_i`` for ``reduction="mean"``
  (``W sum_{i in r} l_i`` for ``"sum"``), so that ``(1/W) sum_r L_r = L``. Needs a
  row-decomposable loss (:data:`LOCAL_FORMS`): InfoNCE (both directions), CLIP, SigLIP, the
  per-row losses (alignment, cosine alignment, the proxy-softmax heads), and the
  ``embeddings`` losses with a query/reference split (:data:`EMBEDDING_LOCAL`: this rank's
  anchors against the gathered batch as ``ref_embeddings``, every pair but an anchor with its
  own row; the ``"mean"`` divided by the all-reduced count of its denominator -- anchors for
  multi-similarity, circle, lifted structure, SupCon; valid triplets for triplet (batch all)
  and triplet-ratio; positive and negative pairs, each part by its own count, for contrastive.
  Their ``mean_over="nonzero"`` counts non-zero terms, which the local terms do not carry:
  ``"sum"`` only).
- ``ring`` (SigLIP only, arXiv 2303.15343 section 3.3): no all-gather; the ``b`` chunks travel
  around the ring (``W - 1`` neighbour exchanges) and each rank sums its rows' sigmoid terms
  chunk by chunk. Same value and gradient as ``local``.

The gradient contract. DDP averages the parameter gradients over the ranks. The gathers'
backward sums each row's gradient over the ranks, so rank ``r``'s rows receive
``sum_s dL_s/dx_r``. In ``global`` mode every ``L_s = L``: that is ``W dL/dx_r``, and DDP's
``1/W`` brings it back to ``dL/dtheta``. In ``local``/``ring`` mode ``sum_s L_s = W L``: the
same. A loss's own parameters (a learned temperature, proxies) see ``dL_r/dphi`` on each rank,
averaged by DDP to ``dL/dphi`` in both modes. So **with DDP the parameter gradients equal the
single-process full batch**, for equal and unequal per-rank batches, with no ``world_size``
factor for the user to add (and none to forget). The value returned: ``L`` on every rank in
``global`` mode; in ``local`` mode this rank's ``L_r`` (with equal batches and
``reduction="mean"`` the mean over the local rows, as open_clip reports), whose mean over
ranks is ``L``. ``reduction="none"`` returns the full batch's terms (``global``) or the local
rows' unscaled terms (``local``).

Without a process group (or with one process) the wrapper calls the loss unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from losslab._ops.paired import prepare_paired
from losslab.distances import normalize_rows
from losslab.distributed.gather import (
    all_gather,
    all_gather_sizes,
    all_gather_with_grad,
    neighbour_exchange,
    rank_and_world,
)
from losslab.kernels.tiled_contrastive import rows_for_budget
from losslab.registry import LossSpec, create

__all__ = [
    "EMBEDDING_LOCAL",
    "LOCAL_FORMS",
    "MODES",
    "POINTWISE",
    "DistributedLoss",
    "distributed",
]

MODES: tuple[str, ...] = ("global", "local", "ring")

#: Losses whose terms belong to single rows and use no other row (the batch-mean of a per-row
#: value): their ``local`` form is the loss of the local rows, with no gather at all.
POINTWISE: frozenset[str] = frozenset({
    "alignment", "cosine_alignment", "arcface", "cosface", "normalized_softmax", "proxy_nca",
})

#: ``embeddings`` losses with a query/reference split (``ref_embeddings=``, ``ref_labels=``,
#: ``indices=``) whose per-anchor terms against the whole batch are the full-batch terms: their
#: ``local`` form is this rank's anchors against the gathered batch (each anchor's own copy is
#: no positive). The value is the ``"mean"`` denominator, all-reduced over the ranks:
#: ``"anchors"`` (every anchor), ``"pos_neg"`` (anchors with a positive and a negative in the
#: batch), ``"triplets"`` (the valid triplets: the sum over anchors of positives x negatives),
#: ``"pairs"`` (contrastive's mean over positive pairs plus mean over negative pairs: each
#: part's sum by its own pair count); ``None``: no local ``"mean"``. With
#: ``mean_over="nonzero"`` (a count of non-zero terms, which the local terms do not carry)
#: only ``reduction="sum"``/``"none"`` have a local form; triplet's local form is its
#: batch-all strategy (``strategy="all"``, the default).
EMBEDDING_LOCAL: dict[str, str | None] = {
    "multi_similarity": "anchors",
    "circle": "pos_neg",
    "lifted_structure": "pos_neg",
    "supcon": "pos_neg",
    "triplet": "triplets",
    "triplet_ratio": "triplets",
    "contrastive": "pairs",
}

#: Losses with a ``local`` form at their default ``reduction="mean"``: the row-decomposable
#: contrastive losses (local rows against gathered columns), :data:`POINTWISE` and the
#: :data:`EMBEDDING_LOCAL` losses with an anchor count (the others have a local form for
#: ``reduction="sum"`` and ``"none"`` only).
LOCAL_FORMS: frozenset[str] = (frozenset({"infonce", "clip", "siglip"}) | POINTWISE
                               | {k for k, v in EMBEDDING_LOCAL.items() if v is not None})

#: Row count from which the local forms work in row tiles of a fused backward (as the losses' own
#: automatic tiling, ``contrastive_ssl.AUTO_TILE_FROM``).
AUTO_TILE_FROM = 8192

_KINDS = ("paired", "embeddings")


# --------------------------------------------------------------------------------------------
# Row terms of local rows against gathered columns, in row tiles (one fused autograd Function)
# --------------------------------------------------------------------------------------------


class _LocalRows(torch.autograd.Function):
    """``row_i = f(l_i.) - [pos_i >= 0] l_{i, pos_i}`` for ``l = scale q k^T (+ bias)``: rows
    of ``q`` (this rank's) against every column ``k`` (gathered), the positive of row ``i`` at
    column ``pos_i`` (``-1``: none). ``f = logsumexp`` (InfoNCE / CLIP rows) or
    ``sum_j softplus`` (SigLIP: ``softplus(-l) = softplus(l) - l`` on the positive).

    Row tiles of ``tile`` rows: one GEMM per tile forward; the backward recomputes each tile's
    probabilities (``exp(l - lse)`` or ``sigmoid(l)``) and does the two gradient GEMMs, so only
    one ``tile x M`` block is alive at a time and ``O(n)`` statistics are saved."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, pos: Tensor, scale: Tensor,  # type: ignore[override]
                bias: Tensor, tile: int, sigmoid: bool) -> Tensor:
        n = q.shape[0]
        vals = q.new_empty(n)
        for r0 in range(0, n, tile):
            blk = torch.mm(q[r0 : r0 + tile], k.t()).mul_(scale)
            if sigmoid:
                vals[r0 : r0 + tile] = F.softplus(blk.add_(bias)).sum(1)
            else:
                vals[r0 : r0 + tile] = torch.logsumexp(blk, 1)
        has, idx = pos >= 0, pos.clamp_min(0)
        positive = (q * k[idx]).sum(1) * scale + (bias if sigmoid else 0.0)
        ctx.save_for_backward(q, k, pos, scale, bias, vals)
        ctx.tile, ctx.sigmoid = tile, sigmoid
        return vals - torch.where(has, positive, torch.zeros_like(positive))

    @staticmethod
    @once_differentiable
    def backward(ctx, g: Tensor):  # type: ignore[override]
        q, k, pos, scale, bias, vals = ctx.saved_tensors
        tile, sigmoid = ctx.tile, ctx.sigmoid
        s = float(scale)
        dq, dk = torch.empty_like(q), torch.zeros_like(k)
        d_scale, d_bias = q.new_zeros(()), q.new_zeros(())
        for r0 in range(0, q.shape[0], tile):
            qt, gt = q[r0 : r0 + tile], g[r0 : r0 + tile]
            blk = torch.mm(qt, k.t()).mul_(scale)
            if sigmoid:
                probs = blk.add_(bias).sigmoid_()
                d_bias += (probs.sum(1) * gt).sum()
            else:
                probs = blk.sub_(vals[r0 : r0 + tile, None]).exp_()
            probs.mul_(gt[:, None])
            pk = torch.mm(probs, k)  # sum_j g_i P_ij k_j
            d_scale += (pk * qt).sum()  # sum_ij g_i P_ij (q_i . k_j)
            dq[r0 : r0 + tile] = pk.mul_(s)
            dk.addmm_(probs.t(), qt, alpha=s)
        has, idx = pos >= 0, pos.clamp_min(0)
        gp = torch.where(has, g, torch.zeros_like(g))
        kp = k[idx]
        dq.addcmul_(kp, (gp * s)[:, None], value=-1.0)
        dk.index_add_(0, idx, q * (gp * -s)[:, None])
        d_scale -= (gp * (q * kp).sum(1)).sum()
        d_bias -= gp.sum()
        return (dq, dk, None, d_scale.reshape(scale.shape),
                d_bias.reshape(bias.shape) if sigmoid else None, None, None)


def _local_rows(q: Tensor, keys: Tensor, pos: Tensor, scale: Tensor, bias: Tensor | None, *,
                tile: int | None) -> Tensor:
    """:class:`_LocalRows` (SigLIP rows when ``bias`` is given, else InfoNCE rows)."""
    sigmoid = bias is not None
    b = bias if bias is not None else torch.zeros((), dtype=q.dtype, device=q.device)
    rows = q.shape[0] if tile is None else tile
    return _LocalRows.apply(q, keys, pos, scale, b, max(1, rows), sigmoid)


def _tile_for(chunk_size: int | None, q: Tensor, cols: int) -> int | None:
    if chunk_size is not None:
        return chunk_size
    if cols < AUTO_TILE_FROM:
        return None
    return rows_for_budget(cols, q.element_size())


def _scale(temperature: float | Tensor, like: Tensor) -> Tensor:
    if isinstance(temperature, Tensor):
        return (1.0 / temperature.reshape(())).to(like.dtype)
    return torch.tensor(1.0 / temperature, dtype=like.dtype, device=like.device)


def _scalar(value: float | Tensor, like: Tensor) -> Tensor:
    if isinstance(value, Tensor):
        return value.reshape(()).to(like.dtype)
    return torch.tensor(float(value), dtype=like.dtype, device=like.device)


def _all_reduce_sum(t: Tensor, group: Any) -> Tensor:
    """The sum over the ranks of a constant (a count: no gradient)."""
    out = t.detach().clone()
    torch.distributed.all_reduce(out, group=group)
    return out


def _reduce_local(terms: Tensor, reduction: str, world: int, total: int) -> Tensor:
    """This rank's share, scaled so that the mean over ranks is the full-batch loss."""
    if reduction == "none":
        return terms
    if reduction == "sum":
        return terms.sum() * world
    return terms.sum() * (world / max(total, 1))


# --------------------------------------------------------------------------------------------
# The wrapper
# --------------------------------------------------------------------------------------------


class DistributedLoss(nn.Module):
    """A batch-level loss computed over the batches of all ranks (see the module docstring).

    Args:
        loss: a registered loss module (``losslab.create(...)``) of kind ``paired`` or
            ``embeddings``, or its registry name (then ``hparams`` build it).
        mode: ``"global"`` (default; every loss), ``"local"`` (:data:`LOCAL_FORMS`) or
            ``"ring"`` (``siglip`` only).
        group: the ``torch.distributed`` process group (default: the world).
        hparams: hyperparameters when ``loss`` is a name.

    Call it as the wrapped loss: ``(a, b)`` for ``paired``, ``(embeddings, labels)`` for
    ``embeddings``, each rank with its own rows (numbers of rows may differ between ranks).
    ``index=`` (dataset ids, losses with per-sample state) is gathered with the rows.
    ``ref_embeddings``, ``ref_labels`` and miner ``indices`` are not accepted: wrap a
    :class:`losslab.memory.CrossBatchMemory` in this class, not the other way round, and
    mine on the gathered batch inside the loss.

    Raises:
        ValueError: ``mode`` unknown, ``local`` for a loss without a local form, ``ring`` for
            a loss other than SigLIP, or a loss of another kind.
    """

    def __init__(self, loss: nn.Module | str, *, mode: str = "global", group: Any = None,
                 **hparams: Any) -> None:
        super().__init__()
        if isinstance(loss, str):
            loss = create(loss, **hparams)
        elif hparams:
            raise ValueError(f"hparams {sorted(hparams)} are only accepted with a loss name; "
                             f"got a built module {type(loss).__name__}")
        spec: LossSpec | None = getattr(loss, "spec", None)
        if not isinstance(loss, nn.Module) or spec is None:
            raise ValueError(f"loss must be a registered losslab loss module or its name, got "
                             f"{type(loss).__name__}")
        if spec.kind not in _KINDS:
            raise ValueError(f"loss must be of kind {' or '.join(_KINDS)} (a batch-level loss); "
                             f"{spec.name} is of kind {spec.kind!r}")
        if spec.needs_index:
            raise ValueError(
                f"{spec.name} keeps per-sample state addressed by index= (dataset ids); its "
                f"buffers would diverge across ranks, so it is not wrapped for multi-process "
                f"use")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if (mode == "local" and spec.kind == "embeddings" and spec.name not in POINTWISE
                and not hasattr(type(loss), "function")):
            raise ValueError(
                f"mode='local' takes the {spec.name} loss itself, not a wrapper "
                f"({type(loss).__name__}): a CrossBatchMemory is its own reference set, wrap it "
                f"with mode='global'")
        loss_hp = dict(getattr(loss, "hparams", {}))
        reduction = str(loss_hp.get("reduction", "mean"))
        if mode == "local" and spec.name in EMBEDDING_LOCAL and reduction == "mean" and (
                EMBEDDING_LOCAL[spec.name] is None or loss_hp.get("mean_over") == "nonzero"):
            raise ValueError(
                f"mode='local' for {spec.name}: its reduction='mean' with mean_over='nonzero' "
                f"divides by the number of non-zero terms of the whole batch, which the local "
                f"anchors' terms do not carry; use mean_over='all', reduction='sum' (local "
                f"forms) or mode='global'")
        if mode == "local" and spec.name == "triplet" and loss_hp.get("strategy",
                                                                        "all") != "all":
            raise ValueError(
                f"mode='local' for triplet takes strategy='all' (every triplet of this rank's "
                f"anchors against the gathered batch); strategy={loss_hp.get('strategy')!r} "
                f"selects triplets per anchor over the whole batch: use mode='global'")
        if mode == "local" and spec.name not in LOCAL_FORMS | EMBEDDING_LOCAL.keys():
            raise ValueError(
                f"mode='local' needs a row-decomposable loss ({', '.join(sorted(LOCAL_FORMS))}"
                f"); {spec.name}'s terms depend on the whole batch or it has no "
                f"query/reference split (use mode='global')")
        if mode == "ring" and spec.name != "siglip":
            raise ValueError(f"mode='ring' is SigLIP's neighbour exchange (loss 'siglip'), "
                             f"got {spec.name!r}")
        self.loss = loss
        self.spec = spec
        self.mode = mode
        self.group = group

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"

    # ---- entry point -------------------------------------------------------------------

    def forward(self, *inputs: Tensor, ref_embeddings: Tensor | None = None,
                ref_labels: Tensor | None = None, indices: Any = None,
                index: Tensor | None = None) -> Tensor:
        if len(inputs) != 2:
            raise ValueError(f"{self.spec.name}: expected 2 inputs ({self.spec.kind} kind), "
                             f"got {len(inputs)}")
        for name, value in (("ref_embeddings", ref_embeddings), ("ref_labels", ref_labels),
                            ("indices", indices)):
            if value is not None:
                raise ValueError(f"DistributedLoss takes no {name}= (gather first: wrap a "
                                 f"CrossBatchMemory or mine inside the loss)")
        x, y = inputs
        keywords = {} if index is None else {"index": index}
        _, world = rank_and_world(self.group)
        if world == 1:
            return self.loss(x, y, **keywords)
        if self.mode == "global":
            return self._global(x, y, index)
        if self.spec.name in POINTWISE:
            return self._pointwise(x, y, index)
        if self.mode == "ring":
            return self._ring(x, y)
        if self.spec.kind == "embeddings":
            return self._local_embeddings(x, y)
        return self._local(x, y)

    # ---- modes --------------------------------------------------------------------------

    def _global(self, x: Tensor, y: Tensor, index: Tensor | None) -> Tensor:
        sizes = all_gather_sizes(x, self.group)
        gx = all_gather_with_grad(x, self.group, sizes=sizes)
        if self.spec.kind == "paired":
            if y.shape[0] != x.shape[0]:
                raise ValueError(f"a and b must have the same number of rows, got "
                                 f"{x.shape[0]} and {y.shape[0]}")
            gy = all_gather_with_grad(y, self.group, sizes=sizes)
        else:
            if not isinstance(y, Tensor) or y.shape[:1] != x.shape[:1]:
                raise ValueError(f"labels must be a tensor of {x.shape[0]} labels, one per "
                                 f"row of embeddings")
            gy = all_gather(y, self.group, sizes=sizes)
        keywords = {} if index is None else {"index": all_gather(index, self.group,
                                                                 sizes=sizes)}
        return self.loss(gx, gy, **keywords)

    def _reduction(self) -> str:
        return str(self.loss.hparams.get("reduction", "mean"))  # type: ignore[union-attr]

    def _pointwise(self, x: Tensor, y: Tensor, index: Tensor | None) -> Tensor:
        rank, world = rank_and_world(self.group)
        sizes = all_gather_sizes(x, self.group)
        keywords = {} if index is None else {"index": index}
        value = self.loss(x, y, **keywords)
        reduction = self._reduction()
        if reduction == "none":
            return value
        n, total = sizes[rank], sum(sizes)
        if reduction == "sum":
            return value * world
        return value * (world * n / max(total, 1))

    def _hyper(self) -> dict[str, Any]:
        return self.loss.call_kwargs()  # type: ignore[operator]

    def _local(self, a: Tensor, b: Tensor) -> Tensor:
        rank, world = rank_and_world(self.group)
        a, b = prepare_paired(a, b, normalize=False)
        kw = self._hyper()
        sizes = all_gather_sizes(a, self.group)
        total, offset = sum(sizes), sum(sizes[:rank])
        ga = all_gather_with_grad(a, self.group, sizes=sizes)
        gb = all_gather_with_grad(b, self.group, sizes=sizes)
        if kw["normalize"]:
            a, b, ga, gb = (normalize_rows(t) for t in (a, b, ga, gb))
        scale = _scale(kw["temperature"], a)
        pos = torch.arange(offset, offset + a.shape[0], device=a.device)
        tile = _tile_for(kw.get("chunk_size"), a, total)
        if self.spec.name == "siglip":
            bias = _scalar(kw["bias"], a)
            terms = _local_rows(a, gb, pos, scale, bias, tile=tile)
        else:
            terms = _local_rows(a, gb, pos, scale, None, tile=tile)
            if self.spec.name == "clip" or kw.get("symmetric", False):
                col = _local_rows(b, ga, pos, scale, None, tile=tile)
                terms = (terms + col) / 2
        return _reduce_local(terms, kw["reduction"], world, total)

    def _local_embeddings(self, x: Tensor, labels: Tensor) -> Tensor:
        """This rank's anchors against the gathered batch as the reference set, every
        (anchor, reference) pair labelled by the labels except each anchor with its own row;
        the ``"mean"`` over the anchor count of :data:`EMBEDDING_LOCAL`, all-reduced."""
        rank, world = rank_and_world(self.group)
        if not isinstance(labels, Tensor) or labels.shape[:1] != x.shape[:1]:
            raise ValueError(f"labels must be a tensor of {x.shape[0]} labels, one per row of "
                             f"embeddings")
        sizes = all_gather_sizes(x, self.group)
        offset = sum(sizes[:rank])
        gx = all_gather_with_grad(x, self.group, sizes=sizes)
        gy = all_gather(labels, self.group, sizes=sizes)
        own = torch.arange(offset, offset + x.shape[0], device=x.device)
        same = labels[:, None] == gy[None, :]
        a1, p = same.nonzero(as_tuple=True)
        keep = p != own[a1]
        a2, n = (~same).nonzero(as_tuple=True)
        fn = type(self.loss).function  # type: ignore[union-attr]
        a1, p = a1[keep], p[keep]
        reduction = self._reduction()
        denominator = EMBEDDING_LOCAL[self.spec.name]
        if reduction == "mean" and denominator == "pairs":
            # contrastive: mean over the positive pairs + mean over the negative pairs
            kw = {**self._hyper(), "reduction": "sum"}
            empty = a1[:0]
            parts = []
            for idx, count_local in (((a1, p, empty, empty), a1.numel()),
                                     ((empty, empty, a2, n), a2.numel())):
                part = fn(x, labels, ref_embeddings=gx, ref_labels=gy, indices=idx, **kw)
                count = _all_reduce_sum(torch.tensor(float(count_local), dtype=part.dtype,
                                                     device=part.device), self.group)
                safe = torch.where(count > 0, count, torch.ones_like(count))
                parts.append(torch.where(count > 0, part * world / safe, part * 0.0))
            return parts[0] + parts[1]
        kw = {**self._hyper(), "reduction": "none"}
        terms = fn(x, labels, ref_embeddings=gx, ref_labels=gy, indices=(a1, p, a2, n), **kw)
        if reduction == "none":
            return terms
        if reduction == "sum":
            return terms.sum() * world
        if denominator == "anchors":
            count = torch.tensor(float(sum(sizes)), dtype=terms.dtype, device=terms.device)
        elif denominator == "triplets":  # the sum over local anchors of positives x negatives
            n_pos = torch.zeros(x.shape[0], dtype=terms.dtype, device=x.device).index_add_(
                0, a1, torch.ones_like(a1, dtype=terms.dtype))
            count = (n_pos * (~same).sum(1).to(terms.dtype)).sum()
            count = _all_reduce_sum(count, self.group)
        else:  # anchors with a positive (not itself) and a negative in the whole batch
            has_pos = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
            has_pos[a1] = True
            has_neg = (~same).any(1)
            count = (has_pos & has_neg).sum().to(terms.dtype)
            count = _all_reduce_sum(count, self.group)
        safe = torch.where(count > 0, count, torch.ones_like(count))
        return torch.where(count > 0, terms.sum() * world / safe, terms.sum() * 0.0)

    def _ring(self, a: Tensor, b: Tensor) -> Tensor:
        rank, world = rank_and_world(self.group)
        a, b = prepare_paired(a, b, normalize=False)
        kw = self._hyper()
        sizes = all_gather_sizes(a, self.group)
        total = sum(sizes)
        if kw["normalize"]:
            a, b = normalize_rows(a), normalize_rows(b)
        scale, bias = _scale(kw["temperature"], a), _scalar(kw["bias"], a)
        tile = _tile_for(kw.get("chunk_size"), a, max(sizes))
        own = torch.arange(a.shape[0], device=a.device)
        none = torch.full_like(own, -1)
        terms = _local_rows(a, b, own, scale, bias, tile=tile)
        chunk = b
        for step in range(1, world):
            sender = (rank - step) % world  # whose b arrives at this step
            chunk = neighbour_exchange(chunk, (rank + 1) % world, (rank - 1) % world,
                                       (sizes[sender], *b.shape[1:]), group=self.group)
            terms = terms + _local_rows(a, chunk, none, scale, bias, tile=tile)
        return _reduce_local(terms, kw["reduction"], world, total)


def distributed(loss: nn.Module | str, *, mode: str = "global", group: Any = None,
                **hparams: Any) -> DistributedLoss:
    """``DistributedLoss(loss, mode=mode, group=group, **hparams)``."""
    return DistributedLoss(loss, mode=mode, group=group, **hparams)
