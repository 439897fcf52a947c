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

__all__ = ["Cell", "Group", "Summary", "conclusion", "oriented_delta", "sorted_losses", "summarise"]


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


# -- the sorted table and the plain-language conclusion ----------------------------------------


def oriented_delta(
    s: Summary, setting: str, loss: str, metric: ReportColumn, baseline: str | None = None
) -> tuple[float, float, int] | None:
    """``(mean, t half-width, n)`` of the per-seed difference ``loss - baseline`` (default: the
    first loss) on the seeds both have, signed so that positive is *better* (negated for a
    lower-is-better metric)."""
    base_name = s.losses[0] if baseline is None and s.losses else baseline
    base = s.cells.get((setting, base_name, metric.key)) if base_name else None
    cell = s.cells.get((setting, loss, metric.key))
    if base is None or cell is None or loss == base_name:
        return None
    b = dict(zip(base.seeds, base.values))
    sign = 1.0 if metric.higher_is_better else -1.0
    diffs = [sign * (v - b[sd]) for sd, v in zip(cell.seeds, cell.values) if sd in b]
    if not diffs:
        return None
    mean, ci, _, n = mean_t_interval(diffs)
    return mean, ci, n


def sorted_losses(s: Summary, setting: str, metric: ReportColumn | None = None) -> list[str]:
    """The losses of ``setting``: the baseline (first loss) first, then the others by their
    paired difference to it, best first; losses without a difference last, in config order."""
    metric = metric or s.task.primary_metric()
    if not s.losses:
        return []
    rest = s.losses[1:]
    keyed = [(d[0], i, loss) for i, loss in enumerate(rest)
             if (d := oriented_delta(s, setting, loss, metric)) is not None
             and math.isfinite(d[0])]
    with_d = [loss for _, _, loss in sorted(keyed, key=lambda t: (-t[0], t[1]))]
    return [s.losses[0], *with_d, *[x for x in rest if x not in with_d]]


def _significant(d: tuple[float, float, int] | None) -> int:
    """+1: interval above 0, -1: below 0, 0: holds 0 (or no interval)."""
    if d is None or d[2] < 2 or not math.isfinite(d[1]):
        return 0
    if d[0] - d[1] > 0:
        return 1
    if d[0] + d[1] < 0:
        return -1
    return 0


def _pm(d: tuple[float, float, int], fmt: str) -> str:
    txt = format(abs(d[0]), fmt)
    return txt + (f" ± {format(d[1], fmt)}" if d[2] >= 2 and math.isfinite(d[1]) else "")


def _without_term(loss: str, term: str) -> str:
    return "+".join(t for t in loss.split("+") if t != term)


def conclusion(s: Summary, metric: ReportColumn | None = None) -> str:
    """One plain-language line from the numbers: per setting, which loss beats the baseline
    (the first loss) by how much (paired over seeds, 95% t-interval), or that none is
    measurably better; then, for every term added to a combination (``a+b``) whose
    counterpart without it also ran, whether adding it changes anything measurably."""
    metric = metric or s.task.primary_metric()
    if len(s.losses) < 2:
        return "Only one loss ran: nothing to compare."
    base = s.losses[0]
    unit = " points" if "%" in metric.label else ""
    parts: list[str] = []
    for setting in s.settings:
        ds = {loss: d for loss in s.losses[1:]
              if (d := oriented_delta(s, setting, loss, metric)) is not None
              and math.isfinite(d[0])}
        if not ds:
            continue
        better = sorted((loss for loss in ds if _significant(ds[loss]) > 0),
                        key=lambda x: -ds[x][0])
        worse = sorted((loss for loss in ds if _significant(ds[loss]) < 0), key=lambda x: ds[x][0])
        if better:
            top = better[0]
            txt = f"on {setting}, `{top}` beats `{base}` by {_pm(ds[top], metric.fmt)}{unit}"
            if len(better) > 1:
                txt += " (also better: " + ", ".join(f"`{x}`" for x in better[1:]) + ")"
        elif len(worse) == len(ds):
            # every other loss is measurably worse: the baseline wins (no "interval includes 0")
            parts.append(f"on {setting}, `{base}` beats every other loss: " + ", ".join(
                f"`{x}` -{_pm(ds[x], metric.fmt)}{unit}" for x in worse))
            continue
        else:
            top = max((x for x in ds if x not in worse), key=lambda x: ds[x][0])
            why = ("interval includes 0" if ds[top][2] >= 2 and math.isfinite(ds[top][1])
                   else f"{ds[top][2]} paired seed{'s' if ds[top][2] != 1 else ''}: no interval")
            txt = (f"on {setting}, no loss is measurably better than `{base}` (best: `{top}` "
                   f"{'+' if ds[top][0] >= 0 else '-'}{_pm(ds[top], metric.fmt)}{unit}, {why})")
        if worse:
            txt += "; worse: " + ", ".join(
                f"`{x}` (-{_pm(ds[x], metric.fmt)})" for x in worse)
        parts.append(txt)
    # added terms: loss vs the same combination without the term, per setting
    terms: dict[str, list[tuple[str, tuple[float, float, int]]]] = {}
    for loss in s.losses:
        if "+" not in loss:
            continue
        for term in loss.split("+"):
            other = _without_term(loss, term)
            if other not in s.losses:
                continue
            for setting in s.settings:
                d = oriented_delta(s, setting, loss, metric, baseline=other)
                if d is not None and math.isfinite(d[0]):
                    terms.setdefault(term, []).append((f"{setting}, `{other}`", d))
    for term, comps in terms.items():
        sig = [(where, d) for where, d in comps if _significant(d) != 0]
        lo = min(d[0] for _, d in comps)
        hi = max(d[0] for _, d in comps)
        diffs = (f"mean difference {lo:+{metric.fmt}}{unit}" if len(comps) == 1 else
                 f"mean differences {lo:+{metric.fmt}} to {hi:+{metric.fmt}}{unit}")
        if all(d[2] < 2 or not math.isfinite(d[1]) for _, d in comps):
            parts.append(f"the effect of adding `{term}` cannot be judged with one seed "
                         f"({diffs})")
        elif not sig:
            parts.append(f"adding `{term}` changes nothing measurable ({len(comps)} paired "
                         f"comparison{'s' if len(comps) > 1 else ''}, {diffs})")
        else:
            parts.append(f"adding `{term}` " + ", ".join(
                f"{'helps' if d[0] > 0 else 'hurts'} on {where} "
                f"({'+' if d[0] > 0 else '-'}{_pm(d, metric.fmt)}{unit})" for where, d in sig)
                + (f" and changes nothing measurable in the other {len(comps) - len(sig)} "
                   f"comparison{'s' if len(comps) - len(sig) > 1 else ''}"
                   if len(comps) > len(sig) else ""))
    if not parts:
        return f"No loss has seeds in common with `{base}`: nothing to compare."
    text = "; ".join(parts)
    return f"{metric.label}, paired over seeds (95% t-interval): {text}."
