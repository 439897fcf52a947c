"""``--executor local`` (the default): jobs in this process (``workers == 1``) or in a pool of
spawned worker processes that die with the runner (``workers > 1``).

Parallel workers are spawned processes: each sets a parent-death signal
(``prctl(PR_SET_PDEATHSIG, SIGKILL)`` on Linux) and runs a watchdog thread that exits when its
parent changes (any platform), so a ``kill -9`` of the runner leaves no worker finishing jobs
nobody records; the multiprocessing resource tracker exits by itself when the last process
holding its pipe (the runner and the workers) is gone. Workers ignore SIGINT: on Ctrl-C the
runner stops them itself and reports. Worker processes rebuild the task from its class.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Generator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch

from losslab.lab.executors.base import JobResult, run_one
from losslab.lab.progress import Progress, TqdmProgress
from losslab.lab.tasks.base import Job, Task

__all__ = ["LocalExecutor"]

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
    the workers and reports), one torch thread count for every job, freed memory kept in the
    process (:func:`losslab.lab.env.tune_malloc`: no mmap/munmap and page faults per step)."""
    import signal

    from losslab.lab.env import tune_malloc

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_with_parent(parent)
    tune_malloc()
    torch.set_num_threads(threads)


def _worker_job(task_class: type[Task], config: Mapping[str, Any], job: Job) -> JobResult:
    """Entry point of a worker process: a fresh instance of the task's class (pickled by
    reference, so the worker imports the task's module itself), no progress bars."""
    return run_one(task_class(), config, job, TqdmProgress(enabled=False))


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


class LocalExecutor:
    """Jobs on this machine: in order in this process, or ``workers`` spawned processes (CPU)."""

    name: ClassVar[str] = "local"
    remote: ClassVar[bool] = False

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers  # None: the config's ``workers``

    def _workers(self, config: Mapping[str, Any]) -> int:
        return int(self.workers if self.workers is not None else config.get("workers", 1))

    def check(self, config: Mapping[str, Any]) -> None:
        from losslab.lab.env import resolve_device

        workers = self._workers(config)
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if workers > 1 and resolve_device(config["device"]).type != "cpu":
            raise ValueError("workers > 1 runs jobs in parallel CPU processes; use device=cpu")

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}

    def run(self, task: Task, config: Mapping[str, Any], jobs: list[Job], progress: Progress,
            folder: Path | None = None) -> Generator[JobResult, None, None]:
        """Run ``jobs`` in order (``workers == 1``) or in a pool of worker processes, yielding
        each finished job as it completes. Only this (parent) process writes results, so a
        ``kill -9`` loses at most the jobs in flight (one per worker). Closing the generator
        early (an error, Ctrl-C) kills the workers instead of waiting for their jobs."""
        workers = self._workers(config)
        if workers == 1 or len(jobs) <= 1:
            for job in jobs:
                yield run_one(task, config, job, progress)
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
                futures = [pool.submit(_worker_job, type(task), dict(config), job)
                           for job in jobs]
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
