"""The regression lab task end to end on a tiny configuration (seconds)."""

from __future__ import annotations

import numpy as np
import pytest

from losslab.lab.config import resolve_config
from losslab.lab.results import read_rows
from losslab.lab.runner import run_bench
from losslab.lab.tasks import get_task
from losslab.lab.tasks.regression import contaminate, robust_scale


def _config(**over):
    task = get_task("regression")
    cfg = {"losses": ["mse", "huber", "conr", "barron", "cs_ib"], "seeds": 1,
           "dataset": ["diabetes"], "outliers": [0.0, 0.3], "epochs": 3, "batch_size": 64,
           "device": "cpu",
           "threads": 1, "loss_hparams": {"barron": {"adaptive": True}}, **over}
    return task, resolve_config(task, cfg, None)


def test_end_to_end_and_report(tmp_path):
    task, cfg = _config()
    out = run_bench(task, cfg, tmp_path / "run", quiet=True)
    rows = read_rows(out / "results.jsonl")
    assert len(rows) == 10
    by = {(r["loss"], r["setting"]["outliers"]): r["metrics"] for r in rows}
    for (loss, rate), m in by.items():
        assert m["test_mae"] > 0 and m["balanced_mae"] > 0 and m["test_rmse"] >= m["test_mae"]
        assert m["n_train"] + m["n_test"] == 442
        assert m["n_outliers"] == (0 if rate == 0 else round(0.3 * m["n_train"]))
        assert ("barron_alpha" in m) == (loss == "barron")
    md = (out / "table.md").read_text()
    assert "| diabetes 0.3 | `conr` |" in md and "Balanced MAE" in md
    assert (out / "test_mae.png").read_bytes()[:4] == b"\x89PNG"


def test_conr_gets_the_features(monkeypatch):
    import losslab

    seen = []
    cls = type(losslab.create("conr"))
    orig = cls.forward

    def spy(self, pred, target, **kw):
        seen.append(kw.get("features"))
        return orig(self, pred, target, **kw)

    monkeypatch.setattr(cls, "forward", spy)
    task, cfg = _config(losses=["conr"], outliers=[0.0], epochs=1, loss_hparams={})
    from losslab.lab.progress import NullProgress
    from losslab.lab.runner import plan_jobs

    (job,) = plan_jobs(task, cfg)
    task.run_job(job, cfg, NullProgress())
    assert seen and all(f is not None and f.shape[1] == 64 for f in seen)


def test_contamination_is_seeded_and_only_shifts_the_chosen_targets():
    y = np.arange(100, dtype=np.float64)
    a, mask = contaminate(y, 0.2, 10.0, seed=3)
    b, _ = contaminate(y, 0.2, 10.0, seed=3)
    assert np.array_equal(a, b) and mask.sum() == 20
    assert np.array_equal(a[~mask], y[~mask])
    _, sd = robust_scale(y)
    assert (np.abs(a[mask] - y[mask]) >= 10.0 * sd - 1e-9).all()


def test_bad_configuration():
    task, cfg = _config()
    with pytest.raises(ValueError, match="outliers"):
        task.validate({**cfg, "outliers": [1.5]})
    with pytest.raises(ValueError, match="kind"):
        _config(losses=["cross_entropy"])


def test_shipped_config_resolves():
    from losslab.lab.config import load_config_file

    task = get_task("regression")
    cfg = resolve_config(task, load_config_file("regression_tabular"), None)
    assert cfg["losses"] == ["mse", "huber", "charbonnier", "barron", "cauchy", "z_error",
                             "conr"]
    assert len(task.settings(cfg)) == 6
