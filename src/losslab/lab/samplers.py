"""Batch samplers of the lab."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

__all__ = ["MPerClassSampler"]


class MPerClassSampler:
    """Batches of ``batch_size // m`` distinct classes x ``m`` samples per class, seeded.

    Every batch draws its classes uniformly without replacement (all classes are eligible),
    then ``m`` samples of each class without replacement (with replacement for a class that has
    fewer than ``m`` samples). Within a batch the samples of a class are contiguous:
    ``batch[c * m:(c + 1) * m]`` is class ``c`` of the batch (the lab's proto-triplet split
    relies on it). Deterministic for a given ``rng``.

    Args:
        labels: ``[N]`` integer labels of the dataset.
        m: samples per class (>= 1).
        batch_size: a multiple of ``m``; ``batch_size // m`` must not exceed the number of
            classes.
        rng: the numpy generator to draw from.
    """

    def __init__(self, labels: np.ndarray, *, m: int, batch_size: int,
                 rng: np.random.Generator) -> None:
        labels = np.asarray(labels).ravel()
        if m < 1:
            raise ValueError(f"m must be >= 1, got {m}")
        if batch_size < m or batch_size % m:
            raise ValueError(f"batch_size must be a positive multiple of m={m}, got {batch_size}")
        self.classes, inverse = np.unique(labels, return_inverse=True)
        self.per_batch = batch_size // m
        if self.per_batch > self.classes.size:
            raise ValueError(f"batch_size // m = {self.per_batch} classes per batch, but the "
                             f"data has only {self.classes.size} classes")
        order = np.argsort(inverse, kind="stable")
        bounds = np.searchsorted(inverse[order], np.arange(self.classes.size + 1))
        self.members = [order[bounds[i]:bounds[i + 1]] for i in range(self.classes.size)]
        self.m, self.batch_size, self.rng = m, batch_size, rng

    def sample(self) -> np.ndarray:
        """One batch of dataset indices, ``[batch_size]``."""
        chosen = self.rng.choice(self.classes.size, self.per_batch, replace=False)
        parts = []
        for c in chosen:
            mem = self.members[c]
            parts.append(self.rng.choice(mem, self.m, replace=mem.size < self.m))
        return np.concatenate(parts)

    def batches(self, n: int) -> Iterator[np.ndarray]:
        """``n`` batches."""
        for _ in range(n):
            yield self.sample()
