"""Label-noise models of losslab.lab.noise."""

from __future__ import annotations

import numpy as np
import pytest

from losslab.lab.data.classification import load_classification_data
from losslab.lab.noise import (
    ASYMMETRIC_MAPPINGS,
    apply_noise,
    asymmetric_noise,
    parse_noise,
    stream_seed,
    symmetric_noise,
)


def labels(n=20000, c=10, seed=0):
    return np.random.default_rng(seed).integers(0, c, n)


@pytest.mark.parametrize("rate", [0.0, 0.2, 0.6, 1.0])
def test_symmetric_other_class(rate):
    y = labels()
    out = symmetric_noise(y, rate, num_classes=10, seed=3)
    assert out.rate == pytest.approx(rate, abs=0.015)
    assert out.rate == out.changed.mean()
    assert np.array_equal(out.changed, out.labels != y)
    assert out.labels.min() >= 0 and out.labels.max() < 10
    if rate > 0:
        # flipped labels are uniform over the 9 other classes
        shift = (out.labels[out.changed] - y[out.changed]) % 10
        counts = np.bincount(shift, minlength=10)
        assert counts[0] == 0
        assert counts[1:].min() > 0.8 * counts[1:].mean()


def test_symmetric_include_true_and_determinism():
    y = labels()
    out = symmetric_noise(y, 0.6, num_classes=10, seed=1, include_true=True)
    assert out.rate == pytest.approx(0.6 * 9 / 10, abs=0.015)
    again = symmetric_noise(y, 0.6, num_classes=10, seed=1, include_true=True)
    assert np.array_equal(out.labels, again.labels)
    other = symmetric_noise(y, 0.6, num_classes=10, seed=2, include_true=True)
    assert not np.array_equal(out.labels, other.labels)
    y_copy = y.copy()
    symmetric_noise(y, 0.5)
    assert np.array_equal(y, y_copy)  # input untouched


def test_asymmetric_mappings():
    y = labels()
    out = asymmetric_noise(y, 0.4, mapping="cifar10", seed=0)
    flips = set(zip(y[out.changed].tolist(), out.labels[out.changed].tolist()))
    assert flips == {(9, 1), (2, 0), (4, 7), (3, 5), (5, 3)}
    assert out.rate == pytest.approx(0.4 * 5 / 10, abs=0.015)
    for cls in (0, 1, 6, 7, 8):
        assert not out.changed[y == cls].any()
    pair = asymmetric_noise(y, 1.0, mapping="pair", num_classes=10)
    assert np.array_equal(pair.labels, (y + 1) % 10) and pair.rate == 1.0
    assert set(ASYMMETRIC_MAPPINGS) == {"cifar10", "mnist", "fashion_mnist"}
    y100 = labels(c=100)
    c100 = asymmetric_noise(y100, 1.0, mapping="cifar100")
    assert np.array_equal(c100.labels // 5, y100 // 5)  # stays in its block of 5
    assert np.all(c100.labels != y100)
    custom = asymmetric_noise(np.array([0, 1, 2]), 1.0, mapping={0: 2})
    assert custom.labels.tolist() == [2, 1, 2]


def test_bad_inputs():
    with pytest.raises(ValueError, match="rate"):
        symmetric_noise([0, 1], 1.5)
    with pytest.raises(ValueError, match="labels"):
        symmetric_noise(np.array([0.0, 1.0]), 0.1)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        symmetric_noise([0, 1, 5], 0.1, num_classes=3)
    with pytest.raises(ValueError, match="mapping"):
        asymmetric_noise([0, 1], 0.1, mapping="nope")
    assert symmetric_noise(np.array([], dtype=np.int64), 0.5, num_classes=3).rate == 0.0


# -- the noise settings of the noisy task ------------------------------------------------------


def test_parse_noise():
    assert parse_noise("symmetric:0.4") == {"noise": "symmetric", "rate": 0.4}
    assert parse_noise("asym:0.2") == {"noise": "asymmetric", "rate": 0.2}
    for bad in ("symmetric", "uniform:0.2", "pair:1.5", "symmetric:x"):
        with pytest.raises(ValueError, match="noise"):
            parse_noise(bad)


def test_noise_depends_on_seed_and_only_on_train_labels(fmnist_dir):
    data = load_classification_data("fashion_mnist", str(fmnist_dir))
    s = parse_noise("symmetric:0.4")
    a = apply_noise(data.y_train, s, dataset="fashion_mnist", num_classes=10, seed=0)
    b = apply_noise(data.y_train, s, dataset="fashion_mnist", num_classes=10, seed=0)
    c = apply_noise(data.y_train, s, dataset="fashion_mnist", num_classes=10, seed=1)
    assert np.array_equal(a.labels, b.labels) and not np.array_equal(a.labels, c.labels)
    asym = apply_noise(data.y_train, parse_noise("asymmetric:1.0"), dataset="fashion_mnist",
                       num_classes=10, seed=0)
    assert set(np.unique(data.y_train[asym.changed])) == {0, 2, 5, 6, 9}
    pair = apply_noise(data.y_train, parse_noise("pair:1.0"), dataset="fashion_mnist",
                       num_classes=10, seed=0)
    assert np.array_equal(pair.labels, (data.y_train + 1) % 10)


def test_stream_seed_is_a_seed_sequence_per_stream():
    assert stream_seed(3, 1) == stream_seed(3, 1)
    assert len({stream_seed(s, k) for s in range(3) for k in range(4)}) == 12
    assert stream_seed(0, 1) == int(np.random.SeedSequence([0, 1]).generate_state(1)[0])

