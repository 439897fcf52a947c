"""The runner: run folders, resume (also after kill -9), config checks, parallel workers."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from losslab.lab.results import read_rows
from losslab.lab.runner import ConfigMismatchError, plan_jobs, run_bench


def test_run_resume_and_report(tmp_path, tiny_config, capsys):
    task, cfg = tiny_config()
    out = run_bench(task, cfg, tmp_path / "run", quiet=True)
    rows = read_rows(out / "results.jsonl")
    assert len(rows) == 2
    assert {r["loss"] for r in rows} == {"protonet", "protonet+proto_triplet"}
    for r in rows:
        m = r["metrics"]
        assert 0 <= m["test_acc"] <= 100 and m["test_ci95"] >= 0
        assert 0.25 <= m["icnn"] <= 1
        assert m["best_epoch"] == 1 and m["embedding_dim"] == 64
    for name in ("config.json", "env.json", "table.md", "table.csv", "test_acc.png",
                 "icnn.png"):
        assert (out / name).exists(), name
    env = json.loads((out / "env.json").read_text())
    assert {"torch", "numpy", "python", "losslab", "git_sha", "device", "cpu_count"} <= set(env)
    log = capsys.readouterr().out
    assert "[1/2] protonet | 3-way 1-shot | seed 0 | test_acc" in log

    # resume: nothing to do, nothing appended
    before = (out / "results.jsonl").read_bytes()
    run_bench(task, cfg, out, quiet=True, report=False)
    assert (out / "results.jsonl").read_bytes() == before
    assert "2 jobs (2 already done)" in capsys.readouterr().out

    # extend the folder with a seed: only the new jobs run
    task, cfg2 = tiny_config(seeds=[0, 1])
    run_bench(task, cfg2, out, quiet=True, report=False)
    rows = read_rows(out / "results.jsonl")
    assert len(rows) == 4 and len({r["job_id"] for r in rows}) == 4
    assert sorted(r["seed"] for r in rows) == [0, 0, 1, 1]


def test_changed_config_is_refused(tmp_path, tiny_config):
    task, cfg = tiny_config(losses=["protonet"])
    run_bench(task, cfg, tmp_path, quiet=True, report=False)
    task, cfg = tiny_config(losses=["protonet"], epochs=2)
    with pytest.raises(ConfigMismatchError, match=r"epochs: 1 -> 2.*new --out"):
        run_bench(task, cfg, tmp_path, quiet=True, report=False)


def test_same_seed_same_result(tmp_path, tiny_config):
    task, cfg = tiny_config(losses=["protonet"])
    a = read_rows(run_bench(task, cfg, tmp_path / "a", quiet=True, report=False)
                  / "results.jsonl")
    b = read_rows(run_bench(task, cfg, tmp_path / "b", quiet=True, report=False)
                  / "results.jsonl")
    assert a[0]["metrics"]["test_acc"] == b[0]["metrics"]["test_acc"]
    assert a[0]["job_id"] == b[0]["job_id"]


def test_plan_is_seed_major(tiny_config):
    task, cfg = tiny_config(seeds=2, shots=[1, 2], train_way=[4])
    jobs = plan_jobs(task, cfg)
    assert len(jobs) == 2 * 2 * 2
    assert [j.seed for j in jobs[:4]] == [0, 0, 0, 0]
    assert [j.index for j in jobs] == list(range(1, 9)) and jobs[0].total == 8
    assert len({j.job_id for j in jobs}) == 8


def test_truncated_last_line_is_redone(tmp_path, tiny_config):
    task, cfg = tiny_config()
    run_bench(task, cfg, tmp_path, quiet=True, report=False)
    p = tmp_path / "results.jsonl"
    data = p.read_bytes()
    last_start = data.rstrip(b"\n").rfind(b"\n") + 1
    last = read_rows(p)[-1]
    p.write_bytes(data[: last_start + (len(data) - last_start) // 2])  # killed mid-write
    with pytest.warns(RuntimeWarning, match="truncated"):
        run_bench(task, cfg, tmp_path, quiet=True, report=False)
    rows = read_rows(p)
    assert len(rows) == 2 and rows[-1]["job_id"] == last["job_id"]
    assert rows[-1]["metrics"]["test_acc"] == last["metrics"]["test_acc"]  # same seed, same run


def test_parallel_workers_give_the_sequential_results(tmp_path, tiny_config):
    """workers=2 runs jobs in spawned processes; every job's metrics equal the sequential run."""
    from losslab.lab.results import read_rows
    from losslab.lab.runner import run_bench

    task, cfg = tiny_config(seeds=2)
    seq = run_bench(task, cfg, tmp_path / "seq", quiet=True, report=False)
    par = run_bench(task, {**cfg, "workers": 2}, tmp_path / "par", quiet=True, report=False)
    a = {r["job_id"]: r["metrics"] for r in read_rows(seq / "results.jsonl")}
    b = {r["job_id"]: r["metrics"] for r in read_rows(par / "results.jsonl")}
    assert a.keys() == b.keys() and len(a) == 4
    for k in a:
        diff = {m: (a[k][m], b[k].get(m)) for m in a[k]
                if a[k][m] != b[k].get(m) and not m.endswith("seconds")}
        assert not diff, diff


# -- kill -9 in the middle of a bench loses at most the job in flight ---------------------


SRC = str(Path(__file__).resolve().parents[2] / "src")


def _bench(out, flags):
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "losslab.lab.cli", "bench", "fewshot", *flags, "--out",
           str(out), "--quiet", "--no-report"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_sigkill_then_resume(tmp_path, tiny_flags):
    out = tmp_path / "run"
    # 4 jobs, each a few hundred ms: kill right after the first line appears.
    flags = tiny_flags(seeds=2, episodes_per_epoch=3, val_episodes=10)
    proc = _bench(out, flags)
    results = out / "results.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if results.exists() and results.read_bytes().count(b"\n") >= 1:
            break
        if proc.poll() is not None:
            raise AssertionError(proc.stderr.read().decode())
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    n_before = len(read_rows(results))
    assert 1 <= n_before <= 4
    first = read_rows(results)[0]

    # the same command again (in-process, to save a second interpreter start)
    from losslab.lab.cli import main

    argv = ["bench", "fewshot", *flags, "--out", str(out), "--quiet", "--no-report"]
    assert main(argv) == 0
    rows = read_rows(results)
    ids = [r["job_id"] for r in rows]
    assert len(rows) == 4 and len(set(ids)) == 4  # every job exactly once
    assert rows[0] == first  # finished jobs were not redone
