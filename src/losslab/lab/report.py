"""Tables and plots of a run folder, generated from ``results.jsonl`` only.

``table.md`` / ``table.csv``: one row per (setting, loss) with, for each metric of the task,
the mean over seeds ± the 95% Student-t interval ``t_{0.975,n-1} * s / sqrt(n)`` (``s``: sample
std over seeds, ``n`` seeds), the mean of the per-seed episode CIs where the task has them
(few-shot: ``1.96 * std / sqrt(episodes)``, the paper's convention), and ``n``. The best mean
of each metric within a setting is bold in ``table.md``. ``<metric>.png``: grouped bar chart
(settings on the x axis, one bar per loss, t-interval error bars, one dot per seed), with
matplotlib's Agg backend.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from losslab.lab.results import read_rows
from losslab.lab.stats import mean_t_interval
from losslab.lab.tasks.base import Metric, Task

__all__ = ["Cell", "Summary", "summarise", "write_report"]


@dataclass
class Cell:
    """Statistics of one metric of one (setting, loss) over seeds."""

    values: list[float]
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

    def best(self, setting: str, metric: Metric) -> str | None:
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
        from losslab.lab.tasks import get_task

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
                vals = [float(r["metrics"][m.key]) for r in group if m.key in r["metrics"]]
                vals = [v for v in vals if v is not None and math.isfinite(v)]
                if not vals:
                    continue
                mean, ci, std, n = mean_t_interval(vals)
                ep = None
                if m.episode_ci:
                    eps = [float(r["metrics"][m.episode_ci]) for r in group
                           if m.episode_ci in r["metrics"]]
                    ep = float(np.mean(eps)) if eps else None
                s.cells[(setting, loss, m.key)] = Cell(vals, mean, ci, std, n, ep)
    return s


def _fmt(x: float, fmt: str) -> str:
    return "n/a" if x is None or not math.isfinite(x) else format(x, fmt)


def _markdown(s: Summary) -> str:
    metrics = s.task.metrics
    header = ["Setting", "Loss"]
    for m in metrics:
        header.append(f"{m.label} (mean ± 95% CI)")
        if m.episode_ci:
            header.append(f"{m.label}: episode CI (mean)")
    header.append("n seeds")
    lines = [f"## {s.title}", "", "| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|"]
    for setting in s.settings:
        best = {m.key: s.best(setting, m) for m in metrics}
        for loss in s.losses:
            cells = [s.cells.get((setting, loss, m.key)) for m in metrics]
            if all(c is None for c in cells):
                continue
            row = [setting, f"`{loss}`"]
            n = 0
            for m, c in zip(metrics, cells):
                if c is None:
                    row += ["—"] + (["—"] if m.episode_ci else [])
                    continue
                n = max(n, c.n)
                txt = _fmt(c.mean, m.fmt) + ("" if c.n < 2 else f" ± {_fmt(c.ci, m.fmt)}")
                if best[m.key] == loss and len(s.losses) > 1:
                    txt = f"**{txt}**"
                row.append(txt)
                if m.episode_ci:
                    row.append("—" if c.episode_ci is None else f"± {_fmt(c.episode_ci, m.fmt)}")
            row.append(str(n))
            lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        "Mean over seeds ± 95% confidence interval of that mean: Student-t, "
        "mean ± t(0.975, n−1)·s/√n with s the sample standard deviation over the n seeds "
        "(no interval for n = 1). "
        + ("'Episode CI' is the mean over seeds of each run's ±1.96·std/√E over its E test "
           "episodes (the few-shot literature's convention), which ignores seed-to-seed "
           "variance. " if any(m.episode_ci for m in metrics) else "")
        + "Bold: best mean of the setting"
        + " (" + ", ".join(
            f"{m.label}: {'higher' if m.higher_is_better else 'lower'} is better"
            for m in metrics) + "). "
        + f"Generated from results.jsonl ({s.n_rows} jobs) by `losslab report`.",
        "",
    ]
    return "\n".join(lines)


def _csv_rows(s: Summary) -> list[dict[str, Any]]:
    out = []
    for setting in s.settings:
        for loss in s.losses:
            cells = {m.key: s.cells.get((setting, loss, m.key)) for m in s.task.metrics}
            if all(c is None for c in cells.values()):
                continue
            row: dict[str, Any] = {"setting": setting, "loss": loss}
            sd = s.setting_dicts.get(setting, {})
            for k in s.task.setting_columns:
                row[k] = sd.get(k)
            for m in s.task.metrics:
                c = cells[m.key]
                row[f"{m.key}_mean"] = None if c is None else c.mean
                row[f"{m.key}_ci95"] = None if c is None or not math.isfinite(c.ci) else c.ci
                row[f"{m.key}_std"] = None if c is None or not math.isfinite(c.std) else c.std
                if m.episode_ci:
                    row[f"{m.key}_episode_ci95_mean"] = None if c is None else c.episode_ci
            row["n_seeds"] = max((c.n for c in cells.values() if c is not None), default=0)
            out.append(row)
    return out


def _plot(s: Summary, metric: Metric, path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    settings = [st for st in s.settings
                if any((st, loss, metric.key) in s.cells for loss in s.losses)]
    if not settings:
        return False
    n_l = len(s.losses)
    width = 0.8 / max(n_l, 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 + 0.55 * n_l * len(settings)), 4.2))
    cmap = plt.get_cmap("tab10")
    lows = []
    for i, loss in enumerate(s.losses):
        xs, ms, es = [], [], []
        for j, st in enumerate(settings):
            c = s.cells.get((st, loss, metric.key))
            if c is None:
                continue
            x = j + (i - (n_l - 1) / 2) * width
            xs.append(x)
            ms.append(c.mean)
            es.append(c.ci if math.isfinite(c.ci) else 0.0)
            lows.append(min(c.values))
            ax.scatter(np.full(len(c.values), x), c.values, s=9, color="black", zorder=3,
                       linewidths=0)
        ax.bar(xs, ms, width * 0.92, yerr=es, capsize=3, label=loss, color=cmap(i % 10),
               edgecolor="black", linewidth=0.4, error_kw={"elinewidth": 0.9})
    ax.set_xticks(range(len(settings)), settings)
    ax.set_ylabel(metric.label)
    if lows and metric.higher_is_better:
        top = max(c.mean + (c.ci if math.isfinite(c.ci) else 0)
                  for (st, _, k), c in s.cells.items() if k == metric.key)
        top = max(top, max(max(c.values) for (_, _, k), c in s.cells.items() if k == metric.key))
        lo = min(lows)
        pad = (top - lo) * 0.25 + 1e-9
        ax.set_ylim(max(0.0, lo - pad), top + pad * 0.5)
    n_seeds = max((c.n for c in s.cells.values()), default=0)
    ax.set_title(f"{s.title}\nmean over {n_seeds} seeds, 95% t-interval; dots: seeds",
                 fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(fontsize=8, ncol=min(n_l, 3), loc="upper center", bbox_to_anchor=(0.5, -0.1),
              frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return True


def write_report(folder: str | Path, *, task: Task | None = None) -> dict[str, Any]:
    """Write ``table.md``, ``table.csv`` and one PNG per plotted metric; return
    ``{"markdown": text, "table_md": path, "table_csv": path, "plots": [paths]}``."""
    folder = Path(folder)
    s = summarise(folder, task=task)
    md = _markdown(s)
    (folder / "table.md").write_text(md)
    rows = _csv_rows(s)
    with open(folder / "table.csv", "w", newline="") as f:
        fields = list(rows[0]) if rows else ["setting", "loss"]
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    plots = []
    for m in s.task.metrics:
        if m.plot and _plot(s, m, folder / f"{m.key}.png"):
            plots.append(folder / f"{m.key}.png")
    return {"markdown": md, "table_md": folder / "table.md", "table_csv": folder / "table.csv",
            "plots": plots, "summary": s}


