"""The retrieval task: tiny end-to-end jobs on synthetic data (embeddings, proxy and episode
losses) and its config checks."""

from __future__ import annotations

import pytest


def test_retrieval_jobs_on_synthetic(tmp_path):
    from losslab.lab.config import resolve_config
    from losslab.lab.results import read_rows
    from losslab.lab.runner import run_bench
    from losslab.lab.tasks import get_task

    task = get_task("retrieval")
    cfg = resolve_config(task, {
        "dataset": "synthetic", "losses": ["triplet", "proxy_anchor", "proto_triplet"],
        "seeds": 1, "m": 4, "batch_size": 16, "epochs": 1, "batches_per_epoch": 2,
        "embedding_dim": 16, "device": "cpu", "threads": 1,
    }, None)
    out = run_bench(task, cfg, tmp_path / "run", quiet=True)
    rows = read_rows(out / "results.jsonl")
    assert {r["loss"] for r in rows} == {"triplet", "proxy_anchor", "proto_triplet"}
    for r in rows:
        m = r["metrics"]
        for k in ("map_at_r", "r_precision", "precision_at_1"):
            assert 0 <= m[k] <= 100
        assert m["embedding_dim"] == 16 and m["test_classes"] == 6
    assert (out / "table.md").exists() and (out / "map_at_r.png").exists()


def test_retrieval_validate_rejects_bad_configs():
    from losslab.lab.config import resolve_config
    from losslab.lab.tasks import get_task

    task = get_task("retrieval")
    base = {"dataset": "synthetic", "losses": ["triplet"], "m": 4, "batch_size": 16}
    with pytest.raises(ValueError, match="multiple of m"):
        task.validate(resolve_config(task, {**base, "batch_size": 10}, None))
    with pytest.raises(ValueError, match="kind"):
        task.validate(resolve_config(task, {**base, "losses": ["cross_entropy"]}, None))
    with pytest.raises(ValueError, match="m >= 2"):
        task.validate(resolve_config(task, {**base, "losses": ["proto_triplet"], "m": 1,
                                            "batch_size": 8}, None))
