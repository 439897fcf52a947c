"""Statistics over seeds of a run folder: cells, order, best and the paired difference."""

from __future__ import annotations

import json
import math

import pytest

from losslab.lab.report import write_report
from losslab.lab.results import append_row
from losslab.lab.summary import conclusion, sorted_losses, summarise
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


# --- the sorted table and its generated conclusion line (the demo that decides) ---

LOSSES = ["protonet", "proto_triplet", "protonet+icnn"]


def fewshot_folder(path, accs, *, losses=LOSSES, shots=(1,)):
    """A few-shot run folder with ``accs[(shot, loss)] = [acc per seed]`` (20-way)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(
        {"task": "fewshot", "losses": list(losses), "dataset": "glyphs", "backbone": "conv4",
         "flatten": False, "way": 20, "shots": list(shots), "train_way": [20],
         "epochs": 1, "episodes_per_epoch": 1, "test_episodes": 10}))
    i = 0
    for (shot, loss), vals in accs.items():
        for seed, v in enumerate(vals):
            append_row(path / "results.jsonl", {
                "job_id": f"j{i}", "task": "fewshot", "loss": loss,
                "setting": {"way": 20, "shot": shot, "train_way": 20},
                "setting_label": f"20-way {shot}-shot", "seed": seed,
                "metrics": {"test_acc": v, "test_ci95": 0.5, "icnn": 0.8}})
            i += 1
    return path


def test_a_measurable_winner_is_named_with_its_paired_interval(tmp_path):
    base = [60.0, 62.0, 61.0, 63.0, 59.0]
    folder = fewshot_folder(tmp_path, {
        (1, "protonet"): base,
        (1, "proto_triplet"): [b + d for b, d in zip(base, [3.0, 4.0, 3.5, 4.5, 3.0])],
        (1, "protonet+icnn"): [b + d for b, d in zip(base, [0.5, -0.5, 0.2, -0.3, 0.1])],
    })
    s = summarise(folder)
    text = conclusion(s)
    # differences 3, 4, 3.5, 4.5, 3: mean 3.6, s = 0.652, t(4) = 2.776445 -> 0.81
    assert "on 20-way 1-shot, `proto_triplet` beats `protonet` by 3.60 ± 0.81 points" in text
    assert "adding `icnn` changes nothing measurable (1 paired comparison, mean difference " \
        "+0.00 points)" in text
    assert sorted_losses(s, "20-way 1-shot") == ["protonet", "proto_triplet", "protonet+icnn"]


def test_no_winner_when_every_interval_holds_zero(tmp_path):
    base = [60.0, 62.0, 61.0]
    folder = fewshot_folder(tmp_path, {
        (1, "protonet"): base,
        (1, "proto_triplet"): [b + d for b, d in zip(base, [2.0, -1.0, 1.5])],
        (1, "protonet+icnn"): [b + d for b, d in zip(base, [-1.0, -2.0, -1.5])],
    })
    text = conclusion(summarise(folder))
    assert "no loss is measurably better than `protonet`" in text
    assert "best: `proto_triplet` +0.83" in text and "interval includes 0" in text
    # protonet+icnn: -1, -2, -1.5 -> mean -1.5 ± 1.24: measurably worse, and icnn hurts
    assert "worse: `protonet+icnn` (-1.50 ± 1.24)" in text
    assert "adding `icnn` hurts on 20-way 1-shot, `protonet` (-1.50 ± 1.24 points)" in text
    assert "beats" not in text


def test_a_baseline_that_beats_every_loss_is_said_so(tmp_path):
    """Every other loss measurably worse: the baseline wins; the line must not call the least
    bad loss's interval one that "includes 0"."""
    base = [60.0, 62.0, 61.0]
    folder = fewshot_folder(tmp_path, {
        (1, "protonet"): base,
        (1, "proto_triplet"): [b + d for b, d in zip(base, [-0.5, -0.7, -0.6])],
        (1, "protonet+icnn"): [b + d for b, d in zip(base, [-1.0, -2.0, -1.5])],
    })
    text = conclusion(summarise(folder))
    # -0.5, -0.7, -0.6: mean -0.60, s = 0.1, t(2) = 4.302653 -> 0.25
    assert ("on 20-way 1-shot, `protonet` beats every other loss: `protonet+icnn` "
            "-1.50 ± 1.24 points, `proto_triplet` -0.60 ± 0.25 points") in text  # worst first
    assert "includes 0" not in text and "no loss is measurably better" not in text


def test_the_table_is_sorted_by_paired_difference_and_ends_with_the_conclusion(tmp_path):
    base = [50.0, 52.0, 51.0]
    folder = fewshot_folder(tmp_path, {
        (1, "protonet"): base,
        (1, "proto_triplet"): [b - 1 for b in base],  # worse: listed last
        (1, "protonet+icnn"): [b + d for b, d in zip(base, [5.0, 6.0, 5.5])],  # best: second
    })
    rep = write_report(folder)
    rows = [ln for ln in rep["markdown"].splitlines() if ln.startswith("| 20-way")]
    assert [r.split("|")[2].strip() for r in rows] == [
        "`protonet`", "`protonet+icnn`", "`proto_triplet`"]
    paragraphs = rep["markdown"].split("\n\n")
    assert paragraphs[2].startswith("**Conclusion.** ")  # after the table, before its notes
    assert "`protonet+icnn` beats `protonet` by 5.50 ± 1.24 points" in rep["conclusion"]


def test_lower_is_better_metrics_are_oriented(tmp_path):
    """Retrieval metrics are higher-better; the aggregate error is lower-better: a loss with a
    lower error "beats" the baseline."""
    (tmp_path / "config.json").write_text(json.dumps(
        {"task": "aggregate", "losses": ["bag_level", "easyllp"]}))
    for i, (loss, seed, err) in enumerate([("bag_level", 0, 40.0), ("bag_level", 1, 42.0),
                                           ("bag_level", 2, 41.0), ("easyllp", 0, 30.0),
                                           ("easyllp", 1, 31.0), ("easyllp", 2, 31.5)]):
        append_row(tmp_path / "results.jsonl", {
            "job_id": f"j{i}", "task": "aggregate", "loss": loss,
            "setting": {"bag_size": 64, "epsilon": 0.0}, "setting_label": "k=64", "seed": seed,
            "metrics": {"test_error": err, "test_aux": 1.0}})
    text = conclusion(summarise(tmp_path))
    assert "on k=64, `easyllp` beats `bag_level` by 10.167 ± 1.897" in text


def test_one_loss_has_nothing_to_compare(tmp_path):
    folder = fewshot_folder(tmp_path, {(1, "protonet"): [60.0, 61.0]}, losses=["protonet"])
    assert conclusion(summarise(folder)) == "Only one loss ran: nothing to compare."


def test_one_seed_says_there_is_no_interval(tmp_path):
    folder = fewshot_folder(tmp_path, {(1, "protonet"): [83.8], (1, "proto_triplet"): [85.2]},
                            losses=["protonet", "proto_triplet"])
    text = conclusion(summarise(folder))
    assert "(best: `proto_triplet` +1.40 points, 1 paired seed: no interval)" in text


def test_one_seed_cannot_judge_an_added_term(tmp_path):
    folder = fewshot_folder(tmp_path, {(1, "protonet"): [83.5], (1, "protonet+icnn"): [83.8]},
                            losses=["protonet", "protonet+icnn"])
    text = conclusion(summarise(folder))
    assert "the effect of adding `icnn` cannot be judged with one seed (mean difference " \
        "+0.30 points)" in text
    assert "changes nothing measurable" not in text
