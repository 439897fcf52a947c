"""Retrieval datasets: CUB / Cars / SOP loaders on tiny generated fixtures (disjoint train and
test classes)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from losslab.lab.data.formats import DatasetLayoutError
from losslab.lab.data.retrieval import load_retrieval_dataset


def _png(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((10, 12, 3), value, dtype=np.uint8)).save(path)


def test_cub_layout(tmp_path):
    lines, labels = [], []
    i = 0
    for c in (1, 2, 100, 101, 150, 200):
        for k in range(2):
            i += 1
            rel = f"{c:03d}.Bird_{c}/img_{k}.jpg"
            _png(tmp_path / "images" / rel, c)
            lines.append(f"{i} {rel}")
            labels.append(f"{i} {c}")
    (tmp_path / "images.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    sp = load_retrieval_dataset("cub", str(tmp_path), image_size=8, preload="no")
    assert len(sp["train"]) == 6 and len(sp["test"]) == 6
    assert sp["train"].n_classes == 3 and sp["test"].n_classes == 3
    x = sp["test"].batch(np.arange(6))
    assert tuple(x.shape) == (6, 3, 8, 8)
    with pytest.raises(DatasetLayoutError, match="image_class_labels"):
        (tmp_path / "image_class_labels.txt").unlink()
        load_retrieval_dataset("cub", str(tmp_path), image_size=8)


def test_cars_split_csv_and_labels_csv(tmp_path):
    rows = []
    for c in range(1, 5):
        for k in range(3):
            name = f"{c:05d}_{k}.jpg"
            _png(tmp_path / "images" / name, 10 * c)
            rows.append((name, str(c)))
    (tmp_path / "labels.csv").write_text(
        "filename,label\n" + "".join(f"{f},{lab}\n" for f, lab in rows))
    sp = load_retrieval_dataset("cars", str(tmp_path), image_size=8, preload="yes")
    assert len(sp["train"]) == 6 and len(sp["test"]) == 6  # classes 1-2 train, 3-4 test
    (tmp_path / "split").mkdir()
    (tmp_path / "split" / "train.csv").write_text(
        "filename,label\n" + "".join(f"{f},{lab}\n" for f, lab in rows[:9]))
    (tmp_path / "split" / "test.csv").write_text(
        "filename,label\n" + "".join(f"{f},{lab}\n" for f, lab in rows[9:]))
    sp = load_retrieval_dataset("cars", str(tmp_path), image_size=8)
    assert len(sp["train"]) == 9 and sp["train"].n_classes == 3 and len(sp["test"]) == 3


def test_sop_layout(tmp_path):
    for split, classes in (("train", (1, 2)), ("test", (3, 4, 5))):
        lines = ["image_id class_id super_class_id path"]
        i = 0
        for c in classes:
            for k in range(2):
                i += 1
                rel = f"bicycle_final/{c}_{k}.JPG"
                _png(tmp_path / rel, c)
                lines.append(f"{i} {c} 1 {rel}")
        (tmp_path / f"Ebay_{split}.txt").write_text("\n".join(lines) + "\n")
    sp = load_retrieval_dataset("sop", str(tmp_path), image_size=8)
    assert sp["train"].n_classes == 2 and sp["test"].n_classes == 3
    with pytest.raises(ValueError, match="data-root"):
        load_retrieval_dataset("sop", None)
