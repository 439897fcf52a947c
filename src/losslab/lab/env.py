"""What a run runs on: the torch device, and the record of the environment that produced its
numbers (versions, platform, device, git SHA), written to ``env.json`` by the runner.

Tasks import :func:`resolve_device` from here; this module imports nothing from the lab.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["environment", "git_sha", "resolve_device"]


def git_sha() -> tuple[str | None, bool | None]:
    """``(commit SHA, dirty)`` of the checkout holding this file; ``(None, None)`` outside a git
    checkout (an installed wheel) or without git."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
            timeout=5, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
        return sha or None, bool(dirty)
    except (OSError, subprocess.SubprocessError):
        return None, None


def resolve_device(name: str) -> torch.device:
    """``"auto"`` (cuda if available, else cpu), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` (or
    ``"mps"`` where torch has it); a ``ValueError`` naming the option for anything else, for
    cuda on a machine without it and for a missing cuda index."""
    opt = "--device / device"
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError, ValueError) as e:
        raise ValueError(
            f"{opt}: {name!r} is not a torch device (use auto, cpu, cuda or cuda:N); torch "
            f"says: {e}"
        ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{opt}: cuda requested but torch.cuda.is_available() is False")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise ValueError(f"{opt}: {name!r} requested, but this machine has {n} cuda "
                             f"device(s) (cuda:0 .. cuda:{n - 1})")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"{opt}: mps requested but torch.backends.mps.is_available() is "
                             "False")
    elif dev.type != "cpu":
        raise ValueError(f"{opt}: {name!r}: the lab runs on auto, cpu, cuda or cuda:N")
    return dev


def environment(device: torch.device) -> dict[str, Any]:
    """What produced the numbers: versions, platform, device, git SHA."""
    import losslab

    sha, dirty = git_sha()
    env: dict[str, Any] = {
        "git_sha": sha,
        "git_dirty": dirty,
        "losslab": losslab.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "argv": sys.argv,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if device.type == "cuda":
        env["cuda_device"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    return env
