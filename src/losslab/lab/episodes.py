"""Episodic sampling and nearest-prototype evaluation for few-shot classification."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["EpisodeBatch", "EpisodeSampler", "embed", "prototype_accuracy"]


@dataclass(frozen=True)
class EpisodeBatch:
    """``E`` episodes of one shape: dataset indices ``support [E, way*shot]`` and
    ``query [E, way*query]``, ordered class-major (episode class ``c`` owns rows
    ``c*shot:(c+1)*shot`` of the support and ``c*query:(c+1)*query`` of the query)."""

    support: np.ndarray
    query: np.ndarray
    way: int
    shot: int
    n_query: int


class EpisodeSampler:
    """Sample N-way K-shot Q-query episodes from the labels of one split (seeded numpy RNG).

    Classes with fewer than ``shot + query`` images are skipped; fewer than ``way`` eligible
    classes is a ``ValueError``.
    """

    def __init__(
        self, labels: np.ndarray, *, way: int, shot: int, query: int,
        rng: np.random.Generator,
    ) -> None:
        if way < 2 or shot < 1 or query < 1:
            raise ValueError(f"need way >= 2, shot >= 1, query >= 1; got {way}, {shot}, {query}")
        labels = np.asarray(labels)
        classes, inverse = np.unique(labels, return_inverse=True)
        by_class = [np.flatnonzero(inverse == c) for c in range(classes.size)]
        self.pools = [p for p in by_class if p.size >= shot + query]
        if len(self.pools) < way:
            raise ValueError(
                f"{way}-way {shot}-shot {query}-query episodes need {way} classes with >= "
                f"{shot + query} images; this split has {len(self.pools)} such classes of "
                f"{classes.size} (reduce way/query)"
            )
        self.way, self.shot, self.query, self.rng = way, shot, query, rng

    def sample(self, n: int = 1) -> EpisodeBatch:
        sup = np.empty((n, self.way * self.shot), dtype=np.int64)
        qry = np.empty((n, self.way * self.query), dtype=np.int64)
        k = self.shot + self.query
        for e in range(n):
            chosen = self.rng.choice(len(self.pools), self.way, replace=False)
            for c, ci in enumerate(chosen):
                pick = self.rng.choice(self.pools[ci], k, replace=False)
                sup[e, c * self.shot:(c + 1) * self.shot] = pick[: self.shot]
                qry[e, c * self.query:(c + 1) * self.query] = pick[self.shot:]
        return EpisodeBatch(sup, qry, self.way, self.shot, self.query)


@torch.no_grad()
def embed(
    model: nn.Module, batch_fn, indices: np.ndarray, device: torch.device, batch_size: int = 512
) -> Tensor:
    """Embeddings of ``indices`` (fetched with ``batch_fn(idx) -> images``) in eval mode."""
    was = model.training
    model.eval()
    out = []
    for i in range(0, indices.size, batch_size):
        x = batch_fn(indices[i:i + batch_size]).to(device, non_blocking=True)
        out.append(model(x).float())
    model.train(was)
    return torch.cat(out) if out else torch.empty(0)


@torch.no_grad()
def prototype_accuracy(
    emb: Tensor, row_of: np.ndarray, episodes: EpisodeBatch, chunk: int = 100
) -> np.ndarray:
    """Per-episode accuracy (%) of ProtoNet's nearest-prototype rule (squared euclidean).

    ``emb[row_of[i]]`` is the embedding of dataset index ``i``. Episodes are evaluated in
    chunks, all at once within a chunk.
    """
    way, shot, q = episodes.way, episodes.shot, episodes.n_query
    labels = torch.arange(way, device=emb.device).repeat_interleave(q)
    accs = []
    for i in range(0, episodes.support.shape[0], chunk):
        s = emb[torch.as_tensor(row_of[episodes.support[i:i + chunk]], device=emb.device)]
        qe = emb[torch.as_tensor(row_of[episodes.query[i:i + chunk]], device=emb.device)]
        protos = s.view(s.shape[0], way, shot, -1).mean(2)  # [e, way, D]
        d = torch.cdist(qe, protos)  # argmin of euclidean == of squared euclidean
        pred = d.argmin(-1)
        accs.append((pred == labels).float().mean(1).mul(100).cpu())
    return torch.cat(accs).numpy().astype(np.float64)
