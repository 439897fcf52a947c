"""Seeded synthetic label noise: symmetric (uniform) and asymmetric (class-pair flips).

Each function takes integer labels (numpy array or anything ``np.asarray`` accepts), returns a
:class:`NoisyLabels` (the noisy labels, the mask of changed labels and the realised noise rate =
fraction of labels that differ from the clean ones) and never modifies its input. The same
``seed`` gives the same noise.

Conventions:

* ``symmetric_noise`` (default, Ma et al. 2020 / Wang et al. 2019): with probability ``rate`` a
  label is replaced by a uniformly random **other** class, so the realised rate ≈ ``rate``.
  ``include_true=True`` (the LDR paper's "uniform" noise, Zhu et al. 2023): the replacement is
  uniform over **all** classes, so it may keep the true label and the realised rate is
  ≈ ``rate · (C-1)/C``.
* ``asymmetric_noise``: with probability ``rate`` a label of a class in the mapping is replaced
  by its partner; classes not in the mapping never change. Mappings: ``"cifar10"`` (Patrini
  et al. 2017, used by Ma et al. 2020): truck→automobile, bird→airplane, deer→horse,
  cat↔dog; ``"mnist"`` (same papers): 2→7, 3→8, 7→1, 5↔6; ``"cifar100"`` (same papers'
  code): the next class, circularly, within consecutive blocks of 5 class ids; ``"pair"``
  (generic; the LDR paper's class-dependent noise): ``c → (c + 1) mod C``;
  ``"fashion_mnist"``: **our** choice of confusable pairs (neither paper uses Fashion-MNIST):
  T-shirt→Shirt, Pullover→Coat, Sandal→Sneaker, Ankle boot→Sneaker, Shirt→T-shirt; or any
  ``{class: partner}`` dict.

The ``noisy`` task's settings are strings ``KIND:RATE`` (:func:`parse_noise`) applied with
:func:`apply_noise` (seeded with :func:`stream_seed` ``(seed, 1)``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "ASYMMETRIC_MAPPINGS",
    "NOISE_KINDS",
    "NoisyLabels",
    "apply_noise",
    "asymmetric_noise",
    "pair_mapping",
    "parse_noise",
    "stream_seed",
    "symmetric_noise",
]

#: Fixed class-pair flips (source class id -> target class id).
ASYMMETRIC_MAPPINGS: dict[str, dict[int, int]] = {
    # CIFAR-10: truck(9)->automobile(1), bird(2)->airplane(0), deer(4)->horse(7), cat(3)<->dog(5)
    "cifar10": {9: 1, 2: 0, 4: 7, 3: 5, 5: 3},
    # MNIST: 2->7, 3->8, 7->1, 5<->6
    "mnist": {2: 7, 3: 8, 7: 1, 5: 6, 6: 5},
    # Fashion-MNIST (ours): T-shirt(0)->Shirt(6), Pullover(2)->Coat(4), Sandal(5)->Sneaker(7),
    # Ankle boot(9)->Sneaker(7), Shirt(6)->T-shirt(0)
    "fashion_mnist": {0: 6, 2: 4, 5: 7, 9: 7, 6: 0},
}


@dataclass(frozen=True)
class NoisyLabels:
    """Result of a noise model.

    Attributes:
        labels: ``int64 [N]`` noisy labels.
        changed: ``bool [N]``, True where the noisy label differs from the clean one.
        rate: realised noise rate, ``changed.mean()`` (0.0 for no labels).
    """

    labels: np.ndarray
    changed: np.ndarray
    rate: float


def _prepare(labels: Any, rate: float, num_classes: int | None) -> tuple[np.ndarray, int]:
    y = np.asarray(labels)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be a 1-d integer array, got {y.dtype} of shape {y.shape}")
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be in [0, 1], got {rate!r}")
    c = int(y.max()) + 1 if num_classes is None and y.size else (num_classes or 0)
    if y.size and (int(y.min()) < 0 or int(y.max()) >= c):
        raise ValueError(f"labels must be class ids in [0, {c}), got [{y.min()}, {y.max()}]")
    return y.astype(np.int64), c


def _result(clean: np.ndarray, noisy: np.ndarray) -> NoisyLabels:
    changed = noisy != clean
    return NoisyLabels(noisy, changed, float(changed.mean()) if changed.size else 0.0)


def symmetric_noise(
    labels: Any,
    rate: float,
    *,
    num_classes: int | None = None,
    seed: int = 0,
    include_true: bool = False,
) -> NoisyLabels:
    """Symmetric (uniform) label noise.

    Args:
        labels: ``[N]`` clean class ids.
        rate: probability that a label is resampled, in ``[0, 1]``.
        num_classes: ``C`` (default: ``max(labels) + 1``).
        seed: seed of ``numpy.random.default_rng``.
        include_true: ``False`` (default, Ma et al.): resample among the ``C - 1`` other
            classes; ``True`` (LDR paper): resample among all ``C`` classes.
    """
    y, c = _prepare(labels, rate, num_classes)
    if c < 2 and not include_true and rate > 0:
        raise ValueError("symmetric noise to another class needs at least 2 classes")
    rng = np.random.default_rng(seed)
    hit = rng.random(y.shape[0]) < rate
    noisy = y.copy()
    if include_true:
        noisy[hit] = rng.integers(0, c, size=int(hit.sum()))
    else:
        # uniform over the other classes: shift by 1..C-1 (mod C)
        noisy[hit] = (y[hit] + rng.integers(1, c, size=int(hit.sum()))) % c
    return _result(y, noisy)


def pair_mapping(num_classes: int) -> dict[int, int]:
    """The generic pair flip ``c -> (c + 1) mod C``."""
    return {k: (k + 1) % num_classes for k in range(num_classes)}


def _cifar100_mapping() -> dict[int, int]:
    return {k: (k // 5) * 5 + (k % 5 + 1) % 5 for k in range(100)}


def asymmetric_noise(
    labels: Any,
    rate: float,
    *,
    mapping: str | Mapping[int, int] = "pair",
    num_classes: int | None = None,
    seed: int = 0,
) -> NoisyLabels:
    """Asymmetric (class-dependent) label noise: flip to a partner class with probability
    ``rate``.

    Args:
        labels: ``[N]`` clean class ids.
        rate: flip probability for labels of a mapped class, in ``[0, 1]``.
        mapping: ``"pair"`` (``c -> c+1 mod C``, default), ``"cifar10"``, ``"cifar100"``,
            ``"mnist"``, ``"fashion_mnist"`` (see the module docstring) or a dict.
        num_classes: ``C`` (default: ``max(labels) + 1``; for ``"pair"`` give it explicitly
            when the largest class may be absent).
        seed: seed of ``numpy.random.default_rng``.

    The realised rate is over all labels, so it is below ``rate`` when some classes are not
    mapped (e.g. CIFAR-10: 5 of 10 classes flip, realised ≈ ``rate / 2``).
    """
    y, c = _prepare(labels, rate, num_classes)
    if isinstance(mapping, str):
        if mapping == "pair":
            table = pair_mapping(c)
        elif mapping == "cifar100":
            table = _cifar100_mapping()
        elif mapping in ASYMMETRIC_MAPPINGS:
            table = ASYMMETRIC_MAPPINGS[mapping]
        else:
            names = ["pair", "cifar100", *ASYMMETRIC_MAPPINGS]
            raise ValueError(f"mapping must be one of {names} or a dict, got {mapping!r}")
    else:
        table = {int(k): int(v) for k, v in mapping.items()}
    size = max(c, max(table, default=-1) + 1, max(table.values(), default=-1) + 1)
    lookup = np.arange(size, dtype=np.int64)
    for src, dst in table.items():
        if src < 0 or dst < 0:
            raise ValueError(f"mapping must hold non-negative class ids, got {src} -> {dst}")
        lookup[src] = dst
    rng = np.random.default_rng(seed)
    hit = rng.random(y.shape[0]) < rate
    noisy = y.copy()
    noisy[hit] = lookup[y[hit]]
    return _result(y, noisy)


# --------------------------------------------------------------------------------------------
# Noise settings of the lab's noisy-label task
# --------------------------------------------------------------------------------------------

#: The kinds of a ``KIND:RATE`` noise setting.
NOISE_KINDS = ("symmetric", "asymmetric", "pair")


def parse_noise(spec: str) -> dict[str, Any]:
    """``"symmetric:0.4"`` -> ``{"noise": "symmetric", "rate": 0.4}`` (``ValueError`` on a bad
    spec). Kinds: ``symmetric`` (alias ``sym``), ``asymmetric`` (``asym``; the dataset's
    class-pair flips), ``pair`` (``c -> c+1 mod C``); the rate is in ``[0, 1]``."""
    kind, sep, rate_s = str(spec).partition(":")
    kind = kind.strip().lower()
    if kind == "sym":
        kind = "symmetric"
    if kind == "asym":
        kind = "asymmetric"
    try:
        rate = float(rate_s)
    except ValueError:
        rate = float("nan")
    if not sep or kind not in NOISE_KINDS or not 0.0 <= rate <= 1.0:
        raise ValueError(
            f"noise: expected KIND:RATE with KIND in {NOISE_KINDS} and RATE in [0, 1], e.g. "
            f"symmetric:0.4, got {spec!r}"
        )
    return {"noise": kind, "rate": rate}


def stream_seed(seed: int, stream: int) -> int:
    """An integer seed for the random stream ``stream`` of a job seeded with ``seed``
    (``numpy.random.SeedSequence([seed, stream])``): independent streams per purpose."""
    return int(np.random.SeedSequence([seed, stream]).generate_state(1)[0])


def apply_noise(labels: np.ndarray, setting: Mapping[str, Any], *, dataset: str,
                num_classes: int, seed: int) -> NoisyLabels:
    """The noisy labels of a setting (:func:`parse_noise`) at a job seed: ``symmetric`` ->
    :func:`symmetric_noise`; ``asymmetric`` -> the class-pair flips of ``dataset``; ``pair`` ->
    ``c -> c+1 mod C``. Drawn from :func:`stream_seed` ``(seed, 1)``, so the noise depends on
    the seed only."""
    rate, kind = float(setting["rate"]), setting["noise"]
    s = stream_seed(seed, 1)
    if kind == "symmetric":
        return symmetric_noise(labels, rate, num_classes=num_classes, seed=s)
    mapping = "pair" if kind == "pair" else dataset
    return asymmetric_noise(labels, rate, mapping=mapping, num_classes=num_classes, seed=s)
