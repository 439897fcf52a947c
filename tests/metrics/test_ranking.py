"""Ranking metrics: exact against brute-force references written from the definitions, and
cross-checked against pytrec_eval (trec_eval's measures, dev dependency) and torchmetrics'
retrieval metrics on the same run (where the definitions match: linear-gain NDCG, and
positive predictions, since torchmetrics' AP ignores relevant items scored <= 0); both skip
cleanly when not installed."""

from __future__ import annotations

import math

import pytest
import torch

from losslab.metrics import (
    auc_per_list,
    average_precision,
    has_relevant,
    ndcg_at_k,
    precision_at_k,
    ranking_metrics,
    recall_at_k,
    reciprocal_rank,
)


def _run(seed: int = 0, Q: int = 6, L: int = 12):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(Q, L, generator=g, dtype=torch.float64)  # distinct scores (no ties)
    r = torch.randint(0, 4, (Q, L), generator=g).to(torch.float64)
    r[r == 1] = 0  # sparser relevance
    m = torch.ones(Q, L, dtype=torch.bool)
    m[1, 7:] = False
    m[2, ::3] = False
    r[4] = 0  # a list without a relevant item
    return s, r, m


def _ranked(s, r, m, q):
    it = [i for i in range(s.shape[1]) if m[q, i]]
    order = sorted(it, key=lambda i: -float(s[q, i]))
    return [float(r[q, i]) for i in order]


def _brute(s, r, m, q, k):
    rel = _ranked(s, r, m, q)
    n_rel = sum(1 for x in rel if x > 0)
    top = rel[:k]
    out = {}
    for gain in ("exp", "linear"):
        def G(x: float, gain: str = gain) -> float:
            return (2 ** x - 1 if gain == "exp" else x) if x > 0 else 0.0
        dcg = sum(G(x) / math.log2(i + 2) for i, x in enumerate(top))
        idcg = sum(G(x) / math.log2(i + 2) for i, x in enumerate(sorted(rel, reverse=True)[:k]))
        out[f"ndcg_{gain}"] = dcg / idcg if idcg > 0 else 0.0
    first = next((i + 1 for i, x in enumerate(rel) if x > 0), None)
    out["rr"] = 1 / first if first else 0.0
    hits, ap = 0, 0.0
    for i, x in enumerate(rel):
        if x > 0:
            hits += 1
            ap += hits / (i + 1)
    out["ap"] = ap / n_rel if n_rel else 0.0
    h = sum(1 for x in top if x > 0)
    out["recall"] = h / n_rel if n_rel else 0.0
    out["precision"] = h / k
    pos = [float(s[q, i]) for i in range(s.shape[1]) if m[q, i] and r[q, i] > 0]
    neg = [float(s[q, i]) for i in range(s.shape[1]) if m[q, i] and r[q, i] <= 0]
    pairs = [(p > n) + 0.5 * (p == n) for p in pos for n in neg]
    out["auc"] = sum(pairs) / len(pairs) if pairs else 0.0
    return out


@pytest.mark.parametrize("k", [1, 3, 5, 20])
def test_metrics_match_brute_force(k: int) -> None:
    s, r, m = _run()
    want = [_brute(s, r, m, q, k) for q in range(6)]

    def col(name: str) -> torch.Tensor:
        return torch.tensor([w[name] for w in want], dtype=torch.float64)

    torch.testing.assert_close(ndcg_at_k(s, r, k=k, mask=m), col("ndcg_exp"))
    torch.testing.assert_close(ndcg_at_k(s, r, k=k, mask=m, gain="linear"), col("ndcg_linear"))
    torch.testing.assert_close(reciprocal_rank(s, r, mask=m), col("rr"))
    torch.testing.assert_close(average_precision(s, r, mask=m), col("ap"))
    torch.testing.assert_close(recall_at_k(s, r, k=k, mask=m), col("recall"))
    torch.testing.assert_close(precision_at_k(s, r, k=k, mask=m), col("precision"))
    torch.testing.assert_close(auc_per_list(s, r, mask=m), col("auc"))
    assert has_relevant(r, m).tolist() == [w["ap"] > 0 for w in want]
    out = ranking_metrics(s, r, mask=m, k=(k,))
    assert set(out) == {f"ndcg@{k}", "mrr", "map", f"recall@{k}", f"precision@{k}"}


def test_metrics_are_one_for_the_ideal_ranking_and_handle_ties_by_position() -> None:
    r = torch.tensor([[3.0, 2.0, 0.0, 1.0, 0.0]])
    s = r.clone()
    s[0, 3] = 1.5
    assert float(ndcg_at_k(s, r)) == pytest.approx(1.0)
    assert float(average_precision(s, r)) == pytest.approx(1.0)
    assert float(auc_per_list(s, r)) == 1.0
    flat = torch.zeros(1, 5)
    # all tied: position order, so the first item (relevant) is ranked first
    assert float(reciprocal_rank(flat, r)) == 1.0
    assert float(auc_per_list(flat, r)) == 0.5
    with pytest.raises(ValueError, match="k must"):
        ndcg_at_k(s, r, k=0)
    with pytest.raises(ValueError, match="gain"):
        ndcg_at_k(s, r, gain="log")
    with pytest.raises(ValueError, match="metrics"):
        ranking_metrics(s, r, metrics=("ndcg", "err"))


def _pytrec(s, r, m, measures):
    pytrec_eval = pytest.importorskip("pytrec_eval")
    qrel, run = {}, {}
    for q in range(s.shape[0]):
        items = [i for i in range(s.shape[1]) if m[q, i]]
        qrel[f"q{q}"] = {f"d{i:03d}": int(r[q, i]) for i in items}
        run[f"q{q}"] = {f"d{i:03d}": float(s[q, i]) for i in items}
    return pytrec_eval.RelevanceEvaluator(qrel, measures).evaluate(run)


def test_metrics_agree_with_pytrec_eval() -> None:
    s, r, m = _run(1)
    res = _pytrec(s, r, m, {"ndcg_cut.5,10", "recip_rank", "map", "recall.5,10", "P.5,10"})
    qs = [q for q in range(6) if has_relevant(r, m)[q]]  # trec_eval needs a relevant item
    for k in (5, 10):
        ours = {f"ndcg_cut_{k}": ndcg_at_k(s, r, k=k, mask=m, gain="linear"),
                f"recall_{k}": recall_at_k(s, r, k=k, mask=m),
                f"P_{k}": precision_at_k(s, r, k=k, mask=m)}
        for name, v in ours.items():
            for q in qs:
                assert float(v[q]) == pytest.approx(res[f"q{q}"][name], abs=1e-4), (name, q)
    rr, ap = reciprocal_rank(s, r, mask=m), average_precision(s, r, mask=m)
    for q in qs:
        assert float(rr[q]) == pytest.approx(res[f"q{q}"]["recip_rank"], abs=1e-4)
        assert float(ap[q]) == pytest.approx(res[f"q{q}"]["map"], abs=1e-4)


def test_metrics_agree_with_torchmetrics_retrieval() -> None:
    F = pytest.importorskip("torchmetrics.functional.retrieval")
    s, r, _ = _run(2)
    s = torch.sigmoid(s)  # torchmetrics 1.9 AP counts only items with preds > 0 as hits
    for q in range(6):
        if not bool((r[q] > 0).any()):
            continue
        x, y = s[q], r[q]
        yb = (y > 0).long()
        assert float(ndcg_at_k(s[q:q + 1], r[q:q + 1], k=5, gain="linear")) == pytest.approx(
            float(F.retrieval_normalized_dcg(x, y, top_k=5)), abs=1e-6)
        assert float(reciprocal_rank(s[q:q + 1], r[q:q + 1])) == pytest.approx(
            float(F.retrieval_reciprocal_rank(x, yb)), abs=1e-6)
        assert float(average_precision(s[q:q + 1], r[q:q + 1])) == pytest.approx(
            float(F.retrieval_average_precision(x, yb)), abs=1e-6)
        assert float(recall_at_k(s[q:q + 1], r[q:q + 1], k=4)) == pytest.approx(
            float(F.retrieval_recall(x, yb, top_k=4)), abs=1e-6)
        assert float(precision_at_k(s[q:q + 1], r[q:q + 1], k=4)) == pytest.approx(
            float(F.retrieval_precision(x, yb, top_k=4)), abs=1e-6)


# ---- cross-check against the IR evaluation packages (ranx, ir-measures) ----
# The ranking metrics against two more IR evaluation packages on the same run files: ranx
# (numba; its first call compiles for minutes on a loaded machine, so the test is ``slow``) and
# ir-measures (trec_eval's and its own measure implementations). Definitions: ranx ``ndcg`` is
# the linear gain (Jarvelin & Kekalainen), ``ndcg_burges`` the exponential one; ir-measures'
# ``nDCG`` is trec_eval's linear ``ndcg_cut``. Lists without a relevant item are left out (the
# packages skip or reject them).

def _ir_run(seed: int = 0, Q: int = 8, L: int = 15):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(Q, L, generator=g, dtype=torch.float64)  # distinct scores
    r = torch.randint(0, 4, (Q, L), generator=g).to(torch.float64)
    r[r == 1] = 0
    m = torch.ones(Q, L, dtype=torch.bool)
    m[1, 9:] = False
    m[3, ::4] = False
    r[5] = 0  # no relevant item: left out
    return s, r, m


def _ir_files(s: torch.Tensor, r: torch.Tensor, m: torch.Tensor
           ) -> tuple[dict[str, dict[str, int]], dict[str, dict[str, float]], list[int]]:
    keep = has_relevant(r, m)
    qrels: dict[str, dict[str, int]] = {}
    run: dict[str, dict[str, float]] = {}
    qs = [q for q in range(s.shape[0]) if keep[q]]
    for q in qs:
        items = [i for i in range(s.shape[1]) if m[q, i]]
        qrels[f"q{q}"] = {f"d{i:03d}": int(r[q, i]) for i in items}
        run[f"q{q}"] = {f"d{i:03d}": float(s[q, i]) for i in items}
    return qrels, run, qs


def _ir_ours(s: torch.Tensor, r: torch.Tensor, m: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
    return {
        "ndcg_linear": ndcg_at_k(s, r, k=k, mask=m, gain="linear"),
        "ndcg_exp": ndcg_at_k(s, r, k=k, mask=m, gain="exp"),
        "recall": recall_at_k(s, r, k=k, mask=m),
        "precision": precision_at_k(s, r, k=k, mask=m),
        "mrr": reciprocal_rank(s, r, mask=m),
        "map": average_precision(s, r, mask=m),
    }


@pytest.mark.slow
@pytest.mark.parametrize("k", [3, 10])
def test_metrics_agree_with_ranx(k: int) -> None:
    ranx = pytest.importorskip("ranx")
    s, r, m = _ir_run(1)
    qrels, run, qs = _ir_files(s, r, m)
    names = {"ndcg_linear": f"ndcg@{k}", "ndcg_exp": f"ndcg_burges@{k}",
             "recall": f"recall@{k}", "precision": f"precision@{k}", "mrr": "mrr",
             "map": "map"}
    # ranx sorts the run's query ids; ours are in the order of qs, which sorts the same way
    res = ranx.evaluate(ranx.Qrels(qrels), ranx.Run(run), list(names.values()),
                        return_mean=False)
    order = sorted(range(len(qs)), key=lambda j: f"q{qs[j]}")
    for ours_name, v in _ir_ours(s, r, m, k).items():
        got = [float(v[qs[j]]) for j in order]
        assert got == pytest.approx(list(res[names[ours_name]]), abs=1e-9), ours_name


@pytest.mark.parametrize("k", [3, 10])
def test_metrics_agree_with_ir_measures(k: int) -> None:
    irm = pytest.importorskip("ir_measures")
    s, r, m = _ir_run(2)
    qrels, run, qs = _ir_files(s, r, m)
    measures = {"ndcg_linear": irm.nDCG @ k, "recall": irm.R @ k, "precision": irm.P @ k,
                "mrr": irm.RR, "map": irm.AP}
    res: dict[tuple[str, str], float] = {}
    for row in irm.iter_calc(list(measures.values()), qrels, run):
        res[(row.query_id, str(row.measure))] = row.value
    ours = _ir_ours(s, r, m, k)
    for name, measure in measures.items():
        for q in qs:
            assert float(ours[name][q]) == pytest.approx(res[(f"q{q}", str(measure))],
                                                         abs=1e-4), (name, q)
