"""Statistics over seeds of a run folder, from ``results.jsonl`` only: :func:`summarise`.

For each (setting, loss) and each metric of the task (its :class:`ReportColumn` s): the values
per seed, their mean, the 95% Student-t half-width ``t_{0.975,n-1} * s / sqrt(n)`` (``s``:
sample std over the ``n`` seeds; NaN for one seed), and the mean of the per-seed episode CIs
where the task has them; :meth:`Summary.paired_delta` gives the per-seed difference to the
first loss. :mod:`losslab.lab.report` writes the tables and :mod:`losslab.lab.plots` the
figures of a :class:`Summary`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from losslab.lab.results import read_rows
from losslab.lab.stats import mean_t_interval
from losslab.lab.tasks import get_task
from losslab.lab.tasks.base import ReportColumn, Task

__all__ = ["Cell", "Summary", "summarise"]


@dataclass
class Cell:
    """Statistics of one metric of one (setting, loss) over seeds."""

    values: list[float]
    seeds: list[int]
    mean: float
    ci: float  # t half-width (NaN for one seed)
    std: float
    n: int
    episode_ci: float | None = None


@dataclass
class Summary:
    task: Task
    title: str
    settings: list[str]  # setting labels, in order
    losses: list[str]
    setting_dicts: dict[str, dict[str, Any]]
    cells: dict[tuple[str, str, str], Cell] = field(default_factory=dict)  # (setting, loss, key)
    n_rows: int = 0

    def paired_delta(
        self, setting: str, loss: str, metric: ReportColumn
    ) -> tuple[float, float, int] | None:
        """``(mean, t half-width, n)`` of the per-seed difference ``loss - baseline`` on the
        seeds both have (the baseline is the first loss; the test episodes of a seed are the
        same for every loss, so the comparison is paired)."""
        base = self.cells.get((setting, self.losses[0], metric.key)) if self.losses else None
        cell = self.cells.get((setting, loss, metric.key))
        if base is None or cell is None or loss == self.losses[0]:
            return None
        b = dict(zip(base.seeds, base.values))
        diffs = [v - b[sd] for sd, v in zip(cell.seeds, cell.values) if sd in b]
        if not diffs:
            return None
        mean, ci, _, n = mean_t_interval(diffs)
        return mean, ci, n

    def best(self, setting: str, metric: ReportColumn) -> str | None:
        cands = [
            (c.mean, loss) for loss in self.losses
            if (c := self.cells.get((setting, loss, metric.key))) is not None
            and math.isfinite(c.mean)
        ]
        if not cands:
            return None
        pick = max if metric.higher_is_better else min
        return pick(cands)[1]


def _ordered(preferred: Sequence[str], seen: Sequence[str]) -> list[str]:
    out = [x for x in preferred if x in seen]
    return out + [x for x in dict.fromkeys(seen) if x not in out]


def _task_of(folder: Path, task: Task | None) -> tuple[Task, dict[str, Any]]:
    cfg_path = folder / "config.json"
    config = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
    if task is None:
        if "task" not in config:
            raise ValueError(f"{folder}: no config.json naming the task; is it a run folder?")
        task = get_task(config["task"])
    return task, config


def summarise(folder: str | Path, *, task: Task | None = None) -> Summary:
    """Statistics over seeds of every (setting, loss) of a run folder."""
    folder = Path(folder)
    task, config = _task_of(folder, task)
    rows = [r for r in read_rows(folder / "results.jsonl", repair=False) if r["task"] == task.name]
    try:
        planned = [task.setting_label(s) for s in task.settings(config)] if config else []
    except (KeyError, ValueError, TypeError):
        planned = []
    settings = _ordered(planned, [r["setting_label"] for r in rows])
    losses = _ordered(config.get("losses", []), [r["loss"] for r in rows])
    title = task.title(config) if config else task.name
    s = Summary(task, title, settings, losses,
                {r["setting_label"]: r["setting"] for r in rows}, n_rows=len(rows))
    for setting in settings:
        for loss in losses:
            group = [r for r in rows if r["setting_label"] == setting and r["loss"] == loss]
            if not group:
                continue
            group.sort(key=lambda r: r["seed"])
            for m in task.metrics:
                pairs = [(r["seed"], r["metrics"].get(m.key)) for r in group]
                pairs = [(sd, float(v)) for sd, v in pairs
                         if isinstance(v, (int, float)) and math.isfinite(v)]
                vals = [v for _, v in pairs]
                if not vals:
                    continue
                mean, ci, std, n = mean_t_interval(vals)
                ep = None
                if m.episode_ci:
                    eps = [float(r["metrics"][m.episode_ci]) for r in group
                           if m.episode_ci in r["metrics"]]
                    ep = float(np.mean(eps)) if eps else None
                s.cells[(setting, loss, m.key)] = Cell(vals, [sd for sd, _ in pairs], mean, ci, std,
                                                       n, ep)
    return s
