"""Tables and plots of a run folder, generated from ``results.jsonl`` only.

``table.md`` / ``table.csv``: one row per (setting, loss) with, for each metric of the task,
the mean over seeds ± the 95% Student-t interval ``t_{0.975,n-1} * s / sqrt(n)`` (``s``: sample
std over seeds, ``n`` seeds), the mean of the per-seed episode CIs where the task has them
(few-shot: ``1.96 * std / sqrt(episodes)``, the paper's convention), and ``n``. The best mean
of each metric within a setting is bold in ``table.md``. ``<metric>.png``: grouped bar chart
(settings on the x axis, one bar per loss, t-interval error bars, one dot per seed), with
matplotlib's Agg backend. A task with a numeric setting ``line_x`` (e.g. the label-noise rate)
gets line plots instead: that value on the x axis, one line per loss with t-interval error bars,
one panel per combination of its other setting values (e.g. the noise kind).
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
from losslab.lab.tasks import get_task
from losslab.lab.tasks.base import ReportColumn, Task

__all__ = ["Cell", "Summary", "summarise", "write_report"]


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


def _fmt(x: float, fmt: str) -> str:
    return "n/a" if x is None or not math.isfinite(x) else format(x, fmt)


def _markdown(s: Summary) -> str:
    metrics = s.task.metrics
    prim = s.task.primary_metric()
    header = ["Setting", "Loss"]
    for m in metrics:
        header.append(f"{m.label} (mean ± 95% CI)")
        if m.episode_ci:
            header.append(f"{m.label}: episode CI (mean)")
        if m is prim and len(s.losses) > 1:
            header.append(f"Δ vs `{s.losses[0]}` (paired)")
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
                if m is prim and len(s.losses) > 1:
                    d = s.paired_delta(setting, loss, m)
                    row.append("—" if d is None else f"{d[0]:+{m.fmt}}"
                               + ("" if d[2] < 2 else f" ± {_fmt(d[1], m.fmt)}"))
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
        + "Δ (paired): mean over seeds of the per-seed difference to the first loss, ± its "
        "t-interval; each seed tests every loss on the same episodes, so this is the sharper "
        "comparison. "
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
            prim = s.task.primary_metric()
            d = s.paired_delta(setting, loss, prim)
            row[f"{prim.key}_delta_vs_first"] = None if d is None else d[0]
            row[f"{prim.key}_delta_ci95"] = (None if d is None or not math.isfinite(d[1])
                                             else d[1])
            row["n_seeds"] = max((c.n for c in cells.values() if c is not None), default=0)
            out.append(row)
    return out


def _line_groups(s: Summary, x_key: str) -> dict[str, list[tuple[float, str]]]:
    """Settings grouped by their values other than ``x_key``: ``{group label: [(x, setting
    label), ...]}`` sorted by x (settings without a numeric ``x_key`` are left out)."""
    groups: dict[str, list[tuple[float, str]]] = {}
    for st in s.settings:
        sd = s.setting_dicts.get(st, {})
        x = sd.get(x_key)
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            continue
        rest = ", ".join(f"{k}={v}" for k, v in sd.items() if k != x_key)
        groups.setdefault(rest, []).append((float(x), st))
    return {g: sorted(v) for g, v in groups.items()}


def _line_plot(s: Summary, metric: ReportColumn, path: Path) -> bool:
    """``metric`` against the numeric setting value ``task.line_x``: one line per loss with
    t-interval error bars and a dot per seed; one panel per group of the other setting values.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    x_key = s.task.line_x
    assert x_key is not None
    groups = {g: pts for g, pts in _line_groups(s, x_key).items()
              if any((st, loss, metric.key) in s.cells for _, st in pts for loss in s.losses)}
    if not groups:
        return False
    n_g, n_l = len(groups), len(s.losses)
    fig, axes = plt.subplots(1, n_g, figsize=(max(6.0, 5.2 * n_g), 4.6), sharey=True,
                             squeeze=False)
    cmap = plt.get_cmap("tab10")
    markers = "osD^v<>pPX*h"
    for ax, (group, pts) in zip(axes[0], groups.items()):
        xs_all = sorted({x for x, _ in pts})
        span = (xs_all[-1] - xs_all[0]) if len(xs_all) > 1 else 1.0
        dodge = 0.012 * span  # spread the losses a little so error bars do not overlap
        for i, loss in enumerate(s.losses):
            xs, ms, es = [], [], []
            off = (i - (n_l - 1) / 2) * dodge
            for x, st in pts:
                c = s.cells.get((st, loss, metric.key))
                if c is None:
                    continue
                xs.append(x + off)
                ms.append(c.mean)
                es.append(c.ci if math.isfinite(c.ci) else 0.0)
                ax.scatter(np.full(len(c.values), x + off), c.values, s=7,
                           color=cmap(i % 10), alpha=0.5, linewidths=0, zorder=2)
            if xs:
                ax.errorbar(xs, ms, yerr=es, label=loss, color=cmap(i % 10),
                            marker=markers[i % len(markers)], markersize=4.5, capsize=3,
                            linewidth=1.3, elinewidth=0.9, zorder=3)
        ax.set_xticks(xs_all, [f"{x:g}" for x in xs_all])
        if len(xs_all) == 1:
            ax.set_xlim(xs_all[0] - 0.5, xs_all[0] + 0.5)
        ax.set_xlabel(s.task.line_x_label or x_key)
        if n_g > 1 or group:
            ax.set_title(group, fontsize=9)
        ax.grid(alpha=0.3)
        ax.set_axisbelow(True)
    axes[0][0].set_ylabel(metric.label)
    values = [v for (_, _, k), c in s.cells.items() if k == metric.key for v in c.values]
    if values and min(values) >= 0:  # error bars must not push a non-negative axis below 0
        axes[0][0].set_ylim(bottom=max(0.0, axes[0][0].get_ylim()[0]))
    n_seeds = max((c.n for c in s.cells.values()), default=0)
    fig.suptitle(f"{s.title}\nmean over {n_seeds} seeds, 95% t-interval; dots: seeds",
                 fontsize=10)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, ncol=min(n_l, 4), loc="lower center",
               frameon=False)
    fig.tight_layout(rect=(0, 0.06 + 0.035 * math.ceil(n_l / 4), 1, 1))
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return True


def _plot(s: Summary, metric: ReportColumn, path: Path) -> bool:
    if s.task.line_x is not None and _line_groups(s, s.task.line_x):
        return _line_plot(s, metric, path)
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
    cut = "; y axis does not start at 0" if ax.get_ylim()[0] > 0 else ""
    ax.set_title(f"{s.title}\nmean over {n_seeds} seeds, 95% t-interval; dots: seeds{cut}",
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


