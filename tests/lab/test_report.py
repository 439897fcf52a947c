import csv
import json
import math

import pytest

from losslab.lab.report import write_report
from losslab.lab.results import append_row
from losslab.lab.summary import summarise


def _folder(tmp_path, accs):
    (tmp_path / "config.json").write_text(json.dumps(
        {"task": "fewshot", "losses": ["protonet", "proto_triplet"], "dataset": "glyphs",
         "backbone": "conv4", "flatten": False, "epochs": 1, "episodes_per_epoch": 1,
         "test_episodes": 10, "shots": [1, 5], "train_way": [5], "way": 5}))
    for (loss, shot), values in accs.items():
        for seed, acc in enumerate(values):
            append_row(tmp_path / "results.jsonl", {
                "job_id": f"{loss}{shot}{seed}", "task": "fewshot", "loss": loss,
                "setting": {"way": 5, "shot": shot, "train_way": 5},
                "setting_label": f"5-way {shot}-shot", "seed": seed,
                "metrics": {"test_acc": acc, "test_ci95": 1.0 + seed, "icnn": 0.5 + acc / 1000},
            })
    return tmp_path


def test_table_numbers_and_bold(tmp_path):
    folder = _folder(tmp_path, {("protonet", 1): [50.0, 52.0, 54.0],
                                ("proto_triplet", 1): [60.0, 61.0, 62.0],
                                ("protonet", 5): [80.0, 82.0, 84.0],
                                ("proto_triplet", 5): [70.0, 71.0, 72.0]})
    rep = write_report(folder)
    md = rep["markdown"]
    ci = 4.302653 * 2.0 / math.sqrt(3)
    assert f"| 5-way 1-shot | `protonet` | 52.00 ± {ci:.2f} | ± 2.00 | — |" in md
    # paired: differences 10, 9, 8 -> +9.00 ± t(0.975, 2) * 1 / sqrt(3)
    d_ci = 4.302653 / math.sqrt(3)
    assert (f"| 5-way 1-shot | `proto_triplet` | **61.00 ± {ci / 2:.2f}** | ± 2.00 | "
            f"+9.00 ± {d_ci:.2f} |") in md
    assert f"| 5-way 5-shot | `protonet` | **82.00 ± {ci:.2f}** |" in md
    assert md.index("5-way 1-shot") < md.index("5-way 5-shot")  # config order
    assert "Student-t" in md and "1.96·std/√E" in md
    rows = list(csv.DictReader(open(folder / "table.csv")))
    assert len(rows) == 4
    r = rows[0]
    assert (r["setting"], r["loss"], r["shot"], r["n_seeds"]) == ("5-way 1-shot", "protonet",
                                                                    "1", "3")
    assert float(r["test_acc_mean"]) == pytest.approx(52.0)
    assert float(r["test_acc_ci95"]) == pytest.approx(ci)
    assert float(r["test_acc_episode_ci95_mean"]) == pytest.approx(2.0)
    assert r["test_acc_delta_vs_first"] == ""
    assert float(rows[1]["test_acc_delta_vs_first"]) == pytest.approx(9.0)
    assert [p.name for p in rep["plots"]] == ["test_acc.png", "icnn.png"]
    assert (folder / "test_acc.png").read_bytes()[:4] == b"\x89PNG"


def test_single_seed_has_no_interval(tmp_path):
    folder = _folder(tmp_path, {("protonet", 1): [50.0]})
    s = summarise(folder)
    cell = s.cells[("5-way 1-shot", "protonet", "test_acc")]
    assert cell.n == 1 and math.isnan(cell.ci)
    md = write_report(folder)["markdown"]
    assert "| 5-way 1-shot | `protonet` | 50.00 | ± 1.00 | 0.550 | 1 |" in md


def test_diverged_runs_are_marked(tmp_path):
    folder = _folder(tmp_path, {("protonet", 1): [50.0, float("nan"), 54.0],
                                ("proto_triplet", 1): [60.0, 61.0, 62.0]})
    rep = write_report(folder)
    md = rep["markdown"]
    assert "| diverged | n seeds |" in md
    row = next(line for line in md.splitlines() if line.startswith("| 5-way 1-shot | `protonet`"))
    assert "52.00 ± " in row and "†" in row and row.endswith("| 1 (seed 1) | 3 |")
    row = next(line for line in md.splitlines()
               if line.startswith("| 5-way 1-shot | `proto_triplet`"))
    assert "†" not in row and row.endswith("| 0 | 3 |")
    assert "† " in md and "diverged" in md.split("\n\n")[-1]
    r = next(x for x in csv.DictReader(open(folder / "table.csv")) if x["loss"] == "protonet")
    assert (r["n_seeds"], r["n_diverged"], r["diverged_seeds"], r["test_acc_n"]) == (
        "3", "1", "1", "2")


def test_every_seed_diverged(tmp_path):
    folder = _folder(tmp_path, {("protonet", 1): [50.0, 52.0],
                                ("proto_triplet", 1): [float("nan"), float("nan")]})
    md = write_report(folder)["markdown"]
    row = next(line for line in md.splitlines()
               if line.startswith("| 5-way 1-shot | `proto_triplet`"))
    assert row.startswith("| 5-way 1-shot | `proto_triplet` | diverged |")
    assert row.endswith("| 2 (seeds 0, 1) | 2 |")
    header = next(line for line in md.splitlines() if line.startswith("| Setting"))
    assert row.count(" | ") == header.count(" | ")  # every column, the Δ one included


def test_no_diverged_column_without_divergence(tmp_path):
    folder = _folder(tmp_path, {("protonet", 1): [50.0, 52.0]})
    assert "diverged" not in write_report(folder)["markdown"]
