"""The environment record of a run: device resolution, versions, git SHA."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import losslab
from losslab.lab import env as env_mod
from losslab.lab.env import environment, git_sha, resolve_device


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == want
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="cuda requested"):
            resolve_device("cuda:0")


def test_environment_record():
    env = environment(torch.device("cpu"))
    assert env["losslab"] == losslab.__version__ and env["torch"] == torch.__version__
    assert env["device"] == "cpu" and env["cpu_count"] >= 1
    assert {"python", "numpy", "platform", "argv", "started", "git_sha", "git_dirty"} <= set(env)
    sha, dirty = git_sha()
    assert env["git_sha"] == sha
    if sha is not None:
        assert len(sha) == 40 and isinstance(dirty, bool)


def test_git_sha_outside_a_checkout(monkeypatch):
    def no_git(*args, **kwargs):
        raise subprocess.CalledProcessError(128, args[0])

    monkeypatch.setattr(env_mod.subprocess, "run", no_git)
    assert git_sha() == (None, None)


@pytest.mark.parametrize("name", ["cpux", "gpu", "cuda:x"])
def test_a_bad_device_names_the_option(name):
    with pytest.raises(ValueError, match=rf"^--device / device: {name!r} is not a torch device"):
        resolve_device(name)


def test_a_missing_cuda_index_is_refused():
    n = torch.cuda.device_count()
    with pytest.raises(ValueError, match="device"):
        resolve_device(f"cuda:{n}")


# -- tune_malloc: freed tensor memory stays in the process (no page-fault churn) -----------------

_FAULTS = """
import resource, sys, torch
from losslab.lab.env import tune_malloc
print(tune_malloc(), tune_malloc())  # idempotent
x = torch.ones(1)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):  # a 64 MiB activation allocated, written and freed per step
    x = torch.ones(16 * 2**20)
    del x
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""

_glibc_linux = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="mallopt is glibc's")


def _python(code: str, env: dict[str, str], cwd: Path | None = None) -> list[str]:
    src = str(Path(env_mod.__file__).resolve().parents[2])
    full = {k: v for k, v in os.environ.items()
            if not k.startswith("MALLOC_") and k not in ("GLIBC_TUNABLES", "LOSSLAB_MALLOC")}
    full.update(env)
    full["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), src) if p)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=full, cwd=cwd, timeout=120, check=True)
    return out.stdout.split()


@_glibc_linux
def test_tune_malloc_stops_the_page_fault_churn():
    """glibc maps every large block afresh and unmaps it on free: each step faults its pages in
    again. Tuned, the block is reused: the faults of 20 steps are about those of one."""
    tuned, again, faults_tuned = _python(_FAULTS, {})
    assert (tuned, again) == ("True", "True")
    off, _, faults_default = _python(_FAULTS, {"LOSSLAB_MALLOC": "default"})
    assert off == "False"
    pages = 64 * 2**20 // 4096
    assert int(faults_default) > 10 * pages  # the churn this removes
    assert int(faults_tuned) < 3 * pages
    assert int(faults_tuned) * 4 < int(faults_default)


@_glibc_linux
@pytest.mark.parametrize("var", ["MALLOC_MMAP_MAX_", "GLIBC_TUNABLES"])
def test_tune_malloc_leaves_the_users_malloc_settings(var):
    code = "from losslab.lab.env import tune_malloc; print(tune_malloc())"
    value = "glibc.malloc.check=0" if var == "GLIBC_TUNABLES" else "65536"
    assert _python(code, {var: value}) == ["False"]


@pytest.mark.slow  # two torch imports and a spawn
@_glibc_linux
def test_local_workers_run_tuned(tmp_path):
    """The local executor's spawned workers call tune_malloc in their initializer."""
    (tmp_path / "probe.py").write_text(
        "def tuned():\n    from losslab.lab import env\n    return env._malloc_tuned\n")
    code = (
        "import concurrent.futures as cf, multiprocessing as mp, os, probe\n"
        "from losslab.lab.executors.local import _worker_init\n"
        "if __name__ == '__main__':\n"
        "    with cf.ProcessPoolExecutor(1, mp_context=mp.get_context('spawn'),\n"
        "            initializer=_worker_init, initargs=(os.getpid(), 1)) as pool:\n"
        "        print(pool.submit(probe.tuned).result())\n"
    )
    assert _python(code, {"PYTHONPATH": str(tmp_path)}, cwd=tmp_path) == ["True"]
