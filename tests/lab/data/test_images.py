"""Image loading: the RGB resize + centre crop."""

import numpy as np
import pytest

PIL = pytest.importorskip("PIL.Image")


def test_resize_then_center_crop(tmp_path):
    from losslab.lab.data.images import rgb_loader

    im = np.zeros((50, 100, 3), dtype=np.uint8)
    im[:, 45:55] = 255  # a bright vertical band in the middle
    PIL.fromarray(im).save(tmp_path / "a.png")
    out = rgb_loader(84)(tmp_path / "a.png")
    assert out.shape == (84, 84, 3)  # shorter side -> 92, centre crop 84
    assert out[:, 42].mean() > 200 and out[:, 0].mean() < 30
