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

Faults. Everything that can be checked without training is checked before the first job: the
configuration (loss kinds, loss hyperparameters, device, workers), the task's own
``validate``, and the run folder (created, locked, ``config.json``/``env.json`` written and
``results.jsonl`` opened for appending: a read-only folder or results file is a
:class:`RunFolderError` before any training, not a lost result after the first job). A job
whose training loss becomes non-finite (:func:`losslab.lab.training.fit` raises
``FloatingPointError``) is recorded as *diverged* (NaN metrics and the message under
``diverged``) and the run goes on; the report counts and marks it. A full disk while a result
is appended leaves the file as it was (no half row) and stops the run with a message. Ctrl-C
stops the run with :class:`BenchInterrupted` (how many jobs are done; re-running resumes).

Parallel workers (``workers > 1``) are spawned processes that die with the runner: each sets a
parent-death signal (``prctl(PR_SET_PDEATHSIG, SIGKILL)`` on Linux) and runs a watchdog thread
that exits when its parent changes (any platform), so a ``kill -9`` of the runner leaves no
worker finishing jobs nobody records; the multiprocessing resource tracker exits by itself
when the last process holding its pipe (the runner and the workers) is gone. Workers ignore
SIGINT: on Ctrl-C the runner stops them itself and reports.

The runner knows a task only through the :class:`~losslab.lab.tasks.base.Task` object it is
given (it never looks a task up by name): worker processes rebuild it from its class.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import random
import sys
import time
from collections.abc import Generator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from losslab.lab.config import check_losses, fingerprint
from losslab.lab.env import environment, resolve_device
from losslab.lab.progress import Progress, TqdmProgress
from losslab.lab.report import write_report
from losslab.lab.results import (
    ResultsWriter,
    RunFolderError,
    job_id,
    read_rows,
    read_run_config,
)
from losslab.lab.tasks.base import Job, Task

__all__ = ["BenchInterrupted", "ConfigMismatchError", "RunFolderError", "plan_jobs",
           "run_bench"]


class ConfigMismatchError(RuntimeError):
    """The run folder holds results of a different configuration."""


class BenchInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) stopped a run. The finished jobs are recorded; re-running the same
    command resumes. ``done`` of ``total`` jobs of the run are in ``results.jsonl``, ``ran`` of
    them by this invocation."""

    def __init__(self, folder: Path, done: int, total: int, ran: int) -> None:
        self.folder, self.done, self.total, self.ran = folder, done, total, ran
        super().__init__(
            f"interrupted: {done} of {total} jobs done in {folder}; re-run the same command "
            "to resume"
        )


_HINTS = {
    errno.EACCES: "read-only?",
    errno.EPERM: "read-only?",
    errno.EROFS: "read-only file system",
    errno.ENOSPC: "disk full",
    errno.EFBIG: "file size limit (ulimit -f) or disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EEXIST: "a file where a folder is expected",
    errno.ENOTDIR: "a file where a folder is expected",
    errno.EISDIR: "a folder where a file is expected",
}


def _why(e: OSError) -> str:
    hint = _HINTS.get(e.errno or 0)
    return f"{e}" + (f" ({hint})" if hint else "")


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
    try:
        fd = os.open(folder / ".lock", os.O_WRONLY | os.O_CREAT, 0o644)
    except OSError as e:
        raise RunFolderError(f"cannot write the run folder {folder}: {_why(e)}") from None
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
    cfg = read_run_config(folder)  # RunFolderError when malformed
    if not cfg:
        return
    old = cfg.get("fingerprint", {})
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


@dataclass(frozen=True)
class JobResult:
    """A finished job: its metrics, wall time and, for a diverged one, the message."""

    job: Job
    metrics: dict[str, Any]
    seconds: float
    diverged: str | None = None


def _label(job: Job) -> str:
    width = len(str(job.total))
    return f"[{job.index:>{width}}/{job.total}] {job.loss} | {job.setting_label} | seed {job.seed}"


def _summary(res: JobResult, task: Task) -> str:
    parts = []
    for m in task.metrics:
        v = res.metrics.get(m.key)
        if not isinstance(v, (int, float)) or res.diverged:
            continue
        s = f"{m.key} {v:{m.fmt}}"
        if m.episode_ci and isinstance(res.metrics.get(m.episode_ci), (int, float)):
            s += f" ± {res.metrics[m.episode_ci]:{m.fmt}}"
        parts.append(s)
    if res.diverged:
        parts.append(f"diverged: {res.diverged}")
    return f"{_label(res.job)} | {' | '.join(parts)} | {res.seconds:.1f} s"


def _run_one(task: Task, config: Mapping[str, Any], job: Job, progress: Progress) -> JobResult:
    """Seed, run and check one job. A non-finite training loss (``FloatingPointError`` from
    :func:`losslab.lab.training.fit`) is a result: the job diverged, its metrics are NaN."""
    _seed_everything(job.seed)
    t0 = time.perf_counter()
    try:
        metrics = task.run_job(job, config, progress)
    except FloatingPointError as e:
        return JobResult(job, {m.key: math.nan for m in task.metrics},
                         time.perf_counter() - t0, str(e) or "non-finite loss")
    except Exception as e:
        add_note = getattr(e, "add_note", None)  # python >= 3.11
        if add_note is not None:
            add_note(f"in job {_label(job)}")
        raise
    seconds = time.perf_counter() - t0
    missing = [m.key for m in task.metrics if m.key not in metrics]
    if missing:
        raise RuntimeError(f"task {task.name}: run_job returned no {missing}")
    return JobResult(job, metrics, seconds)


# -- parallel workers -------------------------------------------------------------------


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _exit_with_parent(parent: int) -> None:
    """Make this process die with ``parent``: a parent-death signal on Linux, and everywhere a
    watchdog thread that exits as soon as the parent pid changes (the parent died and this
    process was re-parented)."""
    import signal
    import threading

    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):  # pragma: no cover - no prctl: the watchdog remains
            pass
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="losslab-parent-watchdog", daemon=True).start()


def _worker_init(parent: int, threads: int) -> None:
    """Initializer of each worker process: die with the runner, leave Ctrl-C to it (it stops
    the workers and reports), one torch thread count for every job."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_with_parent(parent)
    torch.set_num_threads(threads)


def _worker_job(task_class: type[Task], config: Mapping[str, Any], job: Job) -> JobResult:
    """Entry point of a worker process: a fresh instance of the task's class (pickled by
    reference, so the worker imports the task's module itself), no progress bars."""
    return _run_one(task_class(), config, job, TqdmProgress(enabled=False))


def _stop_workers(pool: Any) -> None:
    """Kill the pool's worker processes now (running jobs are abandoned, not awaited)."""
    terminate = getattr(pool, "terminate_workers", None)  # python >= 3.14
    if terminate is not None:
        terminate()
        return
    procs = getattr(pool, "_processes", None) or {}  # pid -> Process (no public API before 3.14)
    for proc in list(procs.values()):
        with contextlib.suppress(Exception):
            proc.terminate()


def _execute(task: Task, config: Mapping[str, Any], jobs: list[Job], progress: Progress,
             workers: int) -> Generator[JobResult, None, None]:
    """Run ``jobs`` in order (``workers == 1``) or in a pool of worker processes, yielding
    each finished job as it completes. Only this (parent) process writes results, so a
    ``kill -9`` loses at most the jobs in flight (one per worker). Closing the generator early
    (an error, Ctrl-C) kills the workers instead of waiting for their jobs."""
    if workers == 1 or len(jobs) <= 1:
        for job in jobs:
            yield _run_one(task, config, job, progress)
        return
    import concurrent.futures as cf
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # no fork of a process with live OpenMP threads
    threads = max(1, int(config.get("threads", 0) or 1))
    pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx,
                                  initializer=_worker_init, initargs=(os.getpid(), threads))
    futures: list[Any] = []
    try:
        with progress.bar(len(jobs), f"{len(jobs)} jobs, {workers} workers") as bar:
            futures = [pool.submit(_worker_job, type(task), dict(config), job) for job in jobs]
            for fut in cf.as_completed(futures):
                yield fut.result()
                bar.update(1)
    except BaseException:
        for fut in futures:
            fut.cancel()
        _stop_workers(pool)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# -- the run ----------------------------------------------------------------------------


def _row(task: Task, res: JobResult, device: torch.device, env: Mapping[str, Any]
         ) -> dict[str, Any]:
    job = res.job
    row = {
        "job_id": job.job_id,
        "task": task.name,
        "loss": job.loss,
        "setting": dict(job.setting),
        "setting_label": job.setting_label,
        "seed": job.seed,
        "metrics": res.metrics,
        "seconds": round(res.seconds, 3),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "device": str(device),
        "git_sha": env["git_sha"],
    }
    if res.diverged:
        row["diverged"] = res.diverged
    return row


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
    ``table.md``/``table.csv``/plots at the end. Raises ``ValueError`` (configuration),
    :class:`ConfigMismatchError`, :class:`RunFolderError` (the folder cannot be used, or a
    result could not be recorded), :class:`~losslab.lab.results.CorruptResultsError`, and
    :class:`BenchInterrupted` on Ctrl-C; all of them before any job, except the last two
    kinds of :class:`RunFolderError` and Ctrl-C.
    """
    folder = Path(out)
    config = dict(config)
    fp = fingerprint(task, config)
    device = resolve_device(config["device"])
    workers = int(config.get("workers", 1))
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if workers > 1 and device.type != "cpu":
        raise ValueError("workers > 1 runs jobs in parallel CPU processes; use device=cpu")
    check_losses(task, config)
    task.validate(config)
    if config.get("threads", 0) > 0:
        torch.set_num_threads(int(config["threads"]))
    progress = TqdmProgress(enabled=not quiet)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunFolderError(f"cannot create the run folder {folder}: {_why(e)}") from None
    with _lock(folder):
        _check_folder(folder, fp)
        results = folder / "results.jsonl"
        try:
            _write_json(folder / "config.json", {**config, "fingerprint": fp})
            env = environment(device)
            _write_json(folder / "env.json", env)
            done = {r["job_id"] for r in read_rows(results)}
            writer = ResultsWriter(results)  # before any job: can its results be recorded?
        except OSError as e:
            raise RunFolderError(f"cannot write the run folder {folder}: {_why(e)}") from None
        with writer:
            jobs = plan_jobs(task, config)
            todo = [j for j in jobs if j.job_id not in done]
            progress.log(
                f"{task.name}: {len(jobs)} jobs ({len(jobs) - len(todo)} already done) -> "
                f"{folder}"
            )
            ran = 0
            try:
                with contextlib.closing(_execute(task, config, todo, progress, workers)) as it:
                    for res in it:
                        try:
                            writer.append(_row(task, res, device, env))
                        except OSError as e:
                            raise RunFolderError(
                                f"could not record the result of job {_label(res.job)} in "
                                f"{results}: {_why(e)}; {len(jobs) - len(todo) + ran} of "
                                f"{len(jobs)} jobs done and recorded; make room (or fix the "
                                "folder) and re-run the same command to resume"
                            ) from None
                        ran += 1
                        progress.log(_summary(res, task))
            except KeyboardInterrupt:
                raise BenchInterrupted(folder, len(jobs) - len(todo) + ran, len(jobs),
                                       ran) from None
    if report:
        write_report(folder, task=task)
    return folder
