"""The environment record of a run: device resolution, versions, git SHA."""

from __future__ import annotations

import subprocess

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
