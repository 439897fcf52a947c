"""Statistics over seeds of a run folder, from ``results.jsonl`` only: :func:`summarise`.

For each (setting, loss) and each metric of the task (its :class:`ReportColumn` s): the values
per seed, their mean, the 95% Student-t half-width ``t_{0.975,n-1} * s / sqrt(n)`` (``s``:
sample std over the ``n`` seeds; NaN for one seed), and the mean of the per-seed episode CIs
where the task has them; :meth:`Summary.paired_delta` gives the per-seed difference to the
first loss. :mod:`losslab.lab.report` writes the tables and :mod:`losslab.lab.plots` the
figures of a :class:`Summary`.

Rows are de-duplicated by ``job_id`` first (a copied or concatenated ``results.jsonl`` would
count its jobs twice), with a ``RuntimeWarning``. A run *diverged* when the runner recorded it
so (a non-finite training loss) or its primary metric is not finite: it counts among the seeds
of its (setting, loss) (:class:`Group`), its non-finite values are left out of the means, and
each :class:`Cell` says how many of the group's seeds it lacks (``n_missing``), so the report
can count and mark them instead of silently averaging fewer seeds.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from losslab.lab.results import read_rows, read_run_config, unique_rows
from losslab.lab.stats import mean_t_interval
from losslab.lab.tasks import get_task
from losslab.lab.tasks.base import ReportColumn, Task

__all__ = ["Cell", "Group", "Summary", "summarise"]


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
    n_missing: int = 0  # seeds of the group without a finite value (diverged runs)


@dataclass
class Group:
    """The jobs of one (setting, loss): every seed that ran, and those that diverged."""

    seeds: list[int]
    diverged: list[int] = field(default_factory=list)


@dataclass
class Summary:
    task: Task
    title: str
    settings: list[str]  # setting labels, in order
    losses: list[str]
    setting_dicts: dict[str, dict[str, Any]]
    cells: dict[tuple[str, str, str], Cell] = field(default_factory=dict)  # (setting, loss, key)
    n_rows: int = 0  # unique jobs
    groups: dict[tuple[str, str], Group] = field(default_factory=dict)  # (setting, loss)
    n_duplicates: int = 0  # rows left out: the same job_id as an earlier row

    @property
    def n_diverged(self) -> int:
        return sum(len(g.diverged) for g in self.groups.values())

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
    config = read_run_config(folder)  # RunFolderError when malformed
    if task is None:
        if "task" not in config:
            raise ValueError(f"{folder}: no config.json naming the task; is it a run folder?")
        try:
            task = get_task(config["task"])
        except ValueError as e:
            raise ValueError(f"{folder / 'config.json'}: {e}") from None
    return task, config


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _diverged(row: Mapping[str, Any], task: Task) -> bool:
    return bool(row.get("diverged")) or not _finite(row["metrics"].get(task.primary_metric().key))


def _unique(rows: list[dict[str, Any]], path: Path) -> tuple[list[dict[str, Any]], int]:
    rows, dup = unique_rows(rows)
    if dup.total:
        msg = (f"{path}: {dup.total} duplicated row{'s' if dup.total > 1 else ''} (the same "
               f"job_id as an earlier row) ignored")
        if dup.conflicting:
            msg += (f"; job {', '.join(dup.conflicting)} has copies with different metrics "
                    "(the first is kept)")
        warnings.warn(msg, RuntimeWarning, stacklevel=3)
    # one row per (setting, loss, seed): rows of another configuration (a folder whose
    # config.json was deleted and re-run with other options) would count a seed twice
    seen: set[tuple[str, str, int]] = set()
    out, clash = [], 0
    for r in rows:
        key = (r["setting_label"], r["loss"], r["seed"])
        if key in seen:
            clash += 1
            continue
        seen.add(key)
        out.append(r)
    if clash:
        warnings.warn(
            f"{path}: {clash} row{'s' if clash > 1 else ''} repeat a (setting, loss, seed) under "
            "another job_id (results of another configuration); the first is kept",
            RuntimeWarning, stacklevel=3)
    return out, dup.total + clash


def summarise(folder: str | Path, *, task: Task | None = None) -> Summary:
    """Statistics over seeds of every (setting, loss) of a run folder."""
    folder = Path(folder)
    task, config = _task_of(folder, task)
    path = folder / "results.jsonl"
    rows = [r for r in read_rows(path, repair=False) if r["task"] == task.name]
    rows, n_dup = _unique(rows, path)
    try:
        planned = [task.setting_label(s) for s in task.settings(config)] if config else []
    except (KeyError, ValueError, TypeError):
        planned = []
    settings = _ordered(planned, [r["setting_label"] for r in rows])
    losses = _ordered(config.get("losses", []), [r["loss"] for r in rows])
    try:
        title = task.title(config) if config else task.name
    except (KeyError, ValueError, TypeError):
        title = task.name
    s = Summary(task, title, settings, losses,
                {r["setting_label"]: r["setting"] for r in rows}, n_rows=len(rows),
                n_duplicates=n_dup)
    for setting in settings:
        for loss in losses:
            group = [r for r in rows if r["setting_label"] == setting and r["loss"] == loss]
            if not group:
                continue
            group.sort(key=lambda r: r["seed"])
            s.groups[(setting, loss)] = Group([r["seed"] for r in group],
                                              [r["seed"] for r in group if _diverged(r, task)])
            for m in task.metrics:
                pairs = [(r["seed"], float(r["metrics"][m.key])) for r in group
                         if _finite(r["metrics"].get(m.key))]
                vals = [v for _, v in pairs]
                if not vals:
                    continue
                mean, ci, std, n = mean_t_interval(vals)
                ep = None
                if m.episode_ci:
                    eps = [float(r["metrics"][m.episode_ci]) for r in group
                           if _finite(r["metrics"].get(m.key))
                           and _finite(r["metrics"].get(m.episode_ci))]
                    ep = float(np.mean(eps)) if eps else None
                s.cells[(setting, loss, m.key)] = Cell(vals, [sd for sd, _ in pairs], mean, ci, std,
                                                       n, ep, len(group) - n)
    return s
