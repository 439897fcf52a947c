"""The sorted table and the plain-language conclusion, on synthetic few-shot run folders
(both outcomes: a loss that measurably beats the baseline, and none that does)."""

from __future__ import annotations

import json

from losslab.lab.report import write_report
from losslab.lab.results import append_row
from losslab.lab.summary import conclusion, sorted_losses, summarise

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
