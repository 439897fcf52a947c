r"""Unified Negative Pair Generation (UNPG; family ``metric-learning``, kind ``embeddings``):
ArcFace / CosFace with the batch's sample-to-sample negative pairs added to every softmax.

A margin-softmax face-recognition loss compares each sample with the class proxies only
(sample-to-proxy pairs); pair losses compare samples with samples. UNPG (Jung, Lee, Kim, Kim,
"Unified Negative Pair Generation toward Well-discriminative Feature Space for Face
Recognition", BMVC 2022, arXiv 2203.11593) unifies the two: the cosines of the negative
sample pairs of the mini-batch (different labels), with outliers removed by the box-and-whisker
rule, are appended to every sample's row of negative logits, so that the margin softmax also
pushes apart the negative pairs it would otherwise never see.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from losslab._core import Reduction
from losslab._hparams import Choice, Real, hparams
from losslab._ops.logsumexp import masked_logsumexp
from losslab.distances import normalize_rows
from losslab.losses.metric_learning.proxy import (
    EXAMPLE,
    PROXY_SHAPE,
    ProxyLossModule,
    _finish_ce,
    arc_margin_target,
    validate_proxy_inputs,
)
from losslab.registry import register

__all__ = ["UNPGLoss", "box_and_whisker", "negative_pair_cosines", "unpg_loss"]

UNPG = ("Unified Negative Pair Generation toward Well-discriminative Feature Space for Face "
        "Recognition")


def negative_pair_cosines(embeddings: Tensor, labels: Tensor) -> Tensor:
    """Cosines of every sample pair ``i < j`` with different labels (``[K]``, row-major order of
    the upper triangle), differentiable in the embeddings."""
    sim, neg = _pair_matrix(embeddings, labels)
    return sim[neg]


def _pair_matrix(embeddings: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """The ``[N, N]`` cosine matrix and the mask of its negative pairs ``i < j``."""
    f = normalize_rows(embeddings)
    neg = (labels.unsqueeze(1) != labels.unsqueeze(0)).triu(diagonal=1)
    return f @ f.T, neg


def box_and_whisker(values: Tensor, whisker: float) -> Tensor:
    r"""The values inside Tukey's fences :math:`[Q_1 - w\,\mathrm{IQR},\ Q_3 + w\,\mathrm{IQR}]`,
    sorted ascending, with the official code's quartiles: the sorted entries at indices
    ``int(0.25 K)`` and ``int(0.75 K)``. Empty in, empty out."""
    if values.numel() == 0:
        return values
    x = torch.sort(values).values
    return x[_inside_fences(x, torch.ones_like(x, dtype=torch.bool), whisker)]


def _inside_fences(values: Tensor, valid: Tensor, whisker: float) -> Tensor:
    """Mask of the ``valid`` entries of ``values`` (any shape) inside Tukey's fences of the
    valid entries, with static shapes (no boolean indexing: traceable without graph breaks)."""
    flat, ok = values.reshape(-1), valid.reshape(-1)
    x = torch.sort(torch.where(ok, flat, torch.full_like(flat, float("inf")))).values
    k = ok.sum()
    last = (k - 1).clamp_min(0)
    # gather with index tensors, not x[tensor]: no data-dependent Python index
    q1 = x.gather(0, torch.minimum((k * 0.25).floor().long(), last).view(1)).squeeze(0)
    q3 = x.gather(0, torch.minimum((k * 0.75).floor().long(), last).view(1)).squeeze(0)
    iqr = q3 - q1
    inside = ok & (flat >= q1 - whisker * iqr) & (flat <= q3 + whisker * iqr)
    return inside.reshape(values.shape)


_check_unpg = hparams(margin_type=Choice("arc", "cos"), margin=Real(ge=0, lt=math.pi),
                      scale=Real(gt=0), whisker=Real(ge=0))


def unpg_loss(
    embeddings: Tensor,
    labels: Tensor,
    proxies: Tensor,
    *,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    indices: object = None,
    margin_type: str = "arc",
    margin: float = 0.5,
    scale: float = 64.0,
    whisker: float = 1.5,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""UNPG: the margin softmax with the batch's filtered negative sample pairs as extra logits.

    .. math::
        \ell_i = -\log \frac{e^{s\,\psi(\theta_{i y_i})}}{e^{s\,\psi(\theta_{i y_i})} +
        \sum_{c \ne y_i} e^{s \cos\theta_{ic}} + \sum_{k \in \mathcal{N}'} e^{s\, s^{n}_k}}

    with :math:`\psi(\theta) = \cos(\theta + m)` (ArcFace, ``margin_type="arc"``, with its
    monotonic rule past :math:`\pi`) or :math:`\cos\theta - m` (CosFace, ``"cos"``),
    :math:`\theta_{ic}` the angle between sample :math:`i` and proxy :math:`c`, and
    :math:`\mathcal{N}'` the cosines :math:`s^n_k = \cos(x_a, x_b)` of the negative sample pairs
    (:math:`a < b`, :math:`y_a \ne y_b`) inside the box-and-whisker fences (:func:`box_and_whisker`,
    ``whisker`` :math:`w = 1.5`, Tukey's). The same :math:`\mathcal{N}'` enters every row; the
    gradient reaches the embeddings also through the pair cosines (the official code keeps them
    in the graph). The extra terms share one log-sum-exp, so the cost is :math:`O(NC + K)`
    beyond the pair cosines, not the official :math:`O(N(C + K))` concatenated logits.

    A batch with no negative pair (one class) reduces to ArcFace / CosFace.

    Args:
        embeddings: ``[N, D]`` features. labels: ``[N]`` class ids in ``[0, C)``.
        proxies: ``[C, D]`` class weights (the module's parameter).
        margin_type: ``"arc"`` (default) or ``"cos"``: the head UNPG sits on.
        margin: :math:`m` (default 0.5, the official head configuration for both heads).
        scale: :math:`s` (default 64, the same; it also scales the pair logits).
        whisker: :math:`w \ge 0` (default 1.5, the official ``unpg`` configuration).
        ref_embeddings, ref_labels, indices: not supported (``ValueError``).
        reduction: ``"mean"`` over samples, ``"sum"``, ``"none"`` (``[N]``).

    Paper: Jung et al., arXiv 2203.11593 (definitions and defaults checked against the authors'
    code: ``models/head.py`` ``UNPG``, ``models/build.py`` ``box_and_whisker_algorithm``,
    ``data/head.zoo.yaml``).
    """
    _check_unpg(margin_type=margin_type, margin=margin, scale=scale, whisker=whisker)
    embeddings, labels, proxies = validate_proxy_inputs(
        embeddings, labels, proxies, ref_embeddings, ref_labels, indices, name="unpg")
    cos = normalize_rows(embeddings) @ normalize_rows(proxies).T
    c = cos.gather(1, labels.unsqueeze(1)).squeeze(1)
    target = arc_margin_target(c, margin) if margin_type == "arc" else c - margin
    logits = cos.scatter(1, labels.unsqueeze(1), target.unsqueeze(1)) * scale
    lse = torch.logsumexp(logits, dim=1)
    sim, neg = _pair_matrix(embeddings, labels)
    keep = _inside_fences(sim, neg, whisker)
    pair_lse, any_pair = masked_logsumexp((scale * sim).reshape(1, -1), keep.reshape(1, -1))
    lse = torch.where(any_pair, torch.logaddexp(lse, pair_lse.expand_as(lse)), lse)
    per = lse - scale * target
    return _finish_ce(per, embeddings, proxies, reduction)


@register(
    "unpg",
    family="metric-learning",
    kind="embeddings",
    paper=UNPG,
    arxiv="2203.11593",
    summary="ArcFace/CosFace softmax + the batch's negative pair cosines (box-and-whisker "
    "filtered) as extra negatives; s=64, m=0.5, w=1.5",
    reduction="per sample",
    example_hparams=EXAMPLE,
)
class UNPGLoss(ProxyLossModule, function=unpg_loss, check=_check_unpg | PROXY_SHAPE):
    """Module form of :func:`unpg_loss` (class weights: normal init; the official heads use
    Xavier-uniform, an initialisation choice left to :meth:`reset_parameters`)."""
