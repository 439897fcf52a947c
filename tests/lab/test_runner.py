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


# -- faults: orphans, interrupts, full disks, unwritable folders, bad folders ------------


def _children(pid: int) -> list[int]:
    """Pids whose parent is ``pid`` (psutil if installed, else /proc)."""
    try:
        import psutil
    except ImportError:
        out = []
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    stat = (d / "stat").read_text()
                except OSError:
                    continue
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d.name))
        return out
    try:
        return [c.pid for c in psutil.Process(pid).children()]
    except psutil.NoSuchProcess:
        return []


def _alive(pid: int) -> bool:
    """A process that exists and is not a zombie (a dead child nobody reaped yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _wait_for_rows(proc, results, n=1, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if results.exists() and results.read_bytes().count(b"\n") >= n:
            return
        if proc.poll() is not None:
            raise AssertionError(proc.stderr.read().decode())
        time.sleep(0.02)
    raise AssertionError("no result row in time")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_workers_die_with_their_parent(tmp_path, tiny_flags):
    """kill -9 of a --workers 2 run: the workers and the multiprocessing resource tracker go
    with it (before: both workers went on finishing jobs nobody records)."""
    out = tmp_path / "run"
    proc = _bench(out, tiny_flags(seeds=3, workers=2, episodes_per_epoch=3))
    kids: list[int] = []
    try:
        _wait_for_rows(proc, out / "results.jsonl")
        kids = _children(proc.pid)
        assert len(kids) >= 3, kids  # two workers and the resource tracker
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(map(_alive, kids)):
            time.sleep(0.05)
        assert not [k for k in kids if _alive(k)], "orphans left behind"
    finally:
        proc.kill()
        proc.wait()
        for k in kids:
            if _alive(k):
                os.kill(k, signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.parametrize("to", ["group", "parent"])
def test_ctrl_c_of_parallel_run_is_clean_and_prompt(tmp_path, tiny_flags, to):
    """SIGINT to the whole process group (what Ctrl-C does) or to the runner alone (``kill
    -INT``): one line, exit 130, the workers gone, the recorded rows whole (before: a
    KeyboardInterrupt traceback from every process)."""
    out = tmp_path / "run"
    flags = tiny_flags(seeds=3, workers=2, episodes_per_epoch=3)
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "losslab.lab.cli", "bench", "fewshot", *flags, "--out", str(out),
         "--quiet", "--no-report"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        start_new_session=True)
    try:
        _wait_for_rows(proc, out / "results.jsonl")
        kids = _children(proc.pid)
        if to == "group":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    err = err.decode()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err and "re-run" in err
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(map(_alive, kids)):
        time.sleep(0.05)
    assert not [k for k in kids if _alive(k)]
    assert (out / "results.jsonl").read_bytes().endswith(b"\n")
    n = len(read_rows(out / "results.jsonl"))
    assert f"{n} of 6 jobs done" in err


def _count_jobs(monkeypatch, fail=None):
    """Count (and optionally fail) FewShotTask.run_job calls: ``fail(call_number, job)``."""
    from losslab.lab.tasks.fewshot import FewShotTask

    calls = []
    real = FewShotTask.run_job

    def run_job(self, job, config, progress):
        calls.append(job.job_id)
        if fail is not None:
            fail(len(calls), job)
        return real(self, job, config, progress)

    monkeypatch.setattr(FewShotTask, "run_job", run_job)
    return calls


def test_interrupt_leaves_a_resumable_folder(tmp_path, tiny_config, monkeypatch):
    from losslab.lab.runner import BenchInterrupted

    def ctrl_c(n, job):
        if n == 2:
            raise KeyboardInterrupt

    task, cfg = tiny_config()
    _count_jobs(monkeypatch, ctrl_c)
    with pytest.raises(BenchInterrupted) as e:
        run_bench(task, cfg, tmp_path, quiet=True, report=False)
    assert (e.value.done, e.value.total) == (1, 2)
    assert "interrupted: 1 of 2 jobs done" in str(e.value) and "re-run" in str(e.value)
    assert len(read_rows(tmp_path / "results.jsonl")) == 1
    monkeypatch.undo()
    run_bench(task, cfg, tmp_path, quiet=True, report=False)  # the lock was released
    assert len(read_rows(tmp_path / "results.jsonl")) == 2


def test_a_diverged_job_is_recorded_and_the_run_goes_on(tmp_path, tiny_config, monkeypatch):
    """fit() stops a job at the first non-finite loss; the runner records that job as diverged
    (NaN metrics, the message) and runs the others, instead of stopping the whole run."""

    def diverge(n, job):
        if job.loss == "protonet+proto_triplet":
            raise FloatingPointError("x: non-finite loss at epoch 1, step 1; lower --lr?")

    task, cfg = tiny_config(seeds=2)
    _count_jobs(monkeypatch, diverge)
    out = run_bench(task, cfg, tmp_path, quiet=True)
    rows = read_rows(out / "results.jsonl")
    assert len(rows) == 4
    bad = [r for r in rows if r.get("diverged")]
    assert [r["loss"] for r in bad] == ["protonet+proto_triplet"] * 2
    assert "non-finite loss" in bad[0]["diverged"]
    assert all(v != v for v in bad[0]["metrics"].values())  # NaN
    assert "diverged" in (out / "table.md").read_text()


def test_loss_of_the_wrong_kind_fails_before_any_job(tmp_path, tiny_config, monkeypatch):
    task, cfg = tiny_config()
    cfg = {**cfg, "losses": ["protonet", "cross_entropy"]}
    calls = _count_jobs(monkeypatch)
    with pytest.raises(ValueError, match=r"cross_entropy.*'logits'.*'episode'"):
        run_bench(task, cfg, tmp_path, quiet=True, report=False)
    assert calls == [] and not (tmp_path / "results.jsonl").exists()


def test_unwritable_results_file_fails_before_training(tmp_path, tiny_config, monkeypatch):
    """root ignores permission bits, so a read-only results.jsonl is simulated by its open
    failing with PermissionError; before the fix the first job trained and its result was
    lost."""
    from losslab.lab import results as results_mod
    from losslab.lab.runner import RunFolderError

    real_open = os.open

    def deny(path, flags, *a, **k):
        if str(path).endswith("results.jsonl") and flags & (os.O_WRONLY | os.O_RDWR):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *a, **k)

    monkeypatch.setattr(results_mod.os, "open", deny)
    task, cfg = tiny_config()
    calls = _count_jobs(monkeypatch)
    with pytest.raises(RunFolderError, match=r"Permission denied.*results\.jsonl"):
        run_bench(task, cfg, tmp_path, quiet=True, report=False)
    assert calls == []


def test_read_only_folder_is_a_message(tmp_path, tiny_config, monkeypatch):
    from losslab.lab import runner as runner_mod
    from losslab.lab.runner import RunFolderError

    real_open = os.open

    def deny(path, flags, *a, **k):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *a, **k)

    monkeypatch.setattr(runner_mod.os, "open", deny)
    task, cfg = tiny_config()
    with pytest.raises(RunFolderError, match=r"cannot write the run folder .*Permission denied"):
        run_bench(task, cfg, tmp_path, quiet=True, report=False)


@pytest.mark.parametrize("where", ["out_is_a_file", "under_a_file", "results_is_a_dir",
                                   "config_is_a_dir"])
def test_wrong_kind_of_path_is_a_message(tmp_path, tiny_config, monkeypatch, where):
    from losslab.lab.runner import RunFolderError

    out = tmp_path / "run"
    if where == "out_is_a_file":
        out.write_text("x")
    elif where == "under_a_file":
        (tmp_path / "f").write_text("x")
        out = tmp_path / "f" / "run"
    else:
        (out / ("results.jsonl" if where == "results_is_a_dir" else "config.json")).mkdir(
            parents=True)
    task, cfg = tiny_config()
    calls = _count_jobs(monkeypatch)
    with pytest.raises(RunFolderError, match="run folder"):
        run_bench(task, cfg, out, quiet=True, report=False)
    assert calls == []


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"fingerprint": 3}'])
def test_malformed_config_json_is_a_message(tmp_path, tiny_config, text):
    from losslab.lab.runner import RunFolderError

    (tmp_path / "config.json").write_text(text)
    task, cfg = tiny_config()
    with pytest.raises(RunFolderError, match=r"config\.json.*restore it, or delete it"):
        run_bench(task, cfg, tmp_path, quiet=True, report=False)


def test_lock_keeps_a_second_run_out(tmp_path, tiny_config):
    import fcntl

    fd = os.open(tmp_path / ".lock", os.O_WRONLY | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        task, cfg = tiny_config()
        with pytest.raises(RuntimeError, match="lock held"):
            run_bench(task, cfg, tmp_path, quiet=True, report=False)
    finally:
        os.close(fd)
    assert not (tmp_path / "results.jsonl").exists()


def test_full_disk_mid_run_keeps_the_file_whole(tmp_path, tiny_config, monkeypatch):
    """ENOSPC while appending the second row: a short write, then the error. The partial line
    is cut off again, the run stops with a message, and the same command resumes."""
    import errno

    from losslab.lab import results as results_mod
    from losslab.lab.runner import RunFolderError

    real_write = os.write
    state = {"rows": 0}

    def full(fd, data):
        if state["rows"] != 2 and b'"job_id"' not in data:  # not a row (nor its rest)
            return real_write(fd, data)
        state["rows"] += 1
        if state["rows"] == 2:
            return real_write(fd, data[: len(data) // 2])  # what fits
        if state["rows"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(results_mod.os, "write", full)
    task, cfg = tiny_config(seeds=2)
    with pytest.raises(RunFolderError, match=r"No space left.*1 of 4 jobs.*re-run"):
        run_bench(task, cfg, tmp_path, quiet=True, report=False)
    data = (tmp_path / "results.jsonl").read_bytes()
    assert data.count(b"\n") == 1 and data.endswith(b"\n")
    first = read_rows(tmp_path / "results.jsonl")
    monkeypatch.undo()
    run_bench(task, cfg, tmp_path, quiet=True, report=False)
    rows = read_rows(tmp_path / "results.jsonl")
    assert rows[:1] == first and len({r["job_id"] for r in rows}) == 4


def _fsize_limit(limit):
    def apply():
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_FSIZE semantics of Linux")
def test_real_file_size_limit(tmp_path, tiny_config, tiny_toml):
    """A real `ulimit -f`: a subprocess whose files may not grow past a few rows. It stops with
    a message (no traceback), keeps only whole rows, and a re-run completes every job once."""
    task, cfg = tiny_config(seeds=2)
    ref = run_bench(task, cfg, tmp_path / "ref", quiet=True, report=False)
    row = max(len(line) for line in (ref / "results.jsonl").read_bytes().splitlines()) + 1
    limit = max((ref / "config.json").stat().st_size + 200, int(row * 1.5))
    assert limit < 3 * row, "the limit must stop the run before its last job"
    toml = tiny_toml(tmp_path / "c.toml", seeds=2)
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [sys.executable, "-m", "losslab.lab.cli", "bench", "fewshot", "--config", str(toml),
         "--out", str(out), "--quiet", "--no-report"], env=env, capture_output=True,
        preexec_fn=_fsize_limit(limit), timeout=300)
    err = proc.stderr.decode()
    assert proc.returncode == 2 and "Traceback" not in err, err
    assert "losslab bench: error:" in err and "re-run" in err
    data = (out / "results.jsonl").read_bytes()
    assert data.endswith(b"\n") and 1 <= data.count(b"\n") < 4
    kept = read_rows(out / "results.jsonl")
    from losslab.lab.cli import main

    assert main(["bench", "fewshot", "--config", str(toml), "--out", str(out), "--quiet",
                 "--no-report"]) == 0
    rows = read_rows(out / "results.jsonl")
    assert rows[: len(kept)] == kept and len({r["job_id"] for r in rows}) == len(rows) == 4
    want = {r["job_id"]: r["metrics"]["test_acc"] for r in read_rows(ref / "results.jsonl")}
    assert {r["job_id"]: r["metrics"]["test_acc"] for r in rows} == want
