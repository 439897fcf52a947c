"""Segmentation data for the lab: real glyph shapes composited over real textures.

Each image is a ``size x size`` crop of one of scikit-image's bundled grey-level textures
(:data:`TEXTURES`: brick, grass, gravel, moon, camera, clock; no download), with one glyph of
the shipped glyph set (:mod:`losslab.lab.data.glyphs`; real font outlines) scaled up and
pasted at a random position; the foreground pixels take a crop of a *different* texture with
a random contrast shift, so the shape is visible only as a change of texture and brightness.
The mask is exact: it is the pasted shape itself.

Settings (:data:`SETTINGS`):

* ``"regular"`` -- the glyph's filled shape;
* ``"thin"`` -- thin structures: the glyph's skeleton dilated to a width of 1-3 px (seeded per
  image), the structure the image shows and the mask;
* ``"noisy"`` -- the regular images, with *training* masks eroded or dilated at random by
  1-2 px (the test masks stay exact), the noisy-annotation setting of the TopoMortar study.

Everything is drawn from ``numpy.random.default_rng([seed, stream])``: the same seed gives the
same images for every loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from losslab.lab.data.glyphs import load_glyphs

__all__ = ["SETTINGS", "TEXTURES", "SegmentationData", "make_segmentation_data"]

TEXTURES: tuple[str, ...] = ("brick", "grass", "gravel", "moon", "camera", "clock")
SETTINGS: tuple[str, ...] = ("regular", "thin", "noisy")


@dataclass(frozen=True)
class SegmentationData:
    """``x_*``: float32 ``[N, 1, S, S]`` images in [0, 1]; ``y_*``: int64 ``[N, S, S]`` 0/1
    masks (``y_train`` noisy in the ``"noisy"`` setting, ``y_train_clean`` exact)."""

    x_train: np.ndarray
    y_train: np.ndarray
    y_train_clean: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    setting: str


def _textures() -> list[np.ndarray]:
    import skimage.data as skd

    out = []
    for name in TEXTURES:
        img = np.asarray(getattr(skd, name)(), dtype=np.float32) / 255.0
        out.append(img)
    return out


def _crop(tex: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    i = int(rng.integers(0, tex.shape[0] - size + 1))
    j = int(rng.integers(0, tex.shape[1] - size + 1))
    return tex[i:i + size, j:j + size]


def _shape(glyph: np.ndarray, setting: str, scale: int, rng: np.random.Generator) -> np.ndarray:
    from scipy import ndimage as ndi
    from skimage.morphology import skeletonize

    big = np.kron(glyph > 127, np.ones((scale, scale), dtype=bool))
    big = ndi.binary_closing(big, iterations=1)
    if setting == "thin":
        skel = skeletonize(big)
        width = int(rng.integers(1, 4))  # 1, 2 or 3 px
        if width == 1:
            return skel
        return ndi.binary_dilation(skel, structure=np.ones((width, width), dtype=bool))
    return big


def _perturb(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    from scipy import ndimage as ndi

    steps = int(rng.integers(1, 3))
    if rng.random() < 0.5:
        out = ndi.binary_erosion(mask, iterations=steps)
        return out if out.any() else mask
    return ndi.binary_dilation(mask, iterations=steps)


def _render(glyphs: np.ndarray, setting: str, size: int, scale: int,
            textures: list[np.ndarray], rng: np.random.Generator
            ) -> tuple[np.ndarray, np.ndarray]:
    n = glyphs.shape[0]
    x = np.zeros((n, 1, size, size), dtype=np.float32)
    y = np.zeros((n, size, size), dtype=np.int64)
    for k in range(n):
        shape = _shape(glyphs[k], setting, scale, rng)
        h, w = shape.shape
        i = int(rng.integers(0, size - h + 1))
        j = int(rng.integers(0, size - w + 1))
        mask = np.zeros((size, size), dtype=bool)
        mask[i:i + h, j:j + w] = shape
        bg_t, fg_t = rng.choice(len(textures), size=2, replace=False)
        bg = _crop(textures[bg_t], size, rng)
        fg = _crop(textures[fg_t], size, rng)
        shift = float(rng.uniform(0.15, 0.35)) * (1 if rng.random() < 0.5 else -1)
        fg = np.clip(fg + shift, 0.0, 1.0)
        x[k, 0] = np.where(mask, fg, bg)
        y[k] = mask
    return x, y


def make_segmentation_data(setting: str, *, n_train: int, n_test: int, seed: int,
                           size: int = 64, scale: int = 2) -> SegmentationData:
    """Build the train and test images of one setting (train glyphs from the glyph set's
    train classes, test glyphs from its test classes: unseen shapes)."""
    if setting not in SETTINGS:
        raise ValueError(f"setting must be one of {SETTINGS}, got {setting!r}")
    if size < 28 * scale:
        raise ValueError(f"size must be >= 28 * scale = {28 * scale}, got {size}")
    gs = load_glyphs()
    textures = _textures()
    out = {}
    for split, count, stream in (("train", n_train, 0), ("test", n_test, 1)):
        rng = np.random.default_rng([seed, stream])
        images, _ = gs.split(split)
        pick = rng.choice(images.shape[0], size=count, replace=count > images.shape[0])
        # "noisy" renders the regular images; only the train masks are perturbed below
        render = "regular" if setting == "noisy" else setting
        out[split] = _render(images[pick], render, size, scale, textures, rng)
    x_tr, y_clean = out["train"]
    y_tr = y_clean
    if setting == "noisy":
        rng = np.random.default_rng([seed, 2])
        y_tr = np.stack([_perturb(m.astype(bool), rng) for m in y_clean]).astype(np.int64)
    return SegmentationData(x_tr, y_tr, y_clean, out["test"][0], out["test"][1], setting)
