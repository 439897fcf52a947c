"""ClusterNet's semi-supervised clustering loss against an explicit-loop oracle of its formula,
and the properties the formula implies (must-link zero for equal posteriors, cannot-link zero
beyond the margin, unlabelled samples only in the k-means term)."""

from __future__ import annotations

import math

import pytest
import torch

import losslab
from losslab.losses.metric_learning.clusternet import cluster_assignments, clusternet_loss


def _inputs(seed: int = 0, n: int = 9, k: int = 3, d: int = 4):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, d, generator=g, dtype=torch.float64)
    mu = torch.randn(k, d, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=g)
    y[::3] = -1  # a third of the batch unlabelled
    return z, y, mu


def oracle(z, y, mu, *, margin=2.0, alpha=1.0, ignore=-1):
    """(mean, sum, per-sample) with explicit loops over samples, clusters and pairs."""
    n, k = len(z), len(mu)
    post = []
    for i in range(n):
        logits = [-sum((a - b) ** 2 for a, b in zip(z[i], mu[c])) for c in range(k)]
        top = max(logits)
        e = [math.exp(v - top) for v in logits]
        post.append([v / sum(e) for v in e])
    kmeans = [sum(post[i][c] * sum((a - b) ** 2 for a, b in zip(z[i], mu[c]))
                  for c in range(k)) for i in range(n)]
    per = [0.0] * n
    count = 0
    for i in range(n):
        for j in range(n):
            if i == j or y[i] == ignore or y[j] == ignore:
                continue
            kl = sum(post[i][c] * (math.log(post[i][c]) - math.log(post[j][c]))
                     for c in range(k))
            per[i] += kl if y[i] == y[j] else max(0.0, margin - kl)
            count += 1
    pair_mean = sum(per) / count if count else 0.0
    mean = pair_mean + alpha * sum(kmeans) / n
    total = sum(per) + alpha * sum(kmeans)
    return mean, total, [p + alpha * c for p, c in zip(per, kmeans)]


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("margin,alpha", [(2.0, 1.0), (0.5, 0.0), (5.0, 0.3)])
def test_clusternet_matches_the_loop_oracle(seed: int, margin: float, alpha: float) -> None:
    z, y, mu = _inputs(seed)
    mean, total, per = oracle(z.tolist(), y.tolist(), mu.tolist(), margin=margin, alpha=alpha)
    got_mean = clusternet_loss(z, y, mu, margin=margin, alpha=alpha)
    assert got_mean.item() == pytest.approx(mean, rel=1e-12)
    got_sum = clusternet_loss(z, y, mu, margin=margin, alpha=alpha, reduction="sum")
    assert got_sum.item() == pytest.approx(total, rel=1e-12)
    got = clusternet_loss(z, y, mu, margin=margin, alpha=alpha, reduction="none").tolist()
    assert got == pytest.approx(per, rel=1e-12, abs=1e-12)


def test_must_link_is_zero_for_equal_posteriors_and_cannot_link_beyond_the_margin() -> None:
    mu = torch.tensor([[0.0, 0.0], [6.0, 0.0]], dtype=torch.float64)
    z = torch.tensor([[0.1, 0.2], [0.1, 0.2], [6.0, 0.1]], dtype=torch.float64)
    # a must-link pair with identical posteriors: no pair term (KL = 0)
    same = clusternet_loss(z[:2], torch.tensor([4, 4]), mu, alpha=0.0, reduction="sum")
    assert same.item() == pytest.approx(0.0, abs=1e-14)
    # a cannot-link pair in different, far clusters: KL far above m = 2, no hinge
    apart = clusternet_loss(z[1:], torch.tensor([4, 5]), mu, alpha=0.0, reduction="sum")
    assert apart.item() == 0.0
    # the same pair declared must-link pays the symmetric KL
    post = cluster_assignments(z[1:], mu)
    kl = (post[0] * (post[0] / post[1]).log()).sum() + (post[1] * (post[1] / post[0]).log()).sum()
    must = clusternet_loss(z[1:], torch.tensor([4, 4]), mu, alpha=0.0, reduction="sum")
    torch.testing.assert_close(must, kl)


def test_unlabelled_samples_enter_only_the_kmeans_term() -> None:
    z, _, mu = _inputs(1)
    none = torch.full((z.shape[0],), -1)
    d = torch.cdist(z, mu) ** 2
    distortion = (torch.softmax(-d, 1) * d).sum(1)
    torch.testing.assert_close(clusternet_loss(z, none, mu, alpha=2.0), 2.0 * distortion.mean())
    assert clusternet_loss(z, none, mu, alpha=0.0).item() == 0.0
    # permuting the batch permutes the per-sample values (pairs are symmetric in the batch)
    z, y, mu = _inputs(2)
    perm = torch.randperm(z.shape[0], generator=torch.Generator().manual_seed(0))
    a = clusternet_loss(z, y, mu, reduction="none")
    b = clusternet_loss(z[perm], y[perm], mu, reduction="none")
    torch.testing.assert_close(a[perm], b)


def test_module_owns_the_centres_and_trains_them() -> None:
    torch.manual_seed(0)
    m = losslab.create("clusternet", num_classes=3, embedding_dim=4).double()
    centres = m.get_parameter("proxies")
    assert tuple(centres.shape) == (3, 4)
    z, y, _ = _inputs(0)
    loss = m(z.requires_grad_(True), y)
    loss.backward()
    assert centres.grad is not None and bool(centres.grad.abs().sum() > 0)
    torch.testing.assert_close(loss, clusternet_loss(z, y, centres))
    with pytest.raises(ValueError, match="ref_embeddings"):
        m(z, y, ref_embeddings=z, ref_labels=y)
    with pytest.raises(ValueError, match="margin"):
        losslab.create("clusternet", num_classes=3, embedding_dim=4, margin=-1.0)
