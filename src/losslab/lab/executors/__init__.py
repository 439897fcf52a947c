"""Where the jobs of a run execute: ``local`` (this machine: in-process or spawned workers, the
default), ``ray`` (Ray tasks on a local or remote cluster) and ``slurm`` (Slurm jobs through
submitit). Every executor streams results back to the runner, which alone writes
``results.jsonl``; see :mod:`losslab.lab.executors.base` for the interface.

Ray and submitit are optional extras (``losslab[ray]``, ``losslab[slurm]``), imported only when
their executor runs.
"""

from __future__ import annotations

from typing import Any

from losslab.lab.executors.base import Executor, JobResult, run_one
from losslab.lab.executors.local import LocalExecutor

__all__ = ["EXECUTORS", "Executor", "JobResult", "LocalExecutor", "make_executor", "run_one"]

#: ``--executor`` values
EXECUTORS = ("local", "ray", "slurm")


def make_executor(name: str, *, address: str | None = None, cpus_per_job: float = 1.0,
                  gpus_per_job: float = 0.0, **kwargs: Any) -> Executor:
    """The executor of ``--executor NAME`` with the CLI's options (``ValueError`` for an
    unknown name, or options that do not apply to it)."""
    if name == "local":
        if address is not None:
            raise ValueError("--address is for --executor ray")
        return LocalExecutor(**kwargs)
    if name == "ray":
        from losslab.lab.executors.ray import RayExecutor

        return RayExecutor(address=address, cpus_per_job=cpus_per_job,
                           gpus_per_job=gpus_per_job, **kwargs)
    if name == "slurm":
        if address is not None:
            raise ValueError("--address is for --executor ray")
        from losslab.lab.executors.slurm import SlurmExecutor

        return SlurmExecutor(cpus_per_job=cpus_per_job, gpus_per_job=gpus_per_job, **kwargs)
    raise ValueError(f"--executor must be one of {EXECUTORS}, got {name!r}")
