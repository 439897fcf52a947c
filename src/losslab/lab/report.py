"""The tables and plots of a run folder, generated from ``results.jsonl`` only.

``table.md`` / ``table.csv``: one row per (setting, loss) with, for each metric of the task,
the mean over seeds ± the 95% Student-t interval ``t_{0.975,n-1} * s / sqrt(n)`` (``s``: sample
std over seeds, ``n`` seeds), the mean of the per-seed episode CIs where the task has them
(few-shot: ``1.96 * std / sqrt(episodes)``, the paper's convention), and ``n``. The best mean
of each metric within a setting is bold in ``table.md``; within a setting the rows are the first
loss (the baseline), then the others sorted by their paired difference to it, best first
(:func:`losslab.lab.summary.sorted_losses`), and a one-line conclusion generated from the
numbers closes the table (:func:`losslab.lab.summary.conclusion`). ``<metric>.png``: one figure per
plotted metric (:func:`losslab.lab.plots.metric_plot`). The statistics come from
:func:`losslab.lab.summary.summarise`.

Diverged runs are shown, not dropped: ``n seeds`` counts every seed that ran, a ``diverged``
column (present when any run diverged) gives their number and seeds, a mean over fewer seeds
than ``n seeds`` is marked ``†``, and a (setting, loss) whose every run diverged reads
``diverged``. ``table.csv`` has ``n_diverged``, ``diverged_seeds`` and ``<metric>_n`` (the
seeds behind each mean).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from losslab.lab.plots import metric_plot
from losslab.lab.summary import Summary, conclusion, sorted_losses, summarise
from losslab.lab.tasks.base import Task

__all__ = ["write_report"]


def _fmt(x: float, fmt: str) -> str:
    return "n/a" if x is None or not math.isfinite(x) else format(x, fmt)


def _seeds_text(seeds: list[int]) -> str:
    if not seeds:
        return "0"
    return f"{len(seeds)} (seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))})"


def _markdown(s: Summary) -> str:
    metrics = s.task.metrics
    prim = s.task.primary_metric()
    show_delta = len(s.losses) > 1
    show_diverged = s.n_diverged > 0
    header = ["Setting", "Loss"]
    for m in metrics:
        header.append(f"{m.label} (mean ± 95% CI)")
        if m.episode_ci:
            header.append(f"{m.label}: episode CI (mean)")
        if m is prim and show_delta:
            header.append(f"Δ vs `{s.losses[0]}` (paired)")
    if show_diverged:
        header.append("diverged")
    header.append("n seeds")
    lines = [f"## {s.title}", "", "| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|"]
    marked = False
    for setting in s.settings:
        best = {m.key: s.best(setting, m) for m in metrics}
        for loss in sorted_losses(s, setting, prim):
            group = s.groups.get((setting, loss))
            if group is None:
                continue
            row = [setting, f"`{loss}`"]
            for m in metrics:
                c = s.cells.get((setting, loss, m.key))
                if c is None:
                    row.append("diverged" if group.diverged else "—")
                    row += ["—"] if m.episode_ci else []
                    row += ["—"] if m is prim and show_delta else []
                    continue
                txt = _fmt(c.mean, m.fmt) + ("" if c.n < 2 else f" ± {_fmt(c.ci, m.fmt)}")
                if best[m.key] == loss and show_delta:
                    txt = f"**{txt}**"
                if c.n_missing:
                    txt += " †"
                    marked = True
                row.append(txt)
                if m.episode_ci:
                    row.append("—" if c.episode_ci is None else f"± {_fmt(c.episode_ci, m.fmt)}")
                if m is prim and show_delta:
                    d = s.paired_delta(setting, loss, m)
                    row.append("—" if d is None else f"{d[0]:+{m.fmt}}"
                               + ("" if d[2] < 2 else f" ± {_fmt(d[1], m.fmt)}"))
            if show_diverged:
                row.append(_seeds_text(group.diverged))
            row.append(str(len(group.seeds)))
            lines.append("| " + " | ".join(row) + " |")
    dup = (f"; {s.n_duplicates} duplicated row{'s' if s.n_duplicates > 1 else ''} ignored"
           if s.n_duplicates else "")
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
        + ("Diverged: runs whose training loss became non-finite, or whose "
           f"{prim.label} is not finite; they count in n seeds, not in the means. "
           if show_diverged else "")
        + ("† mean over fewer seeds than n seeds (the others diverged or have no finite "
           "value). " if marked else "")
        + ("Rows of a setting: the first loss (the baseline), then the others by their "
           "paired Δ, best first. " if show_delta else "")
        + f"Generated from results.jsonl ({s.n_rows} jobs{dup}) by `losslab report`.",
        "",
    ]
    if show_delta:  # after the table, before its notes
        at = lines.index("", 4)
        lines[at:at] = ["", f"**Conclusion.** {conclusion(s, prim)}"]
    return "\n".join(lines)


def _csv_rows(s: Summary) -> list[dict[str, Any]]:
    out = []
    prim = s.task.primary_metric()
    for setting in s.settings:
        for loss in s.losses:
            group = s.groups.get((setting, loss))
            if group is None:
                continue
            cells = {m.key: s.cells.get((setting, loss, m.key)) for m in s.task.metrics}
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
                row[f"{m.key}_n"] = 0 if c is None else c.n
            d = s.paired_delta(setting, loss, prim)
            row[f"{prim.key}_delta_vs_first"] = None if d is None else d[0]
            row[f"{prim.key}_delta_ci95"] = (None if d is None or not math.isfinite(d[1])
                                             else d[1])
            row["n_seeds"] = len(group.seeds)
            row["n_diverged"] = len(group.diverged)
            row["diverged_seeds"] = ";".join(map(str, group.diverged))
            out.append(row)
    return out


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
        if m.plot and metric_plot(s, m, folder / f"{m.key}.png"):
            plots.append(folder / f"{m.key}.png")
    return {"markdown": md, "table_md": folder / "table.md", "table_csv": folder / "table.csv",
            "plots": plots, "summary": s, "conclusion": conclusion(s)}


