"""Experiment tracking: MLflow runs read back with mlflow's client API, TensorBoard event files
read back with TensorBoard's event reader; resume and back-filling log each job exactly once."""

from __future__ import annotations

import json
import math

import pytest

from losslab.lab.results import read_rows
from losslab.lab.runner import run_bench
from losslab.lab.tracking import (
    ManyTrackers,
    MLflowTracker,
    TensorBoardTracker,
    fingerprint_id,
    make_tracker,
)


def test_make_tracker_parses_the_track_option(tmp_path):
    t = make_tracker("mlflow")
    assert isinstance(t, MLflowTracker) and t.uri is None
    t = make_tracker("mlflow:sqlite:///x/mlflow.db")
    assert isinstance(t, MLflowTracker) and t.uri == "sqlite:///x/mlflow.db"
    t = make_tracker(f"tensorboard:{tmp_path}")
    assert isinstance(t, TensorBoardTracker) and t.logdir == tmp_path
    with pytest.raises(ValueError, match="--track must be mlflow"):
        make_tracker("wandb")


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    """Seed 0 run without tracking, then seeds 0-1 with MLflow and TensorBoard: the two rows
    recorded before are back-filled, the two new ones logged as they finish."""
    pytest.importorskip("mlflow")
    pytest.importorskip("tensorboard")
    from losslab.lab.config import fingerprint, resolve_config
    from losslab.lab.tasks import get_task
    from tests.lab.conftest import TINY

    task = get_task("fewshot")
    cfg = resolve_config(task, {**TINY, "epochs": 2}, None)
    out = tmp_path_factory.mktemp("tracked")
    run_bench(task, cfg, out, quiet=True, report=False)
    assert len(read_rows(out / "results.jsonl")) == 2
    cfg2 = {**cfg, "seeds": [0, 1]}
    run_bench(task, cfg2, out, quiet=True, report=False,
              tracker=ManyTrackers([MLflowTracker(), TensorBoardTracker()]))
    rows = read_rows(out / "results.jsonl")
    assert len(rows) == 4
    return task, cfg2, out, rows, fingerprint_id(fingerprint(task, cfg2))


def _client(out):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=(out / "mlruns").resolve().as_uri())


def _runs(out):
    client = _client(out)
    exp = client.get_experiment_by_name("losslab-fewshot")
    assert exp is not None
    return client, client.search_runs([exp.experiment_id], max_results=100)


def test_mlflow_one_run_per_job_with_tags_params_curves_and_metrics(tracked_run):
    _, cfg, out, rows, fp = tracked_run
    client, runs = _runs(out)
    by_job = {r.data.tags["job_id"]: r for r in runs}
    assert len(runs) == 4 and set(by_job) == {r["job_id"] for r in rows}
    for row in rows:
        run = by_job[row["job_id"]]
        tags, params = run.data.tags, run.data.params
        assert (tags["loss"], tags["setting"], tags["seed"], tags["fingerprint"]) == (
            row["loss"], row["setting_label"], str(row["seed"]), fp)
        assert json.loads(tags["setting_json"]) == row["setting"]
        assert run.info.status == "FINISHED"
        assert params["way"] == str(cfg["way"]) and params["epochs"] == "2"
        assert json.loads(params["losses"]) == cfg["losses"]
        assert params["loss"] == row["loss"] and params["seed"] == str(row["seed"])
        hist = client.get_metric_history(run.info.run_id, "train_loss")
        assert [m.step for m in sorted(hist, key=lambda m: m.step)] == [1, 2]
        assert [m.value for m in sorted(hist, key=lambda m: m.step)] == pytest.approx(
            row["curves"]["train_loss"], rel=1e-12)
        val = client.get_metric_history(run.info.run_id, "val_score")
        assert sorted(m.value for m in val) == pytest.approx(sorted(row["curves"]["val_score"]))
        assert run.data.metrics["test_acc"] == pytest.approx(row["metrics"]["test_acc"])
        assert run.data.metrics["icnn"] == pytest.approx(row["metrics"]["icnn"])
        # the fit loop's last-epoch loss, also a curve, is the final metric final/train_loss
        assert run.data.metrics["final/train_loss"] == pytest.approx(
            row["metrics"]["train_loss"])


def test_resume_logs_nothing_twice(tracked_run):
    task, cfg, out, rows, _ = tracked_run
    tb = TensorBoardTracker()
    run_bench(task, cfg, out, quiet=True, report=False,
              tracker=ManyTrackers([MLflowTracker(), tb]))
    _, runs = _runs(out)
    assert len(runs) == 4
    assert sorted(p.parent.name for p in (out / "tensorboard").rglob(".complete")) == sorted(
        f"seed{r['seed']}-{r['job_id']}" for r in rows)
    assert all(len(list(tb.job_dir(r).glob("events.out.tfevents.*"))) == 1 for r in rows)


def test_tensorboard_event_files_hold_the_curves_and_final_metrics(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, _, out, rows, fp = tracked_run
    tb = TensorBoardTracker()
    tb.root = out / "tensorboard"
    for row in rows:
        acc = EventAccumulator(str(tb.job_dir(row)), size_guidance={"tensors": 0})
        acc.Reload()
        scalars = acc.Tags()["scalars"]
        assert {"train_loss", "val_score", "final/test_acc", "final/icnn"} <= set(scalars)
        loss = acc.Scalars("train_loss")
        assert [e.step for e in loss] == [1, 2]
        assert [e.value for e in loss] == pytest.approx(row["curves"]["train_loss"], rel=1e-6)
        (acc_final,) = acc.Scalars("final/test_acc")
        assert acc_final.step == 2
        assert acc_final.value == pytest.approx(row["metrics"]["test_acc"], rel=1e-6)
        texts = {t: acc.Tensors(t) for t in acc.Tags()["tensors"]}
        job_text = [t for t in texts if t.startswith("job")]
        assert job_text
        job = json.loads(texts[job_text[0]][0].tensor_proto.string_val[0].decode())
        assert (job["loss"], job["seed"], job["fingerprint"]) == (row["loss"], row["seed"], fp)


def test_a_tracker_that_cannot_open_stops_the_run_before_any_job(tmp_path, tiny_config):
    pytest.importorskip("mlflow")
    task, cfg = tiny_config()
    with pytest.raises(ValueError, match="--track mlflow: cannot use the tracking URI"):
        run_bench(task, cfg, tmp_path, quiet=True, report=False,
                  tracker=MLflowTracker(uri="nosuchscheme://nowhere"))
    assert read_rows(tmp_path / "results.jsonl") == []


def test_a_failed_log_is_a_warning_and_the_next_run_backfills(tmp_path, tiny_config,
                                                              monkeypatch, capsys):
    pytest.importorskip("mlflow")
    task, cfg = tiny_config(losses=["protonet"])

    def broken(self, row):
        raise ConnectionError("tracking server down")

    monkeypatch.setattr(MLflowTracker, "log", broken)
    run_bench(task, cfg, tmp_path, quiet=True, report=False, tracker=MLflowTracker())
    assert len(read_rows(tmp_path / "results.jsonl")) == 1  # the result is recorded anyway
    assert "warning: mlflow tracking: could not log job" in capsys.readouterr().out
    monkeypatch.undo()
    run_bench(task, cfg, tmp_path, quiet=True, report=False, tracker=MLflowTracker())
    _, runs = _runs(tmp_path)
    assert [r.data.tags["job_id"] for r in runs] == [
        read_rows(tmp_path / "results.jsonl")[0]["job_id"]]
    assert not math.isnan(runs[0].data.metrics["test_acc"])


def test_a_diverged_row_is_logged_with_its_nan_metrics_and_message(tmp_path):
    """A diverged job (NaN metrics, a message, a curve cut short) is logged, not refused."""
    pytest.importorskip("mlflow")
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from losslab.lab.tasks import get_task

    row = {"job_id": "0123456789abcdef", "task": "fewshot", "loss": "protonet",
           "setting": {"shot": 1}, "setting_label": "3-way 1-shot", "seed": 4,
           "metrics": {"test_acc": math.nan, "icnn": math.nan}, "seconds": 0.5,
           "curves": {"train_loss": [1.5]}, "diverged": "non-finite loss at epoch 2, step 1"}
    ml, tb = MLflowTracker(), TensorBoardTracker()
    trackers = ManyTrackers([ml, tb])
    trackers.open(tmp_path, get_task("fewshot"), {"way": 3}, {"task": "fewshot"})
    assert trackers.sync([row]) == 2 and trackers.sync([row]) == 0  # logged once each
    trackers.close()
    _, runs = _runs(tmp_path)
    (run,) = runs
    assert run.data.tags["diverged"] == row["diverged"]
    assert math.isnan(run.data.metrics["test_acc"]) and run.data.metrics["seconds"] == 0.5
    acc = EventAccumulator(str(tb.job_dir(row)))
    acc.Reload()
    assert [e.value for e in acc.Scalars("train_loss")] == [1.5]
    assert math.isnan(acc.Scalars("final/test_acc")[0].value)
