"""What every executor shares: one job run and checked (:func:`run_one`), its result
(:class:`JobResult`, with the per-epoch curves that :func:`losslab.lab.training.fit` reported),
and the :class:`Executor` interface the runner drives.

An executor turns a list of :class:`~losslab.lab.tasks.base.Job` into a stream of
:class:`JobResult` s, each job at most once, in any order; the runner (the driver) alone writes
``results.jsonl``. Closing the stream early (an error, Ctrl-C) must stop the jobs in flight.
This module imports nothing from the runner (the runner imports the executors).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import torch

from losslab.lab.env import resolve_device
from losslab.lab.progress import Progress
from losslab.lab.tasks.base import Job, Task

__all__ = ["CurveRecorder", "Executor", "JobResult", "label", "losslab_job", "run_one",
           "seed_everything"]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - seeds code that uses the legacy global RNG
    torch.manual_seed(seed)


@dataclass(frozen=True)
class JobResult:
    """A finished job: its metrics, wall time, for a diverged one the message, the per-epoch
    curves (``{"train_loss": [...], "val_score": [...], "term/<loss>": [...]}``, one value per
    epoch, as :func:`~losslab.lab.training.fit` reported them) and the device it ran on."""

    job: Job
    metrics: dict[str, Any]
    seconds: float
    diverged: str | None = None
    curves: dict[str, list[float]] = field(default_factory=dict)
    device: str | None = None


def label(job: Job) -> str:
    width = len(str(job.total))
    return f"[{job.index:>{width}}/{job.total}] {job.loss} | {job.setting_label} | seed {job.seed}"


class CurveRecorder:
    """A :class:`~losslab.lab.progress.Progress` that forwards to another one and records the
    values :func:`~losslab.lab.training.fit` reports after each epoch (``epoch_end``)."""

    def __init__(self, inner: Progress) -> None:
        self.inner = inner
        self.curves: dict[str, list[float]] = {}

    def bar(self, total: int, desc: str) -> Any:
        return self.inner.bar(total, desc)

    def log(self, message: str) -> None:
        self.inner.log(message)

    def epoch_end(self, epoch: int, values: Mapping[str, float]) -> None:
        for k, v in values.items():
            self.curves.setdefault(k, []).append(float(v))


def run_one(task: Task, config: Mapping[str, Any], job: Job, progress: Progress) -> JobResult:
    """Seed, run and check one job. A non-finite training loss (``FloatingPointError`` from
    :func:`losslab.lab.training.fit`) is a result: the job diverged, its metrics are NaN."""
    seed_everything(job.seed)
    device = str(resolve_device(config["device"]))
    rec = CurveRecorder(progress)
    t0 = time.perf_counter()
    try:
        metrics = task.run_job(job, config, rec)
    except FloatingPointError as e:
        return JobResult(job, {m.key: math.nan for m in task.metrics},
                         time.perf_counter() - t0, str(e) or "non-finite loss",
                         dict(rec.curves), device)
    except Exception as e:
        add_note = getattr(e, "add_note", None)  # python >= 3.11
        if add_note is not None:
            add_note(f"in job {label(job)}")
        raise
    seconds = time.perf_counter() - t0
    missing = [m.key for m in task.metrics if m.key not in metrics]
    if missing:
        raise RuntimeError(f"task {task.name}: run_job returned no {missing}")
    return JobResult(job, metrics, seconds, None, dict(rec.curves), device)


def losslab_job(task_class: type[Task], config: Mapping[str, Any], job: Job, threads: int
                ) -> JobResult:
    """One job in a worker process of a remote executor: the task rebuilt from its class (its
    module imported there), ``threads`` torch threads, no progress display."""
    from losslab.lab.progress import NullProgress

    torch.set_num_threads(threads)
    return run_one(task_class(), config, job, NullProgress())


class Executor(Protocol):
    """Runs jobs somewhere and streams their results back to the driver.

    ``name`` is the ``--executor`` value; ``remote`` says the jobs run in other processes that
    may sit on other machines (the driver then does not check the device itself: each job
    resolves ``device`` where it runs and its row records that device)."""

    name: ClassVar[str]
    remote: ClassVar[bool]

    def check(self, config: Mapping[str, Any]) -> None:
        """Everything that can be checked before the first job (``ValueError``)."""
        ...

    def run(self, task: Task, config: Mapping[str, Any], jobs: list[Job],
            progress: Progress, folder: Path) -> Iterator[JobResult]:
        """Yield each job's result as it finishes (any order, each job once); ``folder`` is
        the run folder (an executor may keep its own files there, e.g. job logs)."""
        ...

    def describe(self) -> dict[str, Any]:
        """What ``env.json`` records about the executor."""
        ...

