"""Few-shot (episode) losses: ProtoNet, the Proto-Triplet and ICNN losses of SuSana Distancia,
and the transductive Laplacian-regularised K-means objective (:func:`laplacian_kmeans_loss`).

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
    "LaplacianKMeans",
    "LaplacianKMeansLoss",
    "ProtoNetLoss",
    "ProtoTripletLoss",
    "clustering_affinity",
    "icnn_loss",
    "laplacian_kmeans",
    "laplacian_kmeans_energy",
    "laplacian_kmeans_loss",
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
    ipc: int | Tensor | None,
    drop_first: bool | str,
    degenerate_gamma: str,
    eps: float,
    target_valid: Tensor | None = None,
) -> Tensor:
    """ICNN score of ``origin`` against ``target`` (``None``: against itself), differentiable.

    ``ipc`` may be a 0-d integer tensor (a data-dependent window, under ``torch.compile``):
    then every target point is taken, sorted, and the columns past the window are masked
    (:func:`icnn_score_from_neighbours`'s ``width``): the same value and gradient as the
    window of that width (up to exactly tied distances at its edge, where a ``topk`` of
    another width may keep another of the tied points).

    ``target_valid``: ``None``, or the ``[m]`` bool mask of the real target points (the
    padded class slots of a ``pad=True`` episode under ``torch.compile``, with ``target`` its
    prototypes): the padded ones are at distance ``inf`` (sorted last, masked out of every
    window), and ``k_eff``, ``reduced`` and the window are 0-d tensors computed from the
    number of real targets (the data-dependent ``k`` of :func:`icnn_score_from_neighbours`).
    """
    same_set = target is None
    if same_set and target_valid is not None:
        raise ValueError("target_valid needs a target set")
    if target is None or target_labels is None:
        target, target_labels = origin, origin_labels
    m = target.shape[0]
    k_eff: int | Tensor
    reduced: bool | Tensor
    n_real: int | Tensor  # the number of real targets
    if target_valid is None:
        n_real = m
        k_eff, reduced = icnn_effective_k(k, m)
    else:
        n_real = target_valid.sum()
        k_eff, reduced = icnn_effective_k(k, n_real)
    window = k_eff + 1 if ipc is None else ipc
    real: Tensor | None = None  # the number of real columns of a static-width window
    d = euclidean(origin, target, eps=eps)
    if target_valid is not None:
        d = d.masked_fill(~target_valid, float("inf"))
    if drop_first is True:
        # Released behaviour: take ipc + 1 neighbours and drop the nearest, assumed to be the
        # point itself -- also when the target is a different set (then a real neighbour).
        if isinstance(n_real, Tensor):
            width, real = m, n_real.clamp_max(window + 1) - 1
        elif isinstance(window, Tensor):
            width, real = m, (window + 1).clamp_max(m) - 1
        else:
            width = min(window + 1, m)
        values, index = d.topk(width, dim=1, largest=False, sorted=True)
        values, index = values[:, 1:], index[:, 1:]
    else:
        if same_set:
            eye = torch.eye(m, dtype=torch.bool, device=d.device)
            d = d.masked_fill(eye, float("inf"))
        bound = m - 1 if same_set else m
        if isinstance(n_real, Tensor):
            width, real = bound, n_real.clamp_max(window)  # (a target set: not same_set)
        elif isinstance(window, Tensor):
            width, real = bound, window.clamp_max(bound)
        else:
            width = min(window, bound)
        values, index = d.topk(width, dim=1, largest=False, sorted=True)
    same = target_labels[index] == origin_labels.unsqueeze(1)
    gamma_one = reduced if degenerate_gamma == "one" else False
    score = icnn_score_from_neighbours(values, same, k_eff, gamma_one=gamma_one, width=real)
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
      same-class count of gamma by ``k``; so does this implementation. Under
      ``torch.compile`` that window has a static width (every other point, sorted) with the
      columns past the largest class size masked: the same value and gradient, no graph
      break. The ``"query"`` variant against the prototypes also traces without a graph
      break: the classes are padded to ``Ns`` slots (their number is data-dependent), the
      padded prototypes are at distance ``inf`` and masked out of every window, and the
      reduced ``k``, the window and the forced gamma are tensors of the number of real
      classes (fewer than 3 classes is then an asynchronous assert, not a ``ValueError``).

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
    # the classes padded under compile (no torch.unique; Episode.valid marks the real ones)
    ep = make_episode(support, support_labels, query, query_labels, pad=True)
    opts = {"k": k, "drop_first": drop_first, "degenerate_gamma": degenerate_gamma, "eps": eps}
    if variant == "support":
        score = _icnn_score_of_sets(ep.support, ep.support_labels, None, None, ipc=ipc, **opts)
    elif variant == "query":
        valid: Tensor | None = None
        if query_targets == "prototypes":
            # under compile: padded class slots (zero prototypes), masked out of every window
            target, target_labels, valid = ep.prototypes, ep.classes, ep.valid
        else:
            target, target_labels = ep.support, ep.support_labels
        score = _icnn_score_of_sets(
            ep.query, ep.query_labels, target, target_labels, ipc=ipc, target_valid=valid,
            **opts
        )
    else:
        points = torch.cat([ep.support, ep.query])
        labels = torch.cat([ep.support_labels, ep.query_labels])
        window: int | Tensor
        if ipc is not None:
            window = ipc
        elif torch.compiler.is_compiling():
            # the largest class size as a tensor (its int would break the graph): the window
            # then has the static width of the whole set, the columns past it masked
            window = (labels.unsqueeze(1) == labels.unsqueeze(0)).sum(1).max()
        else:
            window = int(torch.unique(labels, return_counts=True)[1].max())
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


# --------------------------------------------------------------------------------------------
# Transductive clustering: prototype K-means + Laplacian regularisation (bound optimiser)
# --------------------------------------------------------------------------------------------

LAPKM = "Transductive Few-Shot Learning: Clustering is All You Need?"
Affinity = Literal["knn", "gaussian"]


def clustering_affinity(points: Tensor, *, affinity: Affinity = "knn", knn: int = 3,
                        sigma: float | None = None) -> Tensor:
    r"""The ``[N, N]`` affinity :math:`w_{pq}` of the Laplacian term (no gradient).

    * ``"knn"``: :math:`w_{pq} = 1` when :math:`q` is one of the ``knn`` nearest neighbours of
      :math:`p` (itself excluded) or :math:`p` one of :math:`q`'s, else 0 (symmetric, binary;
      the graph of the authors' few-shot code).
    * ``"gaussian"``: :math:`w_{pq} = \exp(-\|x_p - x_q\|^2 / 2\sigma^2)`, diagonal included, a
      positive semi-definite kernel (the case of the paper's convergence guarantee); ``sigma``
      defaults to the root mean squared distance of the points to their ``knn`` nearest
      neighbours (the official ``estimate_sigma``).
    """
    x = points.detach()
    n = x.shape[0]
    d = squared_euclidean(x, x)
    k = max(min(knn, n - 1), 0)
    if affinity == "gaussian":
        if sigma is None:
            if k == 0:
                s2 = torch.ones((), dtype=x.dtype, device=x.device)
            else:
                eye = torch.eye(n, dtype=torch.bool, device=x.device)
                kth = d.masked_fill(eye, float("inf")).topk(k, dim=1, largest=False).values
                s2 = kth.mean().clamp_min(torch.finfo(x.dtype).tiny)
        else:
            s2 = torch.full((), float(sigma) ** 2, dtype=x.dtype, device=x.device)
        return torch.exp(-d / (2 * s2))
    w = torch.zeros_like(d)
    if k > 0:
        eye = torch.eye(n, dtype=torch.bool, device=x.device)
        idx = d.masked_fill(eye, float("inf")).topk(k, dim=1, largest=False).indices
        w = w.scatter(1, idx, 1.0)
    return torch.maximum(w, w.T)


def laplacian_kmeans_energy(points: Tensor, assignments: Tensor, prototypes: Tensor,
                            affinity: Tensor, *, lam: float) -> Tensor:
    r"""Per-point terms ``[N]`` of the relaxed objective (their sum is the objective):

    .. math::
        e_p = \sum_k z_{pk} \|x_p - m_k\|^2 + \sum_k z_{pk} \log z_{pk}
              - \tfrac{\lambda}{2} \sum_q w_{pq}\, z_p^\top z_q

    ``points [N, D]``, ``assignments [N, K]`` (rows on the simplex), ``prototypes [K, D]``,
    ``affinity [N, N]`` symmetric. ``0 log 0 = 0``: a one-hot (labelled) row has no entropy.
    """
    unary = (assignments * squared_euclidean(points, prototypes)).sum(1)
    barrier = torch.special.xlogy(assignments, assignments).sum(1)
    pairwise = ((affinity @ assignments) * assignments).sum(1)
    return unary + barrier - 0.5 * lam * pairwise


def _weighted_means(points: Tensor, assignments: Tensor) -> Tensor:
    mass = assignments.sum(0)
    return (assignments.T @ points) / mass.clamp_min(torch.finfo(points.dtype).tiny).unsqueeze(1)


def _bound_step(unary: Tensor, z: Tensor, affinity: Tensor, free: Tensor, lam: float,
                valid: Tensor | None) -> Tensor:
    """One parallel bound update of the free rows: ``z_p ∝ exp(-a_p + λ Σ_q w_pq z_q)``."""
    logits = -unary + lam * (affinity @ z)
    if valid is not None:
        logits = logits.masked_fill(~valid, float("-inf"))
    return torch.where(free.unsqueeze(1), torch.softmax(logits, dim=1), z)


def _lapkm_init(ep: Episode) -> tuple[Tensor, Tensor, Tensor]:
    """Points (support then query), initial assignments (support one-hot, queries by their
    nearest prototype in the soft sense) and the mask of the free (query) rows."""
    points = torch.cat([ep.support, ep.query]).detach()
    n_s, k = ep.support.shape[0], ep.prototypes.shape[0]
    fixed = F.one_hot(ep.support_index, k).to(points.dtype)
    logits = -squared_euclidean(ep.query.detach(), ep.prototypes.detach())
    if ep.valid is not None:
        logits = logits.masked_fill(~ep.valid, float("-inf"))
    z = torch.cat([fixed, torch.softmax(logits, dim=1)])
    free = torch.arange(points.shape[0], device=points.device) >= n_s
    return points, z, free


@dataclass(frozen=True)
class LaplacianKMeans:
    """Result of :func:`laplacian_kmeans`.

    Attributes:
        assignments: ``[Nq, C]`` soft query-to-class assignments (classes in ascending label
            order, ``classes``); ``predictions``: ``[Nq]`` the labels of their argmax.
        prototypes: ``[C, D]``. energies: the objective after every bound step and every
            prototype step (non-increasing for a positive semi-definite affinity).
    """

    assignments: Tensor
    predictions: Tensor
    prototypes: Tensor
    classes: Tensor
    energies: tuple[float, ...]


def laplacian_kmeans(
    support: Tensor, support_labels: Tensor, query: Tensor, *, lam: float = 1.0,
    affinity: Affinity = "knn", knn: int = 3, sigma: float | None = None,
    outer_iters: int = 10, bound_iters: int = 20, tol: float = 1e-6,
) -> LaplacianKMeans:
    """Transductive inference of arXiv 2106.09516 (see :func:`laplacian_kmeans_loss` for the
    objective): block-coordinate descent alternating ``bound_iters`` parallel bound updates of
    the query assignments with a prototype update, ``outer_iters`` times, each loop stopping
    early once the objective changes by less than ``tol`` (relative). No gradient."""
    _check_lapkm(lam=lam, affinity=affinity, knn=knn, sigma=sigma, outer_iters=outer_iters,
                 bound_iters=bound_iters)
    _check_tol(tol=tol)
    check_matrix("support", support)
    check_matrix("query", query, dim=support.shape[1])
    s_lab = check_labels("support_labels", support_labels, support.shape[0], of="support")
    with torch.no_grad():  # the query labels are unknown: any support label passes validation
        ep = make_episode(support.detach(), s_lab, query.detach(),
                          s_lab[:1].expand(query.shape[0]).to(query.device))
        points, z, free = _lapkm_init(ep)
        w = clustering_affinity(points, affinity=affinity, knn=knn, sigma=sigma)
        m = ep.prototypes
        energies: list[float] = []

        def energy() -> float:
            return float(laplacian_kmeans_energy(points, z, m, w, lam=lam).sum())

        last = energy()
        energies.append(last)
        for _ in range(outer_iters):
            start = last
            unary = squared_euclidean(points, m)
            for _ in range(bound_iters):
                z = _bound_step(unary, z, w, free, lam, None)
                e = energy()
                energies.append(e)
                done = tol > 0 and abs(e - last) <= tol * abs(last)
                last = e
                if done:
                    break
            m = _weighted_means(points, z)
            last = energy()
            energies.append(last)
            if tol > 0 and abs(start - last) <= tol * abs(start):
                break
        zq = z[free]
    return LaplacianKMeans(zq, ep.classes[zq.argmax(1)], m, ep.classes, tuple(energies))


def laplacian_kmeans_loss(
    support: Tensor,
    support_labels: Tensor,
    query: Tensor,
    query_labels: Tensor,
    *,
    lam: float = 1.0,
    affinity: Affinity = "knn",
    knn: int = 3,
    sigma: float | None = None,
    outer_iters: int = 10,
    bound_iters: int = 20,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""The transductive clustering objective of arXiv 2106.09516 at its bound-optimised
    assignments: prototype K-means + Laplacian regularisation + supervision constraints.

    With the episode's points :math:`x_p` (support then query), soft assignments
    :math:`z_p \in \Delta_C` and prototypes :math:`m_k`:

    .. math::
        \mathcal{E}(Z, M) = \sum_p \sum_k z_{pk} \|x_p - m_k\|^2
            \;-\; \frac{\lambda}{2} \sum_{p, q} w_{pq}\, z_p^\top z_q
            \;+\; \sum_p z_p^\top \log z_p ,
        \qquad z_p = e_{y_p} \text{ for } p \in S

    The K-means (prototype) term is convex, the Laplacian term concave for a positive
    semi-definite affinity, and the negative-entropy barrier is the convex relaxation of the
    assignment constraints (the concave-convex relaxation of the paper). The supervision
    constraints fix the support rows to their one-hot labels. The bound optimiser linearises
    the concave term at the current :math:`Z^i`; the minimiser of the bound is the parallel,
    independent update of every query row

    .. math::
        z_{qk}^{i+1} \propto \exp\big(-\|x_q - m_k\|^2 + \lambda \sum_p w_{pq} z_{pk}^i\big)

    alternated with the prototype update :math:`m_k = \sum_p z_{pk} x_p / \sum_p z_{pk}`. For a
    PSD affinity each step can only lower :math:`\mathcal{E}` (tested); the kNN graph is not
    PSD, so there the decrease is not guaranteed.

    The loss runs ``outer_iters`` x ``bound_iters`` updates without gradient (fixed counts, no
    early stop: :func:`laplacian_kmeans` is the inference with early stopping and the energy
    trace), then evaluates :math:`\mathcal{E}` with gradient to the embeddings through
    :math:`x_p` and the prototypes :math:`m_k = \sum_p z^*_{pk} x_p / \sum_p z^*_{pk}`, the
    assignments :math:`Z^*` and the affinity held constant (exact by the envelope theorem at
    a converged fixed point with a locally constant kNN graph, checked against finite
    differences in the tests; a surrogate after finitely many steps).

    ``query_labels`` are only validated (the kind's call): transductive inference does not see
    them. The objective on its own is not a training loss (shrinking every embedding lowers
    it); it is the inference objective, e.g. to monitor or regularise an episode.

    Differences from the released code (``imtiazziko/SLK-few-shot``, ``SLK.py``,
    ``bound_update.py``): the released loop sets the support labels only to initialise the
    assignments and then lets the support rows move; here they stay fixed (the supervision
    constraints). The released update uses :math:`\lambda` with the double sum
    :math:`\lambda \sum_{p,q} w_{pq} z_p^\top z_q` in its energy, whose exact linearisation
    has :math:`2\lambda`; we halve the energy's Laplacian term so that update and energy agree.
    The paper's text beyond the abstract could not be read here: the objective is from the
    abstract and the official code.

    Args:
        support, support_labels, query, query_labels: the episode (see module docstring).
        lam: :math:`\lambda \ge 0`, the Laplacian weight (default 1; 0 is soft K-means with
            the support constraints, the paper's "standard clustering" case).
        affinity: ``"knn"`` (default, binary symmetric kNN graph) or ``"gaussian"`` (PSD
            kernel); see :func:`clustering_affinity`. knn: neighbours (default 3).
        sigma: Gaussian bandwidth (default: estimated from the ``knn``-th neighbour distance).
        outer_iters: prototype updates (default 10). bound_iters: bound updates per prototype
            update (default 20).
        reduction: ``"mean"`` over the points (support and query), ``"sum"`` (the objective),
            or ``"none"`` (``[Ns + Nq]``, support rows first).

    Paper: Ziko, Boudiaf, Dolz, Granger, Ben Ayed, "Transductive Few-Shot Learning: Clustering
    is All You Need?", arXiv 2106.09516.
    """
    _check_lapkm(lam=lam, affinity=affinity, knn=knn, sigma=sigma, outer_iters=outer_iters,
                 bound_iters=bound_iters)
    ep = make_episode(support, support_labels, query, query_labels, pad=True)
    with torch.no_grad():
        points, z, free = _lapkm_init(ep)
        w = clustering_affinity(points, affinity=affinity, knn=knn, sigma=sigma)
        m = ep.prototypes.detach()
        for _ in range(outer_iters):
            unary = squared_euclidean(points, m)
            for _ in range(bound_iters):
                z = _bound_step(unary, z, w, free, lam, ep.valid)
            m = _weighted_means(points, z)
    x = torch.cat([ep.support, ep.query])
    per_point = laplacian_kmeans_energy(x, z, _weighted_means(x, z), w, lam=lam)
    return reduce(per_point, reduction)


_check_lapkm = hparams(lam=Real(ge=0), affinity=Choice("knn", "gaussian"), knn=Int(ge=1),
                       sigma=Real(gt=0, optional=True), outer_iters=Int(ge=0),
                       bound_iters=Int(ge=1))
_check_tol = hparams(tol=Real(ge=0))


@register(
    "laplacian_kmeans",
    family="few-shot",
    kind="episode",
    paper=LAPKM,
    arxiv="2106.09516",
    summary="sum_p z_p.||x_p - m||^2 - lam/2 sum_pq w_pq z_p.z_q + sum z log z at the bound "
    "optimiser's query assignments; support rows fixed to their labels",
    reduction="per point (support, then query)",
    surrogate_gradient="the bound-optimised assignments and the affinity graph are held "
    "constant (exact only at a converged fixed point, by the envelope theorem)",
)
class LaplacianKMeansLoss(LossModule, function=laplacian_kmeans_loss, check=_check_lapkm):
    """Module form of :func:`laplacian_kmeans_loss`."""
