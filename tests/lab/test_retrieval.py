"""Retrieval task: m-per-class sampler, CUB / Cars / SOP loaders on tiny generated fixtures,
and tiny end-to-end jobs on synthetic data (embeddings, proxy and episode losses)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from losslab.lab.data.formats import DatasetLayoutError
from losslab.lab.data.retrieval import load_retrieval_dataset
from losslab.lab.samplers import MPerClassSampler

# -- sampler ----------------------------------------------------------------------------------


def test_m_per_class_sampler_structure_and_determinism():
    labels = np.repeat(np.arange(10), 5)
    labels[-1] = 9  # class 9 keeps 5
    labels = np.concatenate([labels, [10, 10]])  # class 10 has 2 < m images
    s = MPerClassSampler(labels, m=4, batch_size=16, rng=np.random.default_rng(0))
    for _ in range(50):
        b = s.sample()
        assert b.shape == (16,)
        blocks = labels[b].reshape(4, 4)
        assert (blocks == blocks[:, :1]).all()  # contiguous blocks of one class
        assert np.unique(blocks[:, 0]).size == 4  # distinct classes
        for row, cls in zip(b.reshape(4, 4), blocks[:, 0]):
            if cls != 10:
                assert np.unique(row).size == 4  # without replacement when possible
    a = list(MPerClassSampler(labels, m=4, batch_size=16, rng=np.random.default_rng(3))
             .batches(5))
    c = list(MPerClassSampler(labels, m=4, batch_size=16, rng=np.random.default_rng(3))
             .batches(5))
    assert all((x == y).all() for x, y in zip(a, c))


def test_m_per_class_sampler_errors():
    labels = np.repeat(np.arange(3), 4)
    with pytest.raises(ValueError, match="multiple of m"):
        MPerClassSampler(labels, m=4, batch_size=10, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="only 3 classes"):
        MPerClassSampler(labels, m=2, batch_size=8, rng=np.random.default_rng(0))


# -- loaders ----------------------------------------------------------------------------------


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


# -- task ---------------------------------------------------------------------------------------


def test_retrieval_jobs_on_synthetic(tmp_path):
    from losslab.lab.config import resolve_config
    from losslab.lab.results import read_rows
    from losslab.lab.runner import run_bench
    from losslab.lab.tasks import get_task

    task = get_task("retrieval")
    cfg = resolve_config(task, {
        "dataset": "synthetic", "losses": ["triplet", "proxy_anchor", "proto_triplet"],
        "seeds": 1, "m": 4, "batch_size": 16, "epochs": 1, "batches_per_epoch": 2,
        "embedding_dim": 16, "device": "cpu", "threads": 1,
    }, None)
    out = run_bench(task, cfg, tmp_path / "run", quiet=True)
    rows = read_rows(out / "results.jsonl")
    assert {r["loss"] for r in rows} == {"triplet", "proxy_anchor", "proto_triplet"}
    for r in rows:
        m = r["metrics"]
        for k in ("map_at_r", "r_precision", "precision_at_1"):
            assert 0 <= m[k] <= 100
        assert m["embedding_dim"] == 16 and m["test_classes"] == 6
    assert (out / "table.md").exists() and (out / "map_at_r.png").exists()


def test_retrieval_validate_rejects_bad_configs():
    from losslab.lab.config import resolve_config
    from losslab.lab.tasks import get_task

    task = get_task("retrieval")
    base = {"dataset": "synthetic", "losses": ["triplet"], "m": 4, "batch_size": 16}
    with pytest.raises(ValueError, match="multiple of m"):
        task.validate(resolve_config(task, {**base, "batch_size": 10}, None))
    with pytest.raises(ValueError, match="kind"):
        task.validate(resolve_config(task, {**base, "losses": ["cross_entropy"]}, None))
    with pytest.raises(ValueError, match="m >= 2"):
        task.validate(resolve_config(task, {**base, "losses": ["proto_triplet"], "m": 1,
                                            "batch_size": 8}, None))
