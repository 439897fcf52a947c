"""The noisy-label lab task end to end on a tiny generated Fashion-MNIST-format fixture."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from losslab.lab.config import resolve_config
from losslab.lab.progress import NullProgress
from losslab.lab.results import read_rows
from losslab.lab.runner import run_bench
from losslab.lab.tasks import get_task
from tests.lab.conftest import FMNIST_TEST as N_TEST
from tests.lab.conftest import FMNIST_TRAIN as N_TRAIN


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


def test_settings_and_labels():
    task = get_task("noisy")
    assert task.setting_label({"noise": "pair", "rate": 0.3}) == "pair 0.3"
    with pytest.raises(ValueError, match="repeated"):
        task.settings({"noise": ["symmetric:0.4", "symmetric:0.40"]})


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


def test_shipped_config_resolves():
    from losslab.lab.config import load_config_file

    task = get_task("noisy")
    cfg = resolve_config(task, load_config_file("noisy_fmnist"), None)
    assert cfg["losses"] == ["cross_entropy", "gce", "sce", "nce_rce", "ldr_kl", "poly1",
                             "focal", "comp_sum"]
    assert [s["rate"] for s in task.settings(cfg)] == [0.0, 0.4, 0.8]
    assert cfg["loss_hparams"]["comp_sum"] == {"tau": 1.5}
    assert json.dumps(cfg)  # JSON-serialisable (config.json)
