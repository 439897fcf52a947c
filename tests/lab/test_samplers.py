"""The m-per-class batch sampler of the retrieval task."""

import numpy as np
import pytest

from losslab.lab.samplers import MPerClassSampler


def test_m_per_class_sampler_structure_and_determinism():
    labels = np.repeat(np.arange(10), 5)
    labels[-1] = 9  # class 9 keeps 5
    labels = np.concatenate([labels, [10, 10]])  # class 10 has 2 < m images
    s = MPerClassSampler(labels, m=4, batch_size=16, rng=np.random.default_rng(0))
    for _ in range(50):
        b = s.sample()
        assert b.shape == (16,)
        blocks = labels[b].reshape(4, 4)
        assert (blocks == blocks[:, :1]).all()  # contiguous blocks of one class
        assert np.unique(blocks[:, 0]).size == 4  # distinct classes
        for row, cls in zip(b.reshape(4, 4), blocks[:, 0]):
            if cls != 10:
                assert np.unique(row).size == 4  # without replacement when possible
    a = list(MPerClassSampler(labels, m=4, batch_size=16, rng=np.random.default_rng(3))
             .batches(5))
    c = list(MPerClassSampler(labels, m=4, batch_size=16, rng=np.random.default_rng(3))
             .batches(5))
    assert all((x == y).all() for x, y in zip(a, c))


def test_m_per_class_sampler_errors():
    labels = np.repeat(np.arange(3), 4)
    with pytest.raises(ValueError, match="multiple of m"):
        MPerClassSampler(labels, m=4, batch_size=10, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="only 3 classes"):
        MPerClassSampler(labels, m=2, batch_size=8, rng=np.random.default_rng(0))
