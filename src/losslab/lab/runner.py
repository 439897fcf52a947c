"""The task-agnostic runner: one job per (loss, setting, seed), resumable.

A run folder (``--out``) holds:

* ``config.json`` -- the resolved configuration of the latest invocation and its
  ``fingerprint`` (the result-affecting options shared by all jobs);
* ``env.json`` -- git SHA, python/torch/numpy/losslab versions, platform, CPU count, device
  (of the latest invocation; each result row also records its device and git SHA);
* ``results.jsonl`` -- one line per finished job (:mod:`losslab.lab.results`);
* ``table.md``, ``table.csv``, ``<metric>.png`` -- the report, regenerated from the JSONL.

Resume: re-running the same command skips every job whose ``job_id`` is already in
``results.jsonl``; a job killed mid-way left no line and runs again. Nothing else is kept
between jobs: the best checkpoint of a job lives in memory only, so a killed job can never be
mistaken for a finished one. Re-running with a *different* result-affecting configuration in
the same folder is refused (use a new ``--out``); more losses, seeds or settings may be added
to an existing folder. A lock file prevents two runs from writing one folder at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import random
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from losslab.lab.config import fingerprint
from losslab.lab.results import append_row, job_id, read_rows
from losslab.lab.tasks.base import Bar, Job, NullBar, Task

__all__ = ["ConfigMismatchError", "TqdmProgress", "environment", "plan_jobs", "run_bench"]


class ConfigMismatchError(RuntimeError):
    """The run folder holds results of a different configuration."""


class TqdmProgress:
    """Progress bars with tqdm (imported lazily), on stderr, only when it is a terminal."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled and sys.stderr.isatty()

    @contextlib.contextmanager
    def bar(self, total: int, desc: str) -> Iterator[Bar]:
        if not self.enabled:
            yield NullBar()
            return
        from tqdm.auto import tqdm

        with tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True) as b:
            yield b

    def log(self, message: str) -> None:
        if self.enabled:
            from tqdm.auto import tqdm

            tqdm.write(message)
        else:
            print(message, flush=True)


def _git_sha() -> tuple[str | None, bool | None]:
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
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: cuda requested but torch.cuda.is_available() is False")
    return dev


def environment(device: torch.device) -> dict[str, Any]:
    """What produced the numbers: versions, platform, device, git SHA."""
    import losslab

    sha, dirty = _git_sha()
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


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def plan_jobs(task: Task, config: Mapping[str, Any]) -> list[Job]:
    """All jobs of a config, seed-major (all losses and settings of seed 0 first, so that an
    interrupted run still holds complete comparisons for its first seeds)."""
    fp = fingerprint(task, config)
    settings = task.settings(config)
    jobs: list[Job] = []
    for seed in config["seeds"]:
        for setting in settings:
            for loss in config["losses"]:
                jobs.append(
                    Job(task=task.name, loss=loss, setting=dict(setting),
                        setting_label=task.setting_label(setting), seed=int(seed),
                        job_id=job_id(task.name, loss, setting, seed, fp))
                )
    total = len(jobs)
    return [
        Job(j.task, j.loss, j.setting, j.setting_label, j.seed, j.job_id, i + 1, total)
        for i, j in enumerate(jobs)
    ]


@contextlib.contextmanager
def _lock(folder: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - windows: no lock
        yield
        return
    fd = os.open(folder / ".lock", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(
                f"another `losslab bench` is writing {folder} (lock held); wait for it or use "
                "another --out"
            ) from None
        yield
    finally:
        os.close(fd)


def _check_folder(folder: Path, fp: Mapping[str, Any]) -> None:
    cfg_path = folder / "config.json"
    if not cfg_path.exists():
        return
    old = json.loads(cfg_path.read_text()).get("fingerprint", {})
    if old != dict(fp):
        keys = sorted(set(old) | set(fp))
        diff = [f"{k}: {old.get(k)!r} -> {fp.get(k)!r}" for k in keys if old.get(k) != fp.get(k)]
        raise ConfigMismatchError(
            f"run folder {folder} holds results of a different configuration ("
            + "; ".join(diff)
            + "). Use a new --out for the new configuration (or delete the folder to start "
            "over); only losses, seeds and grid settings may change within one folder."
        )


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - seeds code that uses the legacy global RNG
    torch.manual_seed(seed)


def _summary(job: Job, task: Task, metrics: Mapping[str, Any], seconds: float) -> str:
    parts = []
    for m in task.metrics:
        v = metrics.get(m.key)
        if not isinstance(v, (int, float)):
            continue
        s = f"{m.key} {v:{m.fmt}}"
        if m.episode_ci and isinstance(metrics.get(m.episode_ci), (int, float)):
            s += f" ± {metrics[m.episode_ci]:{m.fmt}}"
        parts.append(s)
    width = len(str(job.total))
    return (
        f"[{job.index:>{width}}/{job.total}] {job.loss} | {job.setting_label} | seed {job.seed}"
        f" | {' | '.join(parts)} | {seconds:.1f} s"
    )


def run_bench(
    task: Task,
    config: Mapping[str, Any],
    out: str | os.PathLike[str],
    *,
    quiet: bool = False,
    report: bool = True,
) -> Path:
    """Run (or resume) every job of ``config`` into the folder ``out``; return the folder.

    ``quiet`` hides progress bars (the one-line summaries stay); ``report`` writes
    ``table.md``/``table.csv``/plots at the end.
    """
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    config = dict(config)
    fp = fingerprint(task, config)
    task.validate(config)
    device = resolve_device(config["device"])
    if config.get("threads", 0) > 0:
        torch.set_num_threads(int(config["threads"]))
    progress = TqdmProgress(enabled=not quiet)
    with _lock(folder):
        _check_folder(folder, fp)
        _write_json(folder / "config.json", {**config, "fingerprint": fp})
        env = environment(device)
        _write_json(folder / "env.json", env)
        results = folder / "results.jsonl"
        done = {r["job_id"] for r in read_rows(results)}
        jobs = plan_jobs(task, config)
        todo = [j for j in jobs if j.job_id not in done]
        progress.log(
            f"{task.name}: {len(jobs)} jobs ({len(jobs) - len(todo)} already done) -> {folder}"
        )
        for job in todo:
            _seed_everything(job.seed)
            t0 = time.perf_counter()
            metrics = task.run_job(job, config, progress)
            seconds = time.perf_counter() - t0
            missing = [m.key for m in task.metrics if m.key not in metrics]
            if missing:
                raise RuntimeError(f"task {task.name}: run_job returned no {missing}")
            row = {
                "job_id": job.job_id,
                "task": task.name,
                "loss": job.loss,
                "setting": dict(job.setting),
                "setting_label": job.setting_label,
                "seed": job.seed,
                "metrics": metrics,
                "seconds": round(seconds, 3),
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "device": str(device),
                "git_sha": env["git_sha"],
            }
            append_row(results, row)
            progress.log(_summary(job, task, metrics, seconds))
    if report:
        from losslab.lab.report import write_report

        write_report(folder, task=task)
    return folder
