"""Losses across processes on ``torch.distributed``.

- :func:`all_gather_with_grad`, :func:`neighbour_exchange` (:mod:`.gather`): collectives with
  autograd; ranks may hold different numbers of rows.
- :class:`DistributedLoss` (:mod:`.modes`): any ``paired`` / ``embeddings`` loss in the
  ``global``, ``local`` or ``ring`` mode, scaled so that with DDP's gradient averaging the
  parameter gradients equal the single-process full batch.

See ``docs/distributed.md``.
"""

from losslab.distributed.gather import (
    all_gather,
    all_gather_sizes,
    all_gather_with_grad,
    is_distributed,
    neighbour_exchange,
    rank_and_world,
)
from losslab.distributed.modes import (
    EMBEDDING_LOCAL,
    LOCAL_FORMS,
    MODES,
    POINTWISE,
    DistributedLoss,
    distributed,
)

__all__ = [
    "EMBEDDING_LOCAL",
    "LOCAL_FORMS",
    "MODES",
    "POINTWISE",
    "DistributedLoss",
    "all_gather",
    "all_gather_sizes",
    "all_gather_with_grad",
    "distributed",
    "is_distributed",
    "neighbour_exchange",
    "rank_and_world",
]
