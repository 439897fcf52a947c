"""Deep-metric-learning losses (registry family ``metric-learning``, kind ``embeddings``).

``loss(embeddings[N, D], labels[N], *, ref_embeddings=None, ref_labels=None, indices=None)``.

* ``ref_embeddings``/``ref_labels``: compare the batch (queries) against another set (a
  cross-batch memory, the all-gathered batch of other ranks, ...). Self-pairs are excluded only
  when the reference is the batch itself.
* ``indices``: a miner's output, either ``(a, p, n)`` triplets or ``(a1, p, a2, n)`` pairs (see
  :mod:`losslab.miners`). Pair losses read triplets as the pairs ``(a, p)`` and ``(a, n)``;
  triplet losses read pairs as every ``(a, p, n)`` that shares its anchor (as PML does).
* Every loss builds the ``[N, M]`` distance/similarity matrix once and works with masked
  O(N·M) ops; the all-triplets losses never build an ``[N, M, M]`` tensor.
* A batch with no valid pair/triplet gives a zero loss with zero gradient, connected to the
  graph. Which degenerate batches (one class, every label distinct) are zero is decided per
  loss from its paper and declared in its spec (``degenerate=``); the docstrings say why.
  ``reduction="none"`` returns one value per anchor (row of ``embeddings``) whose sum is the
  ``"sum"`` reduction; ``"mean"`` is documented per loss.
* Inputs: labels (``ref_labels``, ``indices``) of any integer dtype (bool is rejected); half
  embeddings (fp16/bf16) are computed in float32 and the loss is returned in float32
  (:func:`losslab._core.compute_dtype`); a NaN or inf anywhere in the embeddings, the
  reference set or the proxies gives a NaN loss, whatever pairs the loss selects.
  Hyperparameters are declared rules (:mod:`losslab._hparams`), checked at construction and by
  the function.

Modules, by loss group: :mod:`~.pairs` (contrastive, lifted structure, N-pairs),
:mod:`~.triplet` (triplet, triplet ratio, M2FNet's adaptive-margin triplet),
:mod:`~.weighted` (multi-similarity, circle, SupCon), :mod:`~.proxy` (Proxy-NCA,
Proxy-Anchor, normalized softmax, ArcFace, CosFace, MadaCos), :mod:`~.metrix` (Metrix
mixup), :mod:`~.tcm` (the TCM regulariser), :mod:`~.hashing` (OrthoHash deep hashing
against fixed binary class codes), :mod:`~.unpg` (UNPG: ArcFace/CosFace with the batch's
negative sample pairs as extra negatives), :mod:`~.submodular` (SCoRe: facility-location,
graph-cut and log-det information of the class sets), :mod:`~.energy_confusion` (ECAML's
energy-confusion regulariser), :mod:`~.cip` (Collaborative Inner Product),
:mod:`~.clusternet` (ClusterNet's semi-supervised clustering loss with learnt centres).

Fast paths. Several losses have two implementations of one definition: the autograd
*reference*, taken when ``indices=`` lists the pairs or triplets, and a fused path taken
without ``indices``, which computes the loss and its closed-form gradient in one pass
(:mod:`losslab.kernels.matrix_loss`, with the loss's kernel). :data:`FAST_PATHS` lists them;
the tests check every entry against its reference (values and gradients, fp64). Proxy-Anchor's
kernel has no autograd twin and is checked against a loop oracle and PML instead.

PML (pytorch-metric-learning) is the peer: the tests check values and gradients against it.
Where our default reduction differs from PML's (PML averages many losses over their non-zero
terms, ``AvgNonZeroReducer``), the loss has ``mean_over="nonzero"`` to reproduce it.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from losslab.distances import METRICS
from losslab.losses.metric_learning import (
    cip,
    clusternet,
    energy_confusion,
    hashing,
    metrix,
    pairs,
    proxy,
    submodular,
    tcm,
    triplet,
    unpg,
    weighted,
)
from losslab.losses.metric_learning._common import SIMILARITIES
from losslab.losses.metric_learning.metrix import MetrixLoss

__all__ = ["FAST_PATHS", "FastPath", "cip", "clusternet", "energy_confusion", "hashing",
           "metrix", "pairs", "proxy", "submodular", "tcm", "triplet", "unpg", "weighted"]


@dataclass(frozen=True)
class FastPath:
    """How a loss's fused path is reached and what it must equal.

    Attributes:
        kernel: the :class:`~losslab.kernels.matrix_loss.Kernel` class the loss builds.
        indices: the ``indices=`` form of the reference: ``"pairs"`` (every positive and
            negative pair of the labels) or ``"triplets"`` (every valid triplet).
        metrics: the ``metric=`` values the fused path takes (``()``: the loss has no
            ``metric=``; it is on cosine similarities).
        hparams: hyperparameters under which the fused path (no ``indices``) equals the
            reference (e.g. multi-similarity without its pair mining).
        proxies: the loss also takes ``proxies [C, D]`` (class-level form), fused as well; it
            equals the reference against ``ref_embeddings=proxies``, ``ref_labels=arange(C)``.
    """

    kernel: type
    indices: Literal["pairs", "triplets"]
    metrics: tuple[str, ...] = ()
    hparams: Mapping[str, Any] = field(default_factory=dict)
    proxies: bool = False


#: loss name -> its fused path (see the module docstring).
FAST_PATHS: Mapping[str, FastPath] = MappingProxyType({
    "contrastive": FastPath(pairs.ContrastiveKernel, "pairs", METRICS),
    "triplet": FastPath(triplet.TripletAllKernel, "triplets", METRICS, {"strategy": "all"}),
    "multi_similarity": FastPath(weighted.MultiSimilarityKernel, "pairs", SIMILARITIES,
                                 {"mining": False}),
    "circle": FastPath(weighted.CircleKernel, "pairs", proxies=True),
    "supcon": FastPath(weighted.SupConKernel, "pairs", SIMILARITIES),
})


def __getattr__(name: str) -> Any:
    if name == "Metrix":  # the former name of MetrixLoss, kept for one release (0.2 removes it)
        warnings.warn("Metrix is deprecated, use MetrixLoss", DeprecationWarning, stacklevel=2)
        return MetrixLoss
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
