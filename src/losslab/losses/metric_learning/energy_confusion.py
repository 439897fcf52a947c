r"""Energy Confusion (ECAML): a regulariser that pulls the classes of a batch together,
trained against a discriminative metric loss (kind ``embeddings``).

Chen, Deng, "Energy Confused Adversarial Metric Learning for Zero-Shot Image Retrieval and
Clustering", AAAI 2019, arXiv 1901.07169. The metric loss separates the seen classes; the
energy-confusion term "confuses" the learned metric by lowering the energy -- the squared
distances -- between samples of different classes, so that the embedding does not over-fit the
few features that separate the seen classes. Combine it with a base loss::

    loss = losslab.combine({"triplet": 1.0, "energy_confusion": 0.13})

The adversarial part of ECAML is where the gradient goes: the official training applies the
term to a copy of the embedding layer (shared weights) fed with the backbone's features
*detached* (Caffe ``propagate_down: 0``), so the confusion trains the metric layer only while
the backbone follows the metric loss alone; the loss weight is 0.13. In PyTorch:
``energy_confusion(head(features.detach()), labels)`` next to ``base(head(features), labels)``.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from losslab._core import LossModule
from losslab._hparams import Choice, hparams
from losslab._ops.pairs import pair_batch
from losslab.registry import register

__all__ = ["EnergyConfusionLoss", "energy_confusion_loss"]

Pairs = Literal["negative", "all"]
#: The energy is floored here before its logarithm (all pairs coincident: log 0).
ENERGY_FLOOR = 1e-12


def energy_confusion_loss(
    embeddings: Tensor,
    labels: Tensor,
    *,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    indices: object = None,
    pairs: Pairs = "negative",
) -> Tensor:
    r"""Energy-confusion regulariser of ECAML.

    .. math::
        \mathcal L_{EC} = \log E, \qquad
        E = \frac{1}{|\mathcal N|} \sum_{(i, j) \in \mathcal N} \tfrac12 \|x_i - x_j\|^2

    over the negative pairs :math:`\mathcal N` (different labels): minimising it pulls the
    classes together. ``pairs="all"`` adds the positive pairs' term with its own weight, as the
    official ``EnergyConfusionLoss`` layer does (each pair weighted by one over the number of
    pairs of its kind): :math:`E = \mathrm{mean}_{\mathcal P} \tfrac12 d^2 +
    \mathrm{mean}_{\mathcal N} \tfrac12 d^2`. The official layer samples a few partners per
    anchor (``random_num``, never the next sample): with its batches of two consecutive
    images per class those are negatives only -- the default here, over every negative pair
    (the sampling only scales :math:`E`, which the logarithm turns into a constant). The
    layer's backward is that of :math:`\log E` (its forward reports :math:`E`).

    Args:
        embeddings: ``[N, D]`` (the official code: the un-normalised embedding layer's output);
            labels: ``[N]``.
        ref_embeddings, ref_labels: pairs of the batch against a reference set instead of the
            batch itself. indices: the pairs (or triplets) to use instead of the labels'.
        pairs: ``"negative"`` (default) or ``"all"`` (see above).

    Returns a scalar (a log of a mean: no ``reduction``). A batch without negative pairs
    (one class) gives zero (``"negative"``); :math:`E` is floored at ``1e-12`` (coincident
    embeddings). Weight it with :func:`losslab.combine` (the paper's 0.13). Paper: Chen,
    Deng, "Energy Confused Adversarial Metric Learning for Zero-Shot Image Retrieval and
    Clustering", arXiv 1901.07169 (formula from the official Caffe layer; the paper text could
    not be retrieved here).
    """
    _check_ec(pairs=pairs)
    b = pair_batch(embeddings, labels, ref_embeddings, ref_labels, indices,
                   metric="squared_euclidean")
    half = 0.5 * b.mat
    z = b.zero()
    zero = torch.zeros_like(half)

    def mean_over(mask: Tensor) -> tuple[Tensor, Tensor]:
        count = mask.sum()
        total = torch.where(mask, half, zero).sum()
        return total / count.clamp_min(1).to(total.dtype), count > 0

    energy, has = mean_over(b.neg)
    if pairs == "all":
        e_pos, has_pos = mean_over(b.pos)
        energy = energy + e_pos
        has = has | has_pos
    value = torch.log(energy.clamp_min(ENERGY_FLOOR))
    return torch.where(has, value, torch.zeros_like(value)) + z


_check_ec = hparams(pairs=Choice("negative", "all"))


@register(
    "energy_confusion",
    family="metric-learning",
    kind="embeddings",
    paper="Energy Confused Adversarial Metric Learning for Zero-Shot Image Retrieval and "
          "Clustering",
    arxiv="1901.07169",
    summary="log mean_{y_i != y_j} |x_i - x_j|^2 / 2: pulls classes together; add to a metric "
            "loss (weight 0.13)",
    reduction=None,
    degenerate=("one_class",),
)
class EnergyConfusionLoss(LossModule, function=energy_confusion_loss, check=_check_ec):
    """Module form of :func:`energy_confusion_loss`."""
