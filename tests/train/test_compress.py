"""Tests of losslab.train.compress: nested dropout and Co-teaching (Chen et al., arXiv
2206.13140, official code yingyichen-cyy/Nested-Co-teaching).

Oracles: the official ``GaussianDist`` and ``rateSchedule`` (numpy-free re-statements in Python
loops), the small-loss selection by sorting in Python. Properties: nested dropout keeps a
prefix, so feature i survives with probability P(k >= i), which decreases in i (the ordering
of features by importance); the empirical k follows the distribution; Co-teaching trains each
network on its peer's small-loss samples, so a sample both networks find hard (a flipped
label) never reaches either loss.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from losslab.train import (
    NestedDropout,
    coteaching_forget_rate,
    coteaching_loss,
    coteaching_select,
    nested_dropout,
    nested_dropout_probs,
)


def test_nested_probs_match_the_official_gaussian_dist() -> None:
    for dim, mu, std in ((10, 0.0, 3.0), (64, 5.0, 20.0), (1, 0.0, 1.0)):
        raw = [math.exp(-(((i - mu) / std) ** 2)) for i in range(1, dim + 1)]
        ref = torch.tensor([r / sum(raw) for r in raw], dtype=torch.float64)
        torch.testing.assert_close(nested_dropout_probs(dim, std=std, mu=mu), ref)


def test_nested_dropout_keeps_a_prefix_and_follows_the_distribution() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 8, generator=g) + 5.0  # no zero features
    p = nested_dropout_probs(8, std=3.0)
    counts = torch.zeros(8)
    draws = 4000
    for _ in range(draws):
        out, k = nested_dropout(x, std=3.0, generator=g)
        assert 1 <= k <= 8
        torch.testing.assert_close(out[:, :k], x[:, :k])
        assert torch.all(out[:, k:] == 0)
        counts[k - 1] += 1
    freq = counts / draws
    assert torch.all((freq - p.float()).abs() < 4 * torch.sqrt(p.float() * (1 - p.float()) / draws)
                     + 1e-3)
    # survival of feature i: P(k >= i), decreasing
    survive = torch.flip(torch.cumsum(torch.flip(p, [0]), 0), [0])
    assert torch.all(survive[1:] < survive[:-1])


def test_nested_dropout_module_train_and_eval() -> None:
    x = torch.randn(4, 6) + 3
    m = NestedDropout(std=2.0, keep=3)
    y = m(x)
    assert m.last_k is not None and torch.all(y[:, m.last_k:] == 0)
    m.eval()
    out = m(x)
    torch.testing.assert_close(out[:, :3], x[:, :3])
    assert torch.all(out[:, 3:] == 0)
    assert torch.equal(NestedDropout(std=2.0).eval()(x), x)
    with pytest.raises(ValueError, match="std"):
        NestedDropout(std=0.0)
    with pytest.raises(ValueError, match="keep"):
        NestedDropout(std=1.0, keep=0)


def test_forget_rate_schedule_is_the_official_linspace() -> None:
    tau, n, epochs = 0.4, 5, 12
    sched = [tau] * epochs
    for i in range(n):
        sched[i] = tau * i / (n - 1)  # numpy.linspace(0, tau, n)
    for e in range(1, epochs + 1):
        assert coteaching_forget_rate(e, forget_rate=tau, num_gradual=n) == pytest.approx(
            sched[e - 1])
    assert coteaching_forget_rate(1, forget_rate=0.3, num_gradual=1) == 0.0
    assert coteaching_forget_rate(2, forget_rate=0.3, num_gradual=1) == 0.3
    with pytest.raises(ValueError, match="epoch"):
        coteaching_forget_rate(0, forget_rate=0.2)


def test_selection_oracle() -> None:
    g = torch.Generator().manual_seed(1)
    la, lb = torch.rand(10, generator=g), torch.rand(10, generator=g)
    ka, kb = coteaching_select(la, lb, forget_rate=0.35)
    keep = int(0.65 * 10)
    ref_a = sorted(range(10), key=lambda i: (float(la[i]), i))[:keep]
    ref_b = sorted(range(10), key=lambda i: (float(lb[i]), i))[:keep]
    assert ka.tolist() == ref_a and kb.tolist() == ref_b
    with pytest.raises(ValueError, match="forget_rate"):
        coteaching_select(la, lb, forget_rate=1.0)
    with pytest.raises(ValueError, match="one shape"):
        coteaching_select(la, lb[:-1], forget_rate=0.1)


def test_coteaching_loss_exchanges_and_drops_the_hard_sample() -> None:
    g = torch.Generator().manual_seed(2)
    target = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    la = torch.randn(8, 3, generator=g)
    lb = torch.randn(8, 3, generator=g)
    for logits in (la, lb):  # both networks fit the first 7 samples; sample 7's label is wrong
        logits[torch.arange(8), target] += 4.0
        logits[7, 1] -= 12.0
    a, b = la.clone().requires_grad_(True), lb.clone().requires_grad_(True)
    loss_a, loss_b = coteaching_loss(a, b, target, forget_rate=0.2)
    ce_a = F.cross_entropy(la, target, reduction="none")
    ce_b = F.cross_entropy(lb, target, reduction="none")
    keep_a, keep_b = coteaching_select(ce_a, ce_b, forget_rate=0.2)
    assert 7 not in keep_a.tolist() and 7 not in keep_b.tolist()
    torch.testing.assert_close(loss_a, ce_a[keep_b].mean())  # A learns from B's choice
    torch.testing.assert_close(loss_b, ce_b[keep_a].mean())
    (loss_a + loss_b).backward()
    assert a.grad is not None and b.grad is not None
    assert torch.all(a.grad[7] == 0) and torch.all(b.grad[7] == 0)
    # forget rate 0: plain cross-entropy for both
    l0a, l0b = coteaching_loss(la, lb, target, forget_rate=0.0)
    torch.testing.assert_close(l0a, F.cross_entropy(la, target))
    torch.testing.assert_close(l0b, F.cross_entropy(lb, target))
