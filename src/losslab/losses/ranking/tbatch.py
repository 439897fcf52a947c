"""The t-batching prediction losses of Loghmani & Fazli, "Effect of Choosing Loss Function when
Using T-batching for Representation Learning on Dynamic Networks" (arXiv 2308.06862): the
item-sum and full-sum replacements of JODIE's per-t-batch mean.

Kind ``paired``: ``loss(a[N, D], b[N, D])`` with row ``i`` of ``a`` the predicted item
embedding of the ``i``-th interaction of one t-batch and row ``i`` of ``b`` the embedding it
should predict (JODIE: the item's dynamic embedding before the interaction concatenated with
its static one, detached by the caller).

JODIE (Kumar, Zhang, Leskovec, arXiv 1908.01207) trains on t-batches: groups of interactions
that can be processed in parallel, whose sizes vary widely. Its prediction term is
``nn.MSELoss()`` per t-batch, the *mean* over the t-batch's ``N x D`` elements, so an
interaction in a t-batch of 2 weighs 50 times one in a t-batch of 100. The paper shows that this
biases the learned model and replaces the mean by sums, which weigh every interaction alike:

* ``tbatch_item_sum``: :math:`\\sum_{i=1}^{N} \\frac{1}{D}\\lVert a_i - b_i\\rVert^2` (the
  official ``jodie-sum``: ``N * MSELoss``);
* ``tbatch_full_sum``: :math:`\\sum_{i=1}^{N} \\lVert a_i - b_i\\rVert^2` (the official
  ``jodie-full-sum``: ``MSELoss(reduction="sum")``), ``D`` times the item-sum.

``reduction``: ``"sum"`` is the paper's t-batch loss (pass it explicitly: the library-wide
default is ``"mean"``); ``"mean"`` averages over the ``N`` interactions, which for
``tbatch_item_sum`` is JODIE's original loss (the baseline the paper compares against);
``"none"`` returns the ``[N]`` per-interaction terms. A t-batch holds at least one
interaction: an empty one is a ``ValueError``.

JODIE's objective also has the temporal-smoothness terms ``MSELoss(u(t), u(t-))`` and
``MSELoss(i(t), i(t-))`` (and an optional state-change cross-entropy); the paper leaves them as
per-t-batch means, so they are not part of these losses: add them with
``torch.nn.functional.mse_loss``.

Formulas from the official code (``jodie.py`` of the authors' repository, ``--model jodie-sum``
/ ``jodie-full-sum``); the paper's text was not found, only its abstract, which names the two
losses without formulas.
"""

from __future__ import annotations

from torch import Tensor

from losslab._core import LossModule, Reduction, reduce
from losslab._ops.paired import prepare_paired
from losslab.registry import register

__all__ = ["TBatchFullSumLoss", "TBatchItemSumLoss", "tbatch_full_sum_loss",
           "tbatch_item_sum_loss"]

_PAPER = ("Effect of Choosing Loss Function when Using T-batching for Representation Learning "
          "on Dynamic Networks")


def _per_interaction(a: Tensor, b: Tensor, *, mean_over_dim: bool) -> Tensor:
    a, b = prepare_paired(a, b, normalize=False)
    sq = (a - b) ** 2
    return sq.mean(1) if mean_over_dim else sq.sum(1)


def tbatch_item_sum_loss(a: Tensor, b: Tensor, *, reduction: Reduction = "mean") -> Tensor:
    r"""Item-sum t-batch loss: the per-interaction mean squared error, summed over the t-batch.

    .. math::
        \mathcal{L}_{\text{item-sum}} = \sum_{i=1}^{N} \frac{1}{D} \sum_{d=1}^{D}
            (a_{id} - b_{id})^2 = N \cdot \mathrm{MSE}(a, b)

    Args:
        a: ``[N, D]`` predicted embeddings of the t-batch's ``N`` interactions.
        b: ``[N, D]`` the embeddings to predict (detach them for JODIE).
        reduction: ``"sum"`` (the paper's loss; the default is the library's ``"mean"``),
            ``"mean"`` (JODIE's original ``MSELoss``) or ``"none"`` (``[N]``).

    Paper: Loghmani & Fazli, arXiv 2308.06862 (formula from the official code, see the module
    docstring).
    """
    return reduce(_per_interaction(a, b, mean_over_dim=True), reduction)


@register(
    "tbatch_item_sum",
    family="ranking-recsys",
    kind="paired",
    paper=_PAPER,
    arxiv="2308.06862",
    summary="sum over the t-batch of per-interaction MSE (JODIE's mean -> sum); "
    "reduction='mean' is JODIE's loss",
    reduction="per interaction",
)
class TBatchItemSumLoss(LossModule, function=tbatch_item_sum_loss):
    """Module form of :func:`tbatch_item_sum_loss`."""


def tbatch_full_sum_loss(a: Tensor, b: Tensor, *, reduction: Reduction = "mean") -> Tensor:
    r"""Full-sum t-batch loss: the squared error summed over interactions and dimensions.

    .. math::
        \mathcal{L}_{\text{full-sum}} = \sum_{i=1}^{N} \sum_{d=1}^{D} (a_{id} - b_{id})^2
            = D \cdot \mathcal{L}_{\text{item-sum}}

    Args:
        a: ``[N, D]`` predicted embeddings of the t-batch's ``N`` interactions.
        b: ``[N, D]`` the embeddings to predict.
        reduction: ``"sum"`` (the paper's loss; the default is the library's ``"mean"``),
            ``"mean"`` (the per-interaction squared distance averaged over the t-batch) or
            ``"none"`` (``[N]``, the squared distance of each interaction).

    Paper: Loghmani & Fazli, arXiv 2308.06862 (formula from the official code, see the module
    docstring).
    """
    return reduce(_per_interaction(a, b, mean_over_dim=False), reduction)


@register(
    "tbatch_full_sum",
    family="ranking-recsys",
    kind="paired",
    paper=_PAPER,
    arxiv="2308.06862",
    summary="sum over the t-batch of squared distances ||a_i - b_i||^2 (D x item-sum)",
    reduction="per interaction",
)
class TBatchFullSumLoss(LossModule, function=tbatch_full_sum_loss):
    """Module form of :func:`tbatch_full_sum_loss`."""
