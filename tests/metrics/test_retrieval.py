"""Retrieval metrics: exact against a brute-force numpy reference; PML agreement; OPIS."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from losslab.metrics import epsilon_opis, opis, retrieval_metrics


def brute(q, ql, r, rl, self_mode, metric):
    q, r, ql, rl = q.numpy(), r.numpy(), ql.numpy(), rl.numpy()
    if metric == "cosine":
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        r = r / np.linalg.norm(r, axis=1, keepdims=True)
        d = -(q @ r.T)
    else:
        d = np.sqrt(((q[:, None] - r[None]) ** 2).sum(-1))
    out = {"p1": [], "rp": [], "map": [], "mrr": [], "r": {k: [] for k in (1, 2, 4, 8)}}
    for i in range(len(q)):
        order = [j for j in np.argsort(d[i], kind="stable") if not (self_mode and j == i)]
        rel = np.array([rl[j] == ql[i] for j in order], dtype=float)
        R = int(rel.sum())
        if R == 0:
            continue
        out["p1"].append(rel[0])
        out["rp"].append(rel[:R].mean())
        prec = np.cumsum(rel) / np.arange(1, len(rel) + 1)
        out["map"].append((prec[:R] * rel[:R]).sum() / R)
        out["mrr"].append(1.0 / (np.argmax(rel) + 1))
        for k in out["r"]:
            out["r"][k].append(rel[:k].max())
    return out


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("self_mode", [True, False])
@pytest.mark.parametrize("chunk", [None, 7])
def test_exact_against_brute_force(metric, self_mode, chunk):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(60, 5, generator=g, dtype=torch.float64)
    ql = torch.randint(0, 6, (60,), generator=g)
    r = None if self_mode else torch.randn(80, 5, generator=g, dtype=torch.float64)
    rl = None if self_mode else torch.randint(0, 7, (80,), generator=g)
    got = retrieval_metrics(q, ql, r, rl, metric=metric, chunk_size=chunk, backend="torch")
    want = brute(q, ql, q if self_mode else r, ql if self_mode else rl, self_mode, metric)
    assert got["num_queries"] == len(want["p1"])
    assert got["precision_at_1"] == pytest.approx(np.mean(want["p1"]), abs=1e-12)
    assert got["r_precision"] == pytest.approx(np.mean(want["rp"]), abs=1e-12)
    assert got["map_at_r"] == pytest.approx(np.mean(want["map"]), abs=1e-12)
    assert got["mrr"] == pytest.approx(np.mean(want["mrr"]), abs=1e-12)
    for k in (1, 2, 4, 8):
        assert got[f"recall_at_{k}"] == pytest.approx(np.mean(want["r"][k]), abs=1e-12)


def test_matches_pml_accuracy_calculator():
    ac_mod = pytest.importorskip("pytorch_metric_learning.utils.accuracy_calculator")
    from pytorch_metric_learning.distances import LpDistance
    from pytorch_metric_learning.utils.inference import CustomKNN

    g = torch.Generator().manual_seed(1)
    x = torch.randn(300, 8, generator=g)
    y = torch.randint(0, 12, (300,), generator=g)
    ac = ac_mod.AccuracyCalculator(
        include=("precision_at_1", "mean_average_precision_at_r", "r_precision"),
        k="max_bin_count", knn_func=CustomKNN(LpDistance(normalize_embeddings=False)))
    theirs = ac.get_accuracy(x, y, x, y, ref_includes_query=True)
    ours = retrieval_metrics(x, y, backend="torch")
    assert ours["map_at_r"] == pytest.approx(theirs["mean_average_precision_at_r"], abs=1e-6)
    assert ours["r_precision"] == pytest.approx(theirs["r_precision"], abs=1e-6)
    assert ours["precision_at_1"] == pytest.approx(theirs["precision_at_1"], abs=1e-6)


def test_perfect_embedding_scores_one_and_bad_inputs():
    y = torch.arange(5).repeat_interleave(4)
    x = torch.nn.functional.one_hot(y).double() + 1e-3 * torch.randn(20, 5, dtype=torch.float64)
    m = retrieval_metrics(x, y)
    assert m["map_at_r"] == pytest.approx(1.0) and m["mrr"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="query_labels"):
        retrieval_metrics(x, y[:3])
    with pytest.raises(ValueError, match="metric"):
        retrieval_metrics(x, y, metric="manhattan")
    with pytest.raises(ValueError, match="reference"):
        retrieval_metrics(x, y, reference=x)


def test_opis_oracle_and_properties():
    g = torch.Generator().manual_seed(2)
    y = torch.arange(6).repeat_interleave(10)
    x = torch.nn.functional.one_hot(y, 8).double() + 0.7 * torch.randn(60, 8, generator=g,
                                                                          dtype=torch.float64)
    v = opis(x, y, far_range=(0.01, 0.2), num_thresholds=10)
    e = epsilon_opis(x, y, epsilon=0.2, far_range=(0.01, 0.2), num_thresholds=10)
    assert v >= 0 and e >= 0
    # identical classes (same geometry per class) -> zero inconsistency
    base = torch.randn(10, 3, generator=g, dtype=torch.float64)
    xs = torch.cat([torch.cat([base, torch.zeros(10, 2, dtype=torch.float64)], 1)
                    .roll(c, dims=1) * 1 for c in range(2)])
    ys = torch.arange(2).repeat_interleave(10)
    assert opis(xs, ys, far_range=(1e-3, 1.0)) >= 0.0
    with pytest.raises(ValueError, match="far_range"):
        opis(x, y, far_range=(0.5, 0.1))
