"""The ranking metrics against two more IR evaluation packages on the same run files: ranx
(numba; its first call compiles for minutes on a loaded machine, so the test is ``slow``) and
ir-measures (trec_eval's and its own measure implementations). Definitions: ranx ``ndcg`` is
the linear gain (Jarvelin & Kekalainen), ``ndcg_burges`` the exponential one; ir-measures'
``nDCG`` is trec_eval's linear ``ndcg_cut``. Lists without a relevant item are left out (the
packages skip or reject them)."""

from __future__ import annotations

import pytest
import torch

from losslab.metrics import (
    average_precision,
    has_relevant,
    ndcg_at_k,
    precision_at_k,
    recall_at_k,
    reciprocal_rank,
)


def _run(seed: int = 0, Q: int = 8, L: int = 15):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(Q, L, generator=g, dtype=torch.float64)  # distinct scores
    r = torch.randint(0, 4, (Q, L), generator=g).to(torch.float64)
    r[r == 1] = 0
    m = torch.ones(Q, L, dtype=torch.bool)
    m[1, 9:] = False
    m[3, ::4] = False
    r[5] = 0  # no relevant item: left out
    return s, r, m


def _files(s: torch.Tensor, r: torch.Tensor, m: torch.Tensor
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


def _ours(s: torch.Tensor, r: torch.Tensor, m: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
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
    s, r, m = _run(1)
    qrels, run, qs = _files(s, r, m)
    names = {"ndcg_linear": f"ndcg@{k}", "ndcg_exp": f"ndcg_burges@{k}",
             "recall": f"recall@{k}", "precision": f"precision@{k}", "mrr": "mrr",
             "map": "map"}
    # ranx sorts the run's query ids; ours are in the order of qs, which sorts the same way
    res = ranx.evaluate(ranx.Qrels(qrels), ranx.Run(run), list(names.values()),
                        return_mean=False)
    order = sorted(range(len(qs)), key=lambda j: f"q{qs[j]}")
    for ours_name, v in _ours(s, r, m, k).items():
        got = [float(v[qs[j]]) for j in order]
        assert got == pytest.approx(list(res[names[ours_name]]), abs=1e-9), ours_name


@pytest.mark.parametrize("k", [3, 10])
def test_metrics_agree_with_ir_measures(k: int) -> None:
    irm = pytest.importorskip("ir_measures")
    s, r, m = _run(2)
    qrels, run, qs = _files(s, r, m)
    measures = {"ndcg_linear": irm.nDCG @ k, "recall": irm.R @ k, "precision": irm.P @ k,
                "mrr": irm.RR, "map": irm.AP}
    res: dict[tuple[str, str], float] = {}
    for row in irm.iter_calc(list(measures.values()), qrels, run):
        res[(row.query_id, str(row.measure))] = row.value
    ours = _ours(s, r, m, k)
    for name, measure in measures.items():
        for q in qs:
            assert float(ours[name][q]) == pytest.approx(res[(f"q{q}", str(measure))],
                                                         abs=1e-4), (name, q)
