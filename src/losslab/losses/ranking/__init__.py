"""Learning-to-rank and recommendation losses (registry family ``ranking-recsys``).

Modules: :mod:`~.pairwise` (Margin-MSE, RankNet, pairwise hinge, LambdaLoss),
:mod:`~.listwise` (ListNet, ListMLE, ApproxNDCG, NeuralNDCG, Poly-1 listwise),
:mod:`~.recsys` (BPR, sampled softmax + logQ, PSL, SL@K, CCL, decoupled softmax, SoftTop-k),
:mod:`~.auc` (Mann-Whitney AUC, AUC-M, pairwise and reweighted-univariate Macro-AUC),
:mod:`~.tbatch` (the item-sum and full-sum t-batching losses of dynamic-network models; kind
``paired``), :mod:`~.extraction` (model extraction of a victim recommender: bidirectional
repair).

Kind ``scores``: ``loss(scores[Q, L], relevance[Q, L], *, mask=None)``: ``Q`` lists (queries,
users) of ``L`` items with graded relevance (higher is better) and an optional bool ``mask``
(False = padding, part of no term, zero gradient). A list with nothing to learn from (fully
masked; no pair; no relevant item) contributes a defined zero with zero gradient, never NaN,
and is left out of the ``"mean"`` (allRank users' complaint: NaN at IDCG = 0).
"""

from __future__ import annotations

from losslab.losses.ranking import auc, extraction, listwise, pairwise, recsys, tbatch
from losslab.losses.ranking._common import prepare_scores
from losslab.losses.ranking.auc import *  # noqa: F403
from losslab.losses.ranking.extraction import *  # noqa: F403
from losslab.losses.ranking.listwise import *  # noqa: F403
from losslab.losses.ranking.pairwise import *  # noqa: F403
from losslab.losses.ranking.recsys import *  # noqa: F403
from losslab.losses.ranking.tbatch import *  # noqa: F403

__all__ = ["auc", "extraction", "listwise", "pairwise", "prepare_scores", "recsys", "tbatch"]
__all__ += auc.__all__
__all__ += extraction.__all__
__all__ += listwise.__all__
__all__ += pairwise.__all__
__all__ += recsys.__all__
__all__ += tbatch.__all__
