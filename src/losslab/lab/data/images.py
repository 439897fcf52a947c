"""Image splits: labels plus a way to fetch a batch as a normalised float tensor.

* :class:`ArraySplit` -- images held in memory as ``uint8`` (``[N, H, W]`` grey or
  ``[N, H, W, 3]`` RGB), converted to float per batch (memory stays at one byte per pixel).
* :class:`FileSplit` -- image files read lazily with Pillow and transformed per batch;
  :meth:`FileSplit.preload` turns it into an :class:`ArraySplit`.

Transforms (as the SuSana Distancia / ProtoNet code): RGB images are resized so that the
shorter side is ``round(size * 92 / 84)`` and centre-cropped to ``size`` (``Resize(92) +
CenterCrop(84)`` at the usual 84), then normalised with the ImageNet mean/std; grey images are
resized to ``size x size`` and scaled to ``[0, 1]``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ArraySplit",
    "FileSplit",
    "ImageSplit",
    "grey_loader",
    "rgb_loader",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageSplit:
    """Base: ``labels`` (``int64 [N]``), ``channels``, ``image_size``, ``batch(indices)``."""

    labels: np.ndarray
    channels: int
    image_size: int

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def batch(self, indices: np.ndarray | Sequence[int]) -> Tensor:
        raise NotImplementedError

    @property
    def n_classes(self) -> int:
        return int(np.unique(self.labels).size)


def _normalise(x: np.ndarray, mean: Sequence[float] | None, std: Sequence[float] | None) -> Tensor:
    t = torch.from_numpy(np.ascontiguousarray(x))
    if t.ndim == 3:  # [B, H, W] grey
        t = t.unsqueeze(1)
    else:  # [B, H, W, C]
        t = t.permute(0, 3, 1, 2)
    t = t.float().div_(255.0)
    if mean is not None and std is not None:
        m = torch.tensor(mean, dtype=t.dtype).view(1, -1, 1, 1)
        s = torch.tensor(std, dtype=t.dtype).view(1, -1, 1, 1)
        t = (t - m) / s
    return t.contiguous()


class ArraySplit(ImageSplit):
    """In-memory ``uint8`` images."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray | Sequence[int],
        *,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim not in (3, 4):
            raise ValueError(
                f"images must be uint8 [N, H, W] or [N, H, W, C], got {images.dtype} "
                f"{images.shape}"
            )
        if images.shape[1] != images.shape[2]:
            raise ValueError(f"images must be square, got {images.shape[1:3]}")
        labels = np.asarray(labels, dtype=np.int64).ravel()
        if labels.shape[0] != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
        self.images = images
        self.labels = labels
        self.channels = 1 if images.ndim == 3 else int(images.shape[3])
        self.image_size = int(images.shape[1])
        self.mean, self.std = mean, std

    def batch(self, indices: np.ndarray | Sequence[int]) -> Tensor:
        return _normalise(self.images[np.asarray(indices, dtype=np.int64)], self.mean, self.std)


def rgb_loader(size: int) -> Callable[[str | os.PathLike[str]], np.ndarray]:
    """Open as RGB, resize the shorter side to ``round(size * 92 / 84)``, centre-crop ``size``."""

    def load(path: str | os.PathLike[str]) -> np.ndarray:
        from PIL import Image

        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            short = round(size * 92 / 84)
            scale = short / min(w, h)
            nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
            im = im.resize((nw, nh), Image.Resampling.BILINEAR)
            left, top = (nw - size) // 2, (nh - size) // 2
            im = im.crop((left, top, left + size, top + size))
            return np.asarray(im, dtype=np.uint8)

    return load


Loader = Callable[[str | os.PathLike[str]], np.ndarray]


def grey_loader(size: int, *, invert: bool = False) -> Loader:
    """Open as grey, resize to ``size x size``; ``invert`` maps dark ink on white to 255 on 0."""

    def load(path: str | os.PathLike[str]) -> np.ndarray:
        from PIL import Image

        with Image.open(path) as im:
            im = im.convert("L").resize((size, size), Image.Resampling.LANCZOS)
            a = np.asarray(im, dtype=np.uint8)
            return 255 - a if invert else a

    return load


class FileSplit(ImageSplit):
    """Image files read lazily (per batch) with a loader returning ``uint8`` arrays."""

    def __init__(
        self,
        paths: Sequence[str | os.PathLike[str]],
        labels: np.ndarray | Sequence[int],
        loader: Callable[[str | os.PathLike[str]], np.ndarray],
        *,
        channels: int,
        image_size: int,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        self.paths = [Path(p) for p in paths]
        self.labels = np.asarray(labels, dtype=np.int64).ravel()
        if len(self.paths) != self.labels.shape[0]:
            raise ValueError(f"{len(self.paths)} paths but {self.labels.shape[0]} labels")
        self.loader = loader
        self.channels = channels
        self.image_size = image_size
        self.mean, self.std = mean, std

    def _load(self, indices: np.ndarray | Sequence[int]) -> np.ndarray:
        return np.stack([self.loader(self.paths[int(i)]) for i in indices])

    def batch(self, indices: np.ndarray | Sequence[int]) -> Tensor:
        return _normalise(self._load(indices), self.mean, self.std)

    def nbytes(self) -> int:
        return len(self) * self.channels * self.image_size**2

    def preload(self) -> ArraySplit:
        """Read every image once into memory (``uint8``)."""
        return ArraySplit(self._load(range(len(self))), self.labels, mean=self.mean,
                          std=self.std)
