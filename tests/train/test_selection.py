"""CoLoR-Filter, SeTa and USEFUL selections: loop oracles of the rules, and on digits the
samples each paper says they pick (downstream-class samples score highest; SeTa's window moves
from easy to hard clusters; USEFUL's upsampled cluster is the slow-learnable one)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from losslab.train import (
    color_filter_scores,
    color_filter_select,
    kmeans,
    seta_select,
    slow_learnable,
    useful_upsample,
)

from .tasks import digits, minibatches, mlp

f64 = torch.float64


def per_sample_ce(model, x, y):
    with torch.no_grad():
        return F.cross_entropy(model(x), y, reduction="none")


def train(model, x, y, *, epochs, lr=0.1, seed=0):
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    for epoch in range(epochs):
        for idx in minibatches(x.shape[0], 64, 100 * seed + epoch):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model


def auc(scores, positive) -> float:
    pos, neg = scores[positive].tolist(), scores[~positive].tolist()
    wins = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


# ---- CoLoR-Filter ----------------------------------------------------------------------------

def test_color_filter_rule() -> None:
    prior = torch.tensor([2.0, 1.0, 3.0, 0.5, 2.0], dtype=f64)
    cond = torch.tensor([1.0, 1.5, 0.5, 0.5, 1.0], dtype=f64)
    expected = [p - c for p, c in zip(prior.tolist(), cond.tolist())]
    torch.testing.assert_close(color_filter_scores(prior, cond), torch.tensor(expected, dtype=f64))
    # top 3 by reduction: index 2 (2.5), then 0 and 4 (1.0 each, lower index first)
    assert color_filter_select(prior, cond, 3).tolist() == [2, 0, 4]
    with pytest.raises(ValueError, match="k must"):
        color_filter_select(prior, cond, 6)
    with pytest.raises(ValueError, match="same shape"):
        color_filter_scores(prior, cond[:3])


def test_color_filter_ranks_downstream_samples_first_on_digits() -> None:
    xtr, ytr, xte, yte = digits()
    prior = train(mlp(0), xtr[:600], ytr[:600], epochs=4)
    # downstream task: digits 0-2, 60 examples; the conditional model fine-tunes the prior on it
    down = torch.nonzero(ytr[600:] <= 2).flatten()[:60] + 600
    cond = train(copy.deepcopy(prior), xtr[down], ytr[down], epochs=15, lr=0.05)
    pool_x, pool_y = xte, yte  # unseen candidates
    scores = color_filter_scores(per_sample_ce(prior, pool_x, pool_y),
                                 per_sample_ce(cond, pool_x, pool_y))
    target = pool_y <= 2
    assert auc(scores, target) > 0.9
    top = color_filter_select(per_sample_ce(prior, pool_x, pool_y),
                              per_sample_ce(cond, pool_x, pool_y), int(target.sum()))
    assert float(target[top].float().mean()) > 0.8  # base rate 0.3


# ---- k-means and SeTa ------------------------------------------------------------------------

def test_kmeans_finds_separated_groups() -> None:
    g = torch.Generator().manual_seed(0)
    pts = torch.cat([torch.randn(20, 2, generator=g, dtype=f64) * 0.1 + c
                     for c in (0.0, 5.0, 10.0)])
    labels, centres = kmeans(pts, 3)
    for j in range(3):
        assert len(set(labels[20 * j:20 * (j + 1)].tolist())) == 1
    assert sorted(round(float(c)) for c in centres[:, 0]) == [0, 5, 10]
    with pytest.raises(ValueError, match="k must"):
        kmeans(pts, 61)


def oracle_seta(losses, kept, groups_of, epoch, num_groups, window_scale):
    if epoch == 0:
        return sorted(kept)
    window = round(num_groups * window_scale)
    start = epoch % (num_groups - window + 1)
    return sorted(i for i in kept if start <= groups_of[i] < start + window)


@pytest.mark.parametrize("epoch", [0, 1, 3, 5, 6, 7])
def test_seta_window_matches_the_oracle(epoch: int) -> None:
    # 10 well-separated loss levels, 8 samples each (group g has losses around g)
    g = torch.Generator().manual_seed(1)
    group = torch.arange(80) % 10
    losses = group.to(f64) + 0.01 * torch.randn(80, generator=g, dtype=f64)
    sel = seta_select(losses, epoch=epoch, keep_ratio=0.75, num_groups=10, window_scale=0.5,
                      generator=torch.Generator().manual_seed(7))
    kept = torch.randperm(80, generator=torch.Generator().manual_seed(7))[:60].tolist()
    assert sorted(sel.tolist()) == oracle_seta(losses, kept, group.tolist(), epoch, 10, 0.5)


def test_seta_curriculum_moves_from_easy_to_hard_on_digits() -> None:
    xtr, ytr, _, _ = digits()
    model = train(mlp(0), xtr, ytr, epochs=1, lr=0.05)
    losses = per_sample_ce(model, xtr, ytr)
    means = []
    for epoch in range(1, 7):  # 10 groups, window 5: starts 1..5, then 0
        sel = seta_select(losses, epoch=epoch, keep_ratio=0.8, num_groups=10,
                          generator=torch.Generator().manual_seed(0))
        means.append(float(losses[sel].mean()))
    assert means[:5] == sorted(means[:5]), means  # harder clusters as the window slides
    assert means[5] < means[0]  # wraps around to the easiest window
    kept = torch.randperm(xtr.shape[0], generator=torch.Generator().manual_seed(0))[:960]
    sel = seta_select(losses, epoch=1, keep_ratio=0.8, generator=torch.Generator().manual_seed(0))
    # drops the easiest and the hardest samples of the kept ones
    assert float(losses[sel].min()) > float(losses[kept].min())
    assert float(losses[sel].max()) < float(losses[kept].max())
    assert len(seta_select(losses, epoch=0, keep_ratio=0.8)) == 960
    with pytest.raises(ValueError, match="keep_ratio"):
        seta_select(losses, epoch=1, keep_ratio=0.0)


# ---- USEFUL ----------------------------------------------------------------------------------

def test_useful_rule_on_two_clusters() -> None:
    # class 0: outputs around (5, 0) with low loss, and around (0, 0) with high loss
    outputs = torch.tensor([[5.0, 0.0], [5.1, 0.0], [0.0, 0.1], [0.1, 0.0], [3.0, 3.0]],
                           dtype=f64)
    labels = torch.tensor([0, 0, 0, 0, 1])
    losses = torch.tensor([0.1, 0.1, 1.5, 1.4, 0.7], dtype=f64)
    assert slow_learnable(outputs, labels, losses).tolist() == [False, False, True, True, False]
    assert useful_upsample(outputs, labels, losses, factor=3).tolist() == [0, 1, 2, 3, 4,
                                                                          2, 3, 2, 3]
    assert useful_upsample(outputs, labels, losses, factor=1).tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="factor"):
        useful_upsample(outputs, labels, losses, factor=0)
    with pytest.raises(ValueError, match="outputs"):
        useful_upsample(outputs[:3], labels, losses)


def test_useful_upsamples_the_slow_learnable_examples_on_digits() -> None:
    xtr, ytr, _, _ = digits()
    model = train(mlp(0), xtr, ytr, epochs=2, lr=0.1)  # early: 11% training error
    with torch.no_grad():
        out = model(xtr)
    losses = F.cross_entropy(out, ytr, reduction="none")
    slow = slow_learnable(out, ytr, losses)
    wrong = out.argmax(1) != ytr
    assert 0.05 < float(slow.float().mean()) < 0.95
    # the upsampled cluster is the one not yet learned: higher loss, far more errors
    # (measured: mean loss 0.75 vs 0.23, error rate 25% vs 4%)
    assert float(losses[slow].mean()) > 1.5 * float(losses[~slow].mean())
    assert float(wrong[slow].float().mean()) > 2 * float(wrong[~slow].float().mean())
    idx = useful_upsample(out, ytr, losses)
    assert idx.shape[0] == xtr.shape[0] + int(slow.sum())
    assert torch.equal(torch.bincount(idx, minlength=xtr.shape[0]), 1 + slow.long())
