"""Few-shot (episode) losses: ProtoNet, and the Proto-Triplet and ICNN losses of SuSana Distancia.

Kind ``episode``: ``loss(support[Ns, D], support_labels[Ns], query[Nq, D], query_labels[Nq])``.
Labels may be any integers, of any integer dtype (converted to int64; bool labels are a
``ValueError``); the classes of an episode are those present in the support set, and a query
label absent from it is a ``ValueError``. Prototypes are the class means of the support
embeddings (classes in ascending label order). Half-precision inputs are computed in float32
and the loss is returned in float32 (:func:`losslab._core.compute_dtype`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from losslab._core import (
    LossModule,
    Reduction,
    check_labels,
    check_matrix,
    check_same_device,
    compute_dtype,
    reduce,
    require,
)
from losslab._hparams import Choice, Int, Real, hparams
from losslab._ops.icnn import icnn_effective_k, icnn_score_from_neighbours
from losslab.distances import euclidean, squared_euclidean
from losslab.registry import register

__all__ = [
    "Episode",
    "ICNNLoss",
    "ProtoNetLoss",
    "ProtoTripletLoss",
    "icnn_loss",
    "make_episode",
    "proto_triplet_loss",
    "protonet_loss",
]

SUSANA = (
    "SuSana Distancia is all you need: Enforcing class separability in metric learning via "
    "two novel distance-based loss functions for few-shot image classification"
)
PROTONET = "Prototypical Networks for Few-shot Learning"


@dataclass(frozen=True)
class Episode:
    """A validated episode.

    Attributes:
        classes: ``[C]`` sorted class labels present in the support set.
        support_index: ``[Ns]`` class index (0..C-1) of each support row.
        query_index: ``[Nq]`` class index of each query row.
        prototypes: ``[C, D]`` class means of the support embeddings.
        dtype: the inputs' dtype (the embeddings above are in the compute dtype, float32 for
            half inputs, which is also the dtype of the losses' results).

    The labels are int64 whatever integer dtype was passed.

    ``valid``: ``None``, except for an episode built with ``pad=True`` under ``torch.compile``
    (:func:`make_episode`): then ``[C]`` bool, the class slots that are real (the others are
    padding, with a zero prototype, to be masked by the loss).
    """

    support: Tensor
    support_labels: Tensor
    query: Tensor
    query_labels: Tensor
    classes: Tensor
    support_index: Tensor
    query_index: Tensor
    prototypes: Tensor
    dtype: torch.dtype
    valid: Tensor | None = None

    @property
    def n_classes(self) -> int:
        return int(self.classes.shape[0])


def _padded_classes(labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``torch.unique(labels, sorted=True, return_inverse=True)`` with a static size: the
    classes padded to ``Ns`` slots (padding repeats the largest label, so ``searchsorted``
    still finds every real class first), the inverse indices, and the ``[Ns]`` mask of the real
    slots. No data-dependent shape (``torch.unique`` is a graph break under compile)."""
    srt, order = labels.sort(stable=True)
    first = torch.ones_like(srt, dtype=torch.bool)
    first[1:] = srt[1:] != srt[:-1]
    rank = first.cumsum(0) - 1  # class index of each sorted label
    inverse = torch.empty_like(rank).scatter_(0, order, rank)
    classes = srt[-1:].expand(srt.shape[0]).clone().scatter_(0, rank, srt)
    valid = torch.arange(srt.shape[0], device=srt.device) <= rank[-1]
    return classes, inverse, valid


def make_episode(
    support: Tensor, support_labels: Tensor, query: Tensor, query_labels: Tensor,
    *, pad: bool = False,
) -> Episode:
    """Validate an episode and compute its prototypes (the class means of the support set).

    Labels of any integer dtype are accepted (converted to int64, so that support and query
    labels of different integer dtypes match); bool labels are a ``ValueError``.

    ``pad=True`` (for a loss that masks ``Episode.valid``): under ``torch.compile`` the classes
    are padded to the static bound ``Ns`` instead of the data-dependent number of classes (no
    graph break); eagerly it changes nothing.
    """
    check_matrix("support", support)
    check_matrix("query", query, dim=support.shape[1])
    if query.dtype != support.dtype:
        raise ValueError(
            f"support and query must have one dtype, got {support.dtype} and {query.dtype}"
        )
    support_labels = check_labels("support_labels", support_labels, support.shape[0],
                                  of="support")
    query_labels = check_labels("query_labels", query_labels, query.shape[0], of="query")
    check_same_device(
        support=support, query=query, support_labels=support_labels, query_labels=query_labels
    )
    valid: Tensor | None = None
    if pad and torch.compiler.is_compiling():
        classes, support_index, valid = _padded_classes(support_labels)
    else:
        classes, support_index = torch.unique(support_labels, sorted=True, return_inverse=True)
    query_index = torch.searchsorted(classes, query_labels.contiguous())
    query_index = query_index.clamp_max(classes.shape[0] - 1)
    missing = classes[query_index] != query_labels
    require(~missing, lambda: (  # an async assert under compile, no graph break
        f"query_labels has class(es) {sorted(set(query_labels[missing].tolist()))} absent "
        f"from support_labels (support classes: {classes.tolist()})"))
    dtype = support.dtype
    support, query = support.to(compute_dtype(dtype)), query.to(compute_dtype(dtype))
    n_slots = classes.shape[0]
    # the class sizes with a static shape (bincount's depends on the values); a padded slot
    # has none (its prototype is 0, masked by the loss), a real class at least one
    counts = torch.zeros(n_slots, dtype=support.dtype, device=support.device).index_add_(
        0, support_index, torch.ones_like(support_index, dtype=support.dtype))
    sums = torch.zeros(
        n_slots, support.shape[1], dtype=support.dtype, device=support.device
    ).index_add(0, support_index, support)
    prototypes = sums / counts.clamp_min(1.0).unsqueeze(1)
    return Episode(
        support, support_labels, query, query_labels, classes, support_index, query_index,
        prototypes, dtype, valid,
    )


# --------------------------------------------------------------------------------------------
# ProtoNet
# --------------------------------------------------------------------------------------------


def protonet_loss(
    support: Tensor,
    support_labels: Tensor,
    query: Tensor,
    query_labels: Tensor,
    *,
    temperature: float = 1.0,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Prototypical-network loss: cross-entropy over negative squared distances to prototypes.

    .. math::
        \ell_q = -\log \frac{\exp(-\|f(q) - c_{y_q}\|^2 / T)}{\sum_n \exp(-\|f(q) - c_n\|^2 / T)}

    with :math:`c_n` the mean of the support embeddings of class :math:`n`.

    Args:
        support: ``[Ns, D]`` support embeddings; ``support_labels``: ``[Ns]`` integers.
        query: ``[Nq, D]`` query embeddings; ``query_labels``: ``[Nq]`` integers, each present
            in ``support_labels``.
        temperature: ``T`` (default 1, as in the ProtoNet paper and the SuSana Distancia code).
        reduction: ``"mean"`` over queries, ``"sum"``, or ``"none"`` (``[Nq]``).

    Paper: Snell, Swersky, Zemel, "Prototypical Networks for Few-shot Learning", arXiv 1703.05175.
    """
    _check_protonet(temperature=temperature)
    ep = make_episode(support, support_labels, query, query_labels, pad=True)
    logits = -squared_euclidean(ep.query, ep.prototypes) / temperature
    if ep.valid is not None:  # padded class slots (under torch.compile) take no mass
        logits = logits.masked_fill(~ep.valid, float("-inf"))
    per_query = F.cross_entropy(logits, ep.query_index, reduction="none")
    return reduce(per_query, reduction)


_check_protonet = hparams(temperature=Real(gt=0))


@register(
    "protonet",
    family="few-shot",
    kind="episode",
    paper=PROTONET,
    arxiv="1703.05175",
    summary="CE over logits -||q - c_n||^2 / T, c_n = class mean of the support",
    peers=("easyfsl.methods.PrototypicalNetworks",),
    reduction="per query",
    degenerate=("one_class",),
)
class ProtoNetLoss(LossModule, function=protonet_loss, check=_check_protonet):
    """Module form of :func:`protonet_loss`."""


# --------------------------------------------------------------------------------------------
# Proto-Triplet
# --------------------------------------------------------------------------------------------


def proto_triplet_loss(
    support: Tensor,
    support_labels: Tensor,
    query: Tensor,
    query_labels: Tensor,
    *,
    margin: float = 0.5,
    eps: float = 1e-6,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Proto-Triplet loss: a triplet loss with the query as anchor, its own prototype as the
    positive and the nearest other prototype as the negative.

    .. math::
        \ell_q = \max\big(0,\; d(q, c_{y_q}) - \min_{n \ne y_q} d(q, c_n) + m\big),
        \qquad d(a, b) = \sqrt{\|a - b\|^2 + \varepsilon}

    The distance is euclidean (not squared), with ``eps = 1e-6`` inside the square root, and
    ``m = 0.5``: both are the values of the authors' released code (the margin is never
    overridden in their scripts). Gradients reach the support through the prototypes. An
    episode with a single class has no negative: the loss is 0 with zero gradient.

    Args:
        support, support_labels, query, query_labels: the episode (see module docstring).
        margin: ``m`` (default 0.5). eps: inside the square root (default 1e-6).
        reduction: ``"mean"`` over queries (as the paper), ``"sum"``, or ``"none"`` (``[Nq]``).

    Paper: Mendez-Ruiz et al., "SuSana Distancia is all you need", arXiv 2305.09062.
    """
    _check_proto_triplet(margin=margin, eps=eps)
    ep = make_episode(support, support_labels, query, query_labels, pad=True)
    d = euclidean(ep.query, ep.prototypes, eps=eps)
    own = F.one_hot(ep.query_index, ep.n_classes).bool()
    if ep.valid is not None:  # padded class slots (under torch.compile) are no negative
        own = own | ~ep.valid
    d_pos = d.gather(1, ep.query_index.unsqueeze(1)).squeeze(1)
    d_neg = d.masked_fill(own, float("inf")).min(dim=1).values
    per_query = F.relu(d_pos - d_neg + margin)
    return reduce(per_query, reduction)


_check_proto_triplet = hparams(margin=Real(ge=0), eps=Real(ge=0))


@register(
    "proto_triplet",
    family="few-shot",
    kind="episode",
    paper=SUSANA,
    arxiv="2305.09062",
    summary="mean_q max(0, d(q, c_yq) - min_{n!=yq} d(q, c_n) + m), d = sqrt(||.||^2 + 1e-6)",
    reduction="per query",
    degenerate=("one_class",),
)
class ProtoTripletLoss(LossModule, function=proto_triplet_loss, check=_check_proto_triplet):
    """Module form of :func:`proto_triplet_loss`."""


# --------------------------------------------------------------------------------------------
# ICNN
# --------------------------------------------------------------------------------------------

ICNNVariant = Literal["support", "query", "full"]
DropFirst = Literal[True, "auto"]


def _icnn_score_of_sets(
    origin: Tensor,
    origin_labels: Tensor,
    target: Tensor | None,
    target_labels: Tensor | None,
    *,
    k: int,
    ipc: int | None,
    drop_first: bool | str,
    degenerate_gamma: str,
    eps: float,
) -> Tensor:
    """ICNN score of ``origin`` against ``target`` (``None``: against itself), differentiable."""
    same_set = target is None
    if target is None or target_labels is None:
        target, target_labels = origin, origin_labels
    m = target.shape[0]
    k_eff, reduced = icnn_effective_k(k, m)
    window = k_eff + 1 if ipc is None else ipc
    d = euclidean(origin, target, eps=eps)
    if drop_first is True:
        # Released behaviour: take ipc + 1 neighbours and drop the nearest, assumed to be the
        # point itself -- also when the target is a different set (then a real neighbour).
        width = min(window + 1, m)
        values, index = d.topk(width, dim=1, largest=False, sorted=True)
        values, index = values[:, 1:], index[:, 1:]
    else:
        if same_set:
            eye = torch.eye(m, dtype=torch.bool, device=d.device)
            d = d.masked_fill(eye, float("inf"))
        width = min(window, m - 1 if same_set else m)
        values, index = d.topk(width, dim=1, largest=False, sorted=True)
    same = target_labels[index] == origin_labels.unsqueeze(1)
    gamma_one = reduced and degenerate_gamma == "one"
    score = icnn_score_from_neighbours(values, same, k_eff, gamma_one=gamma_one)
    # topk never picks a NaN (or an infinite) distance: a non-finite target point would drop
    # out of every window and leave a plausible score. Propagate it (value and gradient).
    finite = torch.isfinite(origin).all() & torch.isfinite(target).all()
    return score * torch.where(finite, 1.0, float("nan")).to(score.dtype)


def icnn_loss(
    support: Tensor,
    support_labels: Tensor,
    query: Tensor,
    query_labels: Tensor,
    *,
    variant: ICNNVariant = "full",
    k: int = 4,
    ipc: int | None = None,
    query_targets: Literal["support", "prototypes"] = "support",
    drop_first: DropFirst = True,
    degenerate_gamma: Literal["one", "compute"] = "one",
    eps: float = 1e-6,
) -> Tensor:
    r"""ICNN loss: ``-log(ICNN score)`` of the episode's embeddings.

    The ICNN score (see :mod:`losslab.metrics.icnn`) rewards same-class nearest neighbours that
    are close relative to the nearest other-class neighbour, other-class neighbours that are
    far, and a high fraction of same-class neighbours. It lies in ``[0.25, 1]``, so the loss
    lies in ``[0, log 4]``. It is a set-level loss: there is no per-query term and no
    ``reduction``.

    Variants (the ``--losses`` tokens of the released code):

    * ``"support"`` (``suppicnn``): the support set against itself; ``k=4``, window ``k+1``.
    * ``"query"`` (``queryicnn``): queries against the support points, or against the
      prototypes with ``query_targets="prototypes"``.
    * ``"full"`` (``fullicnn``, default: the variant the paper combines with Proto-Triplet):
      support and queries together, with the nearest other-class neighbour searched in a window
      of ``ipc`` = the largest class size of the set (``shots + queries`` in a balanced
      episode), as the released code does. When that window is narrower than ``k`` (e.g.
      1 shot and 1 query), the released code uses only the window's columns but divides the
      same-class count of gamma by ``k``; so does this implementation.

    Faithful quirks, with switches:

    * ``drop_first=True`` (released): ``ipc + 1`` neighbours are taken and the nearest is
      dropped, assumed to be the point itself. In the ``"query"`` variant the target is another
      set, so this drops the nearest real support point or prototype. ``drop_first="auto"``
      excludes exact self-matches instead and drops nothing when the sets differ.
    * ``k`` is reduced to ``m - 2`` when ``k + 2 >= m`` (``m`` target points) and then the
      released code forces ``gamma = 1`` (``degenerate_gamma="one"``), e.g. for queries
      against 5 prototypes. ``degenerate_gamma="compute"`` computes gamma with the reduced k.

    Args:
        support, support_labels, query, query_labels: the episode (see module docstring).
        variant: ``"support" | "query" | "full"``.
        k: neighbours (paper: 4). ipc: window for the nearest other-class neighbour (default:
            ``k + 1``, or the largest class size for ``"full"``).
        query_targets: ``"support"`` or ``"prototypes"`` (``"query"`` variant only).
        drop_first: ``True`` (released) or ``"auto"``.
        degenerate_gamma: ``"one"`` (released) or ``"compute"``.
        eps: inside the euclidean square root (released: 1e-6).

    Paper: Mendez-Ruiz et al., "SuSana Distancia is all you need", arXiv 2305.09062.
    """
    _check_icnn(variant=variant, k=k, ipc=ipc, query_targets=query_targets,
                drop_first=drop_first, degenerate_gamma=degenerate_gamma, eps=eps)
    ep = make_episode(support, support_labels, query, query_labels)
    opts = {"k": k, "drop_first": drop_first, "degenerate_gamma": degenerate_gamma, "eps": eps}
    if variant == "support":
        score = _icnn_score_of_sets(ep.support, ep.support_labels, None, None, ipc=ipc, **opts)
    elif variant == "query":
        if query_targets == "prototypes":
            target, target_labels = ep.prototypes, ep.classes
        else:
            target, target_labels = ep.support, ep.support_labels
        score = _icnn_score_of_sets(
            ep.query, ep.query_labels, target, target_labels, ipc=ipc, **opts
        )
    else:
        points = torch.cat([ep.support, ep.query])
        labels = torch.cat([ep.support_labels, ep.query_labels])
        window = ipc if ipc is not None else int(torch.unique(labels, return_counts=True)[1].max())
        score = _icnn_score_of_sets(points, labels, None, None, ipc=window, **opts)
    return -torch.log(score)


_check_icnn = hparams(
    variant=Choice("support", "query", "full"),
    k=Int(ge=1),
    ipc=Int(ge=1, optional=True),
    query_targets=Choice("support", "prototypes"),
    drop_first=Choice(True, "auto"),
    degenerate_gamma=Choice("one", "compute"),
    eps=Real(ge=0),
)


@register(
    "icnn",
    family="few-shot",
    kind="episode",
    paper=SUSANA,
    arxiv="2305.09062",
    summary="-log ICNN score: ((lambda_sc + lambda_dc)/2 + gamma)/2 over k=4 nearest neighbours",
    reduction=None,
    degenerate=("one_class",),
)
class ICNNLoss(LossModule, function=icnn_loss, check=_check_icnn):
    """Module form of :func:`icnn_loss`."""
