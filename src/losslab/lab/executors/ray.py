"""``--executor ray [--address ADDR]``: each job a Ray task with declared resources.

* Each job is one Ray task (the remote function ``losslab_job``; a worker running one shows
  ``ray::losslab_job`` in ``ps``) with ``num_cpus = --cpus-per-job`` and ``num_gpus =
  --gpus-per-job``; Ray places as many at once as the cluster's resources allow. A job uses
  ``--threads`` torch threads (default: its whole CPUs, at least 1). With a GPU per job Ray sets
  ``CUDA_VISIBLE_DEVICES`` and ``--device auto`` picks it; each row records the device its job
  ran on.
* Results return to the driver (the ``losslab bench`` process), which alone writes
  ``results.jsonl`` with the same atomic appends as the local executor, so resume, the
  fingerprint check and the lock are unchanged. Each job's result is read from its one object
  reference, so a job is recorded at most once.
* A job whose worker process dies (killed, out of memory, its node lost) is retried by Ray,
  at most ``max_retries`` times (default 3); an exception raised by the job itself is not
  retried and stops the run as it does locally. A job still failing after its retries stops the
  run with a message naming it; the recorded rows stay and re-running resumes.
* Ctrl-C (or any error) cancels every pending and running job (``ray.cancel(force=True)``
  kills the workers running them) before the run stops; a cluster this process started itself
  (no ``--address``, no ``RAY_ADDRESS``) is shut down, a cluster it joined is left running.

``address`` is passed to ``ray.init``: ``None`` starts a local cluster (or joins the one named by
``RAY_ADDRESS``), ``"auto"`` joins the cluster started on this machine with ``ray start
--head``, ``"HOST:6379"`` (or ``ray://HOST:10001``) a remote one. Every node needs the same
losslab (and torch) installed, and the data at the same path. Ray is an optional extra:
``pip install losslab[ray]``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator, Mapping
from pathlib import Path
from typing import Any, ClassVar

from losslab.lab.executors.base import JobResult, label, losslab_job
from losslab.lab.progress import Progress
from losslab.lab.tasks.base import Job, Task

__all__ = ["RayExecutor"]

#: how often the driver wakes up while it waits for results (Ctrl-C is seen within this)
POLL_S = 0.5


def _require_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ValueError("--executor ray needs Ray: pip install 'losslab[ray]' (or ray)"
                         ) from None
    return ray


class RayExecutor:
    """Jobs as Ray tasks on a local or remote Ray cluster (see the module docstring)."""

    name: ClassVar[str] = "ray"
    remote: ClassVar[bool] = True

    def __init__(self, *, address: str | None = None, cpus_per_job: float = 1.0,
                 gpus_per_job: float = 0.0, max_retries: int = 3,
                 init_kwargs: Mapping[str, Any] | None = None) -> None:
        self.address = address
        self.cpus_per_job = float(cpus_per_job)
        self.gpus_per_job = float(gpus_per_job)
        self.max_retries = int(max_retries)
        self.init_kwargs = dict(init_kwargs or {})

    def check(self, config: Mapping[str, Any]) -> None:
        _require_ray()
        if not self.cpus_per_job > 0:
            raise ValueError(f"--cpus-per-job must be > 0, got {self.cpus_per_job:g}")
        if self.gpus_per_job < 0:
            raise ValueError(f"--gpus-per-job must be >= 0, got {self.gpus_per_job:g}")
        if self.gpus_per_job > 0 and config["device"] == "cpu":
            raise ValueError("--gpus-per-job > 0 with --device cpu: the jobs would hold GPUs "
                             "they never use (use --device auto or cuda)")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "address": self.address, "cpus_per_job": self.cpus_per_job,
                "gpus_per_job": self.gpus_per_job, "max_retries": self.max_retries}

    def _threads(self, config: Mapping[str, Any]) -> int:
        threads = int(config.get("threads", 0) or 0)
        return threads if threads > 0 else max(1, int(self.cpus_per_job))

    def _warn_unplaceable(self, ray: Any, progress: Progress) -> None:
        total = ray.cluster_resources()
        need = {"CPU": self.cpus_per_job, "GPU": self.gpus_per_job}
        short = [f"{k} {v:g} per job, cluster has {total.get(k, 0):g}"
                 for k, v in need.items() if v > 0 and total.get(k, 0) < v]
        if short:
            progress.log("ray: no node of the cluster can run a job now ("
                         + "; ".join(short) + "); the jobs wait until such a node joins")

    def run(self, task: Task, config: Mapping[str, Any], jobs: list[Job], progress: Progress,
            folder: Path | None = None) -> Generator[JobResult, None, None]:
        if not jobs:
            return
        ray = _require_ray()
        from ray import exceptions as rex

        started = False
        if not ray.is_initialized():
            kwargs = {"include_dashboard": False, **self.init_kwargs}
            ray.init(address=self.address, **kwargs)
            started = True
        pending: dict[Any, Job] = {}
        try:
            self._warn_unplaceable(ray, progress)
            remote = ray.remote(losslab_job).options(
                num_cpus=self.cpus_per_job, num_gpus=self.gpus_per_job,
                max_retries=self.max_retries, retry_exceptions=False)
            task_ref, config_ref = ray.put(type(task)), ray.put(dict(config))
            threads = self._threads(config)
            seen: set[str] = set()
            with progress.bar(len(jobs), f"{len(jobs)} jobs on ray") as bar:
                for job in jobs:
                    pending[remote.remote(task_ref, config_ref, job, threads)] = job
                while pending:
                    ready, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_S)
                    for ref in ready:
                        job = pending.pop(ref)
                        try:
                            res = ray.get(ref)
                        except rex.RayTaskError as e:  # the job raised: as a local run does
                            cause = getattr(e, "cause", None)
                            if isinstance(cause, Exception):
                                raise cause from None
                            raise
                        except rex.RayError as e:  # the worker died more than max_retries
                            raise RuntimeError(
                                f"job {label(job)} failed on ray after {self.max_retries} "
                                f"retries: {type(e).__name__}: {str(e).splitlines()[0]}"
                            ) from None
                        if res.job.job_id in seen:  # never twice, whatever happened
                            continue
                        seen.add(res.job.job_id)
                        yield res
                        bar.update(1)
        finally:
            for ref in pending:
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)
            if started:
                with contextlib.suppress(Exception):
                    ray.shutdown()
