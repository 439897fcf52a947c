"""Cross-batch memory: a FIFO queue of past embeddings used as the reference set of a
metric-learning loss.

Wang, Zhang, Huang, Scott, "Cross-Batch Memory for Embedding Learning", arXiv 1912.06798
(XBM): embeddings drift slowly after the first epochs, so the embeddings of the last ``M``
samples (``M`` much larger than the batch) are good-enough references; mining pairs against
them gives far more (hard) negatives per step at no encoder cost. Semantics of
pytorch-metric-learning's ``CrossBatchMemory`` (its ``memory_size``, ``enqueue_mask`` and the
removal of self-comparisons):

1. the batch's embeddings (detached) and labels are written into the queue (a ring buffer of
   ``memory_size`` rows, oldest overwritten first);
2. the wrapped loss is called with the batch as ``embeddings`` and the filled part of the queue
   as ``ref_embeddings`` / ``ref_labels``, and with ``indices=`` every (anchor, reference) pair
   labelled by the labels -- except each anchor against its own copy in the queue.

So on the first call (empty queue) the value is the wrapped loss of the batch alone; gradients
flow through the anchors only (the queue is detached). ``enqueue_mask`` (bool ``[N]``) splits
the batch: masked rows only enter the queue, the others are only anchors (no self-comparison
to remove). The queue lives in buffers (``state_dict()`` saves it).

Works with every ``embeddings`` loss that compares pairs (triplet, contrastive,
multi_similarity, circle, supcon, ...); proxy losses (``num_classes=``) have no use for a
reference set and are refused. Across processes, wrap the memory in
:class:`losslab.distributed.DistributedLoss` (``global`` mode): every rank enqueues the
gathered batch, so the ranks' queues stay identical.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from losslab._core import check_labels, check_matrix

__all__ = ["CrossBatchMemory"]


class CrossBatchMemory(nn.Module):
    """A registered ``embeddings``-kind loss against a FIFO memory of past embeddings.

    Args:
        loss: the wrapped loss module (``losslab.create("contrastive")``, ...).
        embedding_dim: ``D``, the width of the stored embeddings.
        memory_size: ``M``, the number of past embeddings kept (PML's default 1024).
        miner: optional ``miner(embeddings, labels, *, ref_embeddings, ref_labels)`` returning
            pairs ``(a1, p, a2, n)`` or triplets ``(a, p, n)`` against the memory (e.g.
            :func:`losslab.miners.multi_similarity`); default every labelled pair. Either way
            the anchors' own copies are then removed from the positives, as PML does. A loss
            that mines internally (``multi_similarity`` with ``mining=True``) gets the
            memory's pairs and does not mine (as with ``indices=``): pass its miner here.

    Call: ``memory(embeddings[N, D], labels[N], *, enqueue_mask=None)``; ``N <= M``.

    Raises:
        ValueError: a loss that is not of kind ``embeddings``, a proxy loss, a bad
            ``memory_size``, or inputs of the wrong shape.
    """

    embedding_memory: Tensor
    label_memory: Tensor
    queue_idx: Tensor
    filled: Tensor

    def __init__(self, loss: nn.Module, *, embedding_dim: int, memory_size: int = 1024,
                 miner: Callable[..., tuple[Tensor, ...]] | None = None) -> None:
        super().__init__()
        spec = getattr(loss, "spec", None)
        if spec is None or spec.kind != "embeddings":
            raise ValueError(f"loss must be a registered loss of kind 'embeddings', got "
                             f"{getattr(spec, 'name', type(loss).__name__)}"
                             + (f" of kind {spec.kind!r}" if spec is not None else ""))
        keywords = getattr(type(loss), "_call_keywords", ())
        if "ref_embeddings" not in keywords or "indices" not in keywords:
            raise ValueError(f"{spec.name} takes no ref_embeddings= and indices= (a pair-based "
                             f"loss over anchors and references), so it cannot be compared "
                             f"with a memory of past embeddings")
        if (getattr(loss, "proxies", None) is not None
                or getattr(loss, "hparams", {}).get("num_classes") is not None):
            raise ValueError(f"{spec.name} with num_classes= compares embeddings to proxies; "
                             f"a memory of past embeddings needs a pair-based loss")
        for name, value in (("embedding_dim", embedding_dim), ("memory_size", memory_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.loss = loss
        self.miner = miner
        self.memory_size = memory_size
        self.embedding_dim = embedding_dim
        self.register_buffer("embedding_memory", torch.zeros(memory_size, embedding_dim))
        self.register_buffer("label_memory", torch.zeros(memory_size, dtype=torch.long))
        self.register_buffer("queue_idx", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.bool))

    @property
    def spec(self) -> Any:
        """The wrapped loss's registry record (so that ``DistributedLoss`` can wrap the memory;
        a property, not an attribute, so that the module deep-copies)."""
        return self.loss.spec

    def extra_repr(self) -> str:
        return f"embedding_dim={self.embedding_dim}, memory_size={self.memory_size}"

    def reset(self) -> None:
        """Empty the queue."""
        self.embedding_memory.zero_()
        self.label_memory.zero_()
        self.queue_idx.zero_()
        self.filled.zero_()

    def _enqueue(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """Write rows into the ring buffer; return their slots."""
        n = embeddings.shape[0]
        start = int(self.queue_idx)
        slots = torch.arange(start, start + n, device=embeddings.device) % self.memory_size
        if self.embedding_memory.dtype != embeddings.dtype:
            self.embedding_memory = self.embedding_memory.to(embeddings.dtype)
        self.embedding_memory[slots] = embeddings.detach().to(self.embedding_memory.device)
        self.label_memory[slots] = labels.to(self.label_memory.device)
        if start + n >= self.memory_size:
            self.filled.fill_(True)
        self.queue_idx.fill_((start + n) % self.memory_size)
        return slots

    def forward(self, embeddings: Tensor, labels: Tensor, *,
                enqueue_mask: Tensor | None = None, **unused: Any) -> Tensor:
        for k, v in unused.items():
            if v is not None:
                raise ValueError(f"CrossBatchMemory takes no {k}= (the memory is the "
                                 f"reference set and builds the pairs itself)")
        check_matrix("embeddings", embeddings, dim=self.embedding_dim)
        labels = check_labels("labels", labels, embeddings.shape[0], of="embeddings")
        if enqueue_mask is not None:
            if (not isinstance(enqueue_mask, Tensor) or enqueue_mask.dtype != torch.bool
                    or enqueue_mask.shape != labels.shape):
                raise ValueError(f"enqueue_mask must be a bool tensor of shape "
                                 f"{tuple(labels.shape)}")
            queued, queued_labels = embeddings[enqueue_mask], labels[enqueue_mask]
            embeddings, labels = embeddings[~enqueue_mask], labels[~enqueue_mask]
        else:
            queued, queued_labels = embeddings, labels
        if queued.shape[0] > self.memory_size:
            raise ValueError(f"a batch of {queued.shape[0]} rows to enqueue does not fit a "
                             f"memory_size of {self.memory_size}")
        self.embedding_memory = self.embedding_memory.to(embeddings.device)
        slots = self._enqueue(queued, queued_labels)
        end = self.memory_size if bool(self.filled) else int(self.queue_idx)
        ref, ref_labels = self.embedding_memory[:end], self.label_memory[:end]
        ref = ref.to(embeddings.dtype)
        if self.miner is None:
            same = labels[:, None] == ref_labels[None, :]
            a1, p = same.nonzero(as_tuple=True)
            a2, n = (~same).nonzero(as_tuple=True)
            indices: tuple[Tensor, ...] = (a1, p, a2, n)
        else:
            indices = tuple(self.miner(embeddings, labels, ref_embeddings=ref,
                                       ref_labels=ref_labels))
            if len(indices) not in (3, 4):
                raise ValueError(f"miner must return pairs (a1, p, a2, n) or triplets "
                                 f"(a, p, n), got a tuple of {len(indices)}")
        if enqueue_mask is None:  # an anchor's own copy in the memory is no positive
            indices = _without_self(indices, slots)
        return self.loss(embeddings, labels, ref_embeddings=ref, ref_labels=ref_labels,
                         indices=indices)


def _without_self(indices: tuple[Tensor, ...], slots: Tensor) -> tuple[Tensor, ...]:
    """Drop the positives that are the anchor's own slot in the memory (triplets whose
    positive is, or pairs ``(a1, p)`` that are, the anchor itself)."""
    a, p = indices[0], indices[1]
    keep = p != slots[a]
    if len(indices) == 3:
        return tuple(t[keep] for t in indices)
    return a[keep], p[keep], indices[2], indices[3]
