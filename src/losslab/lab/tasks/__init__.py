"""Lab tasks. ``TASKS`` maps a task name to its class; see :mod:`losslab.lab.tasks.base` for
the plug-in interface."""

from __future__ import annotations

from losslab.lab.tasks.base import Job, Option, Progress, ReportColumn, Task

__all__ = ["TASKS", "Job", "Option", "Progress", "ReportColumn", "Task", "available_tasks",
           "get_task"]


def _aggregate() -> type[Task]:
    from losslab.lab.tasks.aggregate import AggregateTask

    return AggregateTask


def _fewshot() -> type[Task]:
    from losslab.lab.tasks.fewshot import FewShotTask

    return FewShotTask


def _noisy() -> type[Task]:
    from losslab.lab.tasks.noisy import NoisyTask

    return NoisyTask


def _retrieval() -> type[Task]:
    from losslab.lab.tasks.retrieval import RetrievalTask

    return RetrievalTask


def _segmentation() -> type[Task]:
    from losslab.lab.tasks.segmentation import SegmentationTask

    return SegmentationTask
def _ranking() -> type[Task]:
    from losslab.lab.tasks.ranking import RankingTask

    return RankingTask


def _lm() -> type[Task]:
    from losslab.lab.tasks.lm import LMTask

    return LMTask


def _regression() -> type[Task]:
    from losslab.lab.tasks.regression import RegressionTask

    return RegressionTask


#: name -> zero-argument callable returning the task class (imported lazily).
TASKS = {"fewshot": _fewshot, "noisy": _noisy, "retrieval": _retrieval,
         "regression": _regression, "aggregate": _aggregate, "segmentation": _segmentation,
         "ranking": _ranking, "lm": _lm}


def available_tasks() -> list[str]:
    return sorted(TASKS)


def get_task(name: str) -> Task:
    """A fresh instance of the task ``name``."""
    try:
        factory = TASKS[name]
    except KeyError:
        known = ", ".join(available_tasks())
        raise ValueError(f"unknown task {name!r}; available: {known}") from None
    return factory()()
