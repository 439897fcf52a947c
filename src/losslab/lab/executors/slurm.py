"""``--executor slurm``: each job a Slurm job submitted through submitit.

* Each job is one submitit job (``cpus_per_task = --cpus-per-job``, ``gpus_per_node =
  --gpus-per-job``, ``timeout_min``, ``slurm_partition`` and any other ``slurm_*`` parameter
  of submitit); its pickled call, logs and result live under ``RUN/submitit/``. The job runs
  :func:`~losslab.lab.executors.base.losslab_job` with the same python (and losslab) on the
  compute node, so the run folder's data paths must be visible there (a shared file system).
* The driver (``losslab bench``, e.g. on the login node or in an allocation) polls the jobs
  and, as each finishes, appends its row to ``results.jsonl`` itself: resume, the fingerprint
  check and the lock are those of a local run. Keep the driver alive (``tmux``, ``nohup``, or
  an ``sbatch`` of the driver itself); if it dies, re-running resumes, re-submitting only the
  jobs without a row.
* A job that ends without a result (its node failed, it was killed or pre-empted, it ran out of
  time) is submitted again, at most ``max_retries`` times; a job that raised stops the run with
  its traceback, like a local run. Each job's result is read once, so it is recorded once.
* Ctrl-C (or any error) cancels every job in flight (``scancel``) before the run stops.

``cluster="local"`` is submitit's local executor (each job a subprocess of this machine; what
the tests use), ``"debug"`` runs them in this process; ``parallel`` caps the jobs in flight
(default: unlimited on Slurm, where the scheduler queues them; the CPU count divided by
``cpus_per_job`` on ``local``). submitit is an optional extra: ``pip install losslab[slurm]``.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Generator, Mapping
from pathlib import Path
from typing import Any, ClassVar

from losslab.lab.executors.base import JobResult, label, losslab_job
from losslab.lab.progress import Progress
from losslab.lab.tasks.base import Job, Task

__all__ = ["SlurmExecutor"]

#: seconds between two polls of the jobs in flight
POLL_S = 0.5


def _require_submitit() -> Any:
    try:
        import submitit
    except ImportError:
        raise ValueError("--executor slurm needs submitit: pip install 'losslab[slurm]' (or "
                         "submitit)") from None
    return submitit


class SlurmExecutor:
    """Jobs as Slurm jobs through submitit (see the module docstring)."""

    name: ClassVar[str] = "slurm"
    remote: ClassVar[bool] = True

    def __init__(self, *, cpus_per_job: float = 1.0, gpus_per_job: float = 0.0,
                 timeout_min: int = 60, partition: str | None = None, max_retries: int = 3,
                 cluster: str | None = "slurm", parallel: int | None = None,
                 folder: str | os.PathLike[str] | None = None,
                 parameters: Mapping[str, Any] | None = None) -> None:
        self.cpus_per_job = cpus_per_job
        self.gpus_per_job = gpus_per_job
        self.timeout_min = int(timeout_min)
        self.partition = partition
        self.max_retries = int(max_retries)
        self.cluster = cluster
        self.parallel = parallel
        self.folder = Path(folder) if folder is not None else None
        self.parameters = dict(parameters or {})

    def check(self, config: Mapping[str, Any]) -> None:
        _require_submitit()
        if float(self.cpus_per_job) != int(self.cpus_per_job) or int(self.cpus_per_job) < 1:
            raise ValueError(f"--cpus-per-job must be a whole number >= 1 for slurm, got "
                             f"{self.cpus_per_job:g}")
        if float(self.gpus_per_job) != int(self.gpus_per_job) or self.gpus_per_job < 0:
            raise ValueError(f"--gpus-per-job must be a whole number >= 0 for slurm, got "
                             f"{self.gpus_per_job:g}")
        if self.gpus_per_job > 0 and config["device"] == "cpu":
            raise ValueError("--gpus-per-job > 0 with --device cpu: the jobs would hold GPUs "
                             "they never use (use --device auto or cuda)")
        if self.timeout_min < 1:
            raise ValueError(f"timeout_min must be >= 1, got {self.timeout_min}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.parallel is not None and self.parallel < 1:
            raise ValueError(f"parallel must be >= 1, got {self.parallel}")

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "cluster": self.cluster, "cpus_per_job": self.cpus_per_job,
                "gpus_per_job": self.gpus_per_job, "timeout_min": self.timeout_min,
                "partition": self.partition, "max_retries": self.max_retries}

    def _executor(self, folder: Path) -> Any:
        submitit = _require_submitit()
        ex = submitit.AutoExecutor(folder=str(folder), cluster=self.cluster)
        params: dict[str, Any] = {"timeout_min": self.timeout_min,
                                  "cpus_per_task": int(self.cpus_per_job),
                                  "name": "losslab"}
        if self.gpus_per_job:
            params["gpus_per_node"] = int(self.gpus_per_job)
        if self.partition:
            params["slurm_partition"] = self.partition
        params.update(self.parameters)
        ex.update_parameters(**params)
        return ex

    def _limit(self) -> int:
        if self.parallel is not None:
            return self.parallel
        if self.cluster in ("local", "debug"):
            return max(1, (os.cpu_count() or 1) // max(1, int(self.cpus_per_job)))
        return 1 << 30

    def run(self, task: Task, config: Mapping[str, Any], jobs: list[Job], progress: Progress,
            folder: Path | None = None) -> Generator[JobResult, None, None]:
        if not jobs:
            return
        from submitit.core.utils import FailedJobError, UncompletedJobError

        where = self.folder or (folder or Path(".")) / "submitit"
        ex = self._executor(where / "%j")
        threads = int(config.get("threads", 0) or 0) or int(self.cpus_per_job)
        args = (type(task), dict(config))
        queue = list(jobs)
        tries: dict[str, int] = {}
        in_flight: dict[str, tuple[Job, Any]] = {}
        seen: set[str] = set()
        limit = self._limit()
        try:
            with progress.bar(len(jobs), f"{len(jobs)} jobs on {self.cluster}") as bar:
                while queue or in_flight:
                    while queue and len(in_flight) < limit:
                        job = queue.pop(0)
                        tries[job.job_id] = tries.get(job.job_id, 0) + 1
                        in_flight[job.job_id] = (job, ex.submit(losslab_job, *args, job,
                                                                threads))
                    finished = [k for k, (_, sj) in in_flight.items() if sj.done()]
                    if not finished:
                        time.sleep(POLL_S)
                        continue
                    for key in finished:
                        job, sj = in_flight.pop(key)
                        try:
                            res = sj.result()
                        except FailedJobError as e:  # the job raised: stop, as locally
                            # (FailedJobError subclasses UncompletedJobError: caught first)
                            raise RuntimeError(f"job {label(job)} failed (submitit job "
                                               f"{sj.job_id}): {e}") from None
                        except UncompletedJobError as e:  # no result: died, killed, timed out
                            if tries[key] > self.max_retries:
                                raise RuntimeError(
                                    f"job {label(job)} ended without a result "
                                    f"{tries[key]} times (submitit job {sj.job_id}; logs in "
                                    f"{where}): {str(e).splitlines()[0]}") from None
                            progress.log(f"{label(job)}: submitit job {sj.job_id} ended "
                                         f"without a result; submitting it again (try "
                                         f"{tries[key] + 1} of {self.max_retries + 1})")
                            queue.insert(0, job)
                            continue
                        if res.job.job_id in seen:
                            continue
                        seen.add(res.job.job_id)
                        yield res
                        bar.update(1)
        finally:
            for _, sj in in_flight.values():
                with contextlib.suppress(Exception):
                    sj.cancel(check=False)
