"""The few-shot dataset layouts on disk (Ravi CSVs, split CSVs, Omniglot folders), on tiny
fixtures generated in each layout, through ``load_fewshot_dataset``."""

import pytest
import torch

from losslab.lab.data import load_fewshot_dataset
from losslab.lab.data.formats import DatasetLayoutError
from losslab.lab.data.images import IMAGENET_MEAN

PIL = pytest.importorskip("PIL.Image")


def _png(path, value, size=(40, 30), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    color = (value, 255 - value, 10) if mode == "RGB" else value
    PIL.new(mode, size, color).save(path)


def _csv(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("filename,label\n" + "".join(f"{f},{lab}\n" for f, lab in rows))


def _make_split_csv(root, split_dir, per_class=3):
    classes = {"train": ["n01", "n02", "n03"], "val": ["n04", "n05"], "test": ["n06", "n07"]}
    for split, names in classes.items():
        rows = []
        for ci, c in enumerate(names):
            for j in range(per_class):
                fn = f"{c}{j:08d}.jpg"
                _png(root / "images" / fn, 40 * ci + j)
                rows.append((fn, c))
        _csv(root / split_dir / f"{split}.csv", rows)


def test_miniimagenet_layout(tmp_path):
    _make_split_csv(tmp_path, ".")
    ds = load_fewshot_dataset("miniimagenet", str(tmp_path), image_size=16)
    assert set(ds.splits) == {"train", "val", "test"}
    tr = ds.splits["train"]
    assert len(tr) == 9 and tr.n_classes == 3 and ds.channels == 3 and ds.image_size == 16
    assert list(tr.labels) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    x = tr.batch([0, 4])
    assert x.shape == (2, 3, 16, 16) and x.dtype == torch.float32
    # a solid image: every pixel is (value/255 - mean) / std
    r = (0 / 255 - IMAGENET_MEAN[0]) / 0.229
    assert torch.allclose(x[0, 0], torch.full((16, 16), r), atol=1e-5)


@pytest.mark.parametrize("name", ["cub", "dogs", "cars"])
def test_split_csv_layout(tmp_path, name):
    _make_split_csv(tmp_path, "split")
    ds = load_fewshot_dataset(name, str(tmp_path), preload="no")
    assert ds.image_size == 84
    assert ds.splits["val"].batch([0, 1, 2, 3]).shape == (4, 3, 84, 84)
    assert ds.splits["test"].n_classes == 2


def test_omniglot_layout(tmp_path):
    for folder, alphabets in (("images_background", ["Latin", "Greek"]),
                              ("images_evaluation", ["Atlantean", "Braille", "Cyrillic"])):
        for a in alphabets:
            for c in ("character01", "character02"):
                for j in range(2):
                    _png(tmp_path / folder / a / c / f"{j}.png", 0 if j else 255, (105, 105), "L")
    ds = load_fewshot_dataset("omniglot", str(tmp_path))
    assert ds.channels == 1 and ds.image_size == 28
    # sorted evaluation alphabets alternate val/test: Atlantean, Cyrillic -> val; Braille -> test
    assert ds.splits["train"].n_classes == 4
    assert ds.splits["val"].n_classes == 4 and ds.splits["test"].n_classes == 2
    x = ds.splits["train"].batch([0, 1])
    assert x.shape == (2, 1, 28, 28)
    # inverted: the black image becomes ink 1.0, the white one background 0.0
    assert float(x[0].mean()) == pytest.approx(0.0) and float(x[1].mean()) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("name", "make", "match"),
    [
        ("miniimagenet", None, "does not exist.*Ravi"),
        ("cub", lambda r: (r / "split").mkdir(parents=True), "no train split file"),
        ("omniglot", lambda r: (r / "images_background").mkdir(parents=True),
         "images_evaluation does not exist"),
        ("cub", lambda r: _csv(r / "split" / "train.csv", [("missing.jpg", "a")]),
         "no val split file"),
    ],
)
def test_missing_layout_errors(tmp_path, name, make, match):
    root = tmp_path / "data"
    if make is not None:
        root.mkdir()
        make(root)
    with pytest.raises(DatasetLayoutError, match=match):
        load_fewshot_dataset(name, str(root))


def test_missing_image_error(tmp_path):
    _make_split_csv(tmp_path, "split")
    (tmp_path / "images" / "n0100000001.jpg").unlink()
    with pytest.raises(DatasetLayoutError, match=r"n0100000001\.jpg"):
        load_fewshot_dataset("cub", str(tmp_path))


def test_disk_dataset_needs_root():
    with pytest.raises(ValueError, match="--data-root"):
        load_fewshot_dataset("cub", None)
