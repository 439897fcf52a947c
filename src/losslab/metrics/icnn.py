"""The ICNN score (inter-/intra-class nearest neighbours) of SuSana Distancia.

Mendez-Ruiz et al., "SuSana Distancia is all you need: Enforcing class separability in metric
learning via two novel distance-based loss functions for few-shot image classification",
arXiv 2305.09062. The algorithm is the released one (``modified_score`` of the authors' code);
``core-papers-spec.md`` §1.4 of the losslab research notes describes it step by step.

The score is computed from each point's window of nearest neighbours by
:func:`icnn_score_from_neighbours` (:mod:`losslab._ops.icnn`, where the algorithm is described
step by step; the ICNN loss of :mod:`losslab.losses.fewshot` uses the same function). It lies in
``[0.25, 1]``; higher is better.
"""

from __future__ import annotations

import torch
from torch import Tensor

from losslab._core import check_labels, check_matrix, compute_dtype
from losslab._ops.icnn import icnn_effective_k, icnn_score_from_neighbours
from losslab.distances import knn

__all__ = ["icnn_effective_k", "icnn_score", "icnn_score_from_neighbours"]


@torch.no_grad()
def icnn_score(
    embeddings: Tensor,
    labels: Tensor,
    *,
    k: int = 4,
    ipc: int | None = None,
    eps: float = 1e-6,
    chunk_size: int | None = None,
) -> float:
    """ICNN score of a labelled set against itself, self-matches excluded, in ``[0.25, 1]``.

    Higher is better: neighbours of the same class close, other classes far. Works on any
    embedding (not only few-shot episodes); the k-NN search is chunked, so memory is
    ``O(chunk_size x N)``.

    Args:
        embeddings: ``[N, D]`` float.
        labels: ``[N]`` integer class labels.
        k: neighbours per point (paper default 4); reduced to ``N - 2`` for tiny sets, in which
            case ``gamma = 1`` as in the released code.
        ipc: window in which the nearest other-class neighbour is searched (default ``k + 1``).
        eps: inside the square root of the euclidean distance (released code: 1e-6).
    """
    check_matrix("embeddings", embeddings)
    check_labels("labels", labels, embeddings.shape[0], of="embeddings")
    embeddings = embeddings.to(compute_dtype(embeddings.dtype))
    n = embeddings.shape[0]
    k_eff, reduced = icnn_effective_k(k, n)
    window = min(k_eff + 1 if ipc is None else ipc, n - 1)
    dist, idx = knn(
        embeddings, None, window, metric="euclidean", exclude_self=True, eps=eps,
        chunk_size=chunk_size,
    )
    labels = labels.to(embeddings.device)
    same = labels[idx] == labels.unsqueeze(1)
    return float(icnn_score_from_neighbours(dist, same, k_eff, gamma_one=reduced))
