"""Episode sampling and the nearest-prototype accuracy of the few-shot evaluation."""

import numpy as np
import pytest
import torch

from losslab.lab.episodes import EpisodeSampler, prototype_accuracy


def test_sampler():
    labels = np.repeat(np.arange(10), 6)
    labels[-3:] = 99  # class 99: 3 images, too few for 2+2 -> never drawn
    s = EpisodeSampler(labels, way=4, shot=2, query=2, rng=np.random.default_rng(0))
    b = s.sample(50)
    assert b.support.shape == (50, 8) and b.query.shape == (50, 8)
    for e in range(50):
        sup, qry = labels[b.support[e]].reshape(4, 2), labels[b.query[e]].reshape(4, 2)
        assert (sup == sup[:, :1]).all() and (qry == sup[:, :1]).all()  # class-major
        assert len(set(sup[:, 0])) == 4 and 99 not in sup
        assert len(set(b.support[e]) | set(b.query[e])) == 16  # no image reused
    again = EpisodeSampler(labels, way=4, shot=2, query=2, rng=np.random.default_rng(0))
    assert np.array_equal(again.sample(50).support, b.support)
    with pytest.raises(ValueError, match="need 12 classes"):
        EpisodeSampler(labels, way=12, shot=1, query=1, rng=np.random.default_rng(0))


def test_prototype_accuracy_matches_loop():
    g = torch.Generator().manual_seed(0)
    labels = np.repeat(np.arange(6), 5)
    emb = torch.randn(30, 4, generator=g) + torch.from_numpy(labels).float()[:, None]
    s = EpisodeSampler(labels, way=3, shot=2, query=3, rng=np.random.default_rng(1))
    b = s.sample(7)
    row_of = np.arange(30)
    got = prototype_accuracy(emb, row_of, b, chunk=3)
    for e in range(7):
        protos = [emb[b.support[e][c * 2:(c + 1) * 2]].mean(0) for c in range(3)]
        correct = 0
        for i, qi in enumerate(b.query[e]):
            d = [float(((emb[qi] - p) ** 2).sum()) for p in protos]
            correct += int(np.argmin(d) == i // 3)
        assert got[e] == pytest.approx(100 * correct / 9)
