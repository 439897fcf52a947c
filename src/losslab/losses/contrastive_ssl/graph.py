"""Contrastive losses of graph self-supervised learning: PamC's meta-node contrastive loss for
graph clustering and StructComp's contrastive loss on structurally compressed nodes.

``pamc`` -- kind ``embeddings``: ``loss(z[N, D], clusters[N], *, edges=None,
edge_weight=None)``; the labels are the nodes' cluster assignments, the positives are the
graph's edges, the negatives are the cluster-level meta-nodes.

``structcomp`` -- kind ``paired``: ``loss(a[K, D], b[K, D])``, the encoder's outputs on two
compressed views of the graph's ``K`` partitions (:func:`compress_nodes`).

fp16/bf16 inputs are computed in float32 and the loss is returned in float32.
"""

from __future__ import annotations

import torch
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
from losslab._hparams import Real, hparams
from losslab._ops.paired import prepare_paired
from losslab.distances import normalize_rows
from losslab.losses.contrastive_ssl._common import inverse_temperature, two_view_logits
from losslab.registry import register

__all__ = [
    "PamCLoss",
    "StructCompLoss",
    "compress_nodes",
    "pamc_loss",
    "structcomp_loss",
]


# --------------------------------------------------------------------------------------------
# PamC
# --------------------------------------------------------------------------------------------

_check_pamc = hparams(tau=Real(gt=0))


def _check_edges(edges: Tensor | None, edge_weight: Tensor | None, n: int,
                 like: Tensor) -> tuple[Tensor, Tensor]:
    """``(edge_index [2, E], weight [E])``; no edges = the ``N`` self-loops only."""
    if edges is None:
        if edge_weight is not None:
            raise ValueError("edge_weight needs edges= (the [2, E] edge index it weights)")
        idx = torch.arange(n, device=like.device)
        return torch.stack([idx, idx]), torch.ones(n, dtype=like.dtype, device=like.device)
    if not isinstance(edges, Tensor) or edges.ndim != 2 or edges.shape[0] != 2 or (
            edges.is_floating_point() or edges.dtype == torch.bool):
        raise ValueError("edges must be an integer tensor of shape [2, E] (source and target "
                         f"node of each edge), got {getattr(edges, 'shape', type(edges))}")
    edges = edges.long()
    require((edges >= 0) & (edges < n), lambda: (  # an async assert under compile
        f"edges must index the {n} rows of embeddings, got values in "
        f"[{int(edges.min())}, {int(edges.max())}]"))
    if edge_weight is None:
        weight = torch.ones(edges.shape[1], dtype=like.dtype, device=like.device)
    else:
        if not isinstance(edge_weight, Tensor) or edge_weight.shape != (edges.shape[1],):
            raise ValueError(f"edge_weight must have shape [{edges.shape[1]}] (one weight per "
                             f"edge), got {getattr(edge_weight, 'shape', type(edge_weight))}")
        require(edge_weight >= 0, "edge_weight must be non-negative")
        weight = edge_weight.to(like.dtype)
    check_same_device(embeddings=like, edges=edges, edge_weight=weight)
    return edges, weight


def _cluster_slots(labels: Tensor) -> tuple[Tensor, Tensor]:
    """``torch.unique(labels, return_inverse=True)[1]`` with a static size, for
    ``torch.compile``: each label's cluster index (the rank of its value among the distinct
    values, as ``unique`` numbers them) and the ``[N]`` mask of the cluster slots in use (the
    first ``C``); ``N`` slots bound the ``C`` clusters. No data-dependent shape (``unique``
    and ``.item()`` are graph breaks)."""
    srt, order = labels.sort(stable=True)
    first = torch.ones_like(srt, dtype=torch.bool)
    first[1:] = srt[1:] != srt[:-1]
    rank = first.cumsum(0) - 1  # cluster index of each sorted label
    cluster = torch.empty_like(rank).scatter_(0, order, rank)
    used = torch.arange(srt.shape[0], device=srt.device) <= rank[-1]
    return cluster, used


def pamc_loss(
    embeddings: Tensor,
    labels: Tensor,
    *,
    edges: Tensor | None = None,
    edge_weight: Tensor | None = None,
    tau: float = 1.0,
) -> Tensor:
    r"""PamC: node-level positives from the graph, cluster-level (meta-node) negatives.

    With :math:`\hat c(u, v)` the cosine similarity, set to 0 for a node with itself, the
    graph's (weighted, possibly powered) adjacency :math:`A` and the meta-nodes
    :math:`m_c = \sum_{i: y_i = c} z_i` of the ``C`` clusters present in the batch,

    .. math::
        \mathcal{L} = -\frac{1}{|V^+|} \sum_{i \in V^+} \log \sum_j A_{ij}
            e^{\tau \hat c(z_i, z_j)}
          + \frac{1}{C} \sum_{c} \log \sum_{c'} e^{\tau \hat c(m_c, m_{c'})}

    -- the negatives of all node pairs are proxied by the ``C x C`` meta-node pairs, so the
    loss costs ``O(E + N C + C^2)`` instead of ``O(N^2)``. :math:`V^+` are the nodes with at
    least one edge of positive weight (the official code adds ``1e-10`` inside the log, which
    gives an edgeless node a constant ``23.03`` with zero gradient; here it is left out of
    the mean instead). A set-level loss (no reduction). Under ``torch.compile`` (no graph
    break) the clusters take ``N`` static slots, the empty ones masked out (the eager value
    and gradient), and the checks of ``edges`` and ``edge_weight`` values are asynchronous
    asserts (a ``RuntimeError`` when the graph runs instead of the eager ``ValueError``).

    Args:
        embeddings: ``[N, D]`` node embeddings ``z``.
        labels: ``[N]`` cluster assignment of each node (the official code uses the argmax
            of the soft assignment ``q``, detached).
        edges: ``[2, E]`` edge index of :math:`A` (both directions of an undirected edge,
            and the self-loops if the adjacency has them). ``None``: the ``N`` self-loops
            only (:math:`A = I`), where the node term is the constant 0.
        edge_weight: ``[E]`` non-negative weights of the edges (default 1; e.g. the entries
            of :math:`A^r`).
        tau: the multiplier :math:`\tau` of the similarities (default 1, the official
            code's ``--tau``; it multiplies, it is not divided by).

    Paper: Kulatilleke, Portmann, Chandra, "Efficient block contrastive learning via
    parameter-free meta-node approximation", arXiv 2209.14067. The formula is read from the
    official code (``gayanku/PAMC``, ``train.py``: ``NcontrastCCSP`` and the meta-node sum
    ``cc``); only the paper's abstract was found.
    """
    _check_pamc(tau=tau)
    check_matrix("embeddings", embeddings)
    n = embeddings.shape[0]
    labels = check_labels("labels", labels, n, of="embeddings")
    check_same_device(embeddings=embeddings, labels=labels)
    z = embeddings.to(compute_dtype(embeddings.dtype))
    edges, weight = _check_edges(edges, edge_weight, n, z)
    zn = normalize_rows(z)
    src, dst = edges[0], edges[1]
    sim = (zn[src] * zn[dst]).sum(1).masked_fill(src == dst, 0.0)
    # log sum_j A_ij exp(tau c_ij), in log space; an edge of weight 0 contributes nothing
    logw = torch.log(weight).masked_fill(weight == 0, float("-inf"))
    terms = tau * sim + logw
    row_max = torch.full((n,), float("-inf"), dtype=z.dtype, device=z.device)
    row_max = row_max.scatter_reduce(0, src, terms.detach(), "amax")
    has_pos = torch.isfinite(row_max)
    shift = torch.where(has_pos, row_max, torch.zeros_like(row_max))
    expd = torch.exp(terms - shift[src]).masked_fill(weight == 0, 0.0)
    sums = torch.zeros(n, dtype=z.dtype, device=z.device).index_add(0, src, expd)
    pos = torch.log(sums.masked_fill(~has_pos, 1.0)) + shift
    node_term = -(pos * has_pos).sum() / has_pos.sum().clamp(min=1)
    # meta-nodes of the clusters present
    used: Tensor | None = None
    if torch.compiler.is_compiling() and n:
        # N cluster slots (a static bound), the empty ones masked out of both sums: the eager
        # value and gradient (an empty slot's meta-node is 0 and takes no gradient)
        cluster, used = _cluster_slots(labels)
        c = n
    else:
        _, cluster = torch.unique(labels, return_inverse=True)
        c = int(cluster.max()) + 1 if n else 0
    meta = torch.zeros(c, z.shape[1], dtype=z.dtype, device=z.device).index_add(0, cluster, z)
    mn = normalize_rows(meta)
    msim = (mn @ mn.t()).masked_fill(torch.eye(c, dtype=torch.bool, device=z.device), 0.0)
    if used is None:
        meta_term = torch.logsumexp(tau * msim, 1).mean()
    else:
        lse = torch.logsumexp((tau * msim).masked_fill(~used, float("-inf")), 1)
        meta_term = lse.masked_fill(~used, 0.0).sum() / used.sum()
    return node_term + meta_term


@register(
    "pamc", family="contrastive-ssl", kind="embeddings",
    paper="Efficient block contrastive learning via parameter-free meta-node approximation",
    arxiv="2209.14067",
    summary="-mean_i log sum_j A_ij exp(tau cos(z_i, z_j)) + mean_c log sum_c' "
    "exp(tau cos(m_c, m_c')), meta-nodes m_c = sum of cluster c's embeddings",
    reduction=None, degenerate=("one_class",),
)
class PamCLoss(LossModule, function=pamc_loss, check=_check_pamc):
    """Module form of :func:`pamc_loss`: ``loss(z, clusters, edges=..., edge_weight=...)``."""

    function_only = ("edges", "edge_weight")  # call-time inputs, not hyperparameters

    def forward(self, embeddings: Tensor, labels: Tensor, *, edges: Tensor | None = None,
                edge_weight: Tensor | None = None, ref_embeddings: Tensor | None = None,
                ref_labels: Tensor | None = None, indices: object = None,
                index: Tensor | None = None) -> Tensor:
        for k, v in (("ref_embeddings", ref_embeddings), ("ref_labels", ref_labels),
                     ("indices", indices), ("index", index)):
            if v is not None:
                raise ValueError(f"pamc takes no {k}= argument (its positives are edges=)")
        return pamc_loss(embeddings, labels, edges=edges, edge_weight=edge_weight,
                         **self.call_kwargs())


# --------------------------------------------------------------------------------------------
# StructComp
# --------------------------------------------------------------------------------------------


def compress_nodes(x: Tensor, partition: Tensor, *, keep: float | None = None,
                   generator: torch.Generator | None = None) -> Tensor:
    r"""StructComp's compressed nodes :math:`X_c = P^\top X`: the mean feature of each part.

    ``partition[i]`` is node ``i``'s part in ``0 .. K-1`` (e.g. from METIS); every part must
    be non-empty. ``keep`` is the DropMember augmentation: each part's mean is taken over a
    random subset of ``max(1, floor(keep * m))`` of its ``m`` members (the official code keeps
    ``m // 2``, ``keep=0.5``). Returns ``[K, F]``.
    """
    check_matrix("x", x)
    partition = check_labels("partition", partition, x.shape[0], of="x")
    if keep is not None and not 0 < keep <= 1:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    if partition.numel() == 0 or int(partition.min()) < 0:
        raise ValueError("partition must hold part ids 0 .. K-1")
    k = int(partition.max()) + 1
    counts = torch.bincount(partition, minlength=k)
    if bool((counts == 0).any()):
        raise ValueError(f"every part 0 .. {k - 1} of partition must have a member; empty: "
                         f"{torch.nonzero(counts == 0).flatten().tolist()}")
    member = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    if keep is not None:
        # rank the members of each part at random and keep the first floor(keep * m)
        u = torch.rand(x.shape[0], generator=generator).to(x.device)
        order = torch.argsort(partition.double() * 2 + u.double())  # grouped by part
        start = torch.cumsum(counts, 0) - counts
        rank = torch.empty_like(partition)
        rank[order] = torch.arange(x.shape[0], device=x.device) - start[partition[order]]
        quota = (counts.double() * keep).floor().long().clamp(min=1)
        member = rank < quota[partition]
    w = member.to(x.dtype)
    sums = torch.zeros(k, x.shape[1], dtype=x.dtype, device=x.device).index_add(
        0, partition, x * w.unsqueeze(1))
    kept = torch.zeros(k, dtype=x.dtype, device=x.device).index_add(0, partition, w)
    return sums / kept.unsqueeze(1)


_check_structcomp = hparams(temperature=Real(gt=0))


def structcomp_loss(
    a: Tensor,
    b: Tensor,
    *,
    temperature: float = 0.5,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""StructComp's compressed contrastive loss (the GRACE instance).

    StructComp trains the encoder (an MLP: no message passing) on the graph's compressed
    nodes -- the ``K`` parts' mean features :math:`X_c = P^\top X` and a DropMember view of
    them (:func:`compress_nodes`) -- and moves its weights to the GNN for inference. The loss
    is the base model's contrastive loss over the ``K`` compressed nodes instead of the
    ``N`` nodes; for GRACE, with :math:`s` the cosine similarity and ``u = a, v = b`` (and in
    turn ``u = b, v = a``),

    .. math::
        \ell(u_k) = -\log \frac{e^{s(u_k, v_k)/\tau}}{\sum_{j} e^{s(u_k, v_j)/\tau}
            + \sum_{j \ne k} e^{s(u_k, u_j)/\tau}},

    averaged over both directions (the pair's value). Equal to
    ``infonce_loss(a, b, temperature=tau, negatives="both")`` -- what is StructComp's is the
    input: ``a``, ``b`` are the encoder's (projected) outputs on two compressed views, so the
    loss has ``K^2`` instead of ``N^2`` pairs.

    Args:
        a, b: ``[K, D]`` encoder outputs on the two compressed views (``K >= 2``).
        temperature: :math:`\tau` (default 0.5, the official GRACE setting).
        reduction: ``"mean"`` over the ``K`` compressed nodes, ``"sum"``, ``"none"`` (``[K]``).

    Paper: Zhang, Yang, Cao, Zhang, Huang, "StructComp: Substituting propagation with
    Structural Compression in Training Graph Contrastive Learning", ICLR 2024, arXiv
    2312.04865. The loss and the compression are read from the official code
    (``szzhang17/StructComp``, ``src/grace``); only the paper's abstract was found.
    """
    _check_structcomp(temperature=temperature)
    a, b = prepare_paired(a, b, normalize=True)
    k = a.shape[0]
    if k < 2:
        raise ValueError(f"structcomp needs at least 2 compressed nodes in a and b, got {k}")
    logits, positive, negative = two_view_logits(a, b, inverse_temperature(temperature, a),
                                                 "both", normalize=False)
    cand = negative.clone()
    cand[torch.arange(2 * k, device=a.device), positive] = True
    pos = logits.gather(1, positive.unsqueeze(1)).squeeze(1)
    per_anchor = torch.logsumexp(logits.masked_fill(~cand, float("-inf")), 1) - pos
    return reduce((per_anchor[:k] + per_anchor[k:]) / 2, reduction)


@register(
    "structcomp", family="contrastive-ssl", kind="paired",
    paper="StructComp: Substituting propagation with Structural Compression in Training Graph "
    "Contrastive Learning", arxiv="2312.04865",
    summary="GRACE's contrastive loss over the K compressed nodes (part means X_c = P^T X and "
    "their DropMember view) instead of the N nodes", reduction="per compressed node",
)
class StructCompLoss(LossModule, function=structcomp_loss, check=_check_structcomp):
    """Module form of :func:`structcomp_loss`."""
