"""Shared helpers of the lab tests: a tiny, fast few-shot configuration on synthetic data, and a
tiny generated Fashion-MNIST-format dataset."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

#: images in the train / test split of the generated Fashion-MNIST look-alike
FMNIST_TRAIN, FMNIST_TEST = 300, 100

TINY = {
    "dataset": "synthetic",
    "losses": ["protonet", "protonet+proto_triplet"],
    "seeds": 1,
    "shots": [1],
    "way": 3,
    "train_way": [4],
    "query": 3,
    "train_query": 3,
    "epochs": 1,
    "episodes_per_epoch": 2,
    "val_episodes": 4,
    "test_episodes": 10,
    "icnn_classes": 4,
    "icnn_per_class": 4,
    "device": "cpu",
    "threads": 1,
}


def _tiny_flags(**over: Any) -> list[str]:
    """TINY (updated with ``over``) as ``losslab bench fewshot`` flags."""
    cfg = {**TINY, **over}
    out = []
    for k, v in cfg.items():
        if isinstance(v, bool):
            out.append(f"--{'' if v else 'no-'}{k.replace('_', '-')}")
            continue
        out += [f"--{k.replace('_', '-')}", ",".join(map(str, v)) if isinstance(v, list) else
                str(v)]
    return out


@pytest.fixture
def tiny_flags():
    return _tiny_flags


@pytest.fixture
def tiny_toml():
    """Write TINY (updated with ``over``) as a flat TOML config file; return its path (a short
    command line, for subprocess runs)."""

    def write(path: Path, **over: Any) -> Path:
        cfg = {"task": "fewshot", **TINY, **over}
        path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in cfg.items()))
        return path

    return write


@pytest.fixture
def tiny_config():
    from losslab.lab.config import resolve_config
    from losslab.lab.tasks import get_task

    def make(**over: Any) -> tuple[Any, dict[str, Any]]:
        task = get_task("fewshot")
        return task, resolve_config(task, {**TINY, **over}, None)

    return make


def _write_idx(path: Path, arr: np.ndarray) -> None:
    code = {np.dtype(np.uint8): 0x08}[arr.dtype]
    header = bytes([0, 0, code, arr.ndim]) + b"".join(d.to_bytes(4, "big") for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.tobytes())


def write_fmnist(folder: Path, seed: int = 0) -> Path:
    """Tiny Fashion-MNIST look-alike: 10 classes, each a bright square at its own place."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", FMNIST_TRAIN), ("t10k", FMNIST_TEST)):
        labels = np.arange(n) % 10
        rng.shuffle(labels)
        images = rng.integers(0, 60, size=(n, 28, 28)).astype(np.uint8)
        for i, c in enumerate(labels):
            r, col = 2 + 8 * (c // 4), 2 + 6 * (c % 4)
            images[i, r:r + 6, col:col + 6] = 250
        _write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels.astype(np.uint8))
    return folder


@pytest.fixture(scope="module")
def fmnist_dir(tmp_path_factory):
    return write_fmnist(tmp_path_factory.mktemp("fmnist"))

