r"""ClusterNet's semi-supervised clustering loss (family ``metric-learning``, kind ``embeddings``).

Shukla, Cheema, Anand, "Semi-Supervised Clustering with Neural Networks" (ClusterNet, BigMM
2020, arXiv 1806.01547): an autoencoder's latent codes are clustered into ``K`` clusters whose
centres are learnt with the network. The loss combines a pairwise term on the few labelled
samples (pairs of the same class must share a cluster, pairs of different classes must not)
with a k-means term on every sample, labelled or not. The module owns the cluster centres
(``num_classes`` = the number of clusters ``K``, ``embedding_dim`` = the latent size).
"""

from __future__ import annotations

import torch
from torch import Tensor

from losslab._core import (
    Reduction,
    check_labels,
    check_matrix,
    check_same_device,
    compute_dtype,
    reduce,
    zero_loss,
)
from losslab._hparams import Int, Real, hparams
from losslab.distances import squared_euclidean
from losslab.losses.metric_learning.proxy import EXAMPLE, PROXY_SHAPE, ProxyLossModule
from losslab.registry import register

__all__ = ["ClusterNetLoss", "cluster_assignments", "clusternet_loss"]

CLUSTERNET = "Semi-Supervised Clustering with Neural Networks"


def cluster_assignments(embeddings: Tensor, centres: Tensor) -> Tensor:
    r"""Soft assignments :math:`p_{ik} = \operatorname{softmax}_k(-\|z_i - \mu_k\|^2)`
    (``[N, K]``): the cluster posteriors of the loss; their argmax is the clustering."""
    return torch.softmax(-squared_euclidean(embeddings, centres), dim=1)


_check_clusternet = hparams(margin=Real(ge=0), alpha=Real(ge=0), ignore_index=Int())


def clusternet_loss(
    embeddings: Tensor,
    labels: Tensor,
    centres: Tensor,
    *,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    indices: object = None,
    margin: float = 2.0,
    alpha: float = 1.0,
    ignore_index: int = -1,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""ClusterNet: pairwise KL on soft cluster assignments (must-link / cannot-link) + k-means.

    With the soft assignments :math:`p_i = \operatorname{softmax}(-\|z_i - \mu_k\|^2)_k` of the
    embeddings to the cluster centres :math:`\mu_k` and, for every ordered pair :math:`(i, j)`,
    :math:`i \ne j`, of labelled samples,

    .. math::
        \ell_{ij} = \begin{cases}
            \mathrm{KL}(p_i \,\|\, p_j) & y_i = y_j \ \text{(must-link)} \\
            \max\big(0,\ m - \mathrm{KL}(p_i \,\|\, p_j)\big) & y_i \ne y_j \ \text{(cannot-link)}
        \end{cases}
        \qquad
        c_i = \sum_k p_{ik} \|z_i - \mu_k\|^2

    (the ordered pairs make the KL symmetric), the loss is

    .. math::
        \mathcal{L} = \frac{1}{|P|} \sum_{(i,j) \in P} \ell_{ij}
                      + \alpha\, \frac{1}{N} \sum_i c_i

    where :math:`P` are the ordered labelled pairs and :math:`c_i` is the soft k-means
    distortion of every sample (the unlabelled ones included). Gradients reach the embeddings
    and the centres through both terms.

    **Formula from the abstract, not verified against the paper** (the text could not be read
    here and no official code was found): the abstract fixes a pairwise semantic-similarity
    loss on few labelled pairs combined with a constrained k-means loss on all data, with
    learnt centres. The pairwise KL / hinge form and ``m = 2`` are those of the KL-divergence
    contrastive loss of Hsu & Kira (arXiv 1511.06321) that pairwise-constraint clustering
    networks build on; the softmax of negative squared distances as the soft assignment and
    ``alpha = 1`` are our choices.

    Args:
        embeddings: ``[N, D]`` latent codes. labels: ``[N]`` integer class ids of the labelled
            samples and ``ignore_index`` for the unlabelled ones (the ids need not be cluster
            indices: only equality matters).
        centres: ``[K, D]`` cluster centres (the module's parameter).
        margin: :math:`m \ge 0`, the cannot-link KL margin (default 2).
        alpha: :math:`\alpha \ge 0`, weight of the k-means term (default 1).
        ignore_index: label of the unlabelled samples (default -1).
        ref_embeddings, ref_labels, indices: not supported (``ValueError``).
        reduction: ``"mean"`` (as above), ``"sum"`` (:math:`\sum_P \ell_{ij} + \alpha\sum_i c_i`)
            or ``"none"`` (``[N]``: :math:`\sum_j \ell_{ij} + \alpha c_i` per sample, summing to
            ``"sum"``). A batch with fewer than two labelled samples has no pair term.

    Paper: Shukla, Cheema, Anand, "Semi-Supervised Clustering with Neural Networks",
    arXiv 1806.01547.
    """
    _check_clusternet(margin=margin, alpha=alpha, ignore_index=ignore_index)
    check_matrix("embeddings", embeddings)
    check_matrix("centres", centres, dim=embeddings.shape[1])
    labels = check_labels("labels", labels, embeddings.shape[0], of="embeddings")
    check_same_device(embeddings=embeddings, labels=labels, centres=centres)
    if ref_embeddings is not None or ref_labels is not None or indices is not None:
        raise ValueError("clusternet takes no ref_embeddings / ref_labels / indices: its pairs "
                         "are the labelled pairs of the batch")
    dt = compute_dtype(embeddings.dtype)
    z, mu = embeddings.to(dt), centres.to(dt)
    d = squared_euclidean(z, mu)
    logp = torch.log_softmax(-d, dim=1)
    p = logp.exp()
    kmeans = (p * d).sum(1)
    # KL(p_i || p_j) for every ordered pair: sum_k p_ik (log p_ik - log p_jk)
    kl = (p * logp).sum(1, keepdim=True) - p @ logp.T
    labelled = labels != ignore_index
    n = labels.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=labels.device)
    pairs = labelled.unsqueeze(1) & labelled.unsqueeze(0) & ~eye
    same = labels.unsqueeze(1) == labels.unsqueeze(0)
    terms = torch.where(same, kl, torch.relu(margin - kl))
    terms = torch.where(pairs, terms, torch.zeros_like(terms))
    per_anchor = terms.sum(1)
    if reduction == "none":
        return per_anchor + alpha * kmeans
    if reduction == "sum":
        return per_anchor.sum() + alpha * kmeans.sum()
    pair_mean = reduce(per_anchor, "mean", count=pairs.sum().to(dt))
    return pair_mean + alpha * reduce(kmeans, "mean") + zero_loss(z, mu)


@register(
    "clusternet",
    family="metric-learning",
    kind="embeddings",
    paper=CLUSTERNET,
    arxiv="1806.01547",
    summary="mean over labelled pairs of KL(p_i||p_j) (must-link) or max(0, 2 - KL) "
    "(cannot-link) + mean_i sum_k p_ik ||z_i - mu_k||^2, p_i = softmax(-||z_i - mu||^2)",
    reduction="per sample",
    example_hparams=EXAMPLE,
)
class ClusterNetLoss(ProxyLossModule, function=clusternet_loss,
                     check=_check_clusternet | PROXY_SHAPE):
    """Module form of :func:`clusternet_loss`: ``proxies`` are the ``num_classes`` (= ``K``)
    learnt cluster centres of dimension ``embedding_dim`` (standard normal initialisation; copy
    e.g. k-means centres of the codes into ``proxies`` to start from a clustering)."""
