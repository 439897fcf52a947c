"""The executors: local (the default), Ray (a local 2-CPU cluster on 127.0.0.1: a tiny run end
to end, a worker killed by pid mid-job, Ctrl-C) and Slurm through submitit's local executor."""

from __future__ import annotations

import _thread
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from losslab.lab.executors import LocalExecutor, make_executor
from losslab.lab.results import read_rows
from losslab.lab.runner import BenchInterrupted, plan_jobs, run_bench


def _metrics(folder: Path) -> dict[str, dict]:
    rows = read_rows(folder / "results.jsonl")
    ids = [r["job_id"] for r in rows]
    assert len(ids) == len(set(ids)), "a job recorded twice"
    return {r["job_id"]: {k: v for k, v in r["metrics"].items() if not k.endswith("seconds")}
            for r in rows}


def _ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def _descends_from(pid: int, root: int) -> bool:
    seen = 0
    while pid > 1 and seen < 64:
        if pid == root:
            return True
        nxt = _ppid(pid)
        if nxt is None:
            return False
        pid, seen = nxt, seen + 1
    return False


def _job_workers() -> list[int]:
    """Pids of this test's Ray workers running a job (their title is ``ray::losslab_job``)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes()
        except OSError:
            continue
        if cmd.startswith(b"ray::losslab_job") and _descends_from(int(d.name), os.getpid()):
            out.append(int(d.name))
    return out


# -- no cluster needed ------------------------------------------------------------------


def test_make_executor_names_and_options():
    assert isinstance(make_executor("local"), LocalExecutor)
    with pytest.raises(ValueError, match="--executor must be one of"):
        make_executor("dask")
    with pytest.raises(ValueError, match="--address is for --executor ray"):
        make_executor("local", address="auto")
    pytest.importorskip("ray")
    ex = make_executor("ray", address="auto", cpus_per_job=2, gpus_per_job=0.5)
    assert (ex.name, ex.remote) == ("ray", True)
    assert ex.describe()["cpus_per_job"] == 2.0 and ex.describe()["gpus_per_job"] == 0.5


def test_ray_options_are_checked_before_any_job(tiny_config):
    pytest.importorskip("ray")
    _, cfg = tiny_config()
    with pytest.raises(ValueError, match="--gpus-per-job > 0 with --device cpu"):
        make_executor("ray", gpus_per_job=1).check(cfg)
    with pytest.raises(ValueError, match="--cpus-per-job must be > 0"):
        make_executor("ray", cpus_per_job=0).check(cfg)


def test_cli_builds_the_executor_and_refuses_stray_options(tmp_path, tiny_flags, capsys):
    from losslab.lab.cli import main

    argv = ["bench", "fewshot", *tiny_flags(), "--out", str(tmp_path), "--quiet",
            "--no-report", "--cpus-per-job", "2"]
    assert main(argv) == 2
    assert "--cpus-per-job/--gpus-per-job are for --executor ray or slurm" in \
        capsys.readouterr().err
    assert not (tmp_path / "results.jsonl").exists()


# -- Ray ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             _node_ip_address="127.0.0.1")
    try:
        yield ray
    finally:
        ray.shutdown()


def test_ray_runs_a_tiny_config_like_the_local_executor(tmp_path, tiny_config, ray_cluster):
    """Ray tasks (2 CPUs, 1 per job) give every job the metrics of the sequential local run;
    the driver wrote the rows (with curves and the job's device); resume runs nothing again."""
    task, cfg = tiny_config()
    local = run_bench(task, cfg, tmp_path / "local", quiet=True, report=False)
    ray_run = run_bench(task, cfg, tmp_path / "ray", quiet=True, report=False,
                        executor=make_executor("ray", cpus_per_job=1))
    assert _metrics(local) == _metrics(ray_run) and len(_metrics(ray_run)) == 2
    rows = read_rows(ray_run / "results.jsonl")
    assert all(r["device"] == "cpu" and len(r["curves"]["train_loss"]) == cfg["epochs"]
               for r in rows)
    for r in rows:  # the curves are fit's per-epoch numbers: the last loss, the best val score
        assert r["curves"]["train_loss"][-1] == r["metrics"]["train_loss"]
        assert max(r["curves"]["val_score"]) == r["metrics"]["val_acc"]
    assert ray_cluster.is_initialized()  # a cluster the executor did not start stays up
    before = (ray_run / "results.jsonl").read_bytes()
    run_bench(task, cfg, ray_run, quiet=True, report=False, executor=make_executor("ray"))
    assert (ray_run / "results.jsonl").read_bytes() == before  # resumed: nothing redone


def test_ray_worker_killed_mid_job_is_retried_and_recorded_once(tmp_path, tiny_config,
                                                               ray_cluster):
    """kill -9 of the worker process running a job (found by its title, ray::losslab_job):
    Ray runs that job again and every job ends exactly once in results.jsonl."""
    task, cfg = tiny_config(epochs=2, episodes_per_epoch=6)
    killed: list[int] = []
    stop = threading.Event()

    def killer() -> None:
        while not stop.is_set() and not killed:
            pids = _job_workers()
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
            time.sleep(0.05)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    try:
        out = run_bench(task, cfg, tmp_path, quiet=True, report=False,
                        executor=make_executor("ray", max_retries=2))
    finally:
        stop.set()
        t.join()
    assert killed, "no worker was running a job"
    rows = read_rows(out / "results.jsonl")
    ids = [r["job_id"] for r in rows]
    assert sorted(ids) == sorted(j.job_id for j in plan_jobs(task, cfg))  # each exactly once


@pytest.mark.slow
def test_ray_retries_are_bounded(tmp_path, tiny_config, ray_cluster):
    """max_retries=0 and the worker killed: the run stops with a message naming the job (no
    endless retry), and nothing is recorded for it."""
    task, cfg = tiny_config(losses=["protonet"], epochs=2, episodes_per_epoch=6)
    killed: list[int] = []

    def killer() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed:
            pids = _job_workers()
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
            time.sleep(0.05)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    with pytest.raises(RuntimeError, match=r"job \[1/1\] protonet .* failed on ray after 0 "
                       "retries"):
        run_bench(task, cfg, tmp_path, quiet=True, report=False,
                  executor=make_executor("ray", max_retries=0))
    t.join()
    assert killed and read_rows(tmp_path / "results.jsonl") == []


def test_ray_ctrl_c_cancels_the_jobs_in_flight(tmp_path, tiny_config, ray_cluster):
    """Ctrl-C in the driver while jobs run: BenchInterrupted, the rows whole, and no worker
    left running a job (they were force-cancelled, not awaited)."""
    task, cfg = tiny_config(seeds=3, epochs=3, episodes_per_epoch=6)

    def ctrl_c_when_running() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not _job_workers():
            time.sleep(0.05)
        _thread.interrupt_main()

    threading.Thread(target=ctrl_c_when_running, daemon=True).start()
    with pytest.raises(BenchInterrupted) as e:
        run_bench(task, cfg, tmp_path, quiet=True, report=False,
                  executor=make_executor("ray"))
    assert e.value.total == 6 and e.value.done < 6
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and _job_workers():
        time.sleep(0.1)
    assert not _job_workers(), "jobs still running after Ctrl-C"
    assert len(read_rows(tmp_path / "results.jsonl")) == e.value.done


# -- Slurm through submitit ----------------------------------------------------------------


def test_submitit_local_executor_runs_a_tiny_config(tmp_path, tiny_config):
    """--executor slurm with submitit's local cluster (each job a subprocess): the metrics of
    the sequential run, the job logs under RUN/submitit."""
    pytest.importorskip("submitit")
    task, cfg = tiny_config(losses=["protonet+proto_triplet"])
    local = run_bench(task, cfg, tmp_path / "local", quiet=True, report=False)
    out = run_bench(task, cfg, tmp_path / "slurm", quiet=True, report=False,
                    executor=make_executor("slurm", cluster="local", parallel=2))
    assert _metrics(out) == _metrics(local) and len(_metrics(out)) == 1
    assert any((out / "submitit").rglob("*_log.out"))


def _submitit_jobs() -> list[int]:
    """Pids of this test's submitit job processes (``python -m submitit.core._submit``)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes()
        except OSError:
            continue
        if b"submitit.core._submit" in cmd and _descends_from(int(d.name), os.getpid()):
            out.append(int(d.name))
    return out


@pytest.mark.slow
def test_submitit_job_killed_mid_run_is_submitted_again_and_recorded_once(tmp_path,
                                                                         tiny_config, capsys):
    """kill -9 of a submitit job process: it ended without a result, so the executor submits
    it again (bounded), and the job ends exactly once in results.jsonl."""
    pytest.importorskip("submitit")
    task, cfg = tiny_config(losses=["protonet"])
    killed: list[int] = []
    stop = threading.Event()

    def killer() -> None:
        while not stop.is_set() and not killed:
            pids = _submitit_jobs()
            if pids:
                time.sleep(0.5)  # mid-job: the process is importing or training
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
            time.sleep(0.05)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    try:
        out = run_bench(task, cfg, tmp_path, quiet=True, report=False,
                        executor=make_executor("slurm", cluster="local", max_retries=1))
    finally:
        stop.set()
        t.join()
    assert killed
    assert "ended without a result; submitting it again (try 2 of 2)" in capsys.readouterr().out
    assert [r["job_id"] for r in read_rows(out / "results.jsonl")] == [
        j.job_id for j in plan_jobs(task, cfg)]


def test_cli_flags_reach_the_executor_and_the_trackers():
    pytest.importorskip("ray")
    import argparse

    from losslab.lab.cli import _executor_and_tracker, add_bench_parser
    from losslab.lab.executors.ray import RayExecutor
    from losslab.lab.tracking import ManyTrackers, MLflowTracker, TensorBoardTracker

    parser = argparse.ArgumentParser()
    add_bench_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", "fewshot", "--executor", "ray", "--address", "auto",
                              "--cpus-per-job", "4", "--gpus-per-job", "1", "--max-retries",
                              "5", "--track", "mlflow:sqlite:///m.db", "--track",
                              "tensorboard"])
    ex, tr = _executor_and_tracker(args)
    assert isinstance(ex, RayExecutor)
    assert (ex.address, ex.cpus_per_job, ex.gpus_per_job, ex.max_retries) == ("auto", 4, 1, 5)
    assert isinstance(tr, ManyTrackers)
    ml, tb = tr.trackers
    assert isinstance(ml, MLflowTracker) and ml.uri == "sqlite:///m.db"
    assert isinstance(tb, TensorBoardTracker) and tb.logdir is None
