"""The few-shot task: one job of the tiny synthetic configuration, through fit()."""

from __future__ import annotations

import pytest

from losslab.lab.progress import NullProgress
from losslab.lab.runner import plan_jobs


def _run(tiny_config, **over):
    task, cfg = tiny_config(**over)
    (job,) = plan_jobs(task, cfg)
    return task.run_job(job, cfg, NullProgress())


def test_combined_loss_terms_and_validation(tiny_config):
    m = _run(tiny_config, losses=["protonet+icnn"], epochs=2)
    assert set(m["train_terms"]) == {"protonet", "icnn"}
    assert m["train_loss"] == pytest.approx(sum(m["train_terms"].values()) / 2, rel=1e-6)
    assert m["val_acc"] is not None and 0 <= m["val_acc"] <= 100
    assert m["best_epoch"] in (1, 2)
    assert 0 <= m["test_acc"] <= 100 and m["embedding_dim"] == 64
    assert m["train_seconds"] >= 0 and m["eval_seconds"] >= 0


def test_without_validation_the_last_epoch_is_tested(tiny_config):
    m = _run(tiny_config, losses=["protonet"], epochs=2, val_episodes=0)
    assert m["val_acc"] is None and m["best_epoch"] == 2 and m["train_terms"] == {}


def test_settings_and_title(tiny_config):
    task, cfg = tiny_config(shots=[1, 5], train_way=[4, 3])
    assert task.settings(cfg) == [{"way": 3, "shot": 1, "train_way": 4},
                                  {"way": 3, "shot": 5, "train_way": 3}]
    assert task.setting_label({"way": 5, "shot": 1, "train_way": 30}) == "5-way 1-shot"
    with pytest.raises(ValueError, match="one per shot"):
        task.settings({**cfg, "train_way": [4, 3, 2]})
    assert "Few-shot on synthetic" in task.title(cfg)


def test_one_way_per_shot(tiny_config):
    """``way`` like ``train_way``: one value for every shot, or one per shot (the demo tests
    5-shot at a larger way than 1-shot)."""
    task, cfg = tiny_config(shots=[1, 2], way=[3, 5], train_way=[4])
    assert task.settings(cfg) == [{"way": 3, "shot": 1, "train_way": 4},
                                  {"way": 5, "shot": 2, "train_way": 4}]
    assert [task.setting_label(s) for s in task.settings(cfg)] == ["3-way 1-shot",
                                                                   "5-way 2-shot"]
    with pytest.raises(ValueError, match="way: give one value or one per shot"):
        task.settings({**cfg, "way": [3, 4, 5]})
    with pytest.raises(ValueError, match="way must be >= 2"):
        task.validate({**cfg, "way": [3, 1]})
    # the 5-way 2-shot job really tests 5-way episodes
    m = _run(tiny_config, losses=["protonet"], shots=[2], way=[5], train_way=[4])
    assert 0 <= m["test_acc"] <= 100
