"""Loader for the embedded "glyphs" few-shot dataset (numpy only, no torch).

The dataset is an Omniglot-style set of Unicode characters rendered from real fonts: classes are
characters, samples are font faces, and whole scripts (alphabets) are assigned to the
train/val/test splits. See ``GLYPHS.md`` next to this file for how it was built.

Example::

    from losslab.lab.data.glyphs import load_glyphs

    gs = load_glyphs()
    x_train, y_train = gs.split("train")  # uint8 [n, 28, 28], int32 global class ids
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DEFAULT_PATH", "SPLITS", "GlyphSet", "load_glyphs"]

DEFAULT_PATH = Path(__file__).with_name("glyphs.npz")
SPLITS = ("train", "val", "test")
_ARRAYS = ("images", "labels", "class_chars", "class_scripts", "class_split", "sample_fonts",
           "meta")


@dataclass(frozen=True)
class GlyphSet:
    """The glyphs dataset held in memory.

    Attributes:
        images: ``uint8 [N, S, S]``, ink = 255 on a 0 background.
        labels: ``int32 [N]`` class ids ``0..C-1``.
        class_chars: ``str [C]``, the character of each class.
        class_scripts: ``str [C]``, the script (alphabet) of each class, e.g. ``"LATIN"``.
        class_split: ``str [C]``, ``"train"``, ``"val"`` or ``"test"``; whole scripts per split.
        sample_fonts: ``str [N]``, family and style of the face each image was rendered from.
        meta: build information (packages and versions, size, seed, counts, ...).
    """

    images: np.ndarray
    labels: np.ndarray
    class_chars: np.ndarray
    class_scripts: np.ndarray
    class_split: np.ndarray
    sample_fonts: np.ndarray
    meta: dict[str, Any]

    @property
    def num_classes(self) -> int:
        """Number of classes ``C``."""
        return len(self.class_chars)

    def split_classes(self, name: str) -> np.ndarray:
        """Sorted global class ids of the classes in split ``name``."""
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {SPLITS}")
        return np.flatnonzero(self.class_split == name)

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Images and labels of the classes in split ``name`` (labels stay global class ids)."""
        mask = np.isin(self.labels, self.split_classes(name))
        return self.images[mask], self.labels[mask]


def load_glyphs(path: str | os.PathLike[str] | None = None) -> GlyphSet:
    """Load the glyphs dataset from ``path`` (default: the copy shipped with losslab).

    Raises:
        ValueError: if the file is missing, is not a readable npz, lacks an array, or has
            inconsistent shapes.
    """
    p = DEFAULT_PATH if path is None else Path(path)
    if not p.is_file():
        raise ValueError(f"glyphs file not found: {p}")
    try:
        with np.load(p, allow_pickle=False) as data:
            missing = [k for k in _ARRAYS if k not in data.files]
            if missing:
                raise ValueError(f"{p} is not a glyphs file: missing arrays {missing}")
            arrays = {k: data[k] for k in _ARRAYS}
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise ValueError(f"cannot read glyphs file {p}: {exc}") from exc
    try:
        meta = json.loads(str(arrays.pop("meta")))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{p}: invalid meta json: {exc}") from exc
    gs = GlyphSet(meta=meta, **arrays)
    _validate(gs, p)
    return gs


def _validate(gs: GlyphSet, p: Path) -> None:
    n, c = len(gs.labels), len(gs.class_chars)
    if gs.images.ndim != 3 or gs.images.dtype != np.uint8 or len(gs.images) != n:
        raise ValueError(f"{p}: images must be uint8 [N, S, S] with N = len(labels)")
    if len(gs.sample_fonts) != n:
        raise ValueError(f"{p}: sample_fonts must have one entry per image")
    if len(gs.class_scripts) != c or len(gs.class_split) != c:
        raise ValueError(f"{p}: class arrays must all have length C = {c}")
    if n and (gs.labels.min() < 0 or gs.labels.max() >= c):
        raise ValueError(f"{p}: labels must lie in 0..{c - 1}")
    bad = set(np.unique(gs.class_split).tolist()) - set(SPLITS)
    if bad:
        raise ValueError(f"{p}: unknown split names {sorted(bad)}")
