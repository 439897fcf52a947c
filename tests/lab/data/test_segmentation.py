"""The glyph-on-texture segmentation data: exact masks, seeded, the three settings."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("skimage")

from losslab.lab.data.segmentation import make_segmentation_data


def test_settings_are_seeded_and_masks_are_exact():
    a = make_segmentation_data("regular", n_train=8, n_test=4, seed=3)
    b = make_segmentation_data("regular", n_train=8, n_test=4, seed=3)
    assert np.array_equal(a.x_train, b.x_train) and np.array_equal(a.y_test, b.y_test)
    assert a.x_train.shape == (8, 1, 64, 64) and a.y_train.shape == (8, 64, 64)
    assert np.array_equal(a.y_train, a.y_train_clean)
    assert 0.0 <= a.x_train.min() and a.x_train.max() <= 1.0
    assert all(m.any() for m in a.y_train)
    thin = make_segmentation_data("thin", n_train=8, n_test=4, seed=3)
    assert thin.y_train.mean() < a.y_train.mean()
    noisy = make_segmentation_data("noisy", n_train=8, n_test=4, seed=3)
    assert np.array_equal(noisy.y_train_clean, a.y_train)  # same images as "regular"
    assert not np.array_equal(noisy.y_train, noisy.y_train_clean)
    assert np.array_equal(noisy.y_test, a.y_test)  # test masks stay exact
    with pytest.raises(ValueError, match="setting"):
        make_segmentation_data("blurry", n_train=1, n_test=1, seed=0)
