import math

import numpy as np
import pytest

from losslab.lab.stats import mean_t_interval, t_quantile_975


def test_t_quantiles_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in [1, 2, 3, 5, 10, 29, 30, 31, 40, 60, 120, 1000]:
        assert t_quantile_975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=2e-5)


def test_mean_t_interval():
    vals = [50.0, 52.0, 54.0]
    mean, ci, std, n = mean_t_interval(vals)
    assert (mean, n) == (52.0, 3)
    assert std == pytest.approx(2.0)
    assert ci == pytest.approx(4.302653 * 2.0 / math.sqrt(3))
    m1, ci1, s1, n1 = mean_t_interval([7.0])
    assert m1 == 7.0 and n1 == 1 and math.isnan(ci1) and math.isnan(s1)
    with pytest.raises(ValueError):
        mean_t_interval(np.array([]))
    with pytest.raises(ValueError):
        t_quantile_975(0)
