"""The aggregate-label lab task end to end on tiny configurations (seconds)."""

from __future__ import annotations

import pytest
import torch

from losslab.lab.config import resolve_config
from losslab.lab.results import read_rows
from losslab.lab.runner import run_bench
from losslab.lab.tasks import get_task
from losslab.lab.tasks.aggregate import _project_simplex, bag_responses
from tests.lab.conftest import FMNIST_TRAIN as N_TRAIN

CE = {"bag_level": {"base": "ce"}, "instance_level": {"base": "ce"}}


def _config(**over):
    task = get_task("aggregate")
    cfg = {"losses": ["bag_level", "instance_level", "easyllp", "proportion"], "seeds": 1,
           "bag_size": [8, 32], "epsilon": [0.0, 1.0], "epochs": 1, "train_subset": 0,
           "device": "cpu", "threads": 1, "loss_hparams": CE, **over}
    return task, resolve_config(task, cfg, None)


def test_classification_end_to_end_and_report(fmnist_dir, tmp_path):
    task, cfg = _config(data_dir=str(fmnist_dir))
    out = run_bench(task, cfg, tmp_path / "run", quiet=True)
    rows = read_rows(out / "results.jsonl")
    assert len(rows) == 16
    for r in rows:
        m, k = r["metrics"], r["setting"]["bag_size"]
        assert 0 <= m["test_error"] <= 100 and m["n_train"] == N_TRAIN
        assert m["n_bags"] == -(-N_TRAIN // k)
    md = (out / "table.md").read_text()
    assert "| k=8 | `easyllp` |" in md and "| k=32 eps=1 | `proportion` |" in md
    assert (out / "test_error.png").read_bytes()[:4] == b"\x89PNG"


def test_regression_problem_runs(tmp_path):
    task, cfg = _config(problem="regression", table="diabetes",
                        losses=["bag_level", "interpolated_aggregate"], loss_hparams={},
                        bag_size=[16], epsilon=[0.0], epochs=2)
    out = run_bench(task, cfg, tmp_path / "run", quiet=True, report=False)
    rows = read_rows(out / "results.jsonl")
    assert len(rows) == 2
    assert all(0 < r["metrics"]["test_error"] < 10 for r in rows)


def test_bag_responses_exact_and_private():
    labels = torch.nn.functional.one_hot(torch.tensor([0, 1, 1, 2, 2, 2]), 3).double()
    bags = torch.tensor([0, 0, 1, 1, 1, 1])
    exact = bag_responses(labels, bags, epsilon=0.0, bound=1.0, seed=0, proportions=True)
    torch.testing.assert_close(exact, torch.tensor([[0.5, 0.5, 0], [0, 0.25, 0.75]],
                                                   dtype=torch.float64))
    noisy = bag_responses(labels, bags, epsilon=0.5, bound=1.0, seed=0, proportions=True)
    again = bag_responses(labels, bags, epsilon=0.5, bound=1.0, seed=0, proportions=True)
    assert torch.equal(noisy, again) and not torch.equal(noisy, exact)
    assert bool((noisy >= 0).all()) and torch.allclose(noisy.sum(1), torch.ones(2,
                                                                              dtype=noisy.dtype))


def test_simplex_projection():
    v = torch.tensor([[0.2, 0.3, 0.5], [2.0, -1.0, 0.0], [0.4, 0.4, 0.4]], dtype=torch.float64)
    p = _project_simplex(v)
    torch.testing.assert_close(p[0], v[0])  # already on the simplex
    torch.testing.assert_close(p[1], torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(p[2], torch.full((3,), 1 / 3, dtype=torch.float64))


def test_bad_configuration_and_shipped_configs():
    from losslab.lab.config import load_config_file

    task = get_task("aggregate")
    with pytest.raises(ValueError, match="kind"):
        resolve_config(task, {"losses": ["mse"]}, None)
    for name, n in (("aggregate_fmnist", 8), ("aggregate_regression", 8)):
        cfg = resolve_config(task, load_config_file(name), None)
        assert len(task.settings(cfg)) == n
