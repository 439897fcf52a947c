"""A tiny synthetic few-shot dataset, for tests and smoke runs (not for conclusions).

Each class is a random binary pattern of strokes on a 28x28 canvas; its samples are the pattern
shifted by up to 2 pixels with salt noise. Deterministic for a given ``seed``.
"""

from __future__ import annotations

import numpy as np

from losslab.lab.data.images import ArraySplit

__all__ = ["synthetic_splits"]


def synthetic_splits(
    *, classes: tuple[int, int, int] = (12, 6, 6), per_class: int = 20, size: int = 28,
    seed: int = 0,
) -> dict[str, ArraySplit]:
    rng = np.random.default_rng(seed)
    out = {}
    for name, n_cls in zip(("train", "val", "test"), classes):
        images, labels = [], []
        for c in range(n_cls):
            proto = np.zeros((size, size), dtype=np.uint8)
            for _ in range(4):  # four random strokes
                r0, c0 = rng.integers(4, size - 4, 2)
                r1, c1 = rng.integers(4, size - 4, 2)
                t = np.linspace(0, 1, 2 * size)
                proto[np.round(r0 + (r1 - r0) * t).astype(int),
                      np.round(c0 + (c1 - c0) * t).astype(int)] = 255
            for _ in range(per_class):
                dy, dx = rng.integers(-2, 3, 2)
                img = np.roll(np.roll(proto, dy, axis=0), dx, axis=1)
                noise = rng.random((size, size)) < 0.03
                images.append(np.where(noise, 255 - img, img).astype(np.uint8))
                labels.append(c)
        out[name] = ArraySplit(np.stack(images), np.asarray(labels))
    return out
