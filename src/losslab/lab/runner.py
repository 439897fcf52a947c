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

The runner knows a task only through the :class:`~losslab.lab.tasks.base.Task` object it is
given (it never looks a task up by name): worker processes rebuild it from its class.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from losslab.lab.config import fingerprint
from losslab.lab.env import environment, resolve_device
from losslab.lab.progress import Progress, TqdmProgress
from losslab.lab.report import write_report
from losslab.lab.results import append_row, job_id, read_rows
from losslab.lab.tasks.base import Job, Task

__all__ = ["ConfigMismatchError", "plan_jobs", "run_bench"]


class ConfigMismatchError(RuntimeError):
    """The run folder holds results of a different configuration."""


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


def _run_one(task: Task, config: Mapping[str, Any], job: Job, progress: Progress
             ) -> tuple[Job, dict[str, Any], float]:
    """Seed, run and check one job."""
    _seed_everything(job.seed)
    t0 = time.perf_counter()
    metrics = task.run_job(job, config, progress)
    seconds = time.perf_counter() - t0
    missing = [m.key for m in task.metrics if m.key not in metrics]
    if missing:
        raise RuntimeError(f"task {task.name}: run_job returned no {missing}")
    return job, metrics, seconds


def _worker_job(task_class: type[Task], config: Mapping[str, Any], job: Job
                ) -> tuple[Job, dict[str, Any], float]:
    """Entry point of a worker process: a fresh instance of the task's class (pickled by
    reference, so the worker imports the task's module itself), no progress bars."""
    torch.set_num_threads(max(1, int(config.get("threads", 0) or 1)))
    return _run_one(task_class(), config, job, TqdmProgress(enabled=False))


def _execute(task: Task, config: Mapping[str, Any], jobs: list[Job], progress: Progress,
             workers: int) -> Iterator[tuple[Job, dict[str, Any], float]]:
    """Run ``jobs`` in order (``workers == 1``) or in a pool of worker processes, yielding
    each finished job as it completes. Only this (parent) process writes results, so a
    ``kill -9`` loses at most the jobs in flight (one per worker)."""
    if workers == 1 or len(jobs) <= 1:
        for job in jobs:
            yield _run_one(task, config, job, progress)
        return
    import concurrent.futures as cf
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # no fork of a process with live OpenMP threads
    with progress.bar(len(jobs), f"{len(jobs)} jobs, {workers} workers") as bar, \
            cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futures = [pool.submit(_worker_job, type(task), dict(config), job) for job in jobs]
        try:
            for fut in cf.as_completed(futures):
                yield fut.result()
                bar.update(1)
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise


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
        workers = int(config.get("workers", 1) or 1)
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if workers > 1 and device.type != "cpu":
            raise ValueError("workers > 1 runs jobs in parallel CPU processes; use device=cpu")
        for job, metrics, seconds in _execute(task, config, todo, progress, workers):
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
        write_report(folder, task=task)
    return folder
