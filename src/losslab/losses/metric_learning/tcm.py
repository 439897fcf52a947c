"""Regularisers for deep metric learning, added on top of a base loss (kind ``embeddings``).

``tcm`` is registered alone; combine it with a base loss with :func:`losslab.combine`::

    loss = losslab.combine({"multi_similarity": 1.0, "tcm": 1.0})
    value = loss(embeddings, labels)
"""

from __future__ import annotations

from torch import Tensor

from losslab._core import LossModule
from losslab._hparams import Real, hparams
from losslab._ops.pairs import pair_batch
from losslab.registry import register

__all__ = ["TCMLoss", "tcm_loss"]


#: The margins are thresholds on a cosine similarity, in [-1, 1].
_check_tcm = hparams(pos_margin=Real(ge=-1, le=1), neg_margin=Real(ge=-1, le=1),
                     pos_weight=Real(ge=0), neg_weight=Real(ge=0))


def tcm_loss(
    embeddings: Tensor,
    labels: Tensor,
    *,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    indices: object = None,
    pos_margin: float = 0.9,
    neg_margin: float = 0.5,
    pos_weight: float = 1.0,
    neg_weight: float = 1.0,
) -> Tensor:
    r"""Threshold-Consistent Margin (TCM) regulariser.

    .. math::
        \mathcal L_{TCM} = \lambda^+ \frac{\sum_{(i,j) \in P} (m^+ - s_{ij})\,
        \mathbb 1[s_{ij} \le m^+]}{\sum_{(i,j) \in P} \mathbb 1[s_{ij} \le m^+]}
        + \lambda^- \frac{\sum_{(i,j) \in N} (s_{ij} - m^-)\,\mathbb 1[s_{ij} \ge m^-]}
        {\sum_{(i,j) \in N} \mathbb 1[s_{ij} \ge m^-]}

    on cosine similarities: only the hard positive pairs (below the positive margin) and hard
    negative pairs (above the negative margin) are penalised, each part averaged over its hard
    pairs (an empty part is 0). Pairs come from labels (every ordered pair of the batch, or the
    batch against ``ref_embeddings``) or from ``indices``. The overall loss weight
    :math:`\lambda` is the weight given to ``tcm`` in :func:`losslab.combine`.

    Args:
        pos_margin, neg_margin: :math:`m^+ = 0.9, m^- = 0.5`; pos_weight, neg_weight:
            :math:`\lambda^\pm = 1` (the defaults of PML's ``ThresholdConsistentMarginLoss``).

    Returns a scalar (the loss is defined on the set of hard pairs: no ``reduction``).

    Degenerate batches: none is declared. A one-class batch still has its hard positive pairs
    (the positive part), a batch of distinct labels its hard negatives: each part of the paper's
    loss is averaged over its own hard pairs, so either batch gives the other part alone, not
    zero. Half inputs are computed in float32 and return float32.

    Paper: Zhang et al., "Threshold-Consistent Margin Loss for Open-World Deep Metric
    Learning", arXiv 2307.04047.
    """
    _check_tcm(pos_margin=pos_margin, neg_margin=neg_margin, pos_weight=pos_weight,
               neg_weight=neg_weight)
    b = pair_batch(embeddings, labels, ref_embeddings, ref_labels, indices, metric="cosine")
    s = b.mat
    if b.pairs is not None:
        a1, p, a2, n = b.pairs
        sp, sn = s[a1, p], s[a2, n]
        hp, hn = sp <= pos_margin, sn >= neg_margin
        pos_part = ((pos_margin - sp) * hp).sum() / hp.sum().clamp_min(1)
        neg_part = ((sn - neg_margin) * hn).sum() / hn.sum().clamp_min(1)
    else:
        hp = b.pos & (s <= pos_margin)
        hn = b.neg & (s >= neg_margin)
        pos_part = (pos_margin - s).masked_fill(~hp, 0.0).sum() / hp.sum().clamp_min(1)
        neg_part = (s - neg_margin).masked_fill(~hn, 0.0).sum() / hn.sum().clamp_min(1)
    return pos_weight * pos_part + neg_weight * neg_part + b.zero()


@register(
    "tcm",
    family="metric-learning",
    kind="embeddings",
    paper="Threshold-Consistent Margin Loss for Open-World Deep Metric Learning",
    arxiv="2307.04047",
    summary="l+ mean_{hard pos}(m+ - s) + l- mean_{hard neg}(s - m-); add to a base loss",
    peers=("pytorch_metric_learning.losses.ThresholdConsistentMarginLoss",),
    reduction=None,
)
class TCMLoss(LossModule, function=tcm_loss, check=_check_tcm):
    """Module form of :func:`tcm_loss`."""
