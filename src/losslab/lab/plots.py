"""The figures of the lab (matplotlib, the ``[lab]`` extra, imported lazily; Agg backend).

* :func:`metric_plot` -- the ``<metric>.png`` of a run folder from its
  :class:`~losslab.lab.summary.Summary`: a grouped bar chart (settings on the x axis, one bar
  per loss, t-interval error bars, one dot per seed) or, for a task with a numeric setting
  ``line_x`` (e.g. the label-noise rate), lines over that value (:func:`line_plot`: one line per
  loss, one panel per combination of the other setting values, :func:`line_groups`);
* :func:`plot_reliability_diagram` -- accuracy against confidence per bin of
  :func:`losslab.metrics.reliability_diagram`.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from torch import Tensor

from losslab.lab.summary import Summary
from losslab.lab.tasks.base import ReportColumn
from losslab.metrics.classification import reliability_diagram

__all__ = ["line_groups", "line_plot", "metric_plot", "plot_reliability_diagram"]


def line_groups(s: Summary, x_key: str) -> dict[str, list[tuple[float, str]]]:
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


def line_plot(s: Summary, metric: ReportColumn, path: Path) -> bool:
    """``metric`` against the numeric setting value ``task.line_x``: one line per loss with
    t-interval error bars and a dot per seed; one panel per group of the other setting values.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    x_key = s.task.line_x
    assert x_key is not None
    groups = {g: pts for g, pts in line_groups(s, x_key).items()
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


def metric_plot(s: Summary, metric: ReportColumn, path: Path) -> bool:
    """The plot of one metric of a run (``<metric>.png``): lines over ``task.line_x`` when the
    task has a numeric one, else grouped bars; ``False`` when there is nothing to plot."""
    if s.task.line_x is not None and line_groups(s, s.task.line_x):
        return line_plot(s, metric, path)
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


def plot_reliability_diagram(
    probs: Tensor,
    target: Tensor,
    path: str | Path,
    *,
    n_bins: int = 15,
    adaptive: bool = False,
    title: str | None = None,
    ignore_index: int = -100,
) -> Path:
    """Save a reliability diagram (accuracy vs confidence per bin, with the diagonal) as an
    image at ``path`` and return the path. Needs matplotlib (the ``lab`` extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("plot_reliability_diagram needs matplotlib: pip install "
                          "'losslab[lab]'") from e
    bins = reliability_diagram(probs, target, n_bins=n_bins, adaptive=adaptive,
                               ignore_index=ignore_index)
    full = bins.count > 0
    centers = np.where(full, bins.confidence, (bins.lower + bins.upper) / 2)
    widths = np.maximum(bins.upper - bins.lower, 1.0 / max(n_bins, 1) * 0.9)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.bar(centers[full], bins.accuracy[full], width=widths[full] * 0.9, alpha=0.7,
           edgecolor="black", label="accuracy")
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    kind = "adaptive ECE" if adaptive else "ECE"
    ax.set_title(title or f"reliability diagram ({kind} = {bins.calibration_error:.4f})")
    ax.legend(loc="upper left")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return out
