"""Tests of losslab.train.sensitivity (clustering-based sensitivity sampling, arXiv 2402.17327;
written from the abstract).

Oracle: the proxy loss l(r(x)) + lam ||e_x - e_r(x)||^z and its probabilities in Python loops.
Properties: the weighted estimate is unbiased for the mean loss (its exact expectation, summed
over the sampling distribution, equals the mean); it is exact when the loss equals its proxy;
for a Hölder-continuous loss the proxy upper-bounds the loss, so every importance ratio
loss / (n p) is at most the mean proxy (the bounded-variance argument of sensitivity sampling);
the loss is evaluated only at the k representatives.
"""

from __future__ import annotations

import math

import pytest
import torch

from losslab.train import (
    cluster_representatives,
    sensitivity_probabilities,
    sensitivity_sample,
)

D = torch.float64


def blobs(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[0.0, 0.0], [6.0, 0.0], [0.0, 6.0]], dtype=D)
    return torch.cat([c + 0.7 * torch.randn(10, 2, generator=g, dtype=D) for c in centres])


def holder_loss(x: torch.Tensor) -> torch.Tensor:
    """A loss with |l(x) - l(y)| <= 1 * ||x - y|| (1-Lipschitz: Hölder with lam = 1, z = 1)."""
    return (x - torch.tensor([1.0, 2.0], dtype=D)).norm(dim=1) + 0.5


def test_representatives_are_cluster_members_nearest_their_centre() -> None:
    x = blobs()
    labels, reps = cluster_representatives(x, 3)
    assert sorted(labels.unique().tolist()) == [0, 1, 2]
    for c in range(3):
        members = (labels == c).nonzero().flatten()
        centre = x[members].mean(0)
        nearest = members[(x[members] - centre).norm(dim=1).argmin()]
        assert int(reps[c]) == int(nearest)


def test_probabilities_oracle() -> None:
    x = blobs(1)
    labels, reps = cluster_representatives(x, 3)
    rep_loss = torch.tensor([0.2, 1.5, 0.7], dtype=D)
    for lam, z in ((1.0, 2.0), (0.3, 1.0), (0.0, 2.0)):
        proxy = []
        for i in range(x.shape[0]):
            r = int(reps[int(labels[i])])
            dist = math.dist(x[i].tolist(), x[r].tolist())
            proxy.append(float(rep_loss[int(labels[i])]) + lam * dist ** z)
        ref = torch.tensor([p / sum(proxy) for p in proxy], dtype=D)
        out = sensitivity_probabilities(x, labels, reps, rep_loss, lam=lam, z=z)
        torch.testing.assert_close(out, ref)


def test_estimate_is_unbiased_and_ratios_are_bounded_for_a_holder_loss() -> None:
    x = blobs(2)
    n = x.shape[0]
    labels, reps = cluster_representatives(x, 3)
    loss = holder_loss(x)
    p = sensitivity_probabilities(x, labels, reps, loss[reps], lam=1.0, z=1.0)
    # E[sum_j w_j l(x_j)] = m * sum_x p_x * l(x) / (n m p_x) = mean loss, for any m
    expectation = sum(float(p[i]) * float(loss[i]) / (n * float(p[i])) for i in range(n))
    assert expectation == pytest.approx(float(loss.mean()), rel=1e-12)
    proxy = loss[reps][labels] + (x - x[reps][labels]).norm(dim=1)
    assert torch.all(proxy >= loss - 1e-12)  # Hölder: the proxy bounds the loss
    ratios = loss / (n * p)
    assert torch.all(ratios <= proxy.mean() + 1e-12)


def test_exact_when_the_loss_equals_its_proxy() -> None:
    x = blobs(3)
    labels, reps = cluster_representatives(x, 3)
    rep_loss = torch.tensor([0.4, 0.9, 2.0], dtype=D)
    proxy = rep_loss[labels] + 0.5 * (x - x[reps][labels]).norm(dim=1).pow(2)
    calls: list[int] = []

    def loss_fn(idx: torch.Tensor) -> torch.Tensor:
        calls.append(idx.numel())
        return proxy[idx]  # at a representative the proxy is its own loss

    g = torch.Generator().manual_seed(0)
    idx, w = sensitivity_sample(x, 7, k=3, loss_fn=loss_fn, lam=0.5, z=2.0, generator=g)
    assert calls == [3]  # the expensive loss only at the representatives
    assert idx.shape == (7,) and w.shape == (7,)
    torch.testing.assert_close((w * proxy[idx]).sum(), proxy.mean())


def test_sampling_is_seeded_and_bad_input_raises() -> None:
    x = blobs()

    def loss_fn(idx: torch.Tensor) -> torch.Tensor:
        return holder_loss(x)[idx]

    a = sensitivity_sample(x, 5, k=3, loss_fn=loss_fn, generator=torch.Generator().manual_seed(4))
    b = sensitivity_sample(x, 5, k=3, loss_fn=loss_fn, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    labels, reps = cluster_representatives(x, 3)
    with pytest.raises(ValueError, match="representative_loss"):
        sensitivity_probabilities(x, labels, reps, -torch.ones(3, dtype=D))
    with pytest.raises(ValueError, match="assignment"):
        sensitivity_probabilities(x, labels + 3, reps, torch.ones(3, dtype=D))
    with pytest.raises(ValueError, match="num_samples"):
        sensitivity_sample(x, 0, k=3, loss_fn=loss_fn)
    with pytest.raises(ValueError, match="loss_fn"):
        sensitivity_sample(x, 2, k=3, loss_fn=lambda idx: torch.ones(5))
    with pytest.raises(ValueError, match="embeddings"):
        cluster_representatives(torch.ones(4), 2)
