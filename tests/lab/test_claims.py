"""Paper claims: the decision rule, and verdicts from a synthetic run folder."""

from __future__ import annotations

import math

import pytest

from losslab.lab.claims import (
    CLAIMS,
    Claim,
    claims_markdown,
    decide,
    describe_run_folders,
    evaluate_claims,
    paired_difference,
)
from losslab.lab.cli import main as lab_main
from tests.lab.test_summary import fewshot_folder


@pytest.mark.parametrize(("mean", "ci", "n", "rule", "margin", "verdict"), [
    (3.0, 0.5, 5, "better", 2.0, "reproduced"),        # [2.5, 3.5]
    (1.5, 1.0, 5, "better", 2.0, "reproduced"),        # [0.5, 2.5]: above 0, reaches 2
    (1.0, 0.5, 5, "better", 2.0, "not reproduced"),    # [0.5, 1.5]: better, but not by 2
    (-1.0, 0.5, 5, "better", 0.0, "not reproduced"),   # below 0
    (0.5, 1.0, 5, "better", 0.0, "inconclusive"),      # holds 0
    (1.0, 2.0, 5, "better", 2.0, "inconclusive"),      # holds 0 and 2
    (0.5, 0.5, 5, "not_better", 2.0, "reproduced"),    # [0, 1] <= 2
    (5.0, 1.0, 5, "not_better", 2.0, "not reproduced"),  # [4, 6] > 2
    (2.0, 1.0, 5, "not_better", 2.0, "inconclusive"),  # straddles 2
    (5.0, math.nan, 1, "better", 0.0, "inconclusive"),  # one seed: no interval
    (-0.5, 0.4, 5, "not_worse", 1.0, "reproduced"),    # [-0.9, -0.1] >= -1
    (0.5, 0.4, 5, "not_worse", 0.0, "reproduced"),     # [0.1, 0.9]: better is not worse
    (-3.0, 1.0, 5, "not_worse", 1.0, "not reproduced"),  # [-4, -2] < -1
    (-1.0, 0.5, 5, "not_worse", 1.0, "inconclusive"),  # [-1.5, -0.5] straddles -1
])
def test_decision_rule(mean, ci, n, rule, margin, verdict):
    assert decide(mean, ci, n, rule=rule, margin=margin)[0] == verdict


def test_bad_rule_and_margin_are_refused():
    with pytest.raises(ValueError, match="rule must be one of"):
        decide(1.0, 1.0, 3, rule="worse", margin=0.0)
    with pytest.raises(ValueError, match="margin must be"):
        Claim("x", "p", "c", "n", "fewshot", "demo", "test_acc", "a", ("b",), margin=-1.0)


def test_paired_difference_is_oriented_and_paired():
    treat, base = {0: 10.0, 1: 12.0, 2: 99.0}, {0: 11.0, 1: 14.0}
    d = paired_difference(treat, base, higher_is_better=False)  # errors: lower wins
    assert d is not None
    mean, ci, n = d
    assert (mean, n) == (pytest.approx(1.5), 2)  # seeds 0, 1: -(10-11), -(12-14)
    assert ci == pytest.approx(12.706205 * math.sqrt(0.5) / math.sqrt(2), rel=1e-6)
    assert paired_difference({3: 1.0}, base, higher_is_better=True) is None


def test_claims_from_a_synthetic_run_folder(tmp_path):
    base = [60.0, 62.0, 61.0, 63.0, 59.0]
    fewshot_folder(tmp_path / "demo", {
        (1, "protonet"): base,
        (1, "proto_triplet"): [b + d for b, d in zip(base, [3.0, 4.0, 3.5, 4.5, 3.0])],
        (1, "protonet+icnn"): [b + d for b, d in zip(base, [0.5, -0.5, 0.2, -0.3, 0.1])],
    })
    got = {(v.claim.id, v.treatment): v for v in evaluate_claims(tmp_path)}
    v = got[("susana-fewshot", "proto_triplet")]
    assert v.verdict == "reproduced" and v.setting == "20-way 1-shot" and v.n == 5
    assert v.mean == pytest.approx(3.6) and v.ci == pytest.approx(0.8094, abs=1e-3)
    assert got[("icnn-term", "protonet+icnn")].verdict == "inconclusive"
    # every other claim's folder is absent
    assert got[("reality-check", "supcon")].verdict == "not run"
    assert "no " in got[("reality-check", "supcon")].reason
    md = claims_markdown(list(got.values()), "runs")
    assert "| susana-fewshot |" in md and "+3.60 ± 0.81 (n=5) | **reproduced**" in md


def test_a_folder_of_another_task_is_not_run(tmp_path):
    fewshot_folder(tmp_path / "retrieval-glyphs", {(1, "protonet"): [1.0, 2.0]},
                   losses=["protonet"])
    claim = next(c for c in CLAIMS if c.id == "reality-check")
    vs = evaluate_claims(tmp_path, [claim])
    assert {v.verdict for v in vs} == {"not run"} and "fewshot run" in vs[0].reason


def test_report_claims_writes_the_markdown(tmp_path, capsys):
    fewshot_folder(tmp_path / "runs" / "demo", {(1, "protonet"): [60.0, 61.0],
                                                (1, "proto_triplet"): [70.0, 72.0]})
    out = tmp_path / "claims.md"
    assert lab_main(["report", "--claims", str(tmp_path / "runs"), "--output", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("# Paper claims tested by the lab")
    assert f"`losslab report --claims {(tmp_path / 'runs').as_posix()} --output" in text
    assert "## Run folders" in text and "| `" in text
    assert "`proto_triplet` vs `protonet`" in text and "not run" in text
    assert f"claims: {out}" in capsys.readouterr().out


def test_every_claim_names_a_metric_of_its_task():
    from losslab.lab.tasks import get_task

    for c in CLAIMS:
        task = get_task(c.task)
        assert c.metric in {m.key for m in task.metrics}, c.id


def test_every_claim_is_produced_by_a_shipped_config():
    """The run folder of a claim is a shipped config's ``out``, and that config trains the
    losses the claim compares (so `losslab report --claims` after the benchmarks has them)."""
    from pathlib import Path

    import tomllib

    import losslab.lab

    configs = {}
    for p in (Path(losslab.lab.__file__).parent / "configs").glob("*.toml"):
        cfg = tomllib.loads(p.read_text())
        configs[Path(cfg["out"]).name] = cfg
    for c in CLAIMS:
        cfg = configs[c.run]
        assert cfg["task"] == c.task, c.id
        assert {c.baseline, *c.treatments} <= set(cfg["losses"]), c.id


def test_report_without_a_folder_or_claims_is_an_error(capsys):
    assert lab_main(["report"]) == 2
    assert "give a run folder DIR (or --claims)" in capsys.readouterr().err


def test_one_run_folder_gives_all_three_verdicts(tmp_path):
    """A synthetic demo folder with two settings: Proto-Triplet +3.6 at 1-shot (reproduced:
    the interval is above 0 and reaches the claimed 2), +0.5 ± small at 5-shot (not
    reproduced: better, but the interval excludes 2); the ICNN term's noise at 1-shot holds 0
    (inconclusive). The markdown lists the folder it read, with its jobs and seeds."""
    base = [60.0, 62.0, 61.0, 63.0, 59.0]
    base5 = [80.0, 81.0, 79.5, 80.5, 82.0]
    fewshot_folder(tmp_path / "demo", {
        (1, "protonet"): base,
        (1, "proto_triplet"): [b + d for b, d in zip(base, [3.0, 4.0, 3.5, 4.5, 3.0])],
        (1, "protonet+icnn"): [b + d for b, d in zip(base, [0.5, -0.5, 0.2, -0.3, 0.1])],
        (5, "protonet"): base5,
        (5, "proto_triplet"): [b + d for b, d in zip(base5, [0.4, 0.6, 0.5, 0.45, 0.55])],
        (5, "protonet+icnn"): [b + d for b, d in zip(base5, [-1.0, -1.2, -0.8, -1.1, -0.9])],
    }, shots=(1, 5))
    claims = [c for c in CLAIMS if c.run == "demo"]
    got = {(v.claim.id, v.setting): v for v in evaluate_claims(tmp_path, claims)}
    assert got[("susana-fewshot", "20-way 1-shot")].verdict == "reproduced"
    v5 = got[("susana-fewshot", "20-way 5-shot")]
    assert v5.verdict == "not reproduced" and "excludes the claimed 2" in v5.reason
    assert v5.mean == pytest.approx(0.5) and v5.mean + v5.ci < 2.0
    assert got[("icnn-term", "20-way 1-shot")].verdict == "inconclusive"
    worse = got[("icnn-term", "20-way 5-shot")]
    assert worse.verdict == "not reproduced" and "below 0" in worse.reason

    folders = describe_run_folders(tmp_path, [*claims, next(c for c in CLAIMS
                                                             if c.id == "reality-check")])
    assert [(f.name, f.status) for f in folders] == [("demo", "read"),
                                                     ("retrieval-glyphs", "absent")]
    demo = folders[0]
    assert demo.jobs == 30 and demo.seeds == (0, 1, 2, 3, 4)
    assert demo.settings == ("20-way 1-shot", "20-way 5-shot")
    assert demo.claims == ("susana-fewshot", "icnn-term")
    md = claims_markdown(list(got.values()), "runs", folders=folders,
                         command="losslab report --claims runs --output docs/claims.md")
    assert "Generated by `losslab report --claims runs --output docs/claims.md`" in md
    assert "| `runs/demo` | susana-fewshot, icnn-term | 30 jobs: " in md
    assert "seeds 0-4 |" in md
    assert "| `runs/retrieval-glyphs` | reality-check | not run" in md
    assert md.count("**not reproduced**") == 2 and md.count("**reproduced**") == 1


def test_keep_absent_keeps_the_previous_rows_of_absent_folders_only(tmp_path):
    """A previous docs/claims.md with a verdict row of the demo and of reality-check: with the
    demo folder present its rows are new, reality-check's folder is absent so its previous
    rows and folder row are kept (marked), and the summary counts the rows as written."""
    from losslab.lab.claims import KEPT, previous_rows

    base = [60.0, 62.0, 61.0, 63.0, 59.0]
    fewshot_folder(tmp_path / "demo", {
        (1, "protonet"): base,
        (1, "proto_triplet"): [b + d for b, d in zip(base, [3.0, 4.0, 3.5, 4.5, 3.0])],
        (1, "protonet+icnn"): [b + d for b, d in zip(base, [0.5, -0.5, 0.2, -0.3, 0.1])],
    })
    claims = [c for c in CLAIMS if c.run in ("demo", "retrieval-glyphs", "aggregate_fmnist")]
    old_row = ("| reality-check | x | glyphs | `circle` vs `triplet` | map_at_r, not_better "
               "(m = 2) | +0.50 ± 0.20 (n=3) | **reproduced**: interval [+0.30, +0.70] at or "
               "below the margin 2 |")
    previous = "\n".join([
        "# Paper claims tested by the lab", "", "Summary: reproduced: 9.", "",
        "| Claim | Paper's number | Setting | Treatment vs baseline | Metric, rule "
        "| Ours (Δ ± CI) | Verdict |", "|---|---|---|---|---|---:|---|",
        "| susana-fewshot | old | 20-way 1-shot | `proto_triplet` vs `protonet` | test_acc | "
        "-9.00 (n=2) | **not reproduced**: old |",
        old_row,
        "| easyllp-large-bags | x | k=64 | `easyllp` vs `bag_level` | test_error, better | — "
        "| **not run**: no runs/aggregate_fmnist/results.jsonl |",
        "", "## Run folders", "", "| Run folder | Claims | What it holds |", "|---|---|---|",
        "| `runs/retrieval-glyphs` | reality-check | 45 jobs: old run |",
        "| `runs/aggregate_fmnist` | easyllp-large-bags | not run (no results.jsonl): its "
        "claims' rows say *not run* |",
        "| `runs/demo` | susana-fewshot | 2 jobs: older |", ""])
    rows, folder_rows = previous_rows(previous)
    assert rows["reality-check"] == [old_row] and len(rows["easyllp-large-bags"]) == 1
    assert set(folder_rows) == {"retrieval-glyphs", "demo", "aggregate_fmnist"}
    verdicts = evaluate_claims(tmp_path, claims)
    md = claims_markdown(verdicts, "runs", folders=describe_run_folders(tmp_path, claims),
                         previous=previous)
    assert md.count(KEPT) == 2  # the verdict row and the folder row of retrieval-glyphs
    assert old_row.removesuffix(" |") + f" {KEPT} |" in md
    assert f"| `runs/retrieval-glyphs` | reality-check | 45 jobs: old run {KEPT} |" in md
    assert "-9.00" not in md and "2 jobs: older" not in md  # the demo's rows are new
    assert "Rows marked *kept*" in md
    # a previous *not run* is not kept: easyllp's rows and folder are written anew, unmarked
    assert all(KEPT not in line for line in md.splitlines() if "easyllp" in line
               or "aggregate_fmnist" in line)
    assert sum("**not run**" in line for line in md.splitlines()
               if line.startswith("| easyllp-large-bags")) == 1  # one row: no folder
    n_reproduced = sum("**reproduced**" in line for line in md.splitlines()
                       if line.startswith("| "))
    assert f"reproduced: {n_reproduced}" in md.split("\n\n")[3]
    # without previous= the absent folder's claim is not run, as before
    plain = claims_markdown(verdicts, "runs", folders=describe_run_folders(tmp_path, claims))
    assert KEPT not in plain and "**not run**" in plain
