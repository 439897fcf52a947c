"""The noisy-label lab task end to end on a tiny generated Fashion-MNIST-format fixture."""

from __future__ import annotations

import csv
import gzip
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from losslab.lab.config import resolve_config
from losslab.lab.data.fetch import (
    FetchError,
    ensure_fashion_mnist,
    fetch_fashion_mnist_deb,
    find_fashion_mnist,
)
from losslab.lab.progress import NullProgress
from losslab.lab.results import read_rows
from losslab.lab.runner import run_bench
from losslab.lab.tasks import get_task
from losslab.lab.tasks.noisy import apply_noise, parse_noise, stratified_subset

N_TRAIN, N_TEST = 300, 100


def _write_idx(path: Path, arr: np.ndarray) -> None:
    code = {np.dtype(np.uint8): 0x08}[arr.dtype]
    header = bytes([0, 0, code, arr.ndim]) + b"".join(d.to_bytes(4, "big") for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.tobytes())


def _fixture(folder: Path, seed: int = 0) -> Path:
    """Tiny Fashion-MNIST look-alike: 10 classes, each a bright square at its own place."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", N_TRAIN), ("t10k", N_TEST)):
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
    return _fixture(tmp_path_factory.mktemp("fmnist"))


def _config(data_dir: Path, **over):
    task = get_task("noisy")
    cfg = {"losses": ["cross_entropy", "aldr_kl"], "seeds": 1, "data_dir": str(data_dir),
           "noise": ["symmetric:0.0", "symmetric:0.5"], "epochs": 1, "batch_size": 64,
           "device": "cpu", "threads": 1, "eval_batch": 128, **over}
    return task, resolve_config(task, cfg, None)


def test_end_to_end_noise_on_train_only_and_report(fmnist_dir, tmp_path, monkeypatch):
    import losslab

    task, cfg = _config(fmnist_dir)
    seen: dict[str, list] = {"index": [], "noisy_targets": []}
    aldr_cls = type(losslab.create("aldr_kl", num_samples=1))
    orig_forward = aldr_cls.forward

    def spy(self, logits, target, **kwargs):
        if kwargs.get("index") is not None:
            seen["index"].append(kwargs["index"].clone())
        return orig_forward(self, logits, target, **kwargs)

    monkeypatch.setattr(aldr_cls, "forward", spy)
    clean_test = task.data(cfg).y_test.clone()
    out = run_bench(task, cfg, tmp_path / "run", quiet=True)
    rows = read_rows(out / "results.jsonl")
    assert len(rows) == 4
    by = {(r["loss"], r["setting"]["rate"]): r["metrics"] for r in rows}
    for (_loss, rate), m in by.items():
        assert 0 <= m["test_acc"] <= 100 and 0 <= m["ece"] <= 100 and 0 <= m["aece"] <= 100
        assert m["n_train"] == N_TRAIN and m["n_test"] == N_TEST
        if rate == 0.0:
            assert m["realised_noise"] == 0.0
        else:
            assert 0.35 < m["realised_noise"] < 0.65
    # the same noise draw for every loss at a seed (a paired comparison)
    assert by[("cross_entropy", 0.5)]["realised_noise"] == by[("aldr_kl", 0.5)]["realised_noise"]
    # the test labels are never touched
    assert torch.equal(task.data(cfg).y_test, clean_test)
    # aldr_kl got index= (dataset ids within the train set), the other loss did not
    assert seen["index"], "aldr_kl was not called with index="
    ids = torch.cat(seen["index"])
    assert ids.min() >= 0 and ids.max() < N_TRAIN
    n_batches = -(-N_TRAIN // 64)  # one epoch of the first aldr_kl job: each sample once
    first = torch.cat(seen["index"][:n_batches])
    assert torch.equal(torch.sort(first).values, torch.arange(N_TRAIN))
    # report: table with both settings, line plots
    md = (out / "table.md").read_text()
    assert "| symmetric 0 | `cross_entropy` |" in md and "| symmetric 0.5 | `aldr_kl` |" in md
    assert "ECE (%)" in md
    table = list(csv.DictReader(open(out / "table.csv")))
    assert {(r["noise"], r["rate"]) for r in table} == {("symmetric", "0.0"),
                                                        ("symmetric", "0.5")}
    for name in ("test_acc.png", "ece.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    assert not (out / "aece.png").exists()


def test_noise_depends_on_seed_and_only_on_train_labels(fmnist_dir):
    task, cfg = _config(fmnist_dir)
    data = task.data(cfg)
    s = parse_noise("symmetric:0.4")
    a = apply_noise(data.y_train, s, dataset="fashion_mnist", num_classes=10, seed=0)
    b = apply_noise(data.y_train, s, dataset="fashion_mnist", num_classes=10, seed=0)
    c = apply_noise(data.y_train, s, dataset="fashion_mnist", num_classes=10, seed=1)
    assert np.array_equal(a.labels, b.labels) and not np.array_equal(a.labels, c.labels)
    asym = apply_noise(data.y_train, parse_noise("asymmetric:1.0"), dataset="fashion_mnist",
                       num_classes=10, seed=0)
    assert set(np.unique(data.y_train[asym.changed])) == {0, 2, 5, 6, 9}
    pair = apply_noise(data.y_train, parse_noise("pair:1.0"), dataset="fashion_mnist",
                       num_classes=10, seed=0)
    assert np.array_equal(pair.labels, (data.y_train + 1) % 10)


def test_parse_noise_and_settings():
    assert parse_noise("symmetric:0.4") == {"noise": "symmetric", "rate": 0.4}
    assert parse_noise("asym:0.2") == {"noise": "asymmetric", "rate": 0.2}
    for bad in ("symmetric", "uniform:0.2", "pair:1.5", "symmetric:x"):
        with pytest.raises(ValueError, match="noise"):
            parse_noise(bad)
    task = get_task("noisy")
    assert task.setting_label({"noise": "pair", "rate": 0.3}) == "pair 0.3"
    with pytest.raises(ValueError, match="repeated"):
        task.settings({"noise": ["symmetric:0.4", "symmetric:0.40"]})


def test_stratified_subset_is_seeded_and_stratified():
    labels = np.repeat(np.arange(10), 50)
    a = stratified_subset(labels, 100, seed=[0, 0])
    assert a.size == 100 and np.bincount(labels[a]).tolist() == [10] * 10
    assert np.array_equal(a, stratified_subset(labels, 100, seed=[0, 0]))
    assert not np.array_equal(a, stratified_subset(labels, 100, seed=[1, 0]))
    assert stratified_subset(labels, 0, seed=0).size == 500
    odd = stratified_subset(labels, 37, seed=3)
    assert odd.size == 37 and np.unique(odd).size == 37


def test_mlp_subset_and_noisy_validation(fmnist_dir):
    task, cfg = _config(fmnist_dir, losses=["gce"], model="mlp", train_subset=200,
                        val_fraction=0.2, epochs=2, noise=["pair:0.3"])
    from losslab.lab.runner import plan_jobs

    (job,) = plan_jobs(task, cfg)
    m = task.run_job(job, cfg, NullProgress())
    assert m["n_train"] + m["n_val"] == 200 and 35 <= m["n_val"] <= 45
    assert m["val_acc_noisy"] is not None and m["best_epoch"] in (1, 2)
    assert 0.1 < m["realised_noise"] < 0.5


def test_missing_dataset_is_a_clear_error(tmp_path):
    task = get_task("noisy")
    _, cfg = _config(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        task.validate(cfg)


def test_combined_loss_passes_index_only_to_stateful_terms(fmnist_dir, tmp_path):
    task, cfg = _config(fmnist_dir, losses=["cross_entropy+aldr_kl"],
                        noise=["symmetric:0.2"])
    out = run_bench(task, cfg, tmp_path / "run", quiet=True, report=False)
    (row,) = read_rows(out / "results.jsonl")
    assert set(row["metrics"]["train_terms"]) == {"cross_entropy", "aldr_kl"}


# -- the data-fetch helper of `make bench-noisy` ------------------------------------------------


def test_find_prefers_data_dir_then_system_then_cache(fmnist_dir, tmp_path):
    cache = tmp_path / "cache"
    assert find_fashion_mnist(None, cache, system_dir=tmp_path / "none") is None
    assert find_fashion_mnist(fmnist_dir, cache, system_dir=tmp_path / "none") == fmnist_dir
    assert find_fashion_mnist(None, cache, system_dir=fmnist_dir) == fmnist_dir
    unpacked = _fixture(cache / "debroot" / "usr/share/datasets/fashion-mnist")
    assert find_fashion_mnist(None, cache, system_dir=tmp_path / "none") == unpacked
    with pytest.raises(FetchError, match="does not hold"):
        ensure_fashion_mnist(tmp_path / "none", cache)


def test_fetch_with_apt_get_download_and_dpkg_x(tmp_path):
    calls = []

    def fake_run(cmd, **kw):
        calls.append((cmd, kw.get("cwd")))
        if cmd[:2] == ["apt-get", "download"]:
            (Path(kw["cwd"]) / "dataset-fashion-mnist_1.0_all.deb").write_bytes(b"deb")
        elif cmd[:2] == ["dpkg", "-x"]:
            _fixture(Path(cmd[3]) / "usr/share/datasets/fashion-mnist")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    cache = tmp_path / "cache"
    got = ensure_fashion_mnist(None, cache, system_dir=tmp_path / "none", run=fake_run)
    assert got == cache / "debroot/usr/share/datasets/fashion-mnist"
    assert [c[0][:2] for c in calls] == [["apt-get", "download"], ["dpkg", "-x"]]
    assert calls[0][1] == str(cache)
    # found afterwards without fetching again
    assert ensure_fashion_mnist(None, cache, system_dir=tmp_path / "none",
                                run=fake_run) == got and len(calls) == 2


def test_fetch_failure_explains_what_to_install(tmp_path):
    def failing_run(cmd, **kw):
        return subprocess.CompletedProcess(cmd, 100, "", "E: Unable to locate package")

    with pytest.raises(FetchError, match=r"(?s)apt-get download.*failed.*apt-get install "
                                         r"dataset-fashion-mnist.*--data-dir"):
        fetch_fashion_mnist_deb(tmp_path, run=failing_run)
    with pytest.raises(FetchError, match="not found"):
        ensure_fashion_mnist(None, tmp_path, download=False, system_dir=tmp_path / "none")


def test_fetch_cli_prints_the_folder(fmnist_dir, capsys):
    from losslab.lab.data.fetch import main

    assert main(["fashion-mnist", "--data-dir", str(fmnist_dir)]) == 0
    assert capsys.readouterr().out.strip() == str(fmnist_dir)


def test_shipped_config_resolves():
    from losslab.lab.config import load_config_file

    task = get_task("noisy")
    cfg = resolve_config(task, load_config_file("noisy_fmnist"), None)
    assert cfg["losses"] == ["cross_entropy", "gce", "sce", "nce_rce", "ldr_kl", "poly1",
                             "focal", "comp_sum"]
    assert [s["rate"] for s in task.settings(cfg)] == [0.0, 0.4, 0.8]
    assert cfg["loss_hparams"]["comp_sum"] == {"tau": 1.5}
    assert json.dumps(cfg)  # JSON-serialisable (config.json)


def test_line_plot_one_panel_per_noise_kind(tmp_path):
    from losslab.lab.report import _line_groups, summarise, write_report
    from losslab.lab.results import append_row

    (tmp_path / "config.json").write_text(json.dumps({
        "task": "noisy", "losses": ["cross_entropy", "gce"], "dataset": "fashion_mnist",
        "model": "cnn", "train_subset": 0, "epochs": 1, "optimizer": "sgd", "lr": 0.1,
        "noise": ["symmetric:0.0", "symmetric:0.4", "pair:0.3"]}))
    for loss in ("cross_entropy", "gce"):
        for kind, rate in (("symmetric", 0.0), ("symmetric", 0.4), ("pair", 0.3)):
            for seed in range(2):
                append_row(tmp_path / "results.jsonl", {
                    "job_id": f"{loss}{kind}{rate}{seed}", "task": "noisy", "loss": loss,
                    "setting": {"noise": kind, "rate": rate},
                    "setting_label": f"{kind} {rate:g}", "seed": seed,
                    "metrics": {"test_acc": 80 - 50 * rate + seed, "ece": 5.0 + seed,
                                "aece": 5.0}})
    groups = _line_groups(summarise(tmp_path), "rate")
    assert groups == {"noise=symmetric": [(0.0, "symmetric 0"), (0.4, "symmetric 0.4")],
                      "noise=pair": [(0.3, "pair 0.3")]}
    rep = write_report(tmp_path)
    assert [p.name for p in rep["plots"]] == ["test_acc.png", "ece.png"]
    assert "| pair 0.3 | `gce` |" in rep["markdown"]
