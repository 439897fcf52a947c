"""Datasets of the lab, one loader per task:

* few-shot (this module, :data:`FEWSHOT_DATASETS`): :func:`load_fewshot_dataset`;
* retrieval (:mod:`losslab.lab.data.retrieval`, ``RETRIEVAL_DATASETS``): disjoint train/test
  classes;
* classification (:mod:`losslab.lab.data.classification`, ``CLASSIFICATION_DATASETS``):
  Fashion-MNIST, MNIST, CIFAR as tensors.

:func:`load_fewshot_dataset` returns the ``train``/``val``/``test`` splits
(:class:`~losslab.lab.data.images.ImageSplit`) of a named dataset:

* ``glyphs`` -- the embedded default (Omniglot-style, rendered from real fonts, shipped in the
  package; ``root`` may point to another ``.npz`` built by ``scripts/build_glyphs.py``);
* ``omniglot``, ``miniimagenet``, ``cub``/``dogs``/``cars`` -- from ``root`` on disk, see
  :mod:`losslab.lab.data.formats` for the layouts;
* ``synthetic`` -- random stroke patterns, for tests and smoke runs only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from losslab.lab.data.images import ArraySplit, FileSplit, ImageSplit

__all__ = ["FEWSHOT_DATASETS", "FewShotDataset", "load_fewshot_dataset"]

#: The datasets :func:`load_fewshot_dataset` knows (the ``fewshot`` task's ``--dataset``).
FEWSHOT_DATASETS = ("glyphs", "omniglot", "miniimagenet", "cub", "dogs", "cars", "synthetic")
PRELOAD_AUTO_BYTES = 1 << 30  # preload a split when its uint8 pixels fit in 1 GiB


@dataclass
class FewShotDataset:
    name: str
    splits: dict[str, ImageSplit]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def channels(self) -> int:
        return self.splits["train"].channels

    @property
    def image_size(self) -> int:
        return self.splits["train"].image_size


def _load_glyphs(root: str | None) -> FewShotDataset:
    from losslab.lab.data.glyphs import load_glyphs

    gs = load_glyphs(root or None)
    splits: dict[str, ImageSplit] = {}
    for name in ("train", "val", "test"):
        images, labels = gs.split(name)
        splits[name] = ArraySplit(images, labels)
    info = {k: v for k, v in dict(getattr(gs, "meta", {}) or {}).items()
            if isinstance(v, (str, int, float, bool))}
    return FewShotDataset("glyphs", splits, info)


def load_fewshot_dataset(
    name: str, root: str | None = None, *, image_size: int = 0, preload: str = "auto"
) -> FewShotDataset:
    """Load a dataset's splits. ``image_size=0``: 84 for RGB sets, 28 for grey ones.
    ``preload``: ``"auto"`` (splits up to 1 GiB of uint8 pixels), ``"yes"`` or ``"no"``."""
    if name not in FEWSHOT_DATASETS:
        raise ValueError(f"dataset must be one of {FEWSHOT_DATASETS}, got {name!r}")
    if name == "glyphs":
        if image_size not in (0, 28):
            raise ValueError("glyphs are 28x28; leave image_size at 0 (auto) or 28")
        return _load_glyphs(root)
    if name == "synthetic":
        from losslab.lab.data.synthetic import synthetic_splits

        return FewShotDataset("synthetic", dict(synthetic_splits(size=image_size or 28)))
    if not root:
        raise ValueError(f"dataset {name!r} is read from disk: pass --data-root PATH")
    from losslab.lab.data.formats import load_omniglot, load_split_csv

    if name == "omniglot":
        raw = load_omniglot(root, image_size=image_size or 28)
    else:
        style = "miniimagenet" if name == "miniimagenet" else "split_csv"
        raw = load_split_csv(root, image_size=image_size or 84, style=style)
    splits: dict[str, ImageSplit] = {}
    for k, s in raw.items():
        want = preload == "yes" or (preload == "auto" and s.nbytes() <= PRELOAD_AUTO_BYTES)
        splits[k] = s.preload() if want and isinstance(s, FileSplit) else s
    return FewShotDataset(name, splits, {"root": str(root)})
