"""Bidirectional repair (model extraction): loop oracle from the formula (fp64), agreement of
the lists, the direction of the repair gradients, victim_relevance and bad inputs."""

from __future__ import annotations

import pytest
import torch

import losslab
from losslab.functional import bidirectional_repair_loss
from losslab.losses.ranking.extraction import victim_relevance

close = torch.testing.assert_close
f64 = torch.float64


def _oracle(scores: list[float], rel: list[float], keep: list[bool], margin: float,
            lam: float) -> float:
    items = [i for i in range(len(scores)) if keep[i]]
    victim = [i for i in items if rel[i] > 0]
    k = len(victim)
    if k == 0:
        return 0.0
    # surrogate top-k: stable order by score (ties: lower index first)
    surrogate = sorted(items, key=lambda i: (-scores[i], i))[:k]
    dist = [max(0.0, margin - (scores[i] - scores[j]))
            for i in victim for j in victim if rel[i] > rel[j]]
    missed = [v for v in victim if v not in surrogate]
    intruders = [u for u in surrogate if u not in victim]
    rep = [max(0.0, margin - (scores[v] - scores[u])) for v in missed for u in intruders]
    mean = lambda xs: sum(xs) / len(xs) if xs else 0.0  # noqa: E731
    return mean(dist) + lam * mean(rep)


def test_oracle_with_padding_and_mean_over_users_with_a_list() -> None:
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(5, 9, generator=g, dtype=f64)
    topk = torch.stack([torch.randperm(9, generator=g)[:4] for _ in range(5)])
    rel = victim_relevance(topk, 9).to(f64)
    rel[4] = 0  # a user without a victim list
    mask = torch.rand(5, 9, generator=g) > 0.15
    for margin, lam in ((1.0, 1.0), (0.3, 2.5), (0.0, 0.0)):
        ref = [_oracle(s, r, k, margin, lam)
               for s, r, k in zip(scores.tolist(), rel.tolist(), mask.tolist())]
        out = bidirectional_repair_loss(scores, rel, mask=mask, margin=margin,
                                        repair_weight=lam, reduction="none")
        close(out, torch.tensor(ref, dtype=f64))
        mean = bidirectional_repair_loss(scores, rel, mask=mask, margin=margin,
                                         repair_weight=lam)
        users = int(((rel > 0) & mask).any(1).sum())
        close(mean, torch.tensor(sum(ref) / users, dtype=f64))


def test_agreeing_lists_have_no_repair_and_zero_loss_when_separated() -> None:
    rel = torch.tensor([[3.0, 2.0, 1.0, 0.0, 0.0]], dtype=f64)
    agree = torch.tensor([[9.0, 6.0, 3.0, 0.0, -3.0]], dtype=f64)
    assert bidirectional_repair_loss(agree, rel) == 0  # victim order kept with margin 3 > 1
    # same top-3 set in a wrong order: only the distillation term
    swapped = torch.tensor([[3.0, 6.0, 9.0, 0.0, -3.0]], dtype=f64)
    close(bidirectional_repair_loss(swapped, rel),
          bidirectional_repair_loss(swapped, rel, repair_weight=0.0))


def test_repair_pushes_missed_items_up_and_intruders_down() -> None:
    rel = torch.tensor([[2.0, 1.0, 0.0, 0.0]], dtype=f64)
    # surrogate top-2 is {0, 2}: item 1 is missed, item 2 intrudes
    s = torch.tensor([[5.0, 0.0, 0.5, -4.0]], dtype=f64, requires_grad=True)
    bidirectional_repair_loss(s, rel, margin=1.0, repair_weight=1.0, reduction="sum").backward()
    assert s.grad is not None
    g_repair = s.grad.clone()
    s.grad = None
    bidirectional_repair_loss(s, rel, margin=1.0, repair_weight=0.0, reduction="sum").backward()
    assert s.grad is not None
    d = g_repair - s.grad
    assert d[0, 1] < 0 and d[0, 2] > 0  # descent raises the missed item, lowers the intruder
    assert d[0, 0] == 0 and d[0, 3] == 0


def test_victim_relevance_and_bad_inputs() -> None:
    rel = victim_relevance(torch.tensor([[4, 0, 2]]), 5)
    close(rel, torch.tensor([[2.0, 0.0, 1.0, 0.0, 3.0]]))
    with pytest.raises(ValueError, match="topk"):
        victim_relevance(torch.tensor([[5]]), 5)
    with pytest.raises(ValueError, match="topk"):
        victim_relevance(torch.tensor([[1.0]]), 5)
    with pytest.raises(ValueError, match="margin"):
        losslab.create("bidirectional_repair", margin=-1.0)
    with pytest.raises(ValueError, match="relevance"):
        bidirectional_repair_loss(torch.zeros(2, 3), torch.zeros(2, 4))
