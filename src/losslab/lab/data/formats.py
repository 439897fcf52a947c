"""Standard few-shot datasets from a user's disk, in their usual layouts. Nothing is
downloaded, ever; a missing folder or file raises :class:`DatasetLayoutError` describing the
expected layout.

* miniImageNet (Ravi & Larochelle split)::

      ROOT/train.csv, ROOT/val.csv, ROOT/test.csv   (or ROOT/split/{train,val,test}.csv)
      ROOT/images/<filename>                         e.g. n0153282900000005.jpg

  each CSV with a header ``filename,label``.
* CUB-200 / Stanford Dogs / Stanford Cars (the few-shot splits of the SuSana Distancia code)::

      ROOT/split/train.csv, ROOT/split/val.csv, ROOT/split/test.csv   (header filename,label)
      ROOT/images/<filename>   (or ROOT/<filename>; filename may contain sub-folders)

* Omniglot (Lake et al. release)::

      ROOT/images_background/<alphabet>/<character>/<image>.png   -> train
      ROOT/images_evaluation/<alphabet>/<character>/<image>.png   -> val / test

  The evaluation alphabets, sorted by name, alternate val, test, val, test, ... (deterministic;
  10 val and 10 test alphabets for the 20 of the release). Classes are (alphabet, character);
  images are inverted to white ink on black and resized to 28x28 like the glyphs set.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from losslab.lab.data.images import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    FileSplit,
    grey_loader,
    rgb_loader,
)

__all__ = ["DatasetLayoutError", "load_omniglot", "load_split_csv"]

SPLITS = ("train", "val", "test")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".tif", ".tiff", ".webp")

MINI_LAYOUT = (
    "expected the Ravi-Larochelle miniImageNet layout: ROOT/{train,val,test}.csv (or "
    "ROOT/split/{train,val,test}.csv) with a header 'filename,label', and the images in "
    "ROOT/images/"
)
SPLIT_CSV_LAYOUT = (
    "expected ROOT/split/{train,val,test}.csv with a header 'filename,label' and the images "
    "in ROOT/images/ (or paths relative to ROOT)"
)
OMNIGLOT_LAYOUT = (
    "expected the Omniglot release layout: ROOT/images_background/<alphabet>/<character>/*.png "
    "(train) and ROOT/images_evaluation/<alphabet>/<character>/*.png (val/test)"
)


class DatasetLayoutError(FileNotFoundError):
    """A dataset folder is missing or does not have the expected layout."""


def _read_csv(path: Path, layout: str) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    with open(path, newline="") as f:
        for i, rec in enumerate(csv.reader(f)):
            if not rec or not any(x.strip() for x in rec):
                continue
            if i == 0 and [x.strip().lower() for x in rec[:2]] == ["filename", "label"]:
                continue
            if len(rec) < 2:
                raise DatasetLayoutError(f"{path}: line {i + 1} is not 'filename,label'; {layout}")
            rows.append((rec[0].strip(), rec[1].strip()))
    if not rows:
        raise DatasetLayoutError(f"{path}: no rows; {layout}")
    return rows


def _find_csv(root: Path, split: str, candidates: Sequence[str], layout: str) -> Path:
    for c in candidates:
        p = root / c.format(split=split)
        if p.is_file():
            return p
    raise DatasetLayoutError(f"{root}: no {split} split file (looked for {list(candidates)}); "
                             f"{layout}")


def _resolve_images(root: Path, names: Sequence[str], layout: str) -> list[Path]:
    bases = [root / "images", root]
    out: list[Path] = []
    base_ok: Path | None = None
    for name in names:
        if base_ok is not None and (base_ok / name).is_file():
            out.append(base_ok / name)
            continue
        for b in bases:
            if (b / name).is_file():
                base_ok = b
                out.append(b / name)
                break
        else:
            raise DatasetLayoutError(
                f"{root}: image {name!r} listed in the split file was not found in "
                f"{root / 'images'} nor {root}; {layout}"
            )
    return out


def load_split_csv(
    root: str | Path, *, image_size: int = 84, style: str = "split_csv"
) -> dict[str, FileSplit]:
    """miniImageNet (``style="miniimagenet"``) or CUB/Dogs/Cars (``"split_csv"``) splits."""
    root = Path(root)
    if style == "miniimagenet":
        layout, cands = MINI_LAYOUT, ("{split}.csv", "split/{split}.csv")
    else:
        layout, cands = SPLIT_CSV_LAYOUT, ("split/{split}.csv", "{split}.csv")
    if not root.is_dir():
        raise DatasetLayoutError(f"dataset folder {root} does not exist; {layout}")
    loader = rgb_loader(image_size)
    csvs = {split: _find_csv(root, split, cands, layout) for split in SPLITS}
    out = {}
    for split in SPLITS:
        rows = _read_csv(csvs[split], layout)
        names = sorted({label for _, label in rows})
        index = {n: i for i, n in enumerate(names)}
        paths = _resolve_images(root, [f for f, _ in rows], layout)
        labels = np.array([index[label] for _, label in rows], dtype=np.int64)
        out[split] = FileSplit(paths, labels, loader, channels=3, image_size=image_size,
                               mean=IMAGENET_MEAN, std=IMAGENET_STD)
    return out


def _omniglot_classes(folder: Path) -> list[tuple[str, list[Path]]]:
    classes = []
    for alphabet in sorted(p for p in folder.iterdir() if p.is_dir()):
        for char in sorted(p for p in alphabet.iterdir() if p.is_dir()):
            files = sorted(f for f in char.iterdir() if f.suffix.lower() in IMAGE_EXTS)
            if files:
                classes.append((f"{alphabet.name}/{char.name}", files))
    return classes


def load_omniglot(root: str | Path, *, image_size: int = 28) -> dict[str, FileSplit]:
    """Omniglot: background alphabets -> train; evaluation alphabets alternate val/test."""
    root = Path(root)
    bg, ev = root / "images_background", root / "images_evaluation"
    for p in (bg, ev):
        if not p.is_dir():
            raise DatasetLayoutError(f"{p} does not exist; {OMNIGLOT_LAYOUT}")
    eval_alphabets = sorted(p.name for p in ev.iterdir() if p.is_dir())
    if len(eval_alphabets) < 2:
        raise DatasetLayoutError(f"{ev} needs at least 2 alphabets (val and test); "
                                 f"{OMNIGLOT_LAYOUT}")
    val_set = set(eval_alphabets[0::2])
    groups: dict[str, list[tuple[str, list[Path]]]] = {"train": _omniglot_classes(bg),
                                                       "val": [], "test": []}
    for name, files in _omniglot_classes(ev):
        groups["val" if name.split("/")[0] in val_set else "test"].append((name, files))
    loader = grey_loader(image_size, invert=True)
    out = {}
    for split, classes in groups.items():
        if not classes:
            raise DatasetLayoutError(f"{root}: no images for the {split} split; "
                                     f"{OMNIGLOT_LAYOUT}")
        paths = [f for _, files in classes for f in files]
        labels = np.concatenate([np.full(len(files), i) for i, (_, files) in enumerate(classes)])
        out[split] = FileSplit(paths, labels, loader, channels=1, image_size=image_size)
    return out
