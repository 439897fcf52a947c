"""Retrieval datasets: disjoint train and test *classes* (the deep-metric-learning protocol).

:func:`load_retrieval_dataset` returns ``{"train": ImageSplit, "test": ImageSplit}``:

* ``glyphs`` (default): the shipped glyph set's train classes / test classes;
* ``cub`` (CUB-200-2011 release layout)::

      ROOT/images.txt               "<image_id> <relative path>"
      ROOT/image_class_labels.txt   "<image_id> <class_id 1..200>"
      ROOT/images/<relative path>

  classes 1-100 train, 101-200 test (the DML convention);
* ``cars`` (Cars196): ``ROOT/split/{train,test}.csv`` (or ``ROOT/{train,test}.csv``), header
  ``filename,label``, images in ``ROOT/images/`` or relative to ROOT; or one
  ``ROOT/labels.csv`` (``filename,label``): the first half of the sorted classes train (1-98 of
  Cars196), the rest test;
* ``sop`` (Stanford Online Products): ``ROOT/Ebay_train.txt`` and ``ROOT/Ebay_test.txt``
  (header ``image_id class_id super_class_id path``), images relative to ROOT;
* ``synthetic``: random stroke patterns (tests, smoke runs).

Nothing is downloaded; a missing file raises :class:`DatasetLayoutError` with the layout.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from losslab.lab.data.formats import DatasetLayoutError
from losslab.lab.data.images import IMAGENET_MEAN, IMAGENET_STD, FileSplit, ImageSplit, rgb_loader

__all__ = ["RETRIEVAL_DATASETS", "load_retrieval_dataset"]

RETRIEVAL_DATASETS = ("glyphs", "cub", "cars", "sop", "synthetic")
CUB_LAYOUT = ("expected the CUB-200-2011 layout: ROOT/images.txt, ROOT/image_class_labels.txt "
              "and ROOT/images/")
CARS_LAYOUT = ("expected ROOT/split/{train,test}.csv or ROOT/{train,test}.csv (header "
               "filename,label), or ROOT/labels.csv (filename,label), images in ROOT/images/ or "
               "relative to ROOT")
SOP_LAYOUT = ("expected the Stanford Online Products layout: ROOT/Ebay_train.txt and "
              "ROOT/Ebay_test.txt (image_id class_id super_class_id path), images relative to "
              "ROOT")


def _need(path: Path, layout: str) -> Path:
    if not path.is_file():
        raise DatasetLayoutError(f"{path} not found; {layout}")
    return path


def _image(root: Path, name: str, layout: str) -> Path:
    for base in (root / "images", root):
        if (base / name).is_file():
            return base / name
    raise DatasetLayoutError(f"{root}: image {name!r} not found in {root / 'images'} nor "
                             f"{root}; {layout}")


def _files(paths: list[Path], labels: list[str] | list[int], image_size: int) -> FileSplit:
    names = sorted(set(labels))
    index = {n: i for i, n in enumerate(names)}
    y = np.array([index[v] for v in labels], dtype=np.int64)
    return FileSplit(paths, y, rgb_loader(image_size), channels=3, image_size=image_size,
                     mean=IMAGENET_MEAN, std=IMAGENET_STD)


def _table(path: Path, layout: str, *, header: bool) -> list[list[str]]:
    rows = [ln.split() for ln in _need(path, layout).read_text().splitlines() if ln.strip()]
    return rows[1:] if header else rows


def _load_cub(root: Path, size: int) -> dict[str, ImageSplit]:
    paths = {r[0]: r[1] for r in _table(root / "images.txt", CUB_LAYOUT, header=False)}
    labels = {r[0]: int(r[1]) for r in _table(root / "image_class_labels.txt", CUB_LAYOUT,
                                               header=False)}
    out: dict[str, ImageSplit] = {}
    for split, keep in (("train", lambda c: c <= 100), ("test", lambda c: c > 100)):
        ids = [i for i in paths if keep(labels[i])]
        out[split] = _files([_image(root, paths[i], CUB_LAYOUT) for i in ids],
                            [labels[i] for i in ids], size)
    return out


def _read_csv(path: Path) -> list[tuple[str, str]]:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"filename", "label"} <= set(rows[0]):
        raise DatasetLayoutError(f"{path}: expected a header 'filename,label'; {CARS_LAYOUT}")
    return [(r["filename"], r["label"]) for r in rows]


def _load_cars(root: Path, size: int) -> dict[str, ImageSplit]:
    rows: dict[str, list[tuple[str, str]]] = {}
    for cand in ("split/{s}.csv", "{s}.csv"):
        if all((root / cand.format(s=s)).is_file() for s in ("train", "test")):
            rows = {s: _read_csv(root / cand.format(s=s)) for s in ("train", "test")}
            break
    if not rows:
        every = _read_csv(_need(root / "labels.csv", CARS_LAYOUT))
        classes = sorted({lab for _, lab in every}, key=lambda v: (len(v), v))
        first = set(classes[: len(classes) // 2])
        rows = {"train": [r for r in every if r[1] in first],
                "test": [r for r in every if r[1] not in first]}
    return {s: _files([_image(root, f, CARS_LAYOUT) for f, _ in r], [lab for _, lab in r], size)
            for s, r in rows.items()}


def _load_sop(root: Path, size: int) -> dict[str, ImageSplit]:
    out: dict[str, ImageSplit] = {}
    for split, fname in (("train", "Ebay_train.txt"), ("test", "Ebay_test.txt")):
        rows = _table(root / fname, SOP_LAYOUT, header=True)
        out[split] = _files([_image(root, r[3], SOP_LAYOUT) for r in rows],
                            [int(r[1]) for r in rows], size)
    return out


def load_retrieval_dataset(name: str, root: str | None = None, *, image_size: int = 0,
                           preload: str = "auto") -> dict[str, ImageSplit]:
    """The ``train`` and ``test`` splits (disjoint classes) of a retrieval dataset."""
    if name not in RETRIEVAL_DATASETS:
        raise ValueError(f"dataset must be one of {RETRIEVAL_DATASETS}, got {name!r}")
    if name in ("glyphs", "synthetic"):
        from losslab.lab.data import load_fewshot_dataset

        ds = load_fewshot_dataset(name, root, image_size=image_size)
        return {"train": ds.splits["train"], "test": ds.splits["test"]}
    if not root:
        raise ValueError(f"dataset {name!r} is read from disk: pass --data-root PATH")
    path = Path(root)
    if not path.is_dir():
        raise DatasetLayoutError(f"dataset folder {path} does not exist")
    size = image_size or 84
    loader = {"cub": _load_cub, "cars": _load_cars, "sop": _load_sop}[name]
    splits = loader(path, size)
    from losslab.lab.data import PRELOAD_AUTO_BYTES

    for k, s in splits.items():
        want = preload == "yes" or (preload == "auto" and isinstance(s, FileSplit)
                                    and s.nbytes() <= PRELOAD_AUTO_BYTES)
        if want and isinstance(s, FileSplit):
            splits[k] = s.preload()
    return splits
