"""kill -9 in the middle of a bench loses at most the job in flight."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from losslab.lab.results import read_rows

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

    proc = _bench(out, flags)
    assert proc.wait(timeout=240) == 0, proc.stderr.read().decode()
    rows = read_rows(results)
    ids = [r["job_id"] for r in rows]
    assert len(rows) == 4 and len(set(ids)) == 4  # every job exactly once
    assert rows[0] == first  # finished jobs were not redone
