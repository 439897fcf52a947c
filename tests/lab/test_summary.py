"""Statistics over seeds of a run folder: cells, order, best and the paired difference."""

from __future__ import annotations

import json
import math

import pytest

from losslab.lab.results import append_row
from losslab.lab.summary import summarise
from losslab.lab.tasks import get_task


def _folder(tmp_path, rows):
    (tmp_path / "config.json").write_text(json.dumps(
        {"task": "retrieval", "losses": ["triplet", "supcon"], "dataset": "glyphs",
         "backbone": "conv4", "embedding_dim": 64, "epochs": 1, "batches_per_epoch": 1,
         "m": 4, "batch_size": 16}))
    for i, (loss, seed, value) in enumerate(rows):
        append_row(tmp_path / "results.jsonl", {
            "job_id": f"j{i}", "task": "retrieval", "loss": loss,
            "setting": {"m": 4, "batch_size": 16}, "setting_label": "4x4 per batch",
            "seed": seed, "metrics": {"map_at_r": value, "r_precision": value + 1,
                                      "precision_at_1": float("nan")}})
    return tmp_path


def test_cells_best_and_paired_delta(tmp_path):
    folder = _folder(tmp_path, [("supcon", 0, 50.0), ("triplet", 0, 40.0), ("supcon", 1, 54.0),
                                ("triplet", 1, 41.0), ("supcon", 2, 52.0)])
    s = summarise(folder)
    assert s.losses == ["triplet", "supcon"]  # the config's order, not the rows'
    assert s.settings == ["4x4 per batch"] and s.n_rows == 5
    col = {c.key: c for c in get_task("retrieval").metrics}
    cell = s.cells[("4x4 per batch", "supcon", "map_at_r")]
    assert cell.values == [50.0, 54.0, 52.0] and cell.seeds == [0, 1, 2]
    assert cell.mean == pytest.approx(52.0) and cell.n == 3
    assert cell.ci == pytest.approx(4.302653 * 2.0 / math.sqrt(3), rel=1e-5)
    assert s.best("4x4 per batch", col["map_at_r"]) == "supcon"
    # paired on the seeds both losses have (0, 1): differences 10 and 13
    mean, ci, n = s.paired_delta("4x4 per batch", "supcon", col["map_at_r"])
    # s = std(10, 13) = 1.5 * sqrt(2), half-width t(0.975, 1) * s / sqrt(2)
    assert (mean, n) == (pytest.approx(11.5), 2)
    assert ci == pytest.approx(12.706205 * 1.5, rel=1e-5)
    assert s.paired_delta("4x4 per batch", "triplet", col["map_at_r"]) is None
    # a metric without a finite value has no cell, and no best
    assert ("4x4 per batch", "supcon", "precision_at_1") not in s.cells
    assert s.best("4x4 per batch", col["precision_at_1"]) is None


def test_a_folder_without_config_is_refused(tmp_path):
    (tmp_path / "results.jsonl").write_text("")
    with pytest.raises(ValueError, match=r"no config\.json"):
        summarise(tmp_path)


def test_duplicated_rows_count_once_with_a_warning(tmp_path):
    """The same job_id twice (a copied or concatenated results file): 4 seeds, not 6."""
    folder = _folder(tmp_path, [("supcon", s, 50.0 + s) for s in range(4)])
    lines = (folder / "results.jsonl").read_bytes().splitlines(keepends=True)
    with open(folder / "results.jsonl", "ab") as f:
        f.write(lines[0] + lines[2])
    with pytest.warns(RuntimeWarning, match=r"2 duplicated rows .*same job_id.*ignored"):
        s = summarise(folder)
    cell = s.cells[("4x4 per batch", "supcon", "map_at_r")]
    assert cell.n == 4 and cell.values == [50.0, 51.0, 52.0, 53.0] and s.n_rows == 4


def test_conflicting_duplicates_are_named(tmp_path):
    folder = _folder(tmp_path, [("supcon", 0, 50.0), ("supcon", 1, 51.0)])
    rows = (folder / "results.jsonl").read_text().splitlines()
    with open(folder / "results.jsonl", "a") as f:
        f.write(rows[0].replace("50.0", "99.0") + "\n")
    with pytest.warns(RuntimeWarning, match=r"j0.*different"):
        s = summarise(folder)
    assert s.cells[("4x4 per batch", "supcon", "map_at_r")].values == [50.0, 51.0]


def test_diverged_runs_are_counted_not_dropped(tmp_path):
    """A NaN metric is a diverged run: the group keeps its 3 seeds, 1 of them diverged, and
    the mean is over the other 2 (before: silently over 2, reported as 3 seeds)."""
    folder = _folder(tmp_path, [("supcon", 0, 50.0), ("supcon", 1, float("nan")),
                                ("supcon", 2, 54.0), ("triplet", 0, 40.0)])
    s = summarise(folder)
    g = s.groups[("4x4 per batch", "supcon")]
    assert g.seeds == [0, 1, 2] and g.diverged == [1]
    cell = s.cells[("4x4 per batch", "supcon", "map_at_r")]
    assert cell.n == 2 and cell.n_missing == 1 and cell.mean == pytest.approx(52.0)
    assert s.groups[("4x4 per batch", "triplet")].diverged == []
    assert s.n_diverged == 1
